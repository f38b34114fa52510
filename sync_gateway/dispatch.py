"""Handler registry and the dispatcher thread: user code runs here and nowhere else.

A slow handler delays later events, never a heartbeat: heartbeats are the supervisor's. Handlers
that raise are logged with the event and handler named, and the thread goes on.
"""
import collections
import inspect
import re
import threading
import time
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    NamedTuple,
    Optional,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from ._log import get_logger
from .codec import DecodeError, dispatch_data
from .protocol import DeliverRun, Dispatch, LifecycleEvent

log = get_logger(__name__)

Handler = Callable[[Dispatch], Any]
LifecycleHandler = Callable[[LifecycleEvent], Any]

_EVENT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
#: A handler running longer than this (seconds) gets a WARNING naming it.
SLOW_HANDLER_SECONDS = 5.0
#: When more events than this wait for the handlers, a WARNING says so (again each time it doubles).
BACKLOG_WARNING = 10_000
#: A reader that has just handed over a batch while more events than this wait for the handlers
#: waits (:meth:`Dispatcher.pace`) until the handlers take them, at most PACE_SECONDS per batch.
#: Measured (tools/bench.py, 2 cores, with batches of 256): 256 beat 1,000 by ~5 % with one shard
#: and with 4; below that changed nothing. (The "collapse" of 4 shards once seen at 3,000 was the
#: benchmark's shared handler lock, not the backlog.) Kept at 256 with batches of 512.
PACE_BACKLOG = 256
PACE_SECONDS = 0.005

_STOP = object()


class _Call(NamedTuple):
    """Internal work that must run after the handlers of everything queued before it."""

    fn: Callable[[], None]


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


