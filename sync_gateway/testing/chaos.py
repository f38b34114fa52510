"""Chaos for gateway clients: a catalogue of faults, an engine that injects them, a ledger that checks.

Why: one fault at a time is what the lifecycle tests cover; a long-lived client meets them in any
order, while events keep flowing. This module drives a :class:`~sync_gateway.testing.FakeGateway`
(and, when given, a :class:`~sync_gateway.testing.FreezingProxy` and the
:class:`~sync_gateway.GatewayClient` under test) through every recoverable fault, and a
:class:`Ledger` compares what the fake *sent* with what the client's handlers *received*. The demo
(``sync-gateway demo``), the soak (``tools/soak.py``) and ``sync-gateway fake-gateway --chaos``
all run on it.

Pieces:

* :data:`FAULTS` — :class:`Fault` objects, each with ``inject()`` and the recovery it requires
  (``"resumed"``, ``"ready"`` = a new session, or ``"none"`` = must not disconnect). Faults that need
  the client, the proxy or a stuck-reader factory are skipped when those are not available, so the
  engine can run server-only against a foreign client.
* :class:`ServerChaos` — a thread (``fake_gateway-chaos``) that injects a fault every ~``every``
  seconds and waits for recovery before the next one; counts injected/recovered per kind.
* :class:`Ledger` — the invariant checker: lost and duplicated events, events dropped with a lost
  session, max live sockets, orphaned readers, thread counts over time, IDENTIFYs used vs required.
* :class:`EventFeeder` — a thread (``fake_gateway-feeder``) dispatching MESSAGE_CREATE at a rate.
* :class:`StuckReaders` — a connection factory whose readers will not die after close until
  released (a reader stuck in a library call), for the ``stuck-reader`` fault.
* :class:`ChaosRig` — gateway + proxy + client + ledger + feeder + engine, built and torn down in
  the right order (used by the demo and the soak).

Nothing in here imports the client at module import time, so the fake stays usable for any
client; the client is imported only by :class:`StuckReaders` and :class:`ChaosRig`.
"""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from .._log import get_logger

__all__ = [
    "Fault",
    "FAULTS",
    "DEMO_FAULTS",
    "fault_names",
    "get_fault",
    "FaultResult",
    "ServerChaos",
    "Ledger",
    "EventFeeder",
    "StuckReaders",
    "ChaosRig",
    "chaos_config",
    "heartbeat_for_fault_rate",
]

logger = get_logger(__name__)

#: What a fault requires of the client: resume the session, IDENTIFY a new one, or not disconnect.
RESUMED = "resumed"
READY = "ready"
NONE = "none"

#: Dispatches that are protocol, not "events" (they are attributed, never counted as sent/lost).
_PROTOCOL_EVENTS = ("READY", "RESUMED")
#: Client threads the ledger watches, and how many a healthy shard has: supervisor, dispatcher, reader.
CLIENT_THREAD_PREFIX = "sync_gateway-"
CLIENT_THREAD_BOUND = 3
#: A close code the fake sends to kill a session also invalidates it server-side, like Discord.
_SESSION_KILLING = frozenset({4003, 4007, 4009})
#: Waits of the engine are sliced so that stop() is noticed within this many seconds.
_SLICE = 0.1


def _wait_event(event: threading.Event, timeout: float, abort: Optional[threading.Event] = None) -> bool:
    """Wait for *event* up to *timeout*; gives up early (False) once *abort* is set."""
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        remaining = deadline - time.monotonic()
        if event.wait(max(0.0, min(_SLICE, remaining))):
            return True
        if abort is not None and abort.is_set():
            return False
        if remaining <= 0:
            return False


# ------------------------------------------------------------------------------------------------
# Faults


class FaultContext:
    """What a fault acts on. ``client``, ``proxy`` and ``stuck`` may be None (server-only use)."""

    def __init__(
        self,
        gateway: Any,
        proxy: Any = None,
        client: Any = None,
        stuck: Optional["StuckReaders"] = None,
        abort: Optional[threading.Event] = None,
        rng: Optional[random.Random] = None,
        step_timeout: float = 30.0,
    ) -> None:
        self.gateway = gateway
        self.proxy = proxy
        self.client = client
        self.stuck = stuck
        self.abort = abort or threading.Event()
        self.rng = rng or random.Random()
        #: bound of each wait inside an injection (e.g. for the stalled socket to close)
        self.step_timeout = step_timeout

    def live_connection(self) -> Any:
        """The newest server connection that carries a session and is neither closing nor closed."""
        for conn in reversed(self.gateway.connections):
            if (
                conn.ready.is_set()
                and not conn.closed.is_set()
                and not conn.close_received.is_set()
                and conn.server_close_code is None
            ):
                return conn
        return None

    def next_connection(self, n: int) -> Any:
        """Wait (bounded, abortable) for the gateway's *n*-th websocket connection; None if it never came."""
        deadline = time.monotonic() + self.step_timeout
        while not self.abort.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                return self.gateway.wait_for_connections(n, timeout=min(_SLICE, remaining))
            except TimeoutError:
                continue
        return None

    def wait_closed(self, conn: Any) -> bool:
        return _wait_event(conn.closed, self.step_timeout, self.abort)


class Fault:
    """One kind of fault. ``inject(ctx, conn)`` acts on the live server connection *conn*.

    ``expect`` is the recovery it requires: ``"resumed"`` (the session survives), ``"ready"`` (a new
    session: ``requires_identify``), ``"none"`` (the socket must stay up). ``inject`` returns once
    the fault is fully delivered; switches it flips are restored before it returns.
    """

    name = "fault"
    description = ""
    expect = RESUMED
    requires_identify = False
    needs_client = False
    needs_proxy = False
    needs_stuck = False

    def applicable(self, ctx: FaultContext, conn: Any = None) -> bool:
        if self.needs_client and ctx.client is None:
            return False
        if self.needs_proxy and ctx.proxy is None:
            return False
        if self.needs_stuck and ctx.stuck is None:
            return False
        return True

    def inject(self, ctx: FaultContext, conn: Any) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Fault {self.name}: {self.description} (expect {self.expect})>"


