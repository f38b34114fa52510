"""SendWindow and the identify gate: rules on a fake clock, blocking on short real windows."""
import logging
import threading
import time
from collections import deque
from typing import List

import pytest

from sync_gateway.errors import ConfigError
from sync_gateway.ratelimit import (
    DAY,
    GateState,
    IdentifyGate,
    MemoryIdentifyGate,
    Permit,
    SendWindow,
    StoredIdentifyGate,
    format_duration,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Every thread a test starts (workers, the HTTP server and its handlers) is gone after it."""
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before]
    for thread in leftover:
        thread.join(2.0)
    assert [t.name for t in leftover if t.is_alive()] == []


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


def max_in_any_window(times: List[float], per: float) -> int:
    """The most entries in any half-open interval [t, t + per)."""
    times = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + per:
            j += 1
        best = max(best, j - i)
    return best


def wait_for_waiters(window: SendWindow, count: int, priority: bool = False) -> None:
    """Block until ``count`` threads are queued in ``window.acquire`` (its own bookkeeping)."""
    deadline = time.monotonic() + 5.0
    with window._cond:
        while len(window._waiting[priority]) < count:
            left = deadline - time.monotonic()
            assert left > 0, "workers never started waiting"
            window._cond.wait(left)


class RecordingDeque(deque):
    """Stands in for the window's list of send times, to see every grant at its exact clock value."""

    def __init__(self, *args):
        super().__init__(*args)
        self.granted: List[float] = []

    def append(self, item):
        self.granted.append(item)
        super().append(item)


def start_thread(target, *args) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------- SendWindow rules


def test_normal_frames_never_exceed_limit_minus_reserved_in_any_window():
    clock = FakeClock()
    window = SendWindow(limit=120, per=60.0, reserved=10, clock=clock)
    granted: List[float] = []
    while len(granted) < 150:
        wait = window.try_acquire()
        if wait == 0.0:
            granted.append(clock())
            clock.advance(0.05)
        else:
            assert wait > 0
            clock.advance(wait)
    assert max_in_any_window(granted, 60.0) == 110
    # The 111th had to wait for the first to leave the window, exactly.
    assert granted[110] == pytest.approx(granted[0] + 60.0)


def test_try_acquire_reports_wait_and_records_nothing_when_full():
    clock = FakeClock()
    window = SendWindow(limit=5, per=10.0, reserved=1, clock=clock)
    for _ in range(4):
        assert window.try_acquire() == 0.0
        clock.advance(1.0)
    assert window.used() == 4
    assert window.try_acquire() == pytest.approx(6.0)  # first send at t0 leaves at t0+10; now t0+4
    assert window.used() == 4
    clock.advance(6.0)
    assert window.try_acquire() == 0.0


def test_priority_frames_get_the_reserved_slots():
    clock = FakeClock()
    window = SendWindow(limit=120, per=60.0, reserved=10, clock=clock)
    for _ in range(110):
        assert window.try_acquire() == 0.0
    assert window.try_acquire() > 0  # normal frames are out of room
    for _ in range(10):
        assert window.try_acquire(priority=True) == 0.0
    assert window.used() == 120
    assert window.try_acquire(priority=True) == pytest.approx(60.0)
    assert window.try_acquire() == pytest.approx(60.0)


def test_priority_wait_counts_only_what_it_needs():
    clock = FakeClock()
    window = SendWindow(limit=4, per=10.0, reserved=1, clock=clock)
    for _ in range(4):
        window.try_acquire(priority=True)
        clock.advance(1.0)
    # now = t0+4; sends at t0..t0+3. Priority needs 1 to leave (t0+10); normal needs 2 (t0+11).
    assert window.try_acquire(priority=True) == pytest.approx(6.0)
    assert window.try_acquire() == pytest.approx(7.0)


def test_reset_empties_the_window():
    clock = FakeClock()
    window = SendWindow(limit=3, per=60.0, reserved=1, clock=clock)
    window.try_acquire()
    window.try_acquire()
    assert window.try_acquire() > 0
    window.reset()
    assert window.used() == 0
    assert window.try_acquire() == 0.0


def test_used_forgets_expired_sends():
    clock = FakeClock()
    window = SendWindow(limit=10, per=5.0, reserved=0, clock=clock)
    for _ in range(3):
        window.try_acquire()
    clock.advance(4.999)
    assert window.used() == 3
    clock.advance(0.001)
    assert window.used() == 0


@pytest.mark.parametrize(
    "kwargs",
    [dict(limit=0), dict(per=0), dict(per=-1), dict(reserved=-1), dict(limit=5, reserved=5), dict(limit=1.5)],
)
def test_send_window_rejects_bad_config(kwargs):
    with pytest.raises(ConfigError):
        SendWindow(**kwargs)


# ---------------------------------------------------------------------------- SendWindow blocking


def test_acquire_blocks_until_a_slot_frees():
    window = SendWindow(limit=3, per=0.3, reserved=0)
    started = time.monotonic()
    for _ in range(3):
        assert window.acquire(timeout=1.0)
    assert window.acquire(timeout=5.0)
    waited = time.monotonic() - started
    assert 0.3 <= waited < 2.0


def test_acquire_wakes_a_blocked_thread_when_a_slot_frees():
    window = SendWindow(limit=3, per=0.3, reserved=0)
    for _ in range(3):
        window.try_acquire()
    done = threading.Event()
    result = []

    def worker():
        result.append(window.acquire(timeout=5.0))
        done.set()

    thread = start_thread(worker)
    assert done.wait(5.0)
    thread.join(5.0)
    assert not thread.is_alive()
    assert result == [True]


def test_acquire_times_out_without_recording():
    window = SendWindow(limit=2, per=30.0, reserved=0)
    window.try_acquire()
    window.try_acquire()
    started = time.monotonic()
    assert window.acquire(timeout=0.2) is False
    assert 0.15 <= time.monotonic() - started < 2.0
    assert window.used() == 2
    assert window.acquire(timeout=0) is False


def test_acquire_is_cancelled_promptly():
    window = SendWindow(limit=1, per=30.0, reserved=0)
    window.try_acquire()
    cancel = threading.Event()
    started_wait = threading.Event()
    result = []

    def worker():
        started_wait.set()
        result.append(window.acquire(timeout=20.0, cancel=cancel))

    thread = start_thread(worker)
    assert started_wait.wait(5.0)
    cancel.set()
    thread.join(5.0)
    assert not thread.is_alive()
    assert result == [False]
    assert window.used() == 1


def test_acquire_with_cancel_already_set_returns_false():
    window = SendWindow(limit=1, per=30.0, reserved=0)
    cancel = threading.Event()
    cancel.set()
    assert window.acquire(cancel=cancel) is False
    assert window.used() == 0


def test_reset_wakes_waiters():
    window = SendWindow(limit=2, per=60.0, reserved=0)
    window.try_acquire()
    window.try_acquire()
    results = []
    lock = threading.Lock()

    def worker():
        ok = window.acquire(timeout=20.0)
        with lock:
            results.append(ok)

    threads = [start_thread(worker) for _ in range(2)]
    wait_for_waiters(window, 2)
    started = time.monotonic()
    window.reset()
    for thread in threads:
        thread.join(5.0)
        assert not thread.is_alive()
    assert results == [True, True]
    assert window.used() == 2
    assert time.monotonic() - started < 5.0


def test_priority_waiter_does_not_queue_behind_normal_waiters():
    window = SendWindow(limit=3, per=60.0, reserved=1)
    window.try_acquire()
    window.try_acquire()  # normal room (2) used; one reserved slot left
    cancel = threading.Event()
    normal = start_thread(window.acquire, False, 20.0, cancel)
    wait_for_waiters(window, 1)
    try:
        assert window.acquire(priority=True, timeout=1.0) is True
    finally:
        cancel.set()
        normal.join(5.0)
    assert not normal.is_alive()


def test_send_window_thread_safety_smoke():
    clock = FakeClock()
    window = SendWindow(limit=50, per=60.0, reserved=5, clock=clock)
    granted = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(priority):
        barrier.wait(5.0)
        for _ in range(20):
            if window.try_acquire(priority=priority) == 0.0:
                with lock:
                    granted.append(priority)

    threads = [start_thread(worker, i % 2 == 0) for i in range(8)]
    for thread in threads:
        thread.join(10.0)
        assert not thread.is_alive()
    assert len(granted) == 50
    assert window.used() == 50
    assert granted.count(False) <= 45


def test_blocking_acquire_many_threads_respects_limit():
    window = SendWindow(limit=4, per=0.25, reserved=1)
    window._sent = sent = RecordingDeque()

    def worker():
        for _ in range(3):
            assert window.acquire(timeout=10.0)

    threads = [start_thread(worker) for _ in range(3)]
    for thread in threads:
        thread.join(15.0)
        assert not thread.is_alive()
    assert len(sent.granted) == 9
    assert max_in_any_window(sent.granted, 0.25) == 3


# ---------------------------------------------------------------------------- identify gate


def test_same_bucket_twice_waits_interval_plus_margin():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    assert gate.try_acquire(0) == Permit(0.0, "")
    permit = gate.try_acquire(0)
    assert permit.wait == pytest.approx(5.25)
    assert permit.reason == "identify bucket 0 busy"
    assert not permit.granted
    clock.advance(5.0)
    assert gate.try_acquire(0).wait == pytest.approx(0.25)
    clock.advance(0.25)
    assert gate.try_acquire(0).granted


def test_refusal_records_nothing():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    gate.try_acquire(0)
    clock.advance(3.0)
    gate.try_acquire(0)  # refused; must not push the bucket's time forward
    clock.advance(2.25)
    assert gate.try_acquire(0).granted


def test_different_buckets_are_both_granted():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    assert gate.try_acquire(0, max_concurrency=2).granted
    assert gate.try_acquire(1, max_concurrency=2).granted


def test_single_concurrency_puts_every_shard_in_one_bucket():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    assert gate.try_acquire(0).granted
    permit = gate.try_acquire(1)
    assert permit.wait == pytest.approx(5.25)
    assert permit.reason == "identify bucket 0 busy"


def test_max_concurrency_two_with_four_shards():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    assert gate.try_acquire(0, 2).granted
    assert gate.try_acquire(1, 2).granted
    two, three = gate.try_acquire(2, 2), gate.try_acquire(3, 2)
    assert (two.wait, two.reason) == (pytest.approx(5.25), "identify bucket 0 busy")
    assert (three.wait, three.reason) == (pytest.approx(5.25), "identify bucket 1 busy")
    clock.advance(5.25)
    assert gate.try_acquire(2, 2).granted
    assert gate.try_acquire(3, 2).granted


def test_custom_interval_and_margin():
    clock = FakeClock()
    gate = MemoryIdentifyGate(interval=1.0, margin=0.0, clock=clock)
    assert gate.interval == 1.0
    gate.try_acquire(0)
    assert gate.try_acquire(0).wait == pytest.approx(1.0)


def test_no_session_start_info_until_known():
    gate = MemoryIdentifyGate(clock=FakeClock())
    assert gate.session_start_info() == {}


def test_session_start_info_reports_budget():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    gate.update_session_start_limit({"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1})
    clock.advance(100.0)
    info = gate.session_start_info()
    assert info == {"total": 1000, "remaining": 999, "resets_in": pytest.approx(14_300.0), "max_concurrency": 1}


def test_remaining_is_decremented_on_grant_only():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    gate.update_session_start_limit({"total": 1000, "remaining": 10, "reset_after": 3_600_000, "max_concurrency": 1})
    assert gate.try_acquire(0).granted
    assert gate.session_start_info()["remaining"] == 9
    assert not gate.try_acquire(0).granted  # bucket busy: nothing spent
    assert gate.session_start_info()["remaining"] == 9


def test_exhausted_budget_waits_for_reset_with_one_warning(caplog):
    caplog.set_level(logging.WARNING, logger="sync_gateway")
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    gate.update_session_start_limit({"total": 1000, "remaining": 0, "reset_after": 14_340_000, "max_concurrency": 1})
    permit = gate.try_acquire(0)
    assert permit.wait == pytest.approx(14_340.0)
    assert permit.reason == "session start limit: 0 remaining, resets in 3h59m"
    clock.advance(60.0)
    again = gate.try_acquire(3)
    assert again.wait == pytest.approx(14_280.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "3h59m" in warnings[0].getMessage()
    assert "0 of 1000" in warnings[0].getMessage()


def test_budget_reset_restores_total():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    gate.update_session_start_limit({"total": 1000, "remaining": 0, "reset_after": 10_000, "max_concurrency": 1})
    assert not gate.try_acquire(0).granted
    clock.advance(10.0)
    assert gate.try_acquire(0).granted
    info = gate.session_start_info()
    assert info["remaining"] == 999
    # The next period is assumed to be a day long until Discord says otherwise.
    assert info["resets_in"] == pytest.approx(DAY)


def test_a_new_wait_period_warns_again(caplog):
    caplog.set_level(logging.WARNING, logger="sync_gateway")
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    gate.update_session_start_limit({"total": 1, "remaining": 0, "reset_after": 1_000, "max_concurrency": 1})
    gate.try_acquire(0)
    clock.advance(1.0)
    assert gate.try_acquire(0).granted  # refilled to 1, spent
    clock.advance(10.0)
    permit = gate.try_acquire(0)
    assert permit.wait == pytest.approx(DAY - 10.0)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2


def test_daily_floor_keeps_starts_in_reserve():
    clock = FakeClock()
    gate = MemoryIdentifyGate(daily_floor=2, clock=clock)
    gate.update_session_start_limit({"total": 1000, "remaining": 3, "reset_after": 60_000, "max_concurrency": 1})
    assert gate.try_acquire(0).granted
    permit = gate.try_acquire(1, max_concurrency=16)
    assert permit.wait == pytest.approx(60.0)
    assert permit.reason == "session start limit: 2 remaining (floor 2), resets in 1m00s"


def test_update_rejects_garbage():
    gate = MemoryIdentifyGate(clock=FakeClock())
    with pytest.raises(ValueError):
        gate.update_session_start_limit({"total": 1000})


@pytest.mark.parametrize("args", [(-1, 1), (0, 0), ("0", 1)])
def test_try_acquire_rejects_bad_arguments(args):
    with pytest.raises(ConfigError):
        MemoryIdentifyGate().try_acquire(*args)


def test_gate_thread_safety_smoke():
    clock = FakeClock()
    gate = MemoryIdentifyGate(clock=clock)
    gate.update_session_start_limit({"total": 1000, "remaining": 500, "reset_after": 3_600_000, "max_concurrency": 4})
    grants = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker(shard):
        barrier.wait(5.0)
        for _ in range(50):
            if gate.try_acquire(shard, max_concurrency=4).granted:
                with lock:
                    grants.append(shard % 4)

    threads = [start_thread(worker, shard) for shard in range(8)]
    for thread in threads:
        thread.join(10.0)
        assert not thread.is_alive()
    # The clock stood still: exactly one grant per bucket, and exactly that many starts spent.
    assert sorted(grants) == [0, 1, 2, 3]
    assert gate.session_start_info()["remaining"] == 496


def test_a_subclass_only_provides_storage():
    """A File/Redis gate plugs in a store; the rules come from StoredIdentifyGate."""
    import contextlib

    class JsonGate(StoredIdentifyGate):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.saved = GateState().to_dict()
            self.lock = threading.Lock()

        @contextlib.contextmanager
        def _transaction(self):
            with self.lock:
                state = GateState.from_dict(self.saved)
                yield state
                self.saved = GateState.from_dict(state.to_dict()).to_dict()

    clock = FakeClock()
    gate = JsonGate(clock=clock)
    assert isinstance(gate, IdentifyGate)
    gate.update_session_start_limit({"total": 5, "remaining": 5, "reset_after": 1000, "max_concurrency": 1})
    assert gate.try_acquire(0).granted
    assert gate.try_acquire(0).reason == "identify bucket 0 busy"
    assert gate.saved["buckets"] == {"0": clock()}
    assert gate.session_start_info()["remaining"] == 4


def test_format_duration():
    assert format_duration(14_340) == "3h59m"
    assert format_duration(3600) == "1h00m"
    assert format_duration(75) == "1m15s"
    assert format_duration(2.5) == "2.5s"
