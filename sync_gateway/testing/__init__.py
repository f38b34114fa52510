"""Loopback test doubles for gateway clients: a fake Discord gateway (ws:// or wss://) and a
TCP proxy that freezes, stalls or trickles connections.

Needs the ``testing`` extra (``websockets``). Nothing here imports the client, so the fake can test
any gateway client, ours or not.

The names are imported on first use (PEP 562), so that importing the package — as pytest does at
start-up for the ``pytest_plugin`` submodule, registered by entry point whether or not the extra is
installed — neither needs ``websockets`` nor pays for it.
"""
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .fake_gateway import FakeGateway, FakeSession, ServerConnection
    from .proxy import FreezingProxy, Trickle

__all__ = ["FakeGateway", "FakeRest", "FakeSession", "FreezingProxy", "ServerConnection", "Trickle"]

_HOME = {
    "FakeGateway": "fake_gateway",
    "FakeRest": "fake_rest",
    "FakeSession": "fake_gateway",
    "ServerConnection": "fake_gateway",
    "FreezingProxy": "proxy",
    "Trickle": "proxy",
}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> "list[str]":
    return sorted(set(globals()) | set(__all__))