class _Op7(Fault):
    name, description = "op7", "op 7 reconnect"

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        conn.send_op(7)


class _Op9(Fault):
    def __init__(self, resumable: bool) -> None:
        self.resumable = resumable
        self.name = "op9-resumable" if resumable else "op9-not-resumable"
        self.description = f"op 9 invalid session (d: {str(resumable).lower()})"
        self.expect = RESUMED if resumable else READY
        self.requires_identify = not resumable

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        if not self.resumable and conn.session_id is not None:
            ctx.gateway.invalidate_session(conn.session_id)
        conn.invalid_session(self.resumable)


class _Close(Fault):
    def __init__(self, code: int) -> None:
        self.code = code
        self.name = f"close-{code}"
        self.description = f"server close {code}"
        self.requires_identify = code in _SESSION_KILLING
        self.expect = READY if self.requires_identify else RESUMED

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        if self.requires_identify and conn.session_id is not None:
            ctx.gateway.invalidate_session(conn.session_id)
        conn.close(self.code, "chaos")


class _Zombie(Fault):
    name, description = "zombie", "heartbeats not ACKed until the client reconnects"

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        gw = ctx.gateway
        gw.ack_heartbeats = False
        try:
            # Restored once the zombie socket is gone, before the client's next socket can beat.
            ctx.wait_closed(conn)
        finally:
            gw.ack_heartbeats = True


class _HelloStall(Fault):
    name, description = "hello-stall", "op 7, then no HELLO on the next connection"

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        gw = ctx.gateway
        mark = len(gw.connections)
        gw.send_hello = False
        try:
            conn.send_op(7)
            stalled = ctx.next_connection(mark + 1)
            # The switch is read after the connection is listed; restore only once it has closed.
            if stalled is not None:
                ctx.wait_closed(stalled)
        finally:
            gw.send_hello = True


class _ReadyStall(Fault):
    name, description = "ready-stall", "op 7, then no READY/RESUMED for one attempt"

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        gw = ctx.gateway
        mark = len(gw.connections)
        gw.answer_resume = False
        gw.answer_identify = False
        try:
            conn.send_op(7)
            stalled = ctx.next_connection(mark + 1)
            if stalled is not None:
                ctx.wait_closed(stalled)
        finally:
            gw.answer_resume = True
            gw.answer_identify = True


class _FrozenFresh(Fault):
    name, description = "frozen-fresh", "frozen socket + forced fresh reconnect"
    expect = READY
    requires_identify = True
    needs_client = True
    needs_proxy = True

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        ctx.proxy.freeze()
        ctx.client.reconnect(fresh=True)


class _TcpDrop(Fault):
    name, description = "tcp-drop", "TCP dropped without a close frame"

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        conn.drop()


class _Malformed(Fault):
    name, description = "malformed-frame", "a text frame of invalid JSON (must not disconnect)"
    expect = NONE

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        conn.send_raw("{chaos: this is not JSON")


class _CorruptCompressed(Fault):
    name, description = "corrupt-compressed", "a corrupt compressed frame (drops the socket, then resume)"

    def applicable(self, ctx: FaultContext, conn: Any = None) -> bool:
        conn = conn if conn is not None else ctx.live_connection()
        return super().applicable(ctx, conn) and conn is not None and conn.compress is not None

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        if conn.compress == "zstd-stream":
            garbage = b"\x28\xb5\x2f\xfd" + bytes(ctx.rng.randrange(256) for _ in range(64))
        else:
            # 0xff: a deflate block header with the reserved block type 3, then the sync-flush marker.
            garbage = b"\xff\xff\xff\xffchaos" + b"\x00\x00\xff\xff"
        conn.send_raw(garbage)


class _StuckReader(Fault):
    name, description = "stuck-reader", "reader that will not die after close + forced reconnect (resume)"
    needs_client = True
    needs_stuck = True

    def inject(self, ctx: FaultContext, conn: Any) -> None:
        assert ctx.stuck is not None
        ctx.stuck.arm(ctx.client.status().epoch)
        if ctx.proxy is not None:
            ctx.proxy.freeze()  # the peer never answers our close either: drain, hard close, orphan
        ctx.client.reconnect()


NON_FATAL_CLOSE_CODES = (4000, 4001, 4002, 4003, 4005, 4007, 4008, 4009, 1001, 1011)

#: The whole catalogue, in a stable order.
FAULTS: Tuple[Fault, ...] = (
    _Op7(),
    _Op9(True),
    _Op9(False),
    *(_Close(code) for code in NON_FATAL_CLOSE_CODES),
    _Zombie(),
    _HelloStall(),
    _ReadyStall(),
    _FrozenFresh(),
    _TcpDrop(),
    _Malformed(),
    _CorruptCompressed(),
    _StuckReader(),
)

_BY_NAME: Dict[str, Fault] = {f.name: f for f in FAULTS}

#: The five faults of ``sync-gateway demo``, in the order it injects them.
DEMO_FAULTS: Tuple[str, ...] = ("frozen-fresh", "op7", "op9-not-resumable", "zombie", "hello-stall")


#: The shortest heartbeat interval :func:`heartbeat_for_fault_rate` picks (ms).
MIN_CHAOS_HEARTBEAT_MS = 100


def heartbeat_for_fault_rate(every: float, ceiling_ms: int = 41250) -> int:
    """A HELLO ``heartbeat_interval`` (ms) short enough for a fault every *every* seconds.

    A zombie fault (heartbeats not ACKed) is noticed only when the client's next beat finds the
    last one unanswered, up to two intervals later, and the engine waits for recovery before the
    next fault: with Discord's 41.25 s, one zombie stalls every later fault for ~50 s. A quarter of
    the spacing lets the zombie be noticed and recovered from within about half of it. Never above
    *ceiling_ms* (Discord's value by default), never below :data:`MIN_CHAOS_HEARTBEAT_MS`.
    """
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not every > 0:
        raise ValueError(f"every must be a number of seconds > 0, got {every!r}")
    return int(max(MIN_CHAOS_HEARTBEAT_MS, min(ceiling_ms, every * 1000.0 / 4.0)))


