"""Loopback test doubles for gateway clients: a fake Discord gateway and a freezing TCP proxy.

Needs the ``testing`` extra (``websockets``). Nothing here imports the client, so the fake can test
any gateway client, ours or not.
"""
from .fake_gateway import FakeGateway, FakeSession, ServerConnection
from .proxy import FreezingProxy

__all__ = ["FakeGateway", "FakeRest", "FakeSession", "FreezingProxy", "ServerConnection"]


def __getattr__(name: str) -> object:
    # FakeRest on first use: ``python -m sync_gateway.testing.fake_rest`` must not find it imported.
    if name == "FakeRest":
        from .fake_rest import FakeRest

        return FakeRest
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
