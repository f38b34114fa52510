"""Loopback test doubles for gateway clients: a fake Discord gateway and a freezing TCP proxy.

Needs the ``testing`` extra (``websockets``). Nothing here imports the client, so the fake can test
any gateway client, ours or not.
"""
from .fake_gateway import FakeGateway, FakeSession, ServerConnection
from .fake_rest import FakeRest
from .proxy import FreezingProxy

__all__ = ["FakeGateway", "FakeRest", "FakeSession", "FreezingProxy", "ServerConnection"]
