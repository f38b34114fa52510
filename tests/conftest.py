"""Shared fixtures. Every test is checked for leaked client threads (DESIGN.md invariant 6)."""
import signal
import threading
import time

import pytest

THREAD_PREFIX = "sync_gateway-"

# A shell that starts a job in the background without job control (``cmd &`` in a script, which
# is how some CI runners start theirs) starts it with SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler: every Ctrl-C test would wait for its timeout, and the client it could
# not stop would pollute the tests after it. Ctrl-C must mean Ctrl-C here, and in the processes
# the tests start (a signal with a handler is reset to its default on exec; an ignored one is not).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
from support import TOKEN, Recorder, client_options, fast_for, gateway_options  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "transports(*names): run the test once per transport of its `gateway`/`transport` fixture: "
        "plain (ws://), tls (wss://), trickle (ws:// in pieces), tls+trickle (wss:// in pieces)",
    )


def pytest_generate_tests(metafunc):
    """A test (or module, through ``pytestmark``) marked ``transports(...)`` runs once per transport;
    unmarked tests keep their ids and run on plain ``ws://``."""
    if "transport" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("transports")
    if marker is not None:
        metafunc.parametrize("transport", list(marker.args), indirect=True)


@pytest.fixture
def transport(request):
    """How the `gateway` fixture is reached: "plain", "tls", "trickle" or "tls+trickle"."""
    return getattr(request, "param", "plain")


@pytest.fixture
def gateway(transport, monkeypatch):
    from sync_gateway.testing import FakeGateway

    with FakeGateway(heartbeat_interval=45000, token=TOKEN, **gateway_options(transport)) as gw:
        if gw.tls:
            # the client's REST calls (requests) must trust the test certificate too
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", gw.ca_file)
        yield gw


@pytest.fixture
def fast(transport):
    """The lifecycle config for this test's transport (support.fast_for): FAST, or PIECES in pieces."""
    return fast_for(transport)


@pytest.fixture
def make_client(gateway, fast):
    """make_client(url=None, **kwargs) -> (client, recorder); every client is closed at teardown.
    Over TLS the client trusts the gateway's test certificate (see support.client_options)."""
    made = []

    def make(url=None, **kwargs):
        kwargs.setdefault("config", fast)
        kwargs.setdefault("identify_gate", MemoryIdentifyGate(interval=0.0, margin=0.0))
        kwargs.setdefault("gateway_url", url or gateway.url)
        client = GatewayClient(TOKEN, **client_options(gateway, **kwargs))
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
