"""Shared fixtures. Every test is checked for leaked client threads (DESIGN.md invariant 6)."""
import threading
import time

import pytest

THREAD_PREFIX = "sync_gateway-"


def _ours(before):
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t not in before and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """After each test, no thread the client started may still be alive."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5.0
    leaked = _ours(before)
    while leaked and time.monotonic() < deadline:
        leaked[0].join(0.1)
        leaked = _ours(before)
    assert not leaked, f"threads left alive: {[t.name for t in leaked]}"


# ---------------------------------------------------------------------------------------------
# Integration fixtures: a FakeGateway on 127.0.0.1 and clients that are always closed.

from sync_gateway import GatewayClient, MemoryIdentifyGate  # noqa: E402
from support import FAST, TOKEN, Recorder  # noqa: E402


@pytest.fixture
def gateway():
    from sync_gateway.testing import FakeGateway

    with FakeGateway(heartbeat_interval=45000, token=TOKEN) as gw:
        yield gw


@pytest.fixture
def make_client(gateway):
    """make_client(url=None, **kwargs) -> (client, recorder); every client is closed at teardown."""
    made = []

    def make(url=None, **kwargs):
        kwargs.setdefault("config", FAST)
        kwargs.setdefault("identify_gate", MemoryIdentifyGate(interval=0.0, margin=0.0))
        kwargs.setdefault("gateway_url", url or gateway.url)
        client = GatewayClient(TOKEN, **kwargs)
        made.append(client)
        return client, Recorder(client)

    yield make
    for client in made:
        client.close(timeout=5.0)


@pytest.fixture
def unused_port():
    """A loopback port with nothing listening (bound, then closed)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
