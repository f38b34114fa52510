"""The supervisor thread: the only writer of lifecycle state (DESIGN.md "The shape").

One thread, one ``threading.Condition``, one loop::

    wait(timeout=next_deadline) -> handle posted items -> fire due deadlines -> execute actions

Readers, user calls and the clock only *post*; :class:`~sync_gateway.protocol.ShardMachine`
decides; this module performs the I/O the machine asks for. Heartbeats, the HELLO and READY
deadlines, ACK checks and backoff sleeps are all deadlines of that loop, so ``close()`` interrupts
any of them at once.
"""
import collections
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ._log import get_logger
from .codec import encode
from .connection import SUPERVISOR_SEND_LOCK_TIMEOUT, Connection
from .dispatch import Dispatcher
from .protocol import (
    AbortSocket,
    Action,
    CloseSocket,
    Deliver,
    DeliverRun,
    Emit,
    Open,
    OrphanReader,
    ReserveSends,
    SendHeartbeat,
    SendIdentify,
    SendResume,
    SetReadTimeout,
    ShardMachine,
    Status,
    Stopped,
)
from .protocol import MAX_PAYLOAD_BYTES
from .protocol import heartbeat as heartbeat_payload
from .protocol import resume as resume_payload
from .ratelimit import IdentifyGate
from .stores import SessionRecord, SessionStore

#: Seconds between two saves of the session to a store while events flow.
PERSIST_INTERVAL = 1.0
#: Seconds before a failed session-store write is tried again.
STORE_RETRY = 2.0
#: Abandoned readers kept in view (``threads()``) at most; older ones are forgotten.
MAX_ORPHANS = 16
#: After this many sockets in a row broke their compressed stream the same way, an ERROR says why.
REPEATED_STREAM_ERRORS = 3

log = get_logger(__name__)

ConnectionFactory = Callable[..., Connection]


