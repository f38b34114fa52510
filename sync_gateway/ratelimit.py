"""Local rate limits: the per-socket send window and the IDENTIFY gate (PROTOCOL.md §8, §11).

Nothing here does I/O. Discord punishes a client that goes over these limits (close 4008 for
sends; an invalid session for IDENTIFY; a *token reset* for the daily session-start budget), so we
keep them ourselves instead of finding out from the server (DESIGN.md invariant 8).

Both take their clock as a parameter so that the rules are tested with a fake clock.
"""
import abc
import base64
import contextlib
import copy
import hashlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, Mapping, NamedTuple, Optional

from ._log import get_logger
from .errors import ConfigError

__all__ = [
    "SendWindow",
    "Permit",
    "IdentifyGate",
    "StoredIdentifyGate",
    "MemoryIdentifyGate",
    "GateState",
    "SessionLedger",
    "DAY",
]

log = get_logger(__name__)

Clock = Callable[[], float]

#: How long Discord's session-start budget lasts once it has been refilled. Discord only tells us
#: ``reset_after`` for the current period; after that we assume the next one is a day long, until a
#: fresh ``/gateway/bot`` says otherwise.
DAY = 24 * 60 * 60.0

# A waiter that was given a ``cancel`` Event looks at it at least this often. A threading.Event
# cannot wake a Condition, so this bound is the price of not starting a helper thread; reset()
# wakes every waiter at once.
_CANCEL_POLL = 0.05


