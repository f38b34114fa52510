"""The lifecycle of one shard as a pure state machine (the h11 model): :class:`ShardMachine`.

Nothing here opens a socket, starts a thread or reads a clock. Time is always the ``now`` argument
(``time.monotonic()`` seconds in the running client) and randomness comes from an injected
:class:`random.Random`, so every rule is tested in microseconds with a fake clock. The supervisor
thread feeds it inputs (a socket opened, a frame or a batch of frames, a socket closed, a tick of
the clock, a user request) and executes the actions it returns. DESIGN.md's recovery table, the
forced fresh reconnect and the invariants are implemented here, each rule once: the read path
(:meth:`ShardMachine.raw_frames`, events judged by their heads), the batch path
(:meth:`ShardMachine.frames`) and the per-frame path share :meth:`ShardMachine._on_dispatch`.

Part of the sans-I/O protocol layer; :mod:`sync_gateway.protocol` re-exports every name. Builds on
:mod:`sync_gateway.wire`, :mod:`sync_gateway.values` and :mod:`sync_gateway.codec` (pure
functions: a dispatch's head, a payload's JSON) only.
"""
import enum
import random
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set

from ._log import get_logger
from .codec import DecodeError, Decoder, cut_dispatch, dispatch_text
from .errors import GatewayError
from .values import (
    AbortSocket,
    Action,
    CloseSocket,
    Deliver,
    DeliverRun,
    Dispatch,
    Emit,
    LifecycleConfig,
    LifecycleEvent,
    LifecycleKind,
    Open,
    OrphanReader,
    ReserveSends,
    SendHeartbeat,
    SendIdentify,
    SendResume,
    Session,
    SetReadTimeout,
    State,
    Status,
    Stopped,
    default_backoff,
)
from .wire import (
    SEND_LIMIT,
    SEND_PERIOD,
    Op,
    Recovery,
    close_recovery,
    describe_close,
    fatal_error,
    host_is_trusted,
    url_host,
    with_query_of,
)

log = get_logger(__name__)


