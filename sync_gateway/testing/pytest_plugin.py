"""pytest fixtures for testing a bot against :class:`~sync_gateway.testing.FakeGateway`.

Installed with the ``testing`` extra (``pip install 'sync-gateway[testing]'``), the plugin is
registered through the ``pytest11`` entry point, so the fixtures are there in every test without an
import::

    def test_my_handler_answers(fake_gateway, gateway_client):
        seen = []
        gateway_client.on("MESSAGE_CREATE", seen.append)
        fake_gateway.dispatch("MESSAGE_CREATE", {"content": "hi"})
        ...

Why the fixtures look like this:

* **No IDENTIFY wait.** Every client in one process shares Discord's IDENTIFY bucket (one IDENTIFY
  per 5 s) unless it is given its own gate; a user's second test would then wait 5 s. The clients
  made here get a private ``MemoryIdentifyGate(interval=0, margin=0)``: a fresh fake has no limit to
  keep.
* **Short timeouts** (:func:`fast_config`): a fault the test injects is recovered from in
  milliseconds rather than after Discord's production delays (e.g. 1-5 s before re-IDENTIFYing
  after op 9).
* **Nothing leaks.** Each client is closed after its test, and the test fails if a
  ``sync_gateway-*`` thread it started is still alive a few seconds later.

The module imports nothing of the library at pytest start-up (only inside the fixtures), so a test
run that never uses the fixtures pays nothing for them.
"""
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Set

import pytest

if TYPE_CHECKING:  # pragma: no cover - types only
    from sync_gateway import GatewayClient, LifecycleConfig
    from sync_gateway.testing import FakeGateway
    from sync_gateway.testing.fake_rest import FakeRest

__all__ = [
    "TEST_TOKEN",
    "HEARTBEAT_INTERVAL_MS",
    "THREAD_PREFIX",
    "fast_config",
    "fake_gateway",
    "fake_rest",
    "make_gateway_client",
    "gateway_client",
]

#: The token the fixtures' clients send; the fake accepts any token unless told otherwise.
TEST_TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.fake-token.for-tests-only"

#: HELLO's ``heartbeat_interval`` of the ``fake_gateway`` fixture (ms): short enough that a test of a
#: stalled heartbeat ACK (``fake_gateway.ack_heartbeats = False``) sees the zombie reconnect within
#: a few seconds, long enough that a slow machine never misses a beat.
HEARTBEAT_INTERVAL_MS = 2000

#: Threads of the client carry this prefix (``sync_gateway-supervisor-s0``, ...).
THREAD_PREFIX = "sync_gateway-"

#: Seconds the leak check gives the client's threads to end after ``close()``.
LEAK_GRACE = 5.0


def fast_config() -> "LifecycleConfig":
    """The :class:`~sync_gateway.LifecycleConfig` of the fixtures' clients: every timeout short
    enough for a test, long enough for a slow shared machine."""
    from sync_gateway import LifecycleConfig

    return LifecycleConfig(
        hello_timeout=3.0,
        ready_timeout=3.0,
        drain_timeout=1.0,
        force_close_timeout=0.5,
        backoff_base=0.05,
        backoff_max=0.2,
        invalid_session_delay=(0.0, 0.05),
    )


def _our_threads(before: Set[threading.Thread]) -> List[threading.Thread]:
    return [
        t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t not in before and t.is_alive()
    ]


@pytest.fixture
def fake_gateway() -> Iterator["FakeGateway"]:
    """A started :class:`~sync_gateway.testing.FakeGateway` on 127.0.0.1 (any free port), with a
    :data:`HEARTBEAT_INTERVAL_MS` heartbeat; stopped after the test.

    Point a client at ``fake_gateway.url`` (and ``api_base=fake_gateway.api_base``), or use
    :func:`gateway_client`. Change its switches (``ack_heartbeats``, ``answer_resume``, ...) at any
    time; script faults on ``fake_gateway.connections[-1]``.
    """
    from sync_gateway.testing import FakeGateway

    with FakeGateway("127.0.0.1", 0, heartbeat_interval=HEARTBEAT_INTERVAL_MS) as gateway:
        yield gateway


@pytest.fixture
def fake_rest(fake_gateway: "FakeGateway") -> Iterator["FakeRest"]:
    """A started :class:`~sync_gateway.testing.fake_rest.FakeRest` on 127.0.0.1: Discord's REST
    with its rate limits enforced (shared buckets, the global limit, 429 with scope, the
    interaction window), whose ``/gateway/bot`` points at :func:`fake_gateway`. Give a client
    ``api_base=fake_rest.api_base``; assert ``fake_rest.count(status=429) == 0``."""
    from sync_gateway.testing.fake_rest import FakeRest

    with FakeRest("127.0.0.1", 0, gateway_url=fake_gateway.url) as rest:
        yield rest


@pytest.fixture
def make_gateway_client(fake_gateway: "FakeGateway") -> Iterator[Callable[..., "GatewayClient"]]:
    """A factory: ``make_gateway_client(*, start=True, ready_timeout=5.0, token=TEST_TOKEN, **kwargs)``.

    Builds a :class:`~sync_gateway.GatewayClient` pointed at the ``fake_gateway`` fixture, with a
    private IDENTIFY gate (no 5 s wait between tests) and :func:`fast_config`; any keyword overrides
    those defaults (``intents=``, ``compress=``, ``session_store=``...). With ``start=True`` it is
    started and ready (or the test fails after *ready_timeout*); with ``start=False`` register your
    handlers first and call ``client.start()`` yourself, so the handlers see READY too.

    Every client it made is closed after the test, and the test fails if one of its threads
    outlives the close.
    """
    from sync_gateway import GatewayClient, MemoryIdentifyGate

    before = set(threading.enumerate())
    made: List[GatewayClient] = []

    def make(*, start: bool = True, ready_timeout: float = 5.0, token: str = TEST_TOKEN, **kwargs: Any) -> GatewayClient:
        kwargs.setdefault("gateway_url", fake_gateway.url)
        kwargs.setdefault("api_base", fake_gateway.api_base)
        kwargs.setdefault("identify_gate", MemoryIdentifyGate(interval=0.0, margin=0.0))
        kwargs.setdefault("config", fast_config())
        client = GatewayClient(token, **kwargs)
        made.append(client)
        if start:
            client.start()
            if not client.wait_until_ready(ready_timeout):
                status = client.status()
                pytest.fail(
                    f"the client was not ready within {ready_timeout}s "
                    f"(state={status.state!r}, last_error={status.last_error!r})"
                )
        return client

    yield make

    for client in made:
        client.close(timeout=5.0)
    deadline = time.monotonic() + LEAK_GRACE
    leaked = _our_threads(before)
    while leaked and time.monotonic() < deadline:
        leaked[0].join(0.1)
        leaked = _our_threads(before)
    if leaked:
        pytest.fail(f"sync_gateway threads still alive after close(): {[t.name for t in leaked]}")


@pytest.fixture
def gateway_client(make_gateway_client: Callable[..., "GatewayClient"]) -> "GatewayClient":
    """A :class:`~sync_gateway.GatewayClient` connected to ``fake_gateway`` and ready (READY
    received), closed after the test. Handlers registered now see every event dispatched later."""
    return make_gateway_client()
