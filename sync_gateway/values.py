"""The protocol layer's values: what handlers and callers see (:class:`Session`,
:class:`Dispatch`, :class:`LifecycleEvent`, :class:`Status`), the frozen action records the
machine returns for the supervisor to execute, and :class:`LifecycleConfig` with its validation.

Part of the sans-I/O protocol layer (DESIGN.md); :mod:`sync_gateway.protocol` re-exports every
name. Imports nothing of ours but :mod:`sync_gateway.errors`.
"""
from dataclasses import dataclass
from typing import Any, Callable, List, Literal, NamedTuple, Optional, Tuple, Union

from .errors import ConfigError

# --------------------------------------------------------------------------------------------
# Public value types


@dataclass
class Session:
    """What a RESUME needs. Kept across resumes, cleared when the session is lost (or a fresh
    reconnect is forced: DESIGN.md step 2)."""

    session_id: Optional[str] = None
    seq: Optional[int] = None
    resume_url: Optional[str] = None

    @property
    def resumable(self) -> bool:
        return self.session_id is not None

    def clear(self) -> None:
        self.session_id = None
        self.seq = None
        self.resume_url = None


class Dispatch(NamedTuple):
    """One gateway event (op 0) as handed to handlers. New data will come as new fields.

    Immutable. A named tuple rather than a dataclass because one is built per event on the hot
    path, and a tuple is several times cheaper to make than a frozen dataclass.
    """

    name: str
    data: Any
    seq: Optional[int]
    shard_id: int = 0
    session_id: Optional[str] = None
    #: ``time.monotonic()`` when the supervisor took the frame (None for a Dispatch built by hand):
    #: ``RestClient.respond`` measures an interaction's 3-second window from it.
    received_at: Optional[float] = None

    def __repr__(self) -> str:
        return f"Dispatch(name={self.name!r}, seq={self.seq!r}, shard_id={self.shard_id!r})"


LifecycleKind = Literal[
    "connecting", "hello", "identifying", "resuming", "ready", "resumed", "disconnected", "reconnecting",
    "session_lost", "fatal", "closed",
]
State = Literal["idle", "connecting", "identifying", "resuming", "ready", "reconnecting", "closing", "closed", "failed"]

LIFECYCLE_KINDS = (
    "connecting",
    "hello",
    "identifying",
    "resuming",
    "ready",
    "resumed",
    "disconnected",
    "reconnecting",
    "session_lost",
    "fatal",
    "closed",
)


@dataclass(frozen=True)
class LifecycleEvent:
    """A step of the connection lifecycle. ``at`` is ``time.monotonic()`` seconds."""

    kind: LifecycleKind
    at: float
    code: Optional[int] = None
    reason: str = ""
    epoch: int = 0
    shard_id: int = 0


STATES = ("idle", "connecting", "identifying", "resuming", "ready", "reconnecting", "closing", "closed", "failed")


@dataclass(frozen=True)
class Status:
    """A consistent snapshot of one shard. Every ``*_at`` field is ``time.monotonic()`` seconds
    (compare with ``time.monotonic()``), or None if it never happened."""

    state: State
    connected: bool
    session_id: Optional[str]
    seq: Optional[int]
    resume_url: Optional[str]
    epoch: int
    latency: Optional[float]
    last_heartbeat_ack_at: Optional[float]
    last_event_at: Optional[float]
    identifies: int
    resumes: int
    reconnects: int
    orphaned_readers: int
    last_disconnect: Optional[str]
    last_error: Optional[str]
    shard_id: int = 0
    connected_at: Optional[float] = None
    heartbeat_interval: Optional[float] = None
    stale_frames: int = 0
    duplicate_events: int = 0
    failed_attempts: int = 0
    identify_wait: Optional[str] = None


# --------------------------------------------------------------------------------------------
# Actions the machine returns; the supervisor executes them in order.


@dataclass(frozen=True)
class Open:
    epoch: int
    url: str
    resume: bool


@dataclass(frozen=True)
class SendIdentify:
    epoch: int


@dataclass(frozen=True)
class SendResume:
    epoch: int
    session_id: str
    seq: Optional[int]


