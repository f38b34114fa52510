"""The Discord Gateway protocol, without I/O (the h11 / wsproto model).

Everything that decides *what to do* lives here; nothing here opens a socket, starts a thread or
reads a clock. Time is always the ``now`` argument (``time.monotonic()`` seconds in the running
client) and randomness comes from an injected :class:`random.Random`, so every rule is tested in
microseconds with a fake clock.

Two layers:

* data and rules: opcodes, the close-code policy table (PROTOCOL.md §7), payload builders, the
  :class:`Session` record, and the public value types (:class:`Dispatch`, :class:`LifecycleEvent`,
  :class:`Status`);
* :class:`ShardMachine`: the lifecycle of one shard as a state machine. The supervisor thread feeds
  it inputs (a socket opened, a frame, a socket closed, a tick of the clock, a user request) and
  executes the actions it returns (open a socket, send, close, abort, deliver). DESIGN.md's
  recovery table, the forced fresh reconnect and the invariants are implemented here, so the
  property tests of the invariants run against this class.
"""
import enum
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Mapping, NamedTuple, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._log import get_logger
from .errors import ConfigError, FatalGatewayError, GatewayError

log = get_logger(__name__)

API_VERSION = 10
MAX_PAYLOAD_BYTES = 4096
SEND_LIMIT = 120
SEND_PERIOD = 60.0


class Op(enum.IntEnum):
    """Gateway opcodes (PROTOCOL.md §3)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    REQUEST_SOUNDBOARD_SOUNDS = 31
    REQUEST_CHANNEL_INFO = 43


#: Opcodes the supervisor owns; a user ``send()`` of one of these would break the session.
SUPERVISOR_OPS = frozenset({Op.HEARTBEAT, Op.IDENTIFY, Op.RESUME})
#: Opcodes that only ever travel server -> client.
RECEIVE_ONLY_OPS = frozenset({Op.DISPATCH, Op.RECONNECT, Op.INVALID_SESSION, Op.HELLO, Op.HEARTBEAT_ACK})


# --------------------------------------------------------------------------------------------
# Close codes (PROTOCOL.md §7) as data, not if-chains.


class Recovery(enum.Enum):
    RESUME = "resume"  # reconnect and RESUME the session
    IDENTIFY = "identify"  # the session is gone: drop it, wait, IDENTIFY anew
    FATAL = "fatal"  # stop; retrying cannot help


@dataclass(frozen=True)
class CloseCode:
    code: int
    name: str
    meaning: str
    reconnect: bool  # Discord's own "reconnect" column
    recovery: Recovery


CLOSE_CODES: Mapping[int, CloseCode] = {
    c.code: c
    for c in (
        CloseCode(4000, "Unknown error", "unknown server-side problem", True, Recovery.RESUME),
        CloseCode(4001, "Unknown opcode", "invalid opcode or payload for an opcode", True, Recovery.RESUME),
        CloseCode(4002, "Decode error", "invalid payload (bad JSON, or over 4096 bytes)", True, Recovery.RESUME),
        CloseCode(4003, "Not authenticated", "payload before IDENTIFY, or session invalidated", True, Recovery.IDENTIFY),
        CloseCode(4004, "Authentication failed", "the token is invalid", False, Recovery.FATAL),
        CloseCode(4005, "Already authenticated", "more than one IDENTIFY", True, Recovery.RESUME),
        CloseCode(4007, "Invalid seq", "bad seq in RESUME", True, Recovery.IDENTIFY),
        CloseCode(4008, "Rate limited", "more than 120 frames in 60 s", True, Recovery.RESUME),
        CloseCode(4009, "Session timed out", "the session expired", True, Recovery.IDENTIFY),
        CloseCode(4010, "Invalid shard", "bad shard in IDENTIFY", False, Recovery.FATAL),
        CloseCode(4011, "Sharding required", "too many guilds for one session; shard the bot", False, Recovery.FATAL),
        CloseCode(4012, "Invalid API version", "bad gateway version", False, Recovery.FATAL),
        CloseCode(4013, "Invalid intent(s)", "an intent bit Discord does not know", False, Recovery.FATAL),
        CloseCode(
            4014,
            "Disallowed intent(s)",
            "a privileged intent that is not enabled in the Developer Portal",
            False,
            Recovery.FATAL,
        ),
    )
}

FATAL_CLOSE_CODES = frozenset(c for c, info in CLOSE_CODES.items() if info.recovery is Recovery.FATAL)
SESSION_KILLING_CLOSE_CODES = frozenset(c for c, info in CLOSE_CODES.items() if info.recovery is Recovery.IDENTIFY)


def close_recovery(code: Optional[int]) -> Recovery:
    """What to do after the server closed with *code* (None: TCP dropped with no close frame).

    Codes outside Discord's table (1000/1001 from the server, 1006, 1011, 1012, ...) are treated
    as transient: reconnect and try to resume; an op 9 will tell us if the session is gone.
    """
    info = CLOSE_CODES.get(code) if code is not None else None
    return info.recovery if info else Recovery.RESUME


def describe_close(code: Optional[int], reason: str = "") -> str:
    if code is None:
        text = "connection lost without a close frame"
    else:
        info = CLOSE_CODES.get(code)
        text = f"close {code} ({info.name}: {info.meaning})" if info else f"close {code}"
    return f"{text}: {reason}" if reason else text


def fatal_error(code: int, reason: str = "", intents: Optional[int] = None) -> FatalGatewayError:
    """The exception for a fatal close code, with advice a person can act on."""
    info = CLOSE_CODES.get(code)
    message = f"Discord closed the gateway with {code}"
    if info:
        message += f" ({info.name}): {info.meaning}"
    if reason:
        message += f" [{reason}]"
    if code == 4014:
        from .intents import Intents

        asked = Intents(intents or 0).privileged_names()
        named = ", ".join(asked) if asked else "a privileged intent"
        message += (
            f". The client asked for {named}; switch it on in the Discord Developer Portal "
            "(your application -> Bot -> Privileged Gateway Intents), or leave it out of intents"
        )
    elif code == 4004:
        message += ". Check that it is the bot token, not the client secret, or make a new one (Developer Portal -> Bot -> Reset Token)"
    elif code == 4011:
        message += ". Use ShardedClient or pass shard=(id, count)"
    elif code == 4013:
        message += ". Use sync_gateway.Intents values only"
    return FatalGatewayError(code, message, reason)


# --------------------------------------------------------------------------------------------
# URLs


def gateway_query_url(url: str, compress: Optional[str], encoding: str = "json") -> str:
    """Append ``v``, ``encoding`` and ``compress`` to a gateway URL (PROTOCOL.md §1).

    Existing values for those keys are replaced; any other query parameters are kept.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(f"gateway URL must start with ws:// or wss://, got {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise ConfigError("gateway URL has no host")
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("v", "encoding", "compress")]
    query += [("v", str(API_VERSION)), ("encoding", encoding)]
    if compress:
        query.append(("compress", compress))
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))