class Registry:
    """Event name -> handlers. Copy-on-write tuples, so the dispatcher iterates without a lock and
    ``on``/``off`` are safe from any thread, including from inside a handler."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handlers: Dict[str, Tuple[Handler, ...]] = {}
        self._lifecycle: Tuple[LifecycleHandler, ...] = ()
        # name -> specific + wildcard handlers, filled on first use and replaced (never mutated
        # in place by on/off) whenever the handlers change: one dict lookup per event.
        self._resolved: Dict[str, Tuple[Handler, ...]] = {}

    @staticmethod
    def _check(fn: Any, what: str) -> None:
        if not callable(fn):
            raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
        target = getattr(fn, "__func__", fn)
        if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
            raise TypeError(
                f"{_name_of(fn)} is an async function; sync_gateway runs handlers on a plain thread, "
                "so it would never run. Use a normal def (or asyncio.run_coroutine_threadsafe inside one)."
            )

    def add(self, name: str, fn: Handler) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"event name must be a non-empty str, got {name!r}")
        self._check(fn, "handler")
        if name != "*" and not _EVENT_NAME.match(name):
            log.warning(
                "handler %s registered for %r: gateway event names are upper case like 'MESSAGE_CREATE'; "
                "it will only run for an event of exactly that name",
                _name_of(fn),
                name,
            )
        with self._lock:
            self._handlers[name] = self._handlers.get(name, ()) + (fn,)
            self._resolved = {}

    def remove(self, name: str, fn: Handler) -> bool:
        with self._lock:
            current = self._handlers.get(name, ())
            if fn not in current:
                return False
            items = list(current)
            items.remove(fn)
            if items:
                self._handlers[name] = tuple(items)
            else:
                del self._handlers[name]
            self._resolved = {}
            return True

    def add_lifecycle(self, fn: LifecycleHandler) -> None:
        self._check(fn, "lifecycle handler")
        with self._lock:
            self._lifecycle = self._lifecycle + (fn,)

    def remove_lifecycle(self, fn: LifecycleHandler) -> bool:
        with self._lock:
            if fn not in self._lifecycle:
                return False
            items = list(self._lifecycle)
            items.remove(fn)
            self._lifecycle = tuple(items)
            return True

    def handlers_for(self, name: str) -> Tuple[Handler, ...]:
        resolved = self._resolved
        found = resolved.get(name)
        if found is None:
            h = self._handlers
            specific = h.get(name, ())
            wildcard = h.get("*", ())
            found = specific + wildcard if wildcard else specific
            if len(resolved) < 4096:  # event names are few; a flood of odd ones cannot grow it
                resolved[name] = found
        return found

    def has(self, name: str) -> bool:
        return name in self._handlers

    @property
    def lifecycle(self) -> Tuple[LifecycleHandler, ...]:
        return self._lifecycle


F = TypeVar("F", bound=Callable[..., Any])


class HandlerMethods:
    """``on``/``off``/``on_lifecycle``/``off_lifecycle`` over ``self._registry``, shared by
    GatewayClient and ShardedClient so both feel the same."""

    _registry: Registry

    @overload
    def on(self, name: str) -> Callable[[F], F]: ...

    @overload
    def on(self, name: str, fn: F) -> F: ...

    def on(self, name: str, fn: Optional[F] = None) -> Any:
        """Register *fn* for dispatch *name* (``"*"``: every dispatch). Usable as a decorator.

        Handlers get one :class:`Dispatch` and run on a dispatcher thread, in arrival order.
        """
        if fn is None:
            if not isinstance(name, str):
                raise TypeError("use @client.on('EVENT_NAME') (with the event name) or client.on(name, fn)")

            def decorator(f: F) -> F:
                self._registry.add(name, f)
                return f

            return decorator
        self._registry.add(name, fn)
        return fn

    def off(self, name: str, fn: Handler) -> bool:
        """Remove a handler; True if it was registered."""
        return self._registry.remove(name, fn)

    def on_lifecycle(self, fn: F) -> F:
        """Register *fn* for :class:`LifecycleEvent` s (connecting, ready, resumed, session_lost,
        ...; ``event.shard_id`` says which shard)."""
        self._registry.add_lifecycle(fn)
        return fn

    def off_lifecycle(self, fn: LifecycleHandler) -> bool:
        return self._registry.remove_lifecycle(fn)


class Dispatcher:
    """Runs handlers, in arrival order, on one thread of its own."""

    def __init__(
        self,
        registry: Registry,
        *,
        name: str = "sync_gateway-dispatch-s0",
        on_drained: Optional[Callable[[], None]] = None,
    ) -> None:
        self.registry = registry
        #: Called on this thread once :meth:`stop` is reached: every queued handler has returned.
        self.on_drained = on_drained
        #: Called on this thread with the error of an event whose payload could not be parsed
        #: (it is logged and skipped; the supervisor keeps it as ``status().last_error``).
        self.on_bad_payload: Optional[Callable[[str], None]] = None
        self.bad_payloads = 0
        self._queued = 0  # events in the queue (a DeliverRun holds several)
        self._halted = False
        self._current: Optional[Tuple[Callable[..., Any], str, float]] = None
        self._queue: Deque[Any] = collections.deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._room = threading.Condition(lock)  # readers pacing (see pace)
        self._pacing = 0  # readers waiting on _room
        self.paced = 0  # times a reader waited for the handlers
        self._waiting = False
        self._backlog_warned_at = 0
        self.delivered = 0
        self.handler_errors = 0
        #: (session_id, seq) of the last dispatch whose handlers have all returned
        self.handled: Tuple[Optional[str], Optional[int]] = (None, None)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def current(self) -> Optional[Tuple[str, str, float]]:
        """(handler name, what it handles, monotonic start) of the call in progress, or None."""
        running = self._current
        return None if running is None else (_name_of(running[0]), running[1], running[2])

    def put(self, item: Union[Dispatch, LifecycleEvent]) -> None:
        self.put_many([item])

    def put_many(self, items: List[Union[Dispatch, LifecycleEvent, DeliverRun]]) -> None:
        if not items:
            return
        events = 0
        for item in items:
            events += len(item.events) if item.__class__ is DeliverRun else 1
        with self._cond:
            self._queue.extend(items)
            if self._waiting:
                self._cond.notify()
            self._queued += events
            n = self._queued
        if n > BACKLOG_WARNING and n > 2 * self._backlog_warned_at:
            self._backlog_warned_at = n
            log.warning(
                "%d events are waiting for handlers; a handler is too slow for the event rate "
                "(hand long work to your own ThreadPoolExecutor)",
                n,
            )

    def stop(self) -> None:
        """Let the queued items run, then end the thread."""
        with self._cond:
            self._queue.append(_STOP)
            self._cond.notify()

    def put_call(self, fn: Callable[[], None]) -> None:
        """Run *fn* on this thread once the handlers of everything queued so far have returned."""
        with self._cond:
            self._queue.append(_Call(fn))
            if self._waiting:
                self._cond.notify()

    def halt(self) -> None:
        """From now on no handler call starts (one already running finishes on its own); the
        thread ends at its next check. For ``close()`` whose timeout ran out."""
        self._halted = True
        with self._cond:
            self._queue.append(_STOP)
            self._cond.notify()

    def pace(self) -> None:
        """For a reader thread, after it handed over a batch: while the handlers are more than
        PACE_BACKLOG events behind, wait until this thread takes the queue, at most PACE_SECONDS.

        Without it, in a long burst the readers (cheap per event) outrun the handlers under one
        GIL, the queue grows by tens of thousands of events, and every event then costs more to
        handle, out of cache (4 shards in one process fell to half their events/s). Bounded, so
        a stuck handler slows a reader to one batch per PACE_SECONDS and never stops it: heartbeat
        ACKs and close frames are still read within milliseconds."""
        if self._queued <= PACE_BACKLOG:
            return
        with self._cond:
            if self._queued > PACE_BACKLOG and not self._halted:
                self.paced += 1
                self._pacing += 1
                try:
                    self._room.wait(PACE_SECONDS)
                finally:
                    self._pacing -= 1

    def backlog(self) -> int:
        """Events waiting for their handlers (not counting the ones the thread has taken)."""
        return self._queued

    def _expand(self, batch: Iterable[Any]) -> Iterator[Any]:
        """The items of *batch*, each :class:`DeliverRun` as its events: parsed here, one at a
        time, just before their handlers run (the run's order, its shared fields, the name and
        seq the machine judged). An event whose payload does not parse is logged and skipped;
        its seq counts as handled."""
        new = tuple.__new__
        for item in batch:
            if item.__class__ is not DeliverRun:
                yield item
                continue
            session_id, shard_id, received_at = item.session_id, item.shard_id, item.received_at
            for d, name, seq in item.events:
                try:
                    data = dispatch_data(d, name, seq)
                except Exception as exc:  # a DecodeError; or whatever a replaced codec.loads raises
                    self._bad_payload(shard_id, name, seq, str(exc) if isinstance(exc, DecodeError) else repr(exc))
                    self.handled = (session_id, seq)
                    continue
                yield new(Dispatch, (name, data, seq, shard_id, session_id, received_at))

    def _bad_payload(self, shard_id: int, name: str, seq: int, error: str) -> None:
        self.bad_payloads += 1
        why = f"{name} (seq {seq}) has a malformed payload: {error}"
        log.warning("shard %d: skipped an event: %s", shard_id, why)
        if self.on_bad_payload is not None:
            self.on_bad_payload(why)

    def _run(self) -> None:
        queue = self._queue
        cond = self._cond
        while True:
            with cond:
                while not queue:
                    self._waiting = True
                    cond.wait()
                    self._waiting = False
                batch = list(queue)
                queue.clear()
                taken = self._queued
                self._queued = 0
                if self._pacing:
                    self._room.notify_all()
            if taken < BACKLOG_WARNING:
                self._backlog_warned_at = 0
            handlers_for = self.registry.handlers_for
            monotonic = time.monotonic
            delivered = 0
            for item in self._expand(batch):
                if self._halted or item is _STOP:
                    self.delivered += delivered
                    self._drained()
                    return
                if item.__class__ is Dispatch:
                    # The hot path, one event: _call inlined (a call, a clock read, the slow check).
                    delivered += 1
                    name = item.name
                    for fn in handlers_for(name):
                        if self._halted:
                            self.delivered += delivered
                            self._drained()
                            return
                        started = monotonic()
                        self._current = (fn, name, started)
                        try:
                            fn(item)
                        except BaseException as exc:  # SystemExit and KeyboardInterrupt too
                            self._failed(fn, exc, name)
                        self._current = None
                        if monotonic() - started > SLOW_HANDLER_SECONDS:
                            self._slow(fn, monotonic() - started, name)
                    if item.seq is not None:
                        self.handled = (item.session_id, item.seq)
                elif type(item) is _Call:
                    try:
                        item.fn()
                    except Exception:  # ours, not a handler's: reported, the thread goes on
                        log.exception("internal work on the dispatcher thread failed")
                elif isinstance(item, Dispatch):  # a subclass: the general path
                    delivered += 1
                    for fn in handlers_for(item.name):
                        if self._halted:
                            self.delivered += delivered
                            self._drained()
                            return
                        self._call(fn, item, item.name)
                    if item.seq is not None:
                        self.handled = (item.session_id, item.seq)
                else:
                    for lfn in self.registry.lifecycle:
                        self._call(lfn, item, f"lifecycle {item.kind}")
            self.delivered += delivered

    def _drained(self) -> None:
        if self.on_drained is not None:
            try:
                self.on_drained()
            except Exception:  # a store failure is reported, the thread still ends
                log.exception("saving the session at the end of dispatch failed")

    def _call(self, fn: Callable[[Any], Any], arg: Any, what: str) -> None:
        started = time.monotonic()
        self._current = (fn, what, started)
        try:
            fn(arg)
        except BaseException as exc:  # SystemExit and KeyboardInterrupt too: this thread must not die
            self._failed(fn, exc, what)
        finally:
            self._current = None
        elapsed = time.monotonic() - started
        if elapsed > SLOW_HANDLER_SECONDS:
            self._slow(fn, elapsed, what)

    def _failed(self, fn: Callable[..., Any], exc: BaseException, what: str) -> None:
        self.handler_errors += 1
        log.error(
            "handler %s raised %s on %s; continuing",
            _name_of(fn),
            type(exc).__name__,
            what,
            exc_info=(type(exc), exc, exc.__traceback__),
        )

    def _slow(self, fn: Callable[..., Any], elapsed: float, what: str) -> None:
        log.warning(
            "handler %s took %.1fs on %s; later events waited (heartbeats did not). "
            "Hand long work to a ThreadPoolExecutor.",
            _name_of(fn),
            elapsed,
            what,
        )


def handler_name(fn: Optional[Callable[..., Any]]) -> str:
    return _name_of(fn) if fn is not None else "None"