def fault_names() -> List[str]:
    return [f.name for f in FAULTS]


def get_fault(name: Union[str, Fault]) -> Fault:
    """The catalogue entry called *name* (a :class:`Fault` is returned as is)."""
    if isinstance(name, Fault):
        return name
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(_BY_NAME)}") from None


@dataclass
class FaultResult:
    """One injection: what was expected, what happened, how long recovery took."""

    kind: str
    expected: str
    injected_at: float
    #: "resumed" / "ready" / "none" (stayed up), or "timeout", "failed", "stopped", "error"
    outcome: str = "pending"
    took: Optional[float] = None
    detail: str = ""

    @property
    def recovered(self) -> bool:
        """Back to work: the socket stayed up for a "none" fault, a READY/RESUMED otherwise."""
        if self.expected == NONE:
            return self.outcome == NONE
        return self.outcome in (RESUMED, READY)

    @property
    def unexpected(self) -> bool:
        """Recovered, but not as required (e.g. a new IDENTIFY where a RESUME was possible)."""
        return self.recovered and self.outcome != self.expected


# ------------------------------------------------------------------------------------------------
# The engine


class ServerChaos:
    """Inject a random fault every ~``every`` seconds and wait for recovery before the next one.

    ``faults``: names or :class:`Fault` objects (default: every applicable one). With a ``client``,
    recovery is its lifecycle ``ready``/``resumed`` on a later epoch; without one (a foreign client),
    it is the next connection's READY/RESUMED at the gateway. ``order="cycle"`` injects the faults in
    the given order at fixed slots ``every`` apart (the demo); ``max_faults`` ends the run.
    ``on_fault(phase, result)`` (phase: ``"injected"``, ``"recovered"``, ``"failed"``) is called from
    the chaos thread. ``ledger`` gets every injection and result.
    """

    def __init__(
        self,
        gateway: Any,
        proxy: Any = None,
        client: Any = None,
        faults: Optional[Iterable[Union[str, Fault]]] = None,
        every: float = 2.0,
        seed: Optional[int] = None,
        *,
        ledger: Optional["Ledger"] = None,
        stuck: Optional["StuckReaders"] = None,
        recovery_timeout: Optional[float] = None,
        order: str = "random",
        max_faults: Optional[int] = None,
        on_fault: Optional[Callable[[str, FaultResult], None]] = None,
    ) -> None:
        if every <= 0:
            raise ValueError("every must be > 0 seconds")
        if order not in ("random", "cycle"):
            raise ValueError("order must be 'random' or 'cycle'")
        self.gateway = gateway
        self.proxy = proxy
        self.client = client
        self.every = float(every)
        self.seed = seed
        self.rng = random.Random(seed)
        self.ledger = ledger
        if stuck is None and client is not None:
            stuck = getattr(getattr(client, "_connection_factory", None), "stuck_readers", None)
        self.stuck = stuck
        self.order = order
        self.max_faults = max_faults
        self.on_fault = on_fault
        self.faults: List[Fault] = [get_fault(f) for f in (faults if faults is not None else FAULTS)]
        if not self.faults:
            raise ValueError("no faults to inject")
        self.recovery_timeout = recovery_timeout if recovery_timeout is not None else self._default_timeout()
        self._abort = threading.Event()  # end every wait now
        self._stop = threading.Event()  # inject nothing more
        self.done = threading.Event()  # the thread has ended (max_faults reached or stopped)
        self.ctx = FaultContext(gateway, proxy, client, self.stuck, self._abort, self.rng, self.recovery_timeout)
        self.counts: Dict[str, Dict[str, int]] = {}
        self.results: List[FaultResult] = []
        self._life_cond = threading.Condition()
        self._life: List[Any] = []
        self._thread: Optional[threading.Thread] = None
        self._cycle = 0
        if client is not None:  # watched from now on, so inject() works without start() too
            client.on_lifecycle(self._on_lifecycle)

    def _default_timeout(self) -> float:
        hb = float(getattr(self.gateway, "heartbeat_interval", 45000)) / 1000.0
        if self.client is None:
            return max(60.0, 3 * hb + 10.0)
        c = self.client.config
        budget: float = (
            c.hello_timeout + c.ready_timeout + c.drain_timeout + c.force_close_timeout
            + 2 * c.backoff_max + c.invalid_session_delay[1] + 2 * hb
        )
        return 2 * budget + 5.0

    # -------------------------------------------------------------- control

    def start(self) -> "ServerChaos":
        if self._thread is not None:
            raise RuntimeError("ServerChaos already started")
        self._thread = threading.Thread(target=self._run, name="fake_gateway-chaos", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0, finish_current: bool = False) -> None:
        """Stop injecting. ``finish_current``: let the fault in flight recover first (bounded by the
        recovery timeout); otherwise every wait ends now and flipped switches are restored."""
        self._stop.set()
        if not finish_current:
            self._abort.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout if not finish_current else max(timeout, self.recovery_timeout + 5.0))
            if thread.is_alive():
                self._abort.set()
                thread.join(timeout)
                if thread.is_alive():
                    logger.warning("chaos thread did not stop in time")
        if self.client is not None:
            self.client.off_lifecycle(self._on_lifecycle)

    def wait_done(self, timeout: Optional[float] = None) -> bool:
        return self.done.wait(timeout)

    def __enter__(self) -> "ServerChaos":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -------------------------------------------------------------- counting

    def _count(self, kind: str, what: str) -> None:
        entry = self.counts.setdefault(kind, {"injected": 0, "recovered": 0, "unexpected": 0, "failed": 0})
        entry[what] = entry.get(what, 0) + 1

    @property
    def injected(self) -> int:
        return sum(c["injected"] for c in self.counts.values())

    @property
    def recovered(self) -> int:
        return sum(c["recovered"] for c in self.counts.values())

    def summary(self) -> Dict[str, Any]:
        return {
            "faults": {k: dict(v) for k, v in sorted(self.counts.items())},
            "faults_injected": self.injected,
            "faults_recovered": self.recovered,
            "seed": self.seed,
        }

    def _notify(self, phase: str, result: FaultResult) -> None:
        if self.on_fault is None:
            return
        try:
            self.on_fault(phase, result)
        except Exception:
            logger.exception("on_fault callback raised")

    # -------------------------------------------------------------- lifecycle (client mode)

    def _on_lifecycle(self, event: Any) -> None:
        with self._life_cond:
            self._life.append(event)
            self._life_cond.notify_all()

    # -------------------------------------------------------------- the loop

    def _pick(self, conn: Any) -> Optional[Fault]:
        if self.order == "cycle":
            for _ in range(len(self.faults)):
                fault = self.faults[self._cycle % len(self.faults)]
                self._cycle += 1
                if fault.applicable(self.ctx, conn):
                    return fault
            return None
        usable = [f for f in self.faults if f.applicable(self.ctx, conn)]
        return self.rng.choice(usable) if usable else None

    def _run(self) -> None:
        started = time.monotonic()
        slot = 0
        next_at = started + self._gap()
        try:
            while not self._stop.is_set():
                if self.max_faults is not None and len(self.results) >= self.max_faults:
                    break
                if self._stop.wait(max(0.0, next_at - time.monotonic())):
                    break
                conn = self._wait_live()
                if conn is None:
                    continue
                fault = self._pick(conn)
                if fault is None:
                    logger.debug("no applicable fault; waiting")
                    next_at = time.monotonic() + self.every
                    continue
                result = self.inject(fault, conn)
                slot += 1
                now = time.monotonic()
                breather = min(0.25, self.every / 4)
                if self.order == "cycle":
                    next_at = max(started + (slot + 1) * self.every, now + breather)
                else:
                    next_at = max(result.injected_at + self._gap(), now + breather)
        except Exception:
            logger.exception("chaos thread failed")
        finally:
            self.done.set()

    def _gap(self) -> float:
        if self.order == "cycle":
            return self.every
        return self.every * self.rng.uniform(0.7, 1.3)

    def _wait_live(self) -> Any:
        """The live server connection once the client (or some client) is up; None on stop/timeout."""
        deadline = time.monotonic() + self.recovery_timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.client is None or self.client.status().state == "ready":
                conn = self.ctx.live_connection()
                if conn is not None:
                    return conn
            self._stop.wait(_SLICE)
        return None

    # -------------------------------------------------------------- one fault

    def inject(self, fault: Union[str, Fault], conn: Any = None) -> FaultResult:
        """Inject *fault* now and wait for recovery; returns the result. Not concurrently with the
        engine thread (use either the thread or this method)."""
        fault = get_fault(fault)
        if conn is None:
            conn = self._wait_live()
        result = FaultResult(fault.name, fault.expect, time.monotonic())
        if conn is None or not fault.applicable(self.ctx, conn):
            result.outcome = "skipped"
            result.detail = "no live connection" if conn is None else "not applicable"
            return result
        mark_epoch = self.client.status().epoch if self.client is not None else None
        with self._life_cond:
            mark_life = len(self._life)
        mark_conn = len(self.gateway.connections)
        self.results.append(result)
        self._count(fault.name, "injected")
        if self.ledger is not None:
            self.ledger.note_fault(fault.name, fault.requires_identify)
        logger.info("chaos: injecting %s (%s)", fault.name, fault.description)
        self._notify("injected", result)
        try:
            fault.inject(self.ctx, conn)
            deadline = result.injected_at + self.recovery_timeout
            result.outcome = self._await_recovery(fault, conn, mark_epoch, mark_life, mark_conn, deadline)
        except Exception as exc:
            logger.exception("chaos: injecting %s failed", fault.name)
            result.outcome, result.detail = "error", repr(exc)
        result.took = time.monotonic() - result.injected_at
        if result.recovered:
            self._count(fault.name, "recovered")
            if result.unexpected:
                self._count(fault.name, "unexpected")
                logger.warning("chaos: %s recovered by %s, expected %s", fault.name, result.outcome, fault.expect)
            else:
                logger.info("chaos: %s recovered (%s) in %.2fs", fault.name, result.outcome, result.took)
            self._notify("recovered", result)
        else:
            self._count(fault.name, "failed")
            if result.outcome != "stopped":
                logger.warning("chaos: %s did not recover: %s %s", fault.name, result.outcome, result.detail)
            self._notify("failed", result)
        if self.ledger is not None:
            self.ledger.note_result(result)
        return result

    def _await_recovery(
        self, fault: Fault, conn: Any, mark_epoch: Optional[int], mark_life: int, mark_conn: int, deadline: float
    ) -> str:
        if fault.expect == NONE:
            return self._check_still_up(conn, mark_epoch, mark_life, deadline)
        if self.client is not None:
            return self._await_client(mark_epoch or 0, mark_life, deadline)
        return self._await_server(mark_conn, deadline)

    def _await_client(self, mark_epoch: int, mark_life: int, deadline: float) -> str:
        with self._life_cond:
            index = mark_life
            while True:
                while index < len(self._life):
                    ev = self._life[index]
                    index += 1
                    if ev.kind in (READY, RESUMED) and ev.epoch > mark_epoch:
                        return str(ev.kind)
                    if ev.kind in ("fatal", "closed"):
                        return "failed"
                if self._abort.is_set():
                    return "stopped"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                self._life_cond.wait(min(_SLICE, remaining))

    def _await_server(self, mark_conn: int, deadline: float) -> str:
        n = mark_conn + 1
        while True:
            if self._abort.is_set():
                return "stopped"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            try:
                conn = self.gateway.wait_for_connections(n, timeout=min(_SLICE, remaining))
            except TimeoutError:
                continue
            while not conn.ready.is_set() and not conn.closed.is_set():
                if self._abort.is_set():
                    return "stopped"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                conn.ready.wait(min(_SLICE, remaining))
            if conn.ready.is_set():
                return RESUMED if conn.resume is not None and conn.identify is None else READY
            n += 1

    def _check_still_up(self, conn: Any, mark_epoch: Optional[int], mark_life: int, deadline: float) -> str:
        """The socket must survive: a heartbeat request (op 1) sent after the fault is answered on
        the same socket, which proves the client read past the fault and kept the socket."""
        start = len(conn.received)
        if not conn.send_op(1):
            return "failed"
        try:
            conn.wait_for(op=1, start=start, timeout=max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            return "failed" if conn.closed.is_set() else "timeout"
        if self.client is not None:
            with self._life_cond:
                if any(ev.kind == "disconnected" for ev in self._life[mark_life:]):
                    return "failed"
            if self.client.status().epoch != mark_epoch:
                return "failed"
        return NONE


# ------------------------------------------------------------------------------------------------
# The ledger


class Ledger:
    """What the fake sent vs what the handlers got, plus sockets, threads and IDENTIFYs.

    Attach it to the client (:meth:`attach`, or ``client.on("*", ledger.on_event)`` and
    ``client.on_lifecycle(ledger.on_lifecycle)``); the gateway's record (``gateway.sessions[...]
    .events``) is what was sent. Definitions:

    * **lost**: an event the server logged that was never delivered although a later event of the
      same session was (a RESUMED included; the live session's tail counts once :meth:`settle`
      saw it caught up). On one ordered socket nothing is skipped, so these are real losses.
    * **dropped with a lost session**: undelivered events past the last delivered one of a session
      that was invalidated or replaced (op 9, 4003/4007/4009, fresh reconnect) — expected, reported.
    * **duplicates**: a (session, seq) delivered twice. **mismatched**: a delivered event whose data
      is not what the server logged under that (session, seq) (misattributed or stale).
    * **max live sockets**: the proxy's ``max_live`` with a proxy; else sampled at the gateway on
      every accepted connection (an older connection still open then counts, after a short grace
      for its close to reach the server).
    * **threads**: threads named ``sync_gateway-*`` (not alive when the ledger was made), sampled
      over time; bounded if never more than 3 + the client's orphaned readers.
    * **IDENTIFYs required**: 1 + faults that need a new session + IDENTIFYs the server left
      unanswered + escalations after failed RESUMEs in a row.

    :attr:`ok`: lost, duplicates and mismatched are 0, max live sockets is 1, threads bounded.
    """

    def __init__(
        self,
        gateway: Any,
        proxy: Any = None,
        client: Any = None,
        *,
        sample_every: float = 0.05,
        live_grace: float = 0.25,
    ) -> None:
        self.gateway = gateway
        self.proxy = proxy
        self.client: Any = None
        self.sample_every = sample_every
        self.live_grace = live_grace
        self._lock = threading.Condition()
        self._current: Optional[str] = None  # session the next dispatch belongs to
        self._delivered: Dict[str, Dict[int, Any]] = {}  # sid -> seq -> data
        self._max_seq: Dict[str, int] = {}
        self._duplicates: List[Tuple[str, int]] = []
        self._unattributed = 0
        self._events_seen = 0
        self._lost_sessions: set[Optional[str]] = set()
        self._settled: Dict[str, int] = {}
        self._lifecycle: Dict[str, int] = {}
        self._escalations = 0
        self._faults: Dict[str, Dict[str, int]] = {}
        self._faults_requiring_identify = 0
        self._thread_samples: List[Tuple[float, int, int]] = []
        self._thread_violations = 0
        self._max_live_sampled = 0
        self._started_at = time.monotonic()
        self._baseline = {t for t in threading.enumerate() if t.name.startswith(CLIENT_THREAD_PREFIX)}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if client is not None:
            self.attach(client)

    # -------------------------------------------------------------- wiring

    def attach(self, client: Any) -> "Ledger":
        self.client = client
        client.on("*", self.on_event)
        client.on_lifecycle(self.on_lifecycle)
        return self

    def start(self) -> "Ledger":
        """Start sampling threads (and live connections at the gateway when there is no proxy)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._sample_loop, name="fake_gateway-ledger", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    # -------------------------------------------------------------- inputs

    def on_event(self, event: Any) -> None:
        """Handler for ``client.on("*", ...)``: one :class:`~sync_gateway.Dispatch`."""
        name = event.name
        data = event.data
        seq = event.seq
        with self._lock:
            if name == "READY" and isinstance(data, Mapping) and isinstance(data.get("session_id"), str):
                self._current = data["session_id"]
            if name not in _PROTOCOL_EVENTS:
                self._events_seen += 1
            sid = self._current or getattr(event, "session_id", None)
            if sid is None or seq is None:
                self._unattributed += 1
                return
            seen = self._delivered.setdefault(sid, {})
            if seq in seen:
                self._duplicates.append((sid, seq))
            else:
                seen[seq] = data
                if seq > self._max_seq.get(sid, 0):
                    self._max_seq[sid] = seq
            self._lock.notify_all()

    def on_lifecycle(self, event: Any) -> None:
        """Handler for ``client.on_lifecycle(...)``."""
        with self._lock:
            self._lifecycle[event.kind] = self._lifecycle.get(event.kind, 0) + 1
            if event.kind == "session_lost":
                if self._current is not None:
                    self._lost_sessions.add(self._current)
                self._current = None
                reason = (event.reason or "").lower()
                if "in a row" in reason or "escalat" in reason:  # failed RESUMEs gave way to IDENTIFY
                    self._escalations += 1

    def note_fault(self, kind: str, requires_identify: bool) -> None:
        with self._lock:
            entry = self._faults.setdefault(kind, {"injected": 0, "recovered": 0, "unexpected": 0, "failed": 0})
            entry["injected"] += 1
            if requires_identify:
                self._faults_requiring_identify += 1

    def note_result(self, result: FaultResult) -> None:
        with self._lock:
            entry = self._faults.setdefault(result.kind, {"injected": 0, "recovered": 0, "unexpected": 0, "failed": 0})
            if result.recovered:
                entry["recovered"] += 1
                if result.unexpected:
                    entry["unexpected"] += 1
            else:
                entry["failed"] += 1

    # -------------------------------------------------------------- settling

    @property
    def current_session(self) -> Optional[str]:
        return self._current

    def delivered_count(self) -> int:
        """Events (READY/RESUMED not included) delivered so far, duplicates included."""
        return self._events_seen

    def wait_delivered(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until at least *n* events (READY/RESUMED not included) were delivered."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._events_seen < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(remaining)
            return True

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until the handlers caught up with everything the gateway logged in the live session
        (call it once dispatching stopped); from then on its tail counts toward *lost*."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                sid = self._current
                session = self.gateway.sessions.get(sid) if sid is not None else None
                if sid is not None and session is not None and self._max_seq.get(sid, 0) >= session.seq:
                    self._settled[sid] = session.seq
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(_SLICE, remaining))

    # -------------------------------------------------------------- sampling

    def sample_threads(self) -> int:
        """Count client threads now; returns the count (recorded with the orphan bound)."""
        names = [
            t for t in threading.enumerate()
            if t.name.startswith(CLIENT_THREAD_PREFIX) and t.is_alive() and t not in self._baseline
        ]
        orphans = 0
        if self.client is not None:
            try:
                orphans = self.client.status().orphaned_readers  # read after the threads: never smaller
            except Exception:  # pragma: no cover - a client mid-close
                orphans = 0
        n = len(names)
        with self._lock:
            self._thread_samples.append((time.monotonic() - self._started_at, n, orphans))
            if n > CLIENT_THREAD_BOUND + orphans:
                self._thread_violations += 1
                logger.warning(
                    "ledger: %d client threads alive (bound %d + %d orphaned): %s",
                    n, CLIENT_THREAD_BOUND, orphans, ", ".join(sorted(t.name for t in names)),
                )
        return n

    def _sample_loop(self) -> None:
        seen = len(getattr(self.gateway, "connections", []))
        watch_gateway = self.proxy is None and hasattr(self.gateway, "wait_for_connections")
        next_sample = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_sample:
                self.sample_threads()
                next_sample = now + self.sample_every
            if watch_gateway:
                try:
                    conn = self.gateway.wait_for_connections(seen + 1, timeout=self.sample_every)
                except TimeoutError:
                    continue
                seen += 1
                self._sample_live(conn)
            else:
                self._stop.wait(self.sample_every)

    def _sample_live(self, new: Any) -> None:
        """At the accept of *new*: how many connections are open (``live_connections()``). The server
        notices a client's close one poll later than the client made it, so when more than one is
        open, the older ones get a short grace to be seen closed before they count."""
        if self.gateway.live_connections() <= 1:
            live, still = 1, []
        else:
            older = [c for c in self.gateway.connections[: new.index] if not c.closed.is_set()]
            deadline = time.monotonic() + self.live_grace
            still = [c for c in older if not c.closed.wait(max(0.0, deadline - time.monotonic()))]
            live = 1 + len(still)
        with self._lock:
            self._max_live_sampled = max(self._max_live_sampled, live)
        if still:
            logger.warning("ledger: connection #%d accepted while #%s still open", new.index,
                           ", #".join(str(c.index) for c in still))

    # -------------------------------------------------------------- results

    def max_live_sockets(self) -> Tuple[int, str]:
        if self.proxy is not None:
            return self.proxy.max_live, "proxy"
        with self._lock:
            sampled = self._max_live_sampled
        if sampled == 0 and getattr(self.gateway, "connections", None):
            sampled = 1  # connections came before the sampler started; one at a time is all we know
        return sampled, "gateway"

    def summary(self) -> Dict[str, Any]:
        sessions = dict(self.gateway.sessions)
        with self._lock:
            delivered_map = {sid: dict(seen) for sid, seen in self._delivered.items()}
            max_seq = dict(self._max_seq)
            duplicates = list(self._duplicates)
            lost_sessions = set(self._lost_sessions)
            settled = dict(self._settled)
            current = self._current
            lifecycle = dict(self._lifecycle)
            faults = {k: dict(v) for k, v in sorted(self._faults.items())}
            required_by_faults = self._faults_requiring_identify
            escalations = self._escalations
            samples = list(self._thread_samples)
            violations = self._thread_violations
            unattributed = self._unattributed
        sent = delivered = lost = dropped = in_flight = mismatched = 0
        lost_examples: List[Tuple[str, int]] = []
        mismatch_examples: List[Tuple[str, int]] = []
        for sid, session in sessions.items():
            logged = {s: (t, d) for (s, t, d) in list(session.events)}
            seen = delivered_map.get(sid, {})
            horizon = max(max_seq.get(sid, 0), settled.get(sid, 0))
            gone = sid in lost_sessions or getattr(session, "invalidated", False) or sid != current
            for s, (t, d) in logged.items():
                if s in seen:
                    if seen[s] != d:
                        mismatched += 1
                        mismatch_examples.append((sid, s))
                if t in _PROTOCOL_EVENTS:
                    continue
                sent += 1
                if s in seen:
                    delivered += 1
                elif s <= horizon:
                    lost += 1
                    lost_examples.append((sid, s))
                elif gone:
                    dropped += 1
                else:
                    in_flight += 1
            for s in seen:
                if s not in logged:
                    mismatched += 1
                    mismatch_examples.append((sid, s))
        for sid in delivered_map:
            if sid not in sessions:
                mismatched += len(delivered_map[sid])
        connections = list(getattr(self.gateway, "connections", []))
        identifies_used = sum(1 for c in connections if c.identify is not None)
        unanswered = sum(1 for c in connections if c.identify is not None and c.session_id is None)
        resumes = sum(1 for c in connections if c.resume is not None and c.ready.is_set())
        identifies_required = (1 if connections else 0) + required_by_faults + unanswered + escalations
        max_live, live_source = self.max_live_sockets()
        counts = [n for _t, n, _o in samples]
        orphaned = 0
        if self.client is not None:
            orphaned = self.client.status().orphaned_readers
        faults_injected = sum(v["injected"] for v in faults.values())
        faults_recovered = sum(v["recovered"] for v in faults.values())
        summary: Dict[str, Any] = {
            "duration": round(time.monotonic() - self._started_at, 2),
            "faults": faults,
            "faults_injected": faults_injected,
            "faults_recovered": faults_recovered,
            "events_sent": sent,
            "events_delivered": delivered,
            "lost": lost,
            "duplicates": len(duplicates),
            "mismatched": mismatched,
            "dropped_with_lost_session": dropped,
            "in_flight": in_flight,
            "unattributed": unattributed,
            "sessions": len(sessions),
            "max_live_sockets": max_live,
            "max_live_source": live_source,
            "orphaned_readers": orphaned,
            "threads_min": min(counts) if counts else None,
            "threads_max": max(counts) if counts else None,
            "thread_samples": len(samples),
            "thread_violations": violations,
            "threads_bounded": violations == 0,
            "identifies_used": identifies_used,
            "identifies_required": identifies_required,
            "resumes": resumes,
            "lifecycle": dict(sorted(lifecycle.items())),
            "lost_examples": [list(x) for x in lost_examples[:10]],
            "duplicate_examples": [list(x) for x in duplicates[:10]],
            "mismatch_examples": [list(x) for x in mismatch_examples[:10]],
        }
        summary["ok"] = self._ok(summary)
        return summary

    @staticmethod
    def _ok(s: Mapping[str, Any]) -> bool:
        return bool(
            s["lost"] == 0
            and s["duplicates"] == 0
            and s["mismatched"] == 0
            and s["max_live_sockets"] == 1
            and s["threads_bounded"]
        )

    @property
    def ok(self) -> bool:
        return self._ok(self.summary())


# ------------------------------------------------------------------------------------------------
# Feeding events


class EventFeeder:
    """Dispatch ``name`` events to the gateway's live session at ``rate`` per second, in small batches
    every ``tick`` seconds (a pacing timer, not synchronisation). Events are logged by the gateway
    even while no socket carries the session, so a RESUME replays them."""

    def __init__(self, gateway: Any, rate: float = 200.0, name: str = "MESSAGE_CREATE", tick: float = 0.05) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0 events per second")
        self.gateway = gateway
        self.rate = float(rate)
        self.name = name
        self.tick = tick
        self.sent = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "EventFeeder":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fake_gateway-feeder", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _payload(self, n: int) -> Dict[str, Any]:
        return {
            "id": str(300000000000000000 + n),
            "channel_id": "200000000000000001",
            "author": {"id": "100000000000000009", "username": "chaos"},
            "content": f"message {n}",
            "n": n,
        }

    def _run(self) -> None:
        started = time.monotonic()
        due_total = 0
        while not self._stop.wait(self.tick):
            due = int((time.monotonic() - started) * self.rate) - due_total
            if due <= 0:
                continue
            due_total += due
            batch = [self._payload(self.sent + i + 1) for i in range(min(due, max(1, int(self.rate))))]
            try:
                self.gateway.dispatch_many(self.name, batch)
            except RuntimeError:
                continue  # no session yet
            except Exception:
                logger.exception("feeder: dispatch failed")
                continue
            self.sent += len(batch)


# ------------------------------------------------------------------------------------------------
# Stuck readers


class StuckReaders:
    """A connection factory for ``GatewayClient(_connection_factory=...)`` whose readers, once
    :meth:`arm` ed for their epoch, will not die after their socket is closed until released.

    It stands for a reader stuck in a library call. The OS socket is still closed by the
    supervisor's hard close, so no second live socket can exist; the supervisor must orphan the
    reader. Always :meth:`release` at the end (or use it as a context manager): stuck threads are
    named ``sync_gateway-reader-*`` and count as leaks until then.
    """

    def __init__(self, max_hold: float = 300.0) -> None:
        self.max_hold = max_hold
        self._lock = threading.Lock()
        self._armed: Dict[int, threading.Event] = {}
        self._released = False
        self._stuck = 0
        self.total_stuck = 0
        self._cls: Any = None

    def __enter__(self) -> "StuckReaders":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @property
    def factory(self) -> Callable[..., Any]:
        """The callable to pass as ``_connection_factory`` (it carries ``stuck_readers`` = self)."""

        def make(*args: Any, **kwargs: Any) -> Any:
            return self._connection_class()(*args, **kwargs)

        make.stuck_readers = self  # type: ignore[attr-defined]
        return make

    def _connection_class(self) -> Any:
        if self._cls is None:
            from ..connection import Connection

            helper = self

            class StuckConnection(Connection):
                def _close_os_socket(self) -> None:
                    super()._close_os_socket()
                    helper._hold(self.epoch)

            self._cls = StuckConnection
        return self._cls

    def arm(self, epoch: int) -> None:
        """The reader of *epoch* will hang once its socket closes (no-op after :meth:`release`)."""
        with self._lock:
            if not self._released:
                self._armed.setdefault(epoch, threading.Event())

    def _hold(self, epoch: int) -> None:
        with self._lock:
            event = self._armed.get(epoch)
            if event is None or event.is_set():
                return
            self._stuck += 1
            self.total_stuck += 1
        logger.debug("reader of e%d stuck until released", epoch)
        try:
            event.wait(self.max_hold)
        finally:
            with self._lock:
                self._stuck -= 1

    @property
    def stuck(self) -> int:
        """Readers hanging right now."""
        with self._lock:
            return self._stuck

    def release(self) -> None:
        """Let every stuck reader go; later arms do nothing."""
        with self._lock:
            self._released = True
            events = list(self._armed.values())
        for event in events:
            event.set()


# ------------------------------------------------------------------------------------------------
# A whole rig


def chaos_config(**overrides: Any) -> Any:
    """A LifecycleConfig short enough that every recovery fits in a couple of seconds on loopback."""
    from ..protocol import LifecycleConfig

    values: Dict[str, Any] = dict(
        hello_timeout=2.0,
        ready_timeout=2.0,
        drain_timeout=1.0,
        force_close_timeout=0.5,
        backoff_base=0.1,
        backoff_max=0.5,
        invalid_session_delay=(0.1, 0.3),
    )
    values.update(overrides)
    return LifecycleConfig(**values)


#: A token shaped like a real one; the fake accepts only it.
RIG_TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.chaos-rig.fake-token-not-a-secret"


class ChaosRig:
    """FakeGateway + FreezingProxy + GatewayClient + Ledger + EventFeeder + ServerChaos on loopback.

    ``with ChaosRig(...) as rig: rig.start_chaos(); ...; summary = rig.finish()``. :meth:`finish`
    stops the chaos (letting the fault in flight recover), stops feeding, waits for the handlers to
    catch up, closes the client, releases stuck readers and returns the ledger's summary merged
    with the engine's counts. :meth:`close` (also on ``__exit__``) tears down whatever is left.
    """

    def __init__(
        self,
        *,
        config: Any = None,
        heartbeat_interval: int = 1000,
        rate: float = 200.0,
        faults: Optional[Iterable[Union[str, Fault]]] = None,
        every: float = 2.0,
        seed: Optional[int] = None,
        order: str = "random",
        max_faults: Optional[int] = None,
        compress: Optional[str] = "zlib-stream",
        use_proxy: bool = True,
        stuck_readers: bool = True,
        identify_interval: float = 0.0,
        on_fault: Optional[Callable[[str, FaultResult], None]] = None,
        on_lifecycle: Optional[Callable[[Any], None]] = None,
        tls: bool = False,
        trickle: Optional[Any] = None,
    ) -> None:
        from .. import GatewayClient, MemoryIdentifyGate
        from .fake_gateway import FakeGateway
        from .proxy import FreezingProxy

        self.config = config if config is not None else chaos_config()
        # tls: the production path (wss://, the test certificate); trickle: a Trickle that delivers
        # the server's bytes in pieces (TLS records of a few bytes, bursts held back at their end).
        self.gateway = FakeGateway(heartbeat_interval=heartbeat_interval, token=RIG_TOKEN, tls=tls, trickle=trickle)
        try:
            self.proxy = (
                FreezingProxy("127.0.0.1", self.gateway.front_port, scheme="wss" if tls else "ws") if use_proxy else None
            )
        except BaseException:
            self.gateway.stop()  # closes its bound listener
            raise
        if self.proxy is not None:
            self.gateway.resume_gateway_url = self.proxy.url  # resumes go through the proxy too
        self.stuck = StuckReaders() if stuck_readers else None
        self.identify_interval = identify_interval
        self.client = GatewayClient(
            RIG_TOKEN,
            gateway_url=(self.proxy or self.gateway).url,
            compress=compress,
            config=self.config,
            identify_gate=MemoryIdentifyGate(interval=identify_interval, margin=0.0),
            ssl_context=self.gateway.client_ssl_context() if tls else None,
            _connection_factory=self.stuck.factory if self.stuck is not None else None,
        )
        self.ledger = Ledger(self.gateway, self.proxy)
        self.ledger.attach(self.client)
        if on_lifecycle is not None:
            self.client.on_lifecycle(on_lifecycle)
        self.feeder = EventFeeder(self.gateway, rate=rate)
        self.chaos = ServerChaos(
            self.gateway,
            self.proxy,
            self.client,
            faults,
            every,
            seed,
            ledger=self.ledger,
            stuck=self.stuck,
            order=order,
            max_faults=max_faults,
            on_fault=on_fault,
        )
        self.settled: Optional[bool] = None
        self._closed = False

    def __enter__(self) -> "ChaosRig":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self, ready_timeout: float = 10.0) -> "ChaosRig":
        """Start the gateway, proxy, ledger and client; wait for READY; start feeding events."""
        self.gateway.start()
        if self.proxy is not None:
            self.proxy.start()
        self.client.start()
        self.ledger.start()  # thread samples cover the client's life, not the time before it
        if not self.client.wait_until_ready(ready_timeout):
            raise RuntimeError(f"the client did not reach READY within {ready_timeout}s: {self.client.status()}")
        self.feeder.start()
        return self

    def start_chaos(self) -> ServerChaos:
        return self.chaos.start()

    def finish(self, settle_timeout: float = 10.0, close_timeout: float = 5.0) -> Dict[str, Any]:
        """End the run in order and return the summary (see the class docstring)."""
        if self.chaos._thread is not None:
            self.chaos.stop(finish_current=True)
        self.feeder.stop()
        self.settled = self.ledger.settle(settle_timeout)
        if not self.settled:
            logger.warning("the handlers did not catch up with the live session within %.1fs", settle_timeout)
        self.ledger.stop()
        self.ledger.sample_threads()
        self.client.close(timeout=close_timeout)
        if self.stuck is not None:
            self.stuck.release()
        summary = self.ledger.summary()
        summary["settled"] = self.settled
        summary["seed"] = self.chaos.seed
        summary["identify_gate_interval"] = self.identify_interval
        self.close()
        return summary

    def close(self) -> None:
        """Tear everything down (idempotent, bounded)."""
        if self._closed:
            return
        self._closed = True
        self.chaos.stop()
        self.feeder.stop()
        try:
            self.client.close(timeout=5.0)
        finally:
            if self.stuck is not None:
                self.stuck.release()
            self.ledger.stop()
            if self.proxy is not None:
                self.proxy.stop()
            self.gateway.stop()
            self._join_client_threads()

    def _join_client_threads(self, timeout: float = 5.0) -> None:
        """Released stuck readers end a moment later; wait for them so nothing is left behind."""
        deadline = time.monotonic() + timeout
        for t in self.client.threads():
            t.join(max(0.0, deadline - time.monotonic()))