def with_query_of(url: str, template: str) -> str:
    """*url* with the query of *template*: a resume URL must carry the same ``v``/``encoding``/
    ``compress`` as the first connection (PROTOCOL.md §1)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlsplit(template).query, ""))


def url_host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def host_is_trusted(url: str, trusted: Sequence[str]) -> bool:
    """True if *url*'s host equals an entry of *trusted* or, for ``*.example.com`` entries, is below it."""
    host = url_host(url)
    if not host:
        return False
    for pattern in trusted:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Payload builders


def heartbeat(seq: Optional[int]) -> Dict[str, Any]:
    return {"op": Op.HEARTBEAT.value, "d": seq}


def identify(
    token: str,
    intents: int,
    *,
    properties: Optional[Mapping[str, str]] = None,
    shard: Optional[Tuple[int, int]] = None,
    presence: Optional[Mapping[str, Any]] = None,
    large_threshold: Optional[int] = None,
) -> Dict[str, Any]:
    d: Dict[str, Any] = {
        "token": token,
        "intents": int(intents),
        "properties": dict(properties) if properties else default_properties(),
    }
    if shard is not None:
        d["shard"] = [int(shard[0]), int(shard[1])]
    if presence is not None:
        d["presence"] = dict(presence)
    if large_threshold is not None:
        d["large_threshold"] = int(large_threshold)
    return {"op": Op.IDENTIFY.value, "d": d}


def default_properties() -> Dict[str, str]:
    import platform

    return {"os": platform.system().lower() or "unknown", "browser": "sync_gateway", "device": "sync_gateway"}


def resume(token: str, session_id: str, seq: Optional[int]) -> Dict[str, Any]:
    return {"op": Op.RESUME.value, "d": {"token": token, "session_id": session_id, "seq": seq}}


PRESENCE_STATUSES = ("online", "dnd", "idle", "invisible", "offline")
ACTIVITY_FIELDS = ("name", "state", "type", "url")


def presence(
    status: str = "online",
    activities: Sequence[Mapping[str, Any]] = (),
    afk: bool = False,
    since: Optional[int] = None,
) -> Dict[str, Any]:
    """The ``d`` of op 3 (also IDENTIFY's ``presence``). Validates what Discord would reject."""
    if status not in PRESENCE_STATUSES:
        raise ConfigError(f"presence status must be one of {', '.join(PRESENCE_STATUSES)}; got {status!r}")
    if isinstance(activities, (str, bytes)) or not isinstance(activities, (list, tuple)):
        raise TypeError("activities must be a list or tuple of dicts")
    acts = []
    for a in activities:
        if not isinstance(a, Mapping):
            raise TypeError(f"each activity must be a dict, got {type(a).__name__}")
        if "name" not in a or "type" not in a:
            raise ConfigError("an activity needs 'name' and 'type' (0 playing, 1 streaming, 2 listening, 3 watching, 4 custom, 5 competing)")
        extra = set(a) - set(ACTIVITY_FIELDS)
        if extra:
            raise ConfigError(f"bots may only set {', '.join(ACTIVITY_FIELDS)} on an activity; got {', '.join(sorted(extra))}")
        acts.append(dict(a))
    if not isinstance(afk, bool):
        raise TypeError("afk must be a bool")
    if since is not None and not isinstance(since, int):
        raise TypeError("since must be a Unix time in milliseconds (int) or None")
    return {"since": since, "activities": acts, "status": status, "afk": afk}