@dataclass(frozen=True)
class SendHeartbeat:
    epoch: int
    seq: Optional[int]


@dataclass(frozen=True)
class CloseSocket:
    """Send a close frame (the graceful half of a teardown)."""

    epoch: int
    code: int
    reason: str = ""


@dataclass(frozen=True)
class AbortSocket:
    """Hard close: ``shutdown(SHUT_RDWR)`` and ``close()`` of the OS socket."""

    epoch: int


@dataclass(frozen=True)
class OrphanReader:
    epoch: int


@dataclass(frozen=True)
class SetReadTimeout:
    epoch: int
    seconds: float


@dataclass(frozen=True)
class ReserveSends:
    """Keep *slots* of the socket's 120-per-60-s window for heartbeats, IDENTIFY and RESUME."""

    epoch: int
    slots: int


class Deliver(NamedTuple):
    dispatch: Dispatch


class DeliverRun(NamedTuple):
    """Events of one socket read, in order, that the machine accepted from their heads alone:
    ``(JSON text of "d", name, seq)`` each (:data:`sync_gateway.codec.Cut`), with what every one of
    them shares. The dispatcher parses each and delivers
    ``Dispatch(name, data, seq, shard_id, session_id, received_at)``, exactly what
    :class:`Deliver` would carry; parsing there keeps an event's objects on the thread that uses
    and frees them."""

    events: List[Tuple[Any, str, int]]
    session_id: Optional[str]
    shard_id: int
    received_at: float


@dataclass(frozen=True)
class Emit:
    event: LifecycleEvent


@dataclass(frozen=True)
class Stopped:
    error: Optional[BaseException]


Action = Union[
    Open,
    SendIdentify,
    SendResume,
    SendHeartbeat,
    CloseSocket,
    AbortSocket,
    OrphanReader,
    SetReadTimeout,
    ReserveSends,
    Deliver,
    DeliverRun,
    Emit,
    Stopped,
]


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class LifecycleConfig:
    """How the supervisor recovers. All durations are seconds."""

    hello_timeout: float = 20.0
    ready_timeout: float = 15.0
    drain_timeout: float = 5.0
    force_close_timeout: float = 1.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    invalid_session_delay: Tuple[float, float] = (1.0, 5.0)
    max_resume_failures: int = 3
    max_attempts: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("hello_timeout", "ready_timeout", "drain_timeout", "force_close_timeout", "backoff_base", "backoff_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"LifecycleConfig.{name} must be a number of seconds, got {type(value).__name__}")
            if value < 0 or value != value:
                raise ConfigError(f"LifecycleConfig.{name} must be >= 0, got {value!r}")
        for name in ("hello_timeout", "ready_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"LifecycleConfig.{name} must be > 0")
        if self.backoff_max < self.backoff_base:
            raise ConfigError("LifecycleConfig.backoff_max must be >= backoff_base")
        delay = self.invalid_session_delay
        if (
            not isinstance(delay, (tuple, list))
            or len(delay) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in delay)
            or not 0 <= delay[0] <= delay[1]
        ):
            raise ConfigError("LifecycleConfig.invalid_session_delay must be (low, high) seconds with 0 <= low <= high")
        object.__setattr__(self, "invalid_session_delay", (float(delay[0]), float(delay[1])))
        if isinstance(self.max_resume_failures, bool) or not isinstance(self.max_resume_failures, int) or self.max_resume_failures < 1:
            raise ConfigError("LifecycleConfig.max_resume_failures must be an int >= 1")
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1
        ):
            raise ConfigError("LifecycleConfig.max_attempts must be None (retry forever) or an int >= 1")


def default_backoff(config: LifecycleConfig) -> Callable[[int], float]:
    """Exponential backoff with jitter, computed by tenacity: attempt n waits about
    ``backoff_base * 2**(n-1)`` plus up to ``backoff_base`` of jitter, capped at ``backoff_max``."""
    import tenacity

    exponential = tenacity.wait_exponential(multiplier=config.backoff_base, min=config.backoff_base, max=config.backoff_max)
    wait = exponential + tenacity.wait_random(0, config.backoff_base)

    def compute(attempt: int) -> float:
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        return min(float(wait(state)), config.backoff_max)

    return compute
