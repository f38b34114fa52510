"""Loopback test doubles for gateway clients: a fake Discord gateway (ws:// or wss://) and a
TCP proxy that freezes, stalls or trickles connections.

Needs the ``testing`` extra (``websockets``). Nothing here imports the client, so the fake can test
any gateway client, ours or not.
"""
from .fake_gateway import FakeGateway, FakeSession, ServerConnection
from .proxy import FreezingProxy, Trickle

__all__ = ["FakeGateway", "FakeSession", "FreezingProxy", "ServerConnection", "Trickle"]
