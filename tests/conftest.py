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