class Supervisor:
    """Runs one shard's :class:`ShardMachine` on a thread of its own."""

    def __init__(
        self,
        machine: ShardMachine,
        dispatcher: Dispatcher,
        *,
        identify: Callable[[], Dict[str, Any]],
        token: str,
        compress: Optional[str],
        gate: IdentifyGate,
        max_concurrency: int = 1,
        connection_factory: Optional[ConnectionFactory] = None,
        on_change: Optional[Callable[[], None]] = None,
        store: Optional[SessionStore] = None,
        store_key: str = "",
        shard: Optional[Tuple[int, int]] = None,
        connection_options: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.machine = machine
        self.dispatcher = dispatcher
        dispatcher.on_bad_payload = lambda error: self.post(("bad_payload", error))
        self.shard_id = machine.shard_id
        self._identify = identify
        self._token = token
        self._compress = compress
        self._gate = gate
        self._max_concurrency = max_concurrency
        self._factory: ConnectionFactory = connection_factory or Connection
        self._connection_options = dict(connection_options or {})
        self._on_change = on_change
        self._store = store
        self._store_key = store_key
        self._shard = list(shard) if shard else None
        self._saved: Optional[Tuple[Any, ...]] = None  # what the store holds, as far as we know
        self._persist_due: Optional[float] = None
        self._saved_at = time.monotonic()
        self._store_warned = False
        self._write_queued = False  # a store write waits on the dispatcher thread
        self._store_retry_at = 0.0
        self._final_lock = threading.Lock()
        self._final_done = False
        self.saver: Optional[threading.Thread] = None  # close()'s bounded final save, while it runs
        self._loop_done = False
        self._stream_error: Optional[str] = None  # the last corrupt-stream error, while it repeats
        self._stream_errors = 0
        self.keep_session = False

        self._cond = threading.Condition(threading.Lock())
        self._inbox: Deque[Tuple[Any, ...]] = collections.deque()
        self._state_lock = threading.Lock()  # held while the machine changes; status() reads under it
        self.state_changed = threading.Condition(threading.Lock())
        self.connections: Dict[int, Connection] = {}
        self.orphans: List[Connection] = []
        self.ready_connection: Optional[Connection] = None
        self.error: Optional[BaseException] = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sync_gateway-supervisor-s{self.shard_id}", daemon=True)

    # ------------------------------------------------------------------ any thread

    def start(self) -> None:
        self.post(("start",))
        self.thread.start()

    def preload(self, record: SessionRecord) -> None:
        """Before start: RESUME this stored session on the first connection."""
        self.machine.session.session_id = record.session_id
        self.machine.session.seq = record.seq
        self.machine.session.resume_url = record.resume_url
        self._saved = (record.session_id, record.seq, record.resume_url)

    def post(self, item: Tuple[Any, ...]) -> None:
        with self._cond:
            self._inbox.append(item)
            self._cond.notify()

    def status(self) -> Status:
        with self._state_lock:
            return self.machine.status()

    def readers(self) -> List[Connection]:
        return list(self.connections.values())

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        machine = self.machine
        cond = self._cond
        inbox = self._inbox
        try:
            while True:
                with cond:
                    while not inbox:
                        deadline = machine.next_deadline()
                        if self._persist_due is not None:
                            deadline = self._persist_due if deadline is None else min(deadline, self._persist_due)
                        if deadline is None:
                            cond.wait()
                            continue
                        timeout = deadline - time.monotonic()
                        if timeout <= 0:
                            break
                        cond.wait(timeout)
                    items = list(inbox)
                    inbox.clear()
                phase_before = machine.phase
                now = time.monotonic()
                with self._state_lock:
                    actions: List[Action] = []
                    for item in items:
                        actions += self._feed(item, now)
                    actions += machine.tick(now)
                if actions and self._execute(actions):
                    break
                if self._store is not None:
                    self._persist()
                if machine.phase is not phase_before:
                    self._notify()
        except Exception as exc:  # a bug of ours: never die silently, never leave users hanging
            log.exception("shard %d: supervisor failed", self.shard_id)
            self.error = exc
            for conn in list(self.connections.values()):
                conn.abort()
        finally:
            self._shutdown_readers()
            # The dispatcher runs what was already queued (the final lifecycle events included)
            # and ends, whether the stop came from close() or from a fatal close code.
            # The final save of the session waits for the handlers (see final_persist).
            self._loop_done = True
            self.dispatcher.stop()
            self.stopped.set()
            self._notify()

    def _feed(self, item: Tuple[Any, ...], now: float) -> List[Action]:
        m = self.machine
        kind = item[0]
        if kind == "raws":
            return m.raw_frames(item[1], item[2], now)
        if kind == "opened":
            return m.opened(item[1], now)
        if kind == "closed":
            conn = self.connections.pop(item[1], None)
            if conn is not None:
                conn.thread.join(0.5)  # it posts "closed" as its last act; this returns at once
                self._note_stream_error(conn, item[4])
            elif self.orphans:
                # An orphaned reader finally ended: forget it (and its decoder state).
                self.orphans = [c for c in self.orphans if c.epoch != item[1]]
            return m.closed(item[1], now, code=item[2], reason=item[3], error=item[4])
        if kind == "bad_payload":
            return m.bad_payload(item[1])
        if kind == "reconnect":
            return m.request_reconnect(now, fresh=item[1], reason=item[2])
        if kind == "stop":
            self.keep_session = item[1] != 1000
            return m.request_stop(now, code=item[1], budget=item[2])
        if kind == "start":
            return m.start(now)
        if kind == "persist":
            return []
        if kind == "identify_deferred":
            return m.identify_deferred(item[1], item[2], item[3], now)
        raise AssertionError(f"unknown supervisor item {item!r}")

    def _execute(self, actions: List[Action]) -> bool:
        """Perform the machine's actions in order; True when the loop must end."""
        deliveries: List[Any] = []
        done = False
        i = 0
        while i < len(actions):
            a = actions[i]
            i += 1
            if a.__class__ is DeliverRun:
                deliveries.append(a)  # the dispatcher parses its events
                continue
            if a.__class__ is Deliver:
                deliveries.append(a.dispatch)
                continue
            if isinstance(a, Emit):
                deliveries.append(a.event)
                continue
            if deliveries:
                self.dispatcher.put_many(deliveries)
                deliveries = []
            if isinstance(a, SendHeartbeat):
                self._send(a.epoch, heartbeat_payload(a.seq), "heartbeat")
            elif isinstance(a, SendIdentify):
                more = self._send_identify(a.epoch)
                actions[i:i] = more
            elif isinstance(a, SendResume):
                self._send(a.epoch, resume_payload(self._token, a.session_id, a.seq), "RESUME")
            elif isinstance(a, Open):
                self._open(a)
            elif isinstance(a, CloseSocket):
                conn = self.connections.get(a.epoch)
                if self.ready_connection is conn:
                    self.ready_connection = None
                if conn is not None:
                    log.debug("shard %d: e%d closing with %d (%s)", self.shard_id, a.epoch, a.code, a.reason)
                    conn.send_close(a.code, a.reason)
            elif isinstance(a, AbortSocket):
                conn = self.connections.get(a.epoch)
                if conn is not None:
                    if self.ready_connection is conn:
                        self.ready_connection = None
                    conn.abort()
            elif isinstance(a, OrphanReader):
                conn = self.connections.pop(a.epoch, None)
                if conn is not None:
                    self._add_orphan(conn)
            elif isinstance(a, SetReadTimeout):
                conn = self.connections.get(a.epoch)
                if conn is not None:
                    conn.set_read_timeout(a.seconds)
            elif isinstance(a, ReserveSends):
                conn = self.connections.get(a.epoch)
                if conn is not None:
                    conn.window.set_reserved(a.slots)
            elif isinstance(a, Stopped):
                self.error = a.error
                done = True
        if deliveries:
            self.dispatcher.put_many(deliveries)
        # the live socket may take user sends once the session is established
        live = self.machine.live_epoch
        self.ready_connection = (
            self.connections.get(live) if live is not None and self.machine.phase.value == "ready" else None
        )
        return done

    def _open(self, a: Open) -> None:
        conn = self._factory(
            a.epoch,
            a.url,
            self.post,
            shard_id=self.shard_id,
            compress=self._compress,
            connect_timeout=self.machine.config.hello_timeout,
            pace=self.dispatcher.pace,
            **self._connection_options,
        )
        self.connections[a.epoch] = conn
        log.debug("shard %d: opening e%d (%s)", self.shard_id, a.epoch, "resume" if a.resume else "identify")
        conn.start()

    def _send(self, epoch: int, payload: Dict[str, Any], what: str) -> None:
        conn = self.connections.get(epoch)
        if conn is None:
            return
        if conn.window.try_acquire(priority=True) > 0:  # recorded so user sends see the true window
            conn.window.record()
            log.warning("shard %d: e%d send window full; sending %s anyway (the server may close with 4008)",
                        self.shard_id, epoch, what)
        text = encode(payload)
        size = len(text.encode("utf-8"))
        if size > MAX_PAYLOAD_BYTES:  # invariant 8: never sent; the client refuses such input earlier
            log.error("shard %d: e%d %s is %d bytes, over Discord's %d; not sent", self.shard_id, epoch, what, size,
                      MAX_PAYLOAD_BYTES)
            return
        try:
            conn.send_text(text, lock_timeout=SUPERVISOR_SEND_LOCK_TIMEOUT)
            log.debug("shard %d: e%d sent %s", self.shard_id, epoch, what)
        except Exception as exc:  # OSError, WebSocketException...: the reader will report the dead socket
            log.debug("shard %d: e%d %s not sent: %s", self.shard_id, epoch, what, exc)

    def _send_identify(self, epoch: int) -> List[Action]:
        permit = self._gate.try_acquire(self.shard_id, self._max_concurrency)
        if permit.wait > 0:
            with self._state_lock:
                return self.machine.identify_deferred(epoch, permit.wait, permit.reason, time.monotonic())
        self._send(epoch, self._identify(), "IDENTIFY")
        return []

    def _target(self, final: bool) -> Optional[Tuple[Any, ...]]:
        """What the store should hold now: (session_id, seq of the last handled event, resume_url),
        or None when there is no session to keep."""
        session = self.machine.session
        handled_session, handled_seq = self.dispatcher.handled
        if (final and not self.keep_session) or session.session_id is None:
            return None
        # Only the seq of events already handled counts; before the first one, the RESUME
        # replays from the session's start of what we had handled (READY's seq) at worst.
        seq = handled_seq if handled_session == session.session_id else None
        saved = self._saved
        if seq is None and saved is not None and saved[0] == session.session_id:
            seq = saved[1]
        return (session.session_id, seq, session.resume_url)

    def _persist(self) -> None:
        """Keep the store in step with the session (supervisor thread, each loop): saved
        (throttled) while it lives, with the seq of the last event whose handlers returned;
        deleted when it is lost. Only the decision is taken here: the write itself runs on the
        dispatcher thread, after the handlers of every event delivered so far (invariant 9: a
        frozen Redis or a file lock held elsewhere never holds up a heartbeat)."""
        store = self._store
        if store is None or self._write_queued:
            return
        session = self.machine.session
        target = self._target(final=False)
        now = time.monotonic()
        if now < self._store_retry_at:
            self._persist_due = self._store_retry_at
            return
        if target == self._saved:
            if target is not None and target[1] != session.seq:
                # Events were received but their handlers have not all returned yet: nothing
                # wakes us when they do, so look again in a moment.
                if self._persist_due is None or now >= self._persist_due:
                    self._persist_due = now + PERSIST_INTERVAL
                return
            # A quiet session is saved again now and then, so a crash after a long silence
            # still finds a record young enough to RESUME.
            if target is None or now - self._saved_at < store.max_age / 3:
                self._persist_due = None
                return
        elif target is not None and self._saved is not None and self._saved[0] == target[0]:
            # same session, newer seq: at most one write per PERSIST_INTERVAL
            if self._persist_due is None:
                self._persist_due = now + PERSIST_INTERVAL
                return
            if now < self._persist_due:
                return
        self._persist_due = None
        self._write_queued = True
        self.dispatcher.put_call(self._write_store)

    def _write_store(self, final: bool = False) -> None:
        """The store I/O (dispatcher thread, or close()'s): may block on another process."""
        store = self._store
        assert store is not None
        with self._state_lock:
            target = self._target(final)
        now = time.monotonic()
        try:
            if target is None:
                store.delete(self._store_key)
            else:
                store.save(self._store_key, SessionRecord(target[0], target[1], target[2], self._shard, time.time()))
            self._saved = target
            self._saved_at = now
            if self._store_warned:
                log.info("shard %d: session store works again", self.shard_id)
                self._store_warned = False
        except Exception as exc:  # a store outage must not take the gateway down
            self._store_retry_at = now + STORE_RETRY
            if not self._store_warned:
                log.warning("shard %d: session store failed (%s: %s); the session may not survive a restart",
                            self.shard_id, type(exc).__name__, exc)
                self._store_warned = True
        finally:
            self._write_queued = False
            if not final:
                self.post(("persist",))  # let the supervisor look again (a newer seq, a retry)

    def final_persist(self) -> None:
        """The last save of the session, once: after the supervisor loop ended and the handlers
        returned (called by the dispatcher when it drains, or by ``close()`` when its timeout cut
        the handlers short), so the saved seq is exactly that of the last handled event."""
        if self._store is None or not self._loop_done:
            return
        with self._final_lock:
            if self._final_done:
                return
            self._final_done = True
            self._write_store(final=True)

    @property
    def has_store(self) -> bool:
        return self._store is not None

    def final_persist_within(self, seconds: float) -> bool:
        """``final_persist`` for ``close()`` when its timeout cut a handler short: run on a thread of
        its own and waited for at most *seconds*, so a session store that waits on another process
        (a file lock held elsewhere, a frozen Redis) cannot make ``close()`` overrun its timeout.
        Returns whether the save ended in time; if not, it finishes in the background."""
        if self._store is None or not self._loop_done or self._final_done:
            return True
        saver = threading.Thread(target=self.final_persist, daemon=True,
                                 name=f"sync_gateway-final-save-s{self.shard_id}")
        self.saver = saver
        saver.start()
        saver.join(max(0.0, seconds))
        return not saver.is_alive()

    def _add_orphan(self, conn: Connection) -> None:
        """Keep a handle on an abandoned reader while it lives (``threads()``), never forever."""
        self.orphans = [c for c in self.orphans if c.thread.is_alive()][-(MAX_ORPHANS - 1):] + [conn]

    def _note_stream_error(self, conn: Connection, error: Optional[str]) -> None:
        """A compressed stream that breaks the same way on every socket is a misconfigured server
        or proxy, not bad luck: say so once as an ERROR with the likely cause, not forever."""
        if not error or not error.startswith("protocol error"):
            if self.machine.failed_attempts == 0:
                self._stream_error, self._stream_errors = None, 0
            return
        same = error == self._stream_error
        self._stream_error = error
        self._stream_errors = self._stream_errors + 1 if same else 1
        n = self._stream_errors
        if n == 1:
            log.warning("shard %d: e%d: %s; dropping the socket", self.shard_id, conn.epoch, error)
        elif n == REPEATED_STREAM_ERRORS:
            hint = getattr(conn, "error_hint", None) or "the server's compression does not match what Discord sends"
            log.error("shard %d: every socket fails the same way (%d times): %s. Likely cause: %s",
                      self.shard_id, n, error, hint)
        else:
            log.debug("shard %d: e%d: %s (again)", self.shard_id, conn.epoch, error)

    def _notify(self) -> None:
        with self.state_changed:
            self.state_changed.notify_all()
        if self._on_change is not None:
            self._on_change()

    def _shutdown_readers(self) -> None:
        """On the way out: every socket still known is closed; readers get a bounded join."""
        conns = list(self.connections.values())
        for conn in conns:
            conn.abort()
        deadline = time.monotonic() + self.machine.config.force_close_timeout
        for conn in conns:
            conn.thread.join(max(0.0, deadline - time.monotonic()))
            if conn.thread.is_alive():
                self._add_orphan(conn)
                with self._state_lock:
                    self.machine.orphaned_readers += 1
        self.connections.clear()
        self.ready_connection = None