def presence_update(**kwargs: Any) -> Dict[str, Any]:
    return {"op": Op.PRESENCE_UPDATE.value, "d": presence(**kwargs)}


def _snowflake(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be a snowflake (int or str of digits), got {type(value).__name__}")
    text = str(value)
    if not text.isdigit():
        raise ConfigError(f"{what} must be a snowflake of digits, got {text!r}")
    return text


def request_guild_members(
    guild_id: Union[int, str],
    query: str = "",
    limit: int = 0,
    user_ids: Optional[Union[int, str, Sequence[Union[int, str]]]] = None,
    presences: bool = False,
    nonce: Optional[str] = None,
) -> Dict[str, Any]:
    """Op 8 (PROTOCOL.md §9): one guild, ``query`` or ``user_ids``, nonce ≤ 32 bytes."""
    d: Dict[str, Any] = {"guild_id": _snowflake(guild_id, "guild_id")}
    if user_ids is not None:
        ids = [user_ids] if isinstance(user_ids, (int, str)) else list(user_ids)
        if not ids or len(ids) > 100:
            raise ConfigError("user_ids must name between 1 and 100 users")
        d["user_ids"] = [_snowflake(u, "user_ids entry") for u in ids]
    else:
        if not isinstance(query, str):
            raise TypeError("query must be a str")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError("limit must be an int >= 0 (0 with query='' asks for every member)")
        d["query"] = query
        d["limit"] = limit
    if not isinstance(presences, bool):
        raise TypeError("presences must be a bool")
    d["presences"] = presences
    if nonce is not None:
        if not isinstance(nonce, str) or len(nonce.encode("utf-8")) > 32:
            raise ConfigError("nonce must be a str of at most 32 bytes (Discord silently ignores a longer one)")
        d["nonce"] = nonce
    return {"op": Op.REQUEST_GUILD_MEMBERS.value, "d": d}


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


def heartbeat_reserve(interval: float) -> int:
    """Send-window slots to hold back so heartbeats always fit: the beats of one window at this
    interval, plus room for server-requested beats and IDENTIFY/RESUME; never fewer than 10."""
    beats = int(SEND_PERIOD // interval) + 1 if interval > 0 else SEND_LIMIT
    return max(10, min(SEND_LIMIT // 2, beats + 4))


class Deliver(NamedTuple):
    dispatch: Dispatch


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

    wait = tenacity.wait_exponential(multiplier=config.backoff_base, min=config.backoff_base, max=config.backoff_max)
    wait = wait + tenacity.wait_random(0, config.backoff_base)

    def compute(attempt: int) -> float:
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.attempt_number = max(1, attempt)
        return min(float(wait(state)), config.backoff_max)

    return compute


# --------------------------------------------------------------------------------------------
# The lifecycle machine


class _Phase(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"  # Open emitted, handshake not done
    HELLO = "hello"  # socket open, waiting for HELLO
    IDENTIFYING = "identifying"
    RESUMING = "resuming"
    READY = "ready"
    TEARDOWN = "teardown"  # a socket is being retired; the next step waits for it
    WAITING = "waiting"  # no socket; waiting for the reconnect time
    CLOSED = "closed"
    FAILED = "failed"


_PUBLIC_STATE = {
    _Phase.IDLE: "idle",
    _Phase.CONNECTING: "connecting",
    _Phase.HELLO: "connecting",
    _Phase.IDENTIFYING: "identifying",
    _Phase.RESUMING: "resuming",
    _Phase.READY: "ready",
    _Phase.TEARDOWN: "reconnecting",
    _Phase.WAITING: "reconnecting",
    _Phase.CLOSED: "closed",
    _Phase.FAILED: "failed",
}


@dataclass
class _Teardown:
    epoch: int
    stage: str  # "drain" (close frame sent, waiting for the peer) or "abort" (OS socket closed, waiting for the reader)
    deadline: float


@dataclass
class _Socket:
    epoch: int
    url: str
    resume: bool  # this socket was opened to RESUME
    opened: bool = False
    reached_ready: bool = False
    hello_deadline: Optional[float] = None
    ready_deadline: Optional[float] = None
    identify_retry_at: Optional[float] = None
    interval: Optional[float] = None
    next_beat_at: Optional[float] = None
    ack_pending: bool = False
    beat_sent_at: Optional[float] = None
    handshake_sent: bool = False
    announced: bool = False  # the "identifying"/"resuming" event was emitted for this socket


class ShardMachine:
    """The lifecycle of one shard, as pure logic. Only the supervisor thread calls it.

    Every input method takes ``now`` and returns a list of actions. :meth:`next_deadline` says
    when :meth:`tick` must be called next. Inputs stamped with an epoch other than the live
    socket's are stale: they change nothing but a counter (invariant 2) — the one exception is the
    ``closed`` report of the socket being retired, which only completes its teardown.
    """

    def __init__(
        self,
        bootstrap_url: str,
        *,
        config: Optional[LifecycleConfig] = None,
        shard_id: int = 0,
        intents: int = 0,
        rng: Optional[random.Random] = None,
        backoff: Optional[Callable[[int], float]] = None,
        trusted_hosts: Sequence[str] = (),
    ) -> None:
        self.config = config or LifecycleConfig()
        self.bootstrap_url = bootstrap_url
        self.shard_id = shard_id
        self.intents = intents
        self.rng = rng or random.Random()
        self.backoff = backoff or default_backoff(self.config)
        self.trusted_hosts = tuple(trusted_hosts) or (url_host(bootstrap_url), "*.discord.gg")
        self.session = Session()

        self.phase = _Phase.IDLE
        self.epoch = 0
        self._epoch_used = True  # so the first socket is epoch 1
        self.sock: Optional[_Socket] = None  # the live socket (its inputs are heard)
        self.teardown: Optional[_Teardown] = None  # the socket being retired (only its death is heard)
        self.reconnect_at: Optional[float] = None
        self.stop_requested = False
        self._stop_code = 1000
        self._stop_budget: Optional[float] = None
        self._pending_error: Optional[BaseException] = None  # fatal / gave-up error, raised once the socket is gone
        self._next_resume = True  # after the teardown: resume (if a session exists) or identify

        # counters and facts for Status
        self.identifies = 0
        self.resumes = 0
        self.reconnects = 0
        self.orphaned_readers = 0
        self.stale_frames = 0
        self.duplicate_events = 0
        self.failed_attempts = 0  # consecutive attempts that did not reach READY/RESUMED
        self.resume_failures = 0  # consecutive failed RESUMEs (stalls included)
        self.latency: Optional[float] = None
        self.last_ack_at: Optional[float] = None
        self.last_event_at: Optional[float] = None
        self.connected_at: Optional[float] = None
        self.last_disconnect: Optional[str] = None
        self.last_error: Optional[str] = None
        self.identify_wait: Optional[str] = None
        self._failed_resume_urls: set = set()

    # ---------------------------------------------------------------- queries

    @property
    def state(self) -> State:
        if self.stop_requested and self.phase not in (_Phase.CLOSED, _Phase.FAILED):
            return "closing"
        return _PUBLIC_STATE[self.phase]

    @property
    def live_epoch(self) -> Optional[int]:
        return self.sock.epoch if self.sock else None

    @property
    def finished(self) -> bool:
        return self.phase in (_Phase.CLOSED, _Phase.FAILED)

    def status(self) -> Status:
        s = self.sock
        return Status(
            state=self.state,
            connected=self.phase is _Phase.READY,
            session_id=self.session.session_id,
            seq=self.session.seq,
            resume_url=self.session.resume_url,
            epoch=self.epoch,
            latency=self.latency,
            last_heartbeat_ack_at=self.last_ack_at,
            last_event_at=self.last_event_at,
            identifies=self.identifies,
            resumes=self.resumes,
            reconnects=self.reconnects,
            orphaned_readers=self.orphaned_readers,
            last_disconnect=self.last_disconnect,
            last_error=self.last_error,
            shard_id=self.shard_id,
            connected_at=self.connected_at if self.phase is _Phase.READY else None,
            heartbeat_interval=s.interval if s else None,
            stale_frames=self.stale_frames,
            duplicate_events=self.duplicate_events,
            failed_attempts=self.failed_attempts,
            identify_wait=self.identify_wait,
        )

    def next_deadline(self) -> Optional[float]:
        times = []
        s = self.sock
        if s:
            times += [s.hello_deadline, s.ready_deadline, s.identify_retry_at, s.next_beat_at]
        if self.teardown:
            times.append(self.teardown.deadline)
        if self.phase is _Phase.WAITING:
            times.append(self.reconnect_at)
        present = [t for t in times if t is not None]
        return min(present) if present else None

    # ---------------------------------------------------------------- helpers

    def _event(self, kind: LifecycleKind, now: float, code: Optional[int] = None, reason: str = "", epoch: Optional[int] = None) -> Emit:
        return Emit(LifecycleEvent(kind, now, code, reason, self.epoch if epoch is None else epoch, self.shard_id))

    def _is_live(self, epoch: int) -> bool:
        if self.sock is not None and self.sock.epoch == epoch:
            return True
        self.stale_frames += 1
        return False

    # ---------------------------------------------------------------- user inputs

    def start(self, now: float) -> List[Action]:
        if self.phase is not _Phase.IDLE:
            return []
        if self.stop_requested:
            return self._finish(now)
        return self._open(now)

    def request_stop(self, now: float, code: int = 1000, budget: Optional[float] = None) -> List[Action]:
        """Stop: close the live socket with *code* (1000 drops the session, 4000 keeps it resumable)
        and open nothing new. *budget* (seconds) shortens the drain so the teardown fits in it."""
        if self.finished:
            return []
        first = not self.stop_requested
        self.stop_requested = True
        self._stop_code = code
        if budget is not None:
            self._stop_budget = budget
        actions: List[Action] = []
        if self.phase in (_Phase.IDLE, _Phase.WAITING):
            return self._finish(now)
        if self.teardown is not None:
            # already retiring a socket: it finishes, then we stop; respect the budget
            limit = now + self._drain_time()
            if self.teardown.stage == "drain" and self.teardown.deadline > limit:
                self.teardown.deadline = limit
            return actions
        if self.sock is not None and first:
            actions += self._retire(now, code, "closed by user", graceful=True)
        return actions

    def request_reconnect(self, now: float, fresh: bool = False, reason: str = "forced") -> List[Action]:
        """A forced reconnect (DESIGN.md "The forced fresh reconnect"). Coalesces: stop > fresh > resume."""
        if self.stop_requested or self.finished or self.phase is _Phase.IDLE:
            return []
        actions: List[Action] = []
        if fresh:
            # Step 2 first: clear resume state before anything else can use it.
            actions += self._drop_session(now, f"fresh reconnect requested ({reason})")
            self._next_resume = False
        self.reconnect_at = now
        if self.sock is not None:
            self.last_disconnect = reason
            code = 4000 if not fresh else 1000
            actions += self._retire(now, code, reason, graceful=True)
        # In teardown or waiting: the pending reconnect now happens as soon as the old socket is gone.
        elif self.phase is _Phase.WAITING:
            actions += self.tick(now)
        return actions

    def identify_deferred(self, epoch: int, wait: float, reason: str, now: float) -> List[Action]:
        """The IDENTIFY gate said not yet: try again in *wait* seconds (heartbeats go on meanwhile)."""
        if not self._is_live(epoch):
            return []
        s = self.sock
        assert s is not None
        s.ready_deadline = None
        s.handshake_sent = False
        s.identify_retry_at = now + max(0.0, wait)
        if self.identify_wait != reason:
            log.info("shard %d: IDENTIFY waits %.1fs: %s", self.shard_id, wait, reason)
        self.identify_wait = reason
        self.identifies -= 1  # it was counted when the action was emitted
        return []

    # ---------------------------------------------------------------- socket inputs

    def opened(self, epoch: int, now: float) -> List[Action]:
        if not self._is_live(epoch):
            return []
        s = self.sock
        assert s is not None
        s.opened = True
        if self.phase is _Phase.CONNECTING:
            self.phase = _Phase.HELLO
        # Before HELLO a dead peer is caught by the HELLO deadline; the socket read timeout is a backstop.
        return [SetReadTimeout(epoch, self.config.hello_timeout + 10.0)]

    def closed(self, epoch: int, now: float, code: Optional[int] = None, reason: str = "", error: Optional[str] = None) -> List[Action]:
        """The reader of socket *epoch* has ended (peer close, error, or our abort) and its OS socket is closed."""
        if self.teardown is not None and self.teardown.epoch == epoch:
            log.debug("shard %d: socket e%d gone (code %s)", self.shard_id, epoch, code)
            self.teardown = None
            return self._after_teardown(now)
        if self.sock is None or self.sock.epoch != epoch:
            self.stale_frames += 1
            log.debug("shard %d: stale close from e%d ignored", self.shard_id, epoch)
            return []
        s = self.sock
        actions: List[Action] = []
        was_ready = s.reached_ready
        self.sock = None
        self._bump_epoch()
        desc = describe_close(code, reason) if error is None else error
        if not s.opened and s.resume and s.url != self.bootstrap_url and self.session.resume_url:
            # DESIGN: a resume URL that fails to connect is forgotten in favour of the bootstrap URL.
            log.info("shard %d: resume URL failed to connect (%s); using the bootstrap URL", self.shard_id, desc)
            self._failed_resume_urls.add(self.session.resume_url)
            self.session.resume_url = None
        self.last_disconnect = f"close {code}" if code is not None else (error or "connection lost")
        if error:
            self.last_error = error
        actions.append(self._event("disconnected", now, code, desc, epoch))
        if self.stop_requested:
            return actions + self._finish(now)
        recovery = close_recovery(code)
        if recovery is Recovery.FATAL:
            err = fatal_error(code or 0, reason, self.intents)
            self.last_error = str(err)
            return actions + self._fail(now, err, code)
        if recovery is Recovery.IDENTIFY:
            actions += self._drop_session(now, desc)
            actions += self._plan_reconnect(now, s, was_ready, desc, delay="invalid_session")
        else:
            actions += self._plan_reconnect(now, s, was_ready, desc)
        return actions + self._after_teardown(now)

    def frames(self, epoch: int, payloads: Sequence[Mapping[str, Any]], now: float) -> List[Action]:
        """Several frames of one socket, in order: exactly :meth:`frame` for each (the same rules,
        not a restatement: a dispatch goes through :meth:`_on_dispatch` either way), with one
        actions list for the batch instead of one per frame."""
        actions: List[Action] = []
        on_dispatch = self._on_dispatch
        for payload in payloads:
            s = self.sock
            if s is None or s.epoch != epoch:
                self.stale_frames += 1
            elif payload.get("op") == Op.DISPATCH:
                on_dispatch(s, payload, now, actions)
            else:
                actions += self.frame(epoch, payload, now)
        return actions

    def frame(self, epoch: int, payload: Mapping[str, Any], now: float) -> List[Action]:
        if not self._is_live(epoch):
            return []
        s = self.sock
        assert s is not None
        op = payload.get("op")
        if op == Op.DISPATCH:
            actions: List[Action] = []
            self._on_dispatch(s, payload, now, actions)
            return actions
        if op == Op.HEARTBEAT_ACK:
            if s.beat_sent_at is not None:
                self.latency = now - s.beat_sent_at
            s.ack_pending = False
            self.last_ack_at = now
            return []
        if op == Op.HEARTBEAT:
            # The server asks for a beat now; the regular timer is left alone.
            s.beat_sent_at = now
            s.ack_pending = True
            return [SendHeartbeat(s.epoch, self.session.seq)]
        if op == Op.HELLO:
            return self._on_hello(s, payload, now)
        if op == Op.RECONNECT:
            log.debug("shard %d: op 7 reconnect on e%d", self.shard_id, s.epoch)
            self.last_disconnect = "op 7 reconnect"
            self._next_resume = True
            return self._retire(now, 4000, "op 7 reconnect request", graceful=True, failure=not s.reached_ready)
        if op == Op.INVALID_SESSION:
            return self._on_invalid_session(s, bool(payload.get("d")), now)
        log.debug("shard %d: unknown opcode %r ignored", self.shard_id, op)
        return []

    def protocol_error(self, epoch: int, error: str, now: float) -> List[Action]:
        """A frame that could not be understood but left the stream usable: logged and skipped."""
        if not self._is_live(epoch):
            return []
        log.warning("shard %d: e%d: ignored a malformed frame: %s", self.shard_id, epoch, error)
        self.last_error = error
        return []

    # ---------------------------------------------------------------- clock

    def tick(self, now: float) -> List[Action]:
        actions: List[Action] = []
        td = self.teardown
        if td is not None and now >= td.deadline:
            if td.stage == "drain":
                quiet = self.stop_requested
                (log.debug if quiet else log.info)(
                    "shard %d: e%d did not close within the drain timeout; forcing it closed", self.shard_id, td.epoch
                )
                td.stage = "abort"
                td.deadline = now + self._force_time()
                actions.append(AbortSocket(td.epoch))
            else:
                self.orphaned_readers += 1
                log.warning(
                    "shard %d: reader of e%d still alive %.1fs after its socket was closed; abandoning it",
                    self.shard_id,
                    td.epoch,
                    self.config.force_close_timeout,
                )
                actions.append(OrphanReader(td.epoch))
                self.teardown = None
                actions += self._after_teardown(now)
        s = self.sock
        if s is not None:
            if s.hello_deadline is not None and now >= s.hello_deadline:
                what = "hello-timeout" if s.opened else "connect-timeout"
                self.last_disconnect = what
                why = f"{what}: no {'HELLO' if s.opened else 'connection'} within {self.config.hello_timeout:g}s"
                self.last_error = why
                return actions + self._retire(now, 4000, why, graceful=False, failure=True)
            if s.ready_deadline is not None and now >= s.ready_deadline:
                what = "ready-timeout"
                awaited = "RESUMED" if s.resume else "READY"
                self.last_disconnect = what
                why = f"{what}: no {awaited} within {self.config.ready_timeout:g}s of {'RESUME' if s.resume else 'IDENTIFY'}"
                self.last_error = why
                return actions + self._retire(now, 4000, why, graceful=False, failure=True)
            if s.identify_retry_at is not None and now >= s.identify_retry_at:
                s.identify_retry_at = None
                actions += self._send_handshake(s, now)
            if s.next_beat_at is not None and now >= s.next_beat_at:
                if s.ack_pending:
                    self.last_disconnect = "zombie"
                    why = "zombie: no heartbeat ACK since the last beat"
                    return actions + self._retire(now, 4000, why, graceful=False, failure=not s.reached_ready)
                s.ack_pending = True
                s.beat_sent_at = now
                s.next_beat_at = now + (s.interval or 0.0)
                actions.append(SendHeartbeat(s.epoch, self.session.seq))
        if self.phase is _Phase.WAITING and self.reconnect_at is not None and now >= self.reconnect_at:
            actions += self._open(now)
        return actions

    # ---------------------------------------------------------------- internals

    def _bump_epoch(self) -> None:
        if self._epoch_used:
            self.epoch += 1
            self._epoch_used = False

    def _drain_time(self) -> float:
        t = self.config.drain_timeout
        if self.stop_requested and self._stop_budget is not None:
            t = min(t, self._stop_budget * 0.5)
        return t

    def _force_time(self) -> float:
        t = self.config.force_close_timeout
        if self.stop_requested and self._stop_budget is not None:
            t = min(t, self._stop_budget * 0.3)
        return t

    def _open(self, now: float) -> List[Action]:
        assert self.sock is None and self.teardown is None
        if self.stop_requested:
            return self._finish(now)
        if self._epoch_used:
            self.epoch += 1
        self._epoch_used = True
        resume = self._next_resume and self.session.resumable
        url = self.bootstrap_url
        if resume and self.session.resume_url:
            candidate = self.session.resume_url
            if candidate in self._failed_resume_urls:
                pass
            elif host_is_trusted(candidate, self.trusted_hosts):
                url = with_query_of(candidate, self.bootstrap_url)
            else:
                log.warning(
                    "shard %d: resume URL host %r is not trusted; resuming on the bootstrap URL instead",
                    self.shard_id,
                    url_host(candidate),
                )
                self.session.resume_url = None
        if self.connected_at is not None or self.identifies or self.resumes:
            self.reconnects += 1
        self.sock = _Socket(epoch=self.epoch, url=url, resume=resume, hello_deadline=now + self.config.hello_timeout)
        self.phase = _Phase.CONNECTING
        self.reconnect_at = None
        return [self._event("connecting", now, reason="resume" if resume else "identify"), Open(self.epoch, url, resume)]

    def _on_hello(self, s: _Socket, payload: Mapping[str, Any], now: float) -> List[Action]:
        d = payload.get("d")
        interval_ms = d.get("heartbeat_interval") if isinstance(d, Mapping) else None
        if isinstance(interval_ms, bool) or not isinstance(interval_ms, (int, float)) or interval_ms <= 0:
            log.warning("shard %d: HELLO without a valid heartbeat_interval (%r); reconnecting", self.shard_id, interval_ms)
            self.last_error = "HELLO without heartbeat_interval"
            self.last_disconnect = "bad-hello"
            return self._retire(now, 4000, "bad HELLO", graceful=False, failure=True)
        if s.interval is not None:
            log.debug("shard %d: second HELLO ignored", self.shard_id)
            return []
        s.interval = interval_ms / 1000.0
        s.hello_deadline = None
        s.next_beat_at = now + s.interval * self.rng.random()
        self.phase = _Phase.RESUMING if s.resume else _Phase.IDENTIFYING
        actions: List[Action] = [
            self._event("hello", now, reason=f"heartbeat_interval={interval_ms}ms"),
            SetReadTimeout(s.epoch, s.interval + 10.0),
            ReserveSends(s.epoch, heartbeat_reserve(s.interval)),
        ]
        return actions + self._send_handshake(s, now)

    def _send_handshake(self, s: _Socket, now: float) -> List[Action]:
        if s.handshake_sent:
            return []
        s.handshake_sent = True
        s.ready_deadline = now + self.config.ready_timeout
        if s.resume and self.session.session_id is not None:
            self.resumes += 1
            return [self._event("resuming", now, reason=f"seq={self.session.seq}"),
                    SendResume(s.epoch, self.session.session_id, self.session.seq)]
        self.identifies += 1
        self.identify_wait = None
        if s.announced:  # a retry after the IDENTIFY gate deferred: the transition was already told
            return [SendIdentify(s.epoch)]
        s.announced = True
        return [self._event("identifying", now), SendIdentify(s.epoch)]

    def _on_dispatch(self, s: _Socket, payload: Mapping[str, Any], now: float, out: List[Action]) -> None:
        """THE rule of a dispatch (op 0), for the per-frame and the batch path alike: appends to
        *out* what it calls for (the event to deliver, and READY/RESUMED's lifecycle steps).

        The common case (the next event of a live session) runs first and allocates nothing but
        the :class:`Dispatch` and its :class:`Deliver`: this is the hot path of the whole client.
        """
        seq = payload.get("s")
        name = payload.get("t")
        if seq.__class__ is not int and (isinstance(seq, bool) or not isinstance(seq, int)):
            seq = None  # a bool, a string, a float: not a seq
        session = self.session
        if name != "READY" and session.session_id is None:
            # Discord's first dispatch of a session is READY; anything before it belongs to no
            # session we know, so it cannot be ordered or resumed: not delivered.
            log.warning("shard %d: %s dispatch before READY ignored", self.shard_id, name)
            return
        if seq is not None:
            last = session.seq
            if last is not None and seq <= last and name != "READY":
                # Invariant 3: each seq at most once, ascending, within a session.
                self.duplicate_events += 1
                log.debug("shard %d: duplicate or out-of-order seq %d (last %d) dropped", self.shard_id, seq, last)
                return
            session.seq = seq
        self.last_event_at = now
        if not isinstance(name, str) or not name:
            log.warning("shard %d: dispatch without an event name (seq %s) ignored", self.shard_id, seq)
            return
        data = payload.get("d")
        if name == "READY":
            if not isinstance(data, Mapping) or not isinstance(data.get("session_id"), str):
                log.warning("shard %d: READY without a session_id; reconnecting", self.shard_id)
                self.last_error = "READY without session_id"
                out += self._retire(now, 4000, "bad READY", graceful=False, failure=True)
                return
            session.session_id = data["session_id"]
            session.seq = seq
            url = data.get("resume_gateway_url")
            session.resume_url = url if isinstance(url, str) and url else None
            self._failed_resume_urls.clear()
            out += self._established(s, "ready", now)
        elif name == "RESUMED":
            out += self._established(s, "resumed", now)
        out.append(Deliver(Dispatch(name, data, seq, self.shard_id, session.session_id)))

    def _established(self, s: _Socket, kind: str, now: float) -> List[Action]:
        if self.phase is _Phase.READY:
            return []
        s.reached_ready = True
        s.ready_deadline = None
        s.identify_retry_at = None
        self.phase = _Phase.READY
        self.failed_attempts = 0
        self.resume_failures = 0
        self.connected_at = now
        self.identify_wait = None
        self._next_resume = True
        log.info("shard %d: %s (session %s, epoch %d)", self.shard_id, kind.upper(), self.session.session_id, s.epoch)
        return [self._event(kind, now, reason=f"session {self.session.session_id}")]

    def _on_invalid_session(self, s: _Socket, resumable: bool, now: float) -> List[Action]:
        actions: List[Action] = []
        if resumable and self.session.resumable:
            log.debug("shard %d: op 9 (resumable) on e%d", self.shard_id, s.epoch)
            self.last_disconnect = "op 9 resumable"
            self._next_resume = True
            code = 4000
        else:
            log.debug("shard %d: op 9 (not resumable) on e%d", self.shard_id, s.epoch)
            self.last_disconnect = "op 9"
            actions += self._drop_session(now, "invalid session (op 9)")
            code = 1000
        why = "op 9 invalid session" + (" (resumable)" if code == 4000 else "")
        return actions + self._retire(now, code, why, graceful=True, failure=not s.reached_ready, delay="invalid_session")

    def _drop_session(self, now: float, why: str) -> List[Action]:
        self._next_resume = False
        if not self.session.resumable:
            self.session.clear()
            return []
        log.info("shard %d: session %s lost: %s", self.shard_id, self.session.session_id, why)
        self.session.clear()
        return [self._event("session_lost", now, reason=why)]

    def _retire(
        self,
        now: float,
        code: int,
        why: str,
        *,
        graceful: bool,
        failure: bool = False,
        delay: str = "auto",
    ) -> List[Action]:
        """Detach the live socket (its inputs become stale) and start its teardown.

        DESIGN.md's five steps: 1 epoch bump (here), 2 session cleared by the caller when fresh,
        3 close frame + drain, 4 hard close + wait for the reader, orphan it, 5 open next in
        :meth:`_after_teardown` unless a stop was asked for.
        """
        s = self.sock
        assert s is not None
        self.sock = None
        self._bump_epoch()
        actions: List[Action] = [self._event("disconnected", now, code, why, s.epoch)]
        if not self.stop_requested:
            actions += self._plan_reconnect(now, s, s.reached_ready and not failure, why, delay=delay, count_failure=failure)
        if s.opened:
            actions.append(CloseSocket(s.epoch, code, why))
        if graceful and s.opened:
            self.teardown = _Teardown(s.epoch, "drain", now + self._drain_time())
        else:
            self.teardown = _Teardown(s.epoch, "abort", now + self._force_time())
            actions.append(AbortSocket(s.epoch))
        self.phase = _Phase.TEARDOWN
        return actions

    def _plan_reconnect(
        self,
        now: float,
        s: _Socket,
        was_ready: bool,
        why: str,
        *,
        delay: str = "auto",
        count_failure: Optional[bool] = None,
    ) -> List[Action]:
        """Decide when the next socket opens and whether it resumes; reports ``reconnecting``."""
        failure = (not was_ready) if count_failure is None else count_failure
        actions: List[Action] = []
        if failure:
            self.failed_attempts += 1
            # Only a gateway that answered and then failed to resume counts (RESUME sent, then no
            # RESUMED or a close): refused connects, DNS and TLS failures during an outage do not,
            # so a minute without network still ends in RESUMED with every missed event replayed.
            if s.resume and s.handshake_sent and self.session.resumable:
                self.resume_failures += 1
                if self.resume_failures >= self.config.max_resume_failures:
                    actions += self._drop_session(
                        now, f"{self.resume_failures} resume attempts in a row failed; escalating to a fresh IDENTIFY"
                    )
                    self.resume_failures = 0
            limit = self.config.max_attempts
            if limit is not None and self.failed_attempts >= limit:
                self._pending_error = GatewayError(
                    f"gave up after {self.failed_attempts} failed connection "
                    f"attempt{'' if self.failed_attempts == 1 else 's'}; last: {why}"
                )
                self.last_error = str(self._pending_error)
        if delay == "invalid_session":
            lo, hi = self.config.invalid_session_delay
            wait = self.rng.uniform(lo, hi)
        elif failure:
            wait = self.backoff(self.failed_attempts)
        else:
            wait = 0.0
        self.reconnect_at = now + wait
        if self._pending_error is None:
            plan = "resume" if (self._next_resume and self.session.resumable) else "identify"
            log.info("shard %d: reconnecting (%s) in %.1fs after %s", self.shard_id, plan, wait, why)
            actions.append(self._event("reconnecting", now, reason=f"{plan} in {wait:.2f}s after {why}"))
        return actions

    def _after_teardown(self, now: float) -> List[Action]:
        if self.stop_requested:
            return self._finish(now)
        if self._pending_error is not None:
            return self._fail(now, self._pending_error, getattr(self._pending_error, "code", None))
        self.phase = _Phase.WAITING
        if self.reconnect_at is None:
            self.reconnect_at = now
        if now >= self.reconnect_at:
            return self._open(now)
        return []

    def _finish(self, now: float) -> List[Action]:
        actions: List[Action] = []
        if self.sock is not None or self.teardown is not None:
            return actions  # still a socket to retire; the teardown ends here later
        self.phase = _Phase.CLOSED
        actions.append(self._event("closed", now, self._stop_code, "closed by user"))
        actions.append(Stopped(None))
        return actions

    def _fail(self, now: float, error: BaseException, code: Optional[int]) -> List[Action]:
        self._pending_error = error
        if self.sock is not None or self.teardown is not None:
            return []
        self.phase = _Phase.FAILED
        log.error("shard %d: %s", self.shard_id, error)
        return [
            self._event("fatal", now, code, str(error)),
            self._event("closed", now, code, "stopped after a fatal error"),
            Stopped(error),
        ]