def _check_number(name: str, value: Any, *, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, not {type(value).__name__}")
    if (strict and value <= minimum) or (not strict and value < minimum):
        relation = ">" if strict else ">="
        raise ConfigError(f"{name} must be {relation} {minimum}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def format_duration(seconds: float) -> str:
    """``14340.0`` -> ``"3h59m"``; ``75`` -> ``"1m15s"``; ``2.5`` -> ``"2.5s"`` (for log lines and reasons)."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


# --------------------------------------------------------------------------------------------
# Send window
# --------------------------------------------------------------------------------------------


class SendWindow:
    """Discord allows 120 frames per 60 s per connection (close 4008 beyond).

    A sliding window of send times. ``reserved`` slots are kept for priority frames (heartbeat,
    IDENTIFY, RESUME), so user sends can never starve heartbeats: normal frames may fill only
    ``limit - reserved`` slots of any ``per``-second window, priority frames all ``limit``.

    A frame sent at ``t`` counts until ``t + per`` (exclusive), so at most ``limit`` frames fall in
    any half-open interval ``[t, t + per)``.

    Thread-safe. One window belongs to one socket; a new socket calls :meth:`reset`.
    """

    def __init__(self, limit: int = 120, per: float = 60.0, reserved: int = 10, clock: Clock = time.monotonic) -> None:
        self.limit = _check_int("limit", limit, minimum=1)
        self.per = _check_number("per", per, minimum=0.0, strict=True)
        self.reserved = _check_int("reserved", reserved, minimum=0)
        if self.reserved >= self.limit:
            raise ConfigError(f"reserved ({reserved}) must be smaller than limit ({limit}), or normal frames could never be sent")
        self._clock = clock
        self._sent: Deque[float] = deque()
        self._cond = threading.Condition(threading.Lock())
        # Waiting tickets per class, in arrival order: only the head of a class may take a slot.
        self._waiting: Dict[bool, Deque[object]] = {False: deque(), True: deque()}

    def __repr__(self) -> str:
        return f"<SendWindow used={self.used()}/{self.limit} per={self.per:g}s reserved={self.reserved}>"

    # -- internals (call with self._cond held) ------------------------------------------------

    def _expire(self, now: float) -> None:
        cutoff = now - self.per
        sent = self._sent
        while sent and sent[0] <= cutoff:
            sent.popleft()

    def _wait_for_slot(self, priority: bool, now: float) -> float:
        """0.0 if a slot of this class is free now, else seconds until one frees."""
        self._expire(now)
        cap = self.limit if priority else self.limit - self.reserved
        n = len(self._sent)
        if n < cap:
            return 0.0
        # After the oldest n - cap + 1 sends expire, n - (n - cap + 1) < cap slots are used.
        return max(self._sent[n - cap] + self.per - now, 1e-6)

    # -- public -------------------------------------------------------------------------------

    def try_acquire(self, priority: bool = False) -> float:
        """Take a slot now if one is free.

        Returns 0.0 when granted (the send is recorded at this instant: send the frame now), else
        the seconds until a slot of this class frees, and nothing is recorded. Non-blocking; it
        does not queue behind threads blocked in :meth:`acquire`.
        """
        with self._cond:
            now = self._clock()
            wait = self._wait_for_slot(priority, now)
            if wait == 0.0:
                self._sent.append(now)
            return wait

    def acquire(self, priority: bool = False, timeout: Optional[float] = None, cancel: Optional[threading.Event] = None) -> bool:
        """Block until a slot is granted (True), ``timeout`` seconds pass or ``cancel`` is set (False).

        Waiters of one class are served in arrival order; priority waiters never queue behind
        normal ones. The thread waits on a Condition until the computed moment a slot frees (no
        busy loop); :meth:`reset` wakes it at once, a set ``cancel`` is noticed within 50 ms.
        ``timeout`` is measured in real (monotonic) seconds, whatever clock the window uses.
        """
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        ticket = object()
        queue = self._waiting[bool(priority)]
        with self._cond:
            queue.append(ticket)
            try:
                while True:
                    if cancel is not None and cancel.is_set():
                        return False
                    wait: Optional[float] = None  # None: not our turn, wait to be notified
                    if queue[0] is ticket:
                        now = self._clock()
                        wait = self._wait_for_slot(priority, now)
                        if wait == 0.0:
                            self._sent.append(now)
                            return True
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return False
                        wait = left if wait is None else min(wait, left)
                    if cancel is not None:
                        wait = _CANCEL_POLL if wait is None else min(wait, _CANCEL_POLL)
                    self._cond.wait(wait)
            finally:
                queue.remove(ticket)
                # The next waiter may now be at the head of its queue: let it re-check.
                self._cond.notify_all()

    def record(self) -> None:
        """Count a frame that had to go out although the window was full (kept exact for later)."""
        with self._cond:
            self._sent.append(self._clock())

    def set_reserved(self, reserved: int) -> None:
        """Change how many slots are kept for priority frames (the heartbeat rate is known only
        after HELLO: a short interval needs more room held back)."""
        reserved = _check_int("reserved", reserved, minimum=0)
        if reserved >= self.limit:
            raise ConfigError(f"reserved ({reserved}) must be smaller than limit ({self.limit})")
        with self._cond:
            self.reserved = reserved
            self._cond.notify_all()

    def reset(self) -> None:
        """Empty the window (a new socket starts with a fresh budget) and wake every waiter."""
        with self._cond:
            self._sent.clear()
            self._cond.notify_all()

    def used(self) -> int:
        """Frames recorded in the current window (priority and normal together)."""
        with self._cond:
            self._expire(self._clock())
            return len(self._sent)


# --------------------------------------------------------------------------------------------
# Identify gate
# --------------------------------------------------------------------------------------------


class Permit(NamedTuple):
    """The answer of :meth:`IdentifyGate.try_acquire`.

    ``wait == 0.0`` (and ``reason == ""``): granted and recorded, send IDENTIFY now. Otherwise
    nothing was recorded; ``wait`` is the seconds until asking again may succeed and ``reason`` a
    short text for logs and status, e.g. ``"identify bucket 0 busy"``.
    """

    wait: float
    reason: str

    @property
    def granted(self) -> bool:
        return self.wait <= 0.0


_BIND_LOCK = threading.Lock()


def bot_id_from_token(token: str) -> str:
    """The bot's user id, which a bot token starts with (base64 of the id, then a dot); for a
    token of another shape, a digest of it (never the token itself: the id keys shared storage)."""
    head = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        decoded = ""
    if decoded.isdigit() and 15 <= len(decoded) <= 21:
        return decoded
    return "t" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]


class IdentifyGate(abc.ABC):
    """One IDENTIFY per bucket (``shard_id % max_concurrency``) per ``interval`` (5 s, plus a small
    safety margin) across everyone sharing the gate, and the daily session-start budget.

    A sharded client shares one gate between its shards, and File/Redis gates share it between
    processes, so the interface is small and never blocks: the caller turns a refusal into a
    deadline of its own (the supervisor's loop) and asks again.
    """

    #: Seconds between two IDENTIFYs of one bucket (Discord's 5 s).
    interval: float
    #: The bot this view of the gate counts for ("" for a gate not bound to one); see :meth:`for_bot`.
    bot: str = ""

    def for_bot(self, bot_id: str) -> "IdentifyGate":
        """This gate as seen by one bot: its buckets and daily ledger are that bot's alone, so one
        gate (one Redis, one file, one object) serves many bots correctly. The client calls it
        with the id it reads from the token. The first bot binds the gate itself (so the object
        you made reports that bot's numbers); another bot gets a view sharing the storage."""
        if not isinstance(bot_id, str) or not bot_id or any(c.isspace() or c == ":" for c in bot_id):
            raise ValueError("bot_id must be a non-empty str without spaces or ':'")
        with _BIND_LOCK:
            if not self.bot:  # the first bot to use a gate owns it (its own info, its own keys)
                self.bot = bot_id
                return self
        if self.bot == bot_id:
            return self
        view = copy.copy(self)
        view.bot = bot_id
        return view

    @abc.abstractmethod
    def try_acquire(self, shard_id: int, max_concurrency: int = 1) -> Permit:
        """Non-blocking. ``Permit(0.0, "")``: granted, recorded, send IDENTIFY now. Otherwise
        ``Permit(wait, reason)`` and nothing recorded. A grant also spends one session start."""

    @abc.abstractmethod
    def update_session_start_limit(self, limit: Mapping[str, Any]) -> None:
        """Record the ``session_start_limit`` object of ``GET /gateway/bot`` (``reset_after`` is in
        milliseconds from when it was observed, i.e. now)."""

    @abc.abstractmethod
    def session_start_info(self) -> Dict[str, Any]:
        """``{"total", "remaining", "resets_in" (seconds from now), "max_concurrency"}``, or ``{}``
        when no session start limit is known yet."""


@dataclass
class SessionLedger:
    """The daily session-start budget as last observed, with our own grants taken off.

    Times are on the gate's clock.
    """

    total: int
    remaining: int
    reset_at: float
    max_concurrency: int
    observed_at: float

    def roll(self, now: float) -> bool:
        """Refill the budget if its reset time has passed; True if it did."""
        if now < self.reset_at:
            return False
        self.remaining = self.total
        periods = math.floor((now - self.reset_at) / DAY) + 1
        self.reset_at += periods * DAY
        return True


@dataclass
class GateState:
    """Everything a gate shares: plain data, so File/Redis gates can store it as JSON.

    ``buckets`` maps a rate-limit key (``shard_id % max_concurrency``) to the clock value of the
    last IDENTIFY granted for it; ``ledger`` is the session-start budget, None until known.
    """

    buckets: Dict[int, float] = field(default_factory=dict)
    ledger: Optional[SessionLedger] = None

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form (bucket keys become strings)."""
        ledger = None
        if self.ledger is not None:
            ledger = {
                "total": self.ledger.total,
                "remaining": self.ledger.remaining,
                "reset_at": self.ledger.reset_at,
                "max_concurrency": self.ledger.max_concurrency,
                "observed_at": self.ledger.observed_at,
            }
        return {"buckets": {str(k): v for k, v in self.buckets.items()}, "ledger": ledger}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GateState":
        """Inverse of :meth:`to_dict`."""
        ledger = data.get("ledger")
        return cls(
            buckets={int(k): float(v) for k, v in (data.get("buckets") or {}).items()},
            ledger=SessionLedger(**ledger) if ledger else None,
        )


class StoredIdentifyGate(IdentifyGate):
    """The gate's rules over a pluggable store.

    A subclass provides :meth:`_transaction`: hold the store's lock (a mutex, ``flock``, a Redis
    lock...), load the :class:`GateState`, yield it, and save it when the block exits without an
    exception. Every rule below runs inside one transaction, so sharers never both get a bucket.
    The clock must be one every sharer agrees on (``time.monotonic`` within one host;
    ``time.time`` across hosts).
    """

    def __init__(self, *, interval: float = 5.0, margin: float = 0.25, daily_floor: int = 0, clock: Clock = time.monotonic) -> None:
        self.interval = _check_number("interval", interval, minimum=0.0, strict=False)
        self.margin = _check_number("margin", margin, minimum=0.0, strict=False)
        self.daily_floor = _check_int("daily_floor", daily_floor, minimum=0)
        self._clock = clock
        # The reset time we last warned about: one WARNING per wait period (per gate object).
        self._warned_for: Optional[float] = None
        self._warn_lock = threading.Lock()

    @abc.abstractmethod
    def _transaction(self) -> "contextlib.AbstractContextManager[GateState]":
        """Lock the store and yield its state; persist changes on a clean exit."""

    def try_acquire(self, shard_id: int, max_concurrency: int = 1) -> Permit:
        _check_int("shard_id", shard_id, minimum=0)
        _check_int("max_concurrency", max_concurrency, minimum=1)
        key = shard_id % max_concurrency
        spacing = self.interval + self.margin
        exhausted: Optional[SessionLedger] = None  # a copy, to warn about outside the transaction
        with self._transaction() as state:
            now = self._clock()
            ledger = state.ledger
            if ledger is not None:
                ledger.roll(now)
            last = state.buckets.get(key)
            if ledger is not None and ledger.remaining <= self.daily_floor:
                wait = max(ledger.reset_at - now, 1e-6)
                floor = f" (floor {self.daily_floor})" if self.daily_floor else ""
                permit = Permit(wait, f"session start limit: {ledger.remaining} remaining{floor}, resets in {format_duration(wait)}")
                exhausted = SessionLedger(**vars(ledger))
            elif last is not None and now < last + spacing:
                permit = Permit(last + spacing - now, f"identify bucket {key} busy")
            else:
                state.buckets[key] = now
                if ledger is not None:
                    ledger.remaining -= 1
                permit = Permit(0.0, "")
        if exhausted is not None:
            self._warn_budget(exhausted, permit.wait)
        return permit

    def _warn_budget(self, ledger: SessionLedger, wait: float) -> None:
        with self._warn_lock:
            if self._warned_for is not None and abs(self._warned_for - ledger.reset_at) < 60.0:
                return
            self._warned_for = ledger.reset_at
        log.warning(
            "IDENTIFY held back: %d of %d daily session starts remaining (floor %d); waiting %s for "
            "Discord's reset. Identifying past the limit gets the bot token reset.",
            ledger.remaining,
            ledger.total,
            self.daily_floor,
            format_duration(wait),
        )

    def update_session_start_limit(self, limit: Mapping[str, Any]) -> None:
        try:
            total = int(limit["total"])
            remaining = int(limit["remaining"])
            reset_after_ms = float(limit["reset_after"])
            max_concurrency = int(limit.get("max_concurrency", 1))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a session_start_limit object (need total, remaining, reset_after): {exc!r}") from None
        with self._transaction() as state:
            now = self._clock()
            state.ledger = SessionLedger(
                total=total,
                remaining=remaining,
                reset_at=now + max(0.0, reset_after_ms) / 1000.0,
                max_concurrency=max(1, max_concurrency),
                observed_at=now,
            )

    def session_start_info(self) -> Dict[str, Any]:
        with self._transaction() as state:
            now = self._clock()
            ledger = state.ledger
            if ledger is None:
                return {}
            ledger.roll(now)
            return {
                "total": ledger.total,
                "remaining": ledger.remaining,
                "resets_in": max(0.0, ledger.reset_at - now),
                "max_concurrency": ledger.max_concurrency,
            }


class MemoryIdentifyGate(StoredIdentifyGate):
    """An in-process gate: share one object between the shards of one process. Thread-safe."""

    def __init__(self, *, interval: float = 5.0, margin: float = 0.25, daily_floor: int = 0, clock: Clock = time.monotonic) -> None:
        super().__init__(interval=interval, margin=margin, daily_floor=daily_floor, clock=clock)
        self._lock = threading.Lock()
        self._states: Dict[str, GateState] = {}  # bot -> its state; shared by every view

    @property
    def _state(self) -> GateState:
        return self._states.setdefault(self.bot, GateState())

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[GateState]:
        with self._lock:
            yield self._state

    def __repr__(self) -> str:
        return f"<MemoryIdentifyGate interval={self.interval:g}s margin={self.margin:g}s buckets={len(self._state.buckets)}>"