def heartbeat_reserve(interval: float) -> int:
    """Send-window slots to hold back so heartbeats always fit: the beats of one window at this
    interval, plus room for server-requested beats and IDENTIFY/RESUME; never fewer than 10."""
    beats = int(SEND_PERIOD // interval) + 1 if interval > 0 else SEND_LIMIT
    return max(10, min(SEND_LIMIT // 2, beats + 4))


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


#: Builds a Dispatch and its Deliver from their fields without NamedTuple's generated ``__new__``
#: (a Python call each, per event, on the hot path); every field is given, so nothing differs from
#: ``Deliver(Dispatch(*fields))``.
_new_tuple = tuple.__new__

_PUBLIC_STATE: Dict["_Phase", State] = {
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
        self._failed_resume_urls: Set[str] = set()

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

    def raw_frames(self, epoch: int, raws: Sequence[Any], now: float) -> List[Action]:
        """Messages of one socket as the reader hands them over, in order: JSON texts not yet
        parsed, dispatches the reader has already cut at their heads (:data:`~sync_gateway.codec.Cut`),
        or the DecodeError of one that cannot be a payload. An event whose head reads plainly
        (:func:`~sync_gateway.codec.cut_dispatch`: name, seq, "d" last) is judged by its head, by
        :meth:`_on_dispatch` like any other, and delivered unparsed in a :class:`DeliverRun` (the
        dispatcher parses it); READY and anything else is parsed here and goes through
        :meth:`frame`. The actions are exactly those of :meth:`frame` for each parsed payload,
        with consecutive events gathered in one run."""
        actions: List[Action] = []
        on_dispatch = self._on_dispatch
        cut_of = cut_dispatch
        run: Optional[DeliverRun] = None
        for raw in raws:
            s = self.sock
            if s is None or s.epoch != epoch:
                self.stale_frames += 1
                continue
            cut = raw if raw.__class__ is tuple else cut_of(raw)
            if cut is not None:
                if cut[1] != "READY":
                    if on_dispatch(s, cut[1], cut[2], None, now, actions):
                        if run is None or actions[-1] is not run:
                            run = DeliverRun([], self.session.session_id, self.shard_id, now)
                            actions.append(run)
                        run.events.append(cut)
                    continue
                raw = dispatch_text(*cut)  # READY's data is read here: parsed whole, below
            if isinstance(raw, DecodeError):
                actions += self.protocol_error(epoch, str(raw), now)
                continue
            try:
                payload = Decoder.parse(raw)
            except DecodeError as exc:
                actions += self.protocol_error(epoch, str(exc), now)
                continue
            actions += self.frame(epoch, payload, now)
        return actions

    def frames(self, epoch: int, payloads: Sequence[Mapping[str, Any]], now: float) -> List[Action]:
        """Several parsed frames of one socket, in order: exactly :meth:`frame` for each (the same
        rules, not a restatement: a dispatch goes through :meth:`_on_dispatch` either way), with
        one actions list for the batch instead of one per frame."""
        actions: List[Action] = []
        deliver = self._deliver_payload
        dispatch = Op.DISPATCH
        for payload in payloads:
            s = self.sock
            if s is None or s.epoch != epoch:
                self.stale_frames += 1
            elif payload.get("op") == dispatch:
                deliver(s, payload, now, actions)
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
            self._deliver_payload(s, payload, now, actions)
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

    def bad_payload(self, error: str) -> List[Action]:
        """An event accepted by its head whose payload the dispatcher could not parse (it logged
        it and skipped it; its seq counts as seen): kept as the last error, nothing else."""
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

    def _deliver_payload(self, s: _Socket, payload: Mapping[str, Any], now: float, out: List[Action]) -> None:
        """A parsed dispatch: judged by :meth:`_on_dispatch`, delivered as a :class:`Deliver`."""
        seq = payload.get("s")
        if seq.__class__ is not int and (isinstance(seq, bool) or not isinstance(seq, int)):
            seq = None  # a bool, a string, a float: not a seq
        name = payload.get("t")
        data = payload.get("d")
        if self._on_dispatch(s, name, seq, data, now, out):
            new = _new_tuple
            out.append(new(Deliver, (new(Dispatch, (name, data, seq, self.shard_id, self.session.session_id, now)),)))

    def _on_dispatch(self, s: _Socket, name: Any, seq: Optional[int], data: Any, now: float, out: List[Action]) -> bool:
        """THE rule of a dispatch (op 0), for every path alike: appends to *out* the lifecycle
        steps it calls for (READY's and RESUMED's) and says whether the event is delivered (the
        caller appends the delivery after them). *data* is read only for READY (the other paths
        pass None: they never bring a READY here).

        The common case (the next event of a live session) runs first and allocates nothing:
        this is the hot path of the whole client.
        """
        session = self.session
        if name != "READY" and session.session_id is None:
            # Discord's first dispatch of a session is READY; anything before it belongs to no
            # session we know, so it cannot be ordered or resumed: not delivered.
            log.warning("shard %d: %s dispatch before READY ignored", self.shard_id, name)
            return False
        if seq is not None:
            last = session.seq
            if last is not None and seq <= last and name != "READY":
                # Invariant 3: each seq at most once, ascending, within a session.
                self.duplicate_events += 1
                log.debug("shard %d: duplicate or out-of-order seq %d (last %d) dropped", self.shard_id, seq, last)
                return False
            session.seq = seq
        self.last_event_at = now
        if not isinstance(name, str) or not name:
            log.warning("shard %d: dispatch without an event name (seq %s) ignored", self.shard_id, seq)
            return False
        if name == "READY":
            if not isinstance(data, Mapping) or not isinstance(data.get("session_id"), str):
                log.warning("shard %d: READY without a session_id; reconnecting", self.shard_id)
                self.last_error = "READY without session_id"
                out += self._retire(now, 4000, "bad READY", graceful=False, failure=True)
                return False
            session.session_id = data["session_id"]
            session.seq = seq
            url = data.get("resume_gateway_url")
            session.resume_url = url if isinstance(url, str) and url else None
            self._failed_resume_urls.clear()
            out += self._established(s, "ready", now)
        elif name == "RESUMED":
            out += self._established(s, "resumed", now)
        return True

    def _established(self, s: _Socket, kind: LifecycleKind, now: float) -> List[Action]:
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
