"""Hand gateway events to other processes through a Redis stream.

The gateway process stays small (one socket per shard, handlers that only enqueue); any number of
worker processes do the slow work::

    # gateway process
    sink = sg.RedisStreamSink("redis://localhost:6379/0")
    client.on("*", sink)                     # XADD every dispatch (approximate MAXLEN)

    # worker process(es)
    def handle(event):                       # event: sg.Dispatch (a StreamDispatch, with .entry_id)
        ...
    sg.StreamWorker("redis://localhost:6379/0", group="workers", consumer="worker-1",
                    handler=handle).run(stop)  # blocks until stop (a threading.Event) is set

Delivery is **at least once**: a worker acknowledges (XACK) an entry only after its handler
returned; an entry whose worker died first stays pending and is delivered again — to the same
consumer name when it restarts, or to any worker of the group once it has been idle for
``claim_idle_ms`` (XAUTOCLAIM). Make handlers idempotent; ``(event.session_id, event.seq)`` is a
unique key of a gateway event.

Needs the ``redis`` extra (``pip install 'sync-gateway[redis]'``) and Redis >= 6.2 (XAUTOCLAIM).
"""
import json
import os
import socket
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from ._log import get_logger
from .errors import ConfigError, GatewayError
from .protocol import Dispatch
from .stores import _redis_errors, _redis_from_url, _safe_url

__all__ = ["RedisStreamSink", "StreamWorker", "StreamDispatch", "consume", "DEFAULT_STREAM"]

log = get_logger(__name__)

DEFAULT_STREAM = "sync_gateway:events"


def _check_stream(stream: Any, what: str = "stream") -> str:
    if not isinstance(stream, str) or not stream or any(c.isspace() for c in stream):
        raise ConfigError(f"{what} must be a non-empty str without spaces, like {DEFAULT_STREAM!r}")
    return stream


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return float(value)


class RedisStreamSink:
    """A handler (``client.on("*", sink)``) that appends each :class:`Dispatch` to a Redis stream.

    Each entry has the fields ``name``, ``seq``, ``shard_id``, ``session_id`` (empty when None) and
    ``data`` (the event's JSON). The stream is capped with an approximate ``MAXLEN`` (cheap
    trimming; it may hold a little more than *maxlen*).

    It runs on the dispatcher thread, so a Redis outage holds later events back rather than losing
    them: each XADD is retried (short backoff, one WARNING per outage) for up to ``retry_for``
    seconds, then the event is given up with an ERROR naming it. The client counts an event as
    handled only once the sink returns, so with a session store a process killed meanwhile
    RESUMEs from before the event.
    """

    def __init__(
        self,
        url: str,
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int = 100_000,
        retry_for: float = 30.0,
        socket_timeout: float = 2.0,
    ) -> None:
        self._redis = _redis_from_url(url, "RedisStreamSink", socket_timeout=socket_timeout)
        self._url = _safe_url(url)
        self.stream = _check_stream(stream)
        self.maxlen = _check_positive_int("maxlen", maxlen)
        self.retry_for = _check_seconds("retry_for", retry_for)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._failing = False
        #: entries written / events given up after ``retry_for``
        self.sent = 0
        self.dropped = 0

    def __repr__(self) -> str:
        return f"<RedisStreamSink {self._url} stream={self.stream!r} maxlen={self.maxlen} sent={self.sent}>"

    @staticmethod
    def fields(event: Dispatch) -> Dict[str, Any]:
        """The stream entry for *event* (also what :class:`StreamWorker` decodes)."""
        return {
            "name": event.name,
            "seq": "" if event.seq is None else str(event.seq),
            "shard_id": str(event.shard_id),
            "session_id": event.session_id or "",
            "data": json.dumps(event.data, separators=(",", ":"), ensure_ascii=False),
        }

    def __call__(self, event: Dispatch) -> str:
        """XADD *event*; returns the entry id. Raises :class:`GatewayError` after ``retry_for``."""
        if not isinstance(event, Dispatch):
            raise TypeError(f"RedisStreamSink takes a sync_gateway.Dispatch, got {type(event).__name__}")
        fields = self.fields(event)
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        errors = _redis_errors()
        while True:
            try:
                entry_id = self._redis.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
            except errors as exc:
                self._outage(exc)
                left = deadline - time.monotonic()
                if left <= 0 or self._closed.is_set():
                    with self._lock:
                        self.dropped += 1
                    log.error(
                        "RedisStreamSink: %s seq %s (shard %d) not written to %s after %.0fs: %s",
                        event.name, event.seq, event.shard_id, self.stream, self.retry_for, exc,
                    )
                    raise GatewayError(f"RedisStreamSink: could not write {event.name} seq {event.seq} to Redis") from None
                self._closed.wait(min(delay, left))  # close() interrupts the backoff
                delay = min(delay * 2, 1.0)
                continue
            with self._lock:
                self.sent += 1
                if self._failing:
                    self._failing = False
                    log.info("RedisStreamSink: writing to %s again", self.stream)
            return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def _outage(self, exc: BaseException) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            log.warning(
                "RedisStreamSink: Redis at %s failed (%s: %s); retrying for up to %.0fs per event "
                "(later events wait)", self._url, type(exc).__name__, exc, self.retry_for,
            )

    def close(self) -> None:
        """Stop retrying (a pending retry gives up at once) and close the connection pool."""
        self._closed.set()
        self._redis.close()


class StreamDispatch(NamedTuple):
    """A :class:`Dispatch` read back from a stream (the same fields), plus ``entry_id``: its Redis
    stream entry id."""

    name: str
    data: Any
    seq: Optional[int]
    shard_id: int = 0
    session_id: Optional[str] = None
    entry_id: str = ""

    def __repr__(self) -> str:
        return f"StreamDispatch(name={self.name!r}, seq={self.seq!r}, shard_id={self.shard_id!r}, entry_id={self.entry_id!r})"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def decode_entry(entry_id: Any, fields: Mapping[Any, Any]) -> StreamDispatch:
    """The :class:`StreamDispatch` of one entry written by :class:`RedisStreamSink`."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    seq = f.get("seq", "")
    return StreamDispatch(
        name=f["name"],
        data=json.loads(f.get("data", "null")),
        seq=int(seq) if seq else None,
        shard_id=int(f.get("shard_id", "0") or 0),
        session_id=f.get("session_id") or None,
        entry_id=_text(entry_id),
    )


class StreamWorker:
    """Reads a stream as one consumer of a consumer group and calls *handler* once per entry,
    acknowledging (XACK) it after the handler returned: at-least-once delivery.

    ``run(stop)`` blocks on the calling thread (no thread of its own) until *stop* is set; it
    notices within ``block_ms``. In order:

    1. entries this consumer name was given but never acknowledged (a restart after a crash);
    2. every ``claim_idle_ms``: entries any consumer of the group left unacknowledged that long
       (XAUTOCLAIM: a worker that died for good, or a handler that raised);
    3. new entries (XREADGROUP ``>``, blocking up to ``block_ms``).

    A handler that raises is logged; its entry stays pending and is retried after
    ``claim_idle_ms`` (so a poison entry is retried forever: catch what you cannot handle). The
    group is created (at ``start_id``: ``"0"`` reads what the stream already holds, ``"$"`` only
    what comes later) if missing. Redis outages are a WARNING and a retry with backoff.
    """

    def __init__(
        self,
        url: str,
        *,
        handler: Callable[[StreamDispatch], Any],
        stream: str = DEFAULT_STREAM,
        group: str = "sync_gateway",
        consumer: Optional[str] = None,
        block_ms: int = 1000,
        count: int = 100,
        claim_idle_ms: int = 60_000,
        start_id: str = "0",
    ) -> None:
        if not callable(handler):
            raise ConfigError("handler must be callable (it gets one sync_gateway.Dispatch)")
        self.handler = handler
        self.stream = _check_stream(stream)
        self.group = _check_stream(group, "group")
        self.consumer = _check_stream(consumer, "consumer") if consumer is not None else f"{socket.gethostname()}-{os.getpid()}"
        self.block_ms = _check_positive_int("block_ms", block_ms)
        self.count = _check_positive_int("count", count)
        self.claim_idle_ms = _check_positive_int("claim_idle_ms", claim_idle_ms)
        if not isinstance(start_id, str) or not start_id:
            raise ConfigError("start_id must be '0', '$' or a stream entry id")
        self.start_id = start_id
        # the socket must outlive a blocking read
        self._redis = _redis_from_url(url, "StreamWorker", socket_timeout=self.block_ms / 1000.0 + 5.0)
        self._url = _safe_url(url)
        #: entries handled and acknowledged / handler errors
        self.acked = 0
        self.handler_errors = 0

    def __repr__(self) -> str:
        return f"<StreamWorker {self._url} stream={self.stream!r} group={self.group!r} consumer={self.consumer!r}>"

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing."""
        import redis

        try:
            self._redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def run(self, stop: Optional[threading.Event] = None) -> int:
        """Consume until *stop* is set; returns how many entries were acknowledged."""
        stop = stop if stop is not None else threading.Event()
        errors = _redis_errors()
        delay = 0.1
        failing = False
        own_pending_done = False
        next_claim = 0.0
        while not stop.is_set():
            try:
                self.ensure_group()
                if not own_pending_done:
                    self._drain_own_pending(stop)
                    own_pending_done = True
                if time.monotonic() >= next_claim:
                    self._claim_idle(stop)
                    next_claim = time.monotonic() + self.claim_idle_ms / 1000.0
                while not stop.is_set() and time.monotonic() < next_claim:
                    reply = self._redis.xreadgroup(
                        self.group, self.consumer, {self.stream: ">"}, count=self.count, block=self.block_ms
                    )
                    self._handle_reply(reply, stop)
                if failing:
                    failing = False
                    log.info("StreamWorker %s: Redis answers again", self.consumer)
                delay = 0.1
            except errors as exc:
                if not failing:
                    failing = True
                    log.warning("StreamWorker %s: Redis failed (%s: %s); retrying", self.consumer, type(exc).__name__, exc)
                stop.wait(delay)
                delay = min(delay * 2, 5.0)
        return self.acked

    def _drain_own_pending(self, stop: threading.Event) -> None:
        last = "0"
        while not stop.is_set():
            reply = self._redis.xreadgroup(self.group, self.consumer, {self.stream: last}, count=self.count)
            entries = self._entries(reply)
            if not entries:
                return
            log.info("StreamWorker %s: %d unacknowledged entr%s from before a restart", self.consumer,
                         len(entries), "y" if len(entries) == 1 else "ies")
            for entry_id, fields in entries:
                if stop.is_set():
                    return
                self._handle(entry_id, fields)
            last = _text(entries[-1][0])

    def _claim_idle(self, stop: threading.Event) -> None:
        start = "0-0"
        while not stop.is_set():
            reply = self._redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=self.claim_idle_ms, start_id=start, count=self.count
            )
            next_start, entries = reply[0], reply[1]
            deleted = reply[2] if len(reply) > 2 else []
            if deleted:  # trimmed away by MAXLEN before anyone handled them
                log.warning("StreamWorker %s: %d pending entr%s trimmed from the stream before handling",
                            self.consumer, len(deleted), "y was" if len(deleted) == 1 else "ies were")
                self._redis.xack(self.stream, self.group, *deleted)
            if entries:
                log.info("StreamWorker %s: claimed %d entr%s idle for %d ms", self.consumer, len(entries),
                         "y" if len(entries) == 1 else "ies", self.claim_idle_ms)
            for entry_id, fields in entries:
                if stop.is_set():
                    return
                self._handle(entry_id, fields)
            if _text(next_start) == "0-0":
                return
            start = _text(next_start)

    @staticmethod
    def _entries(reply: Any) -> List[Tuple[Any, Any]]:
        out: List[Tuple[Any, Any]] = []
        for _stream, entries in reply or []:
            out.extend(entries)
        return out

    def _handle_reply(self, reply: Any, stop: threading.Event) -> None:
        for entry_id, fields in self._entries(reply):
            if stop.is_set():
                return  # the rest stay pending for this consumer: read again on restart
            self._handle(entry_id, fields)

    def _handle(self, entry_id: Any, fields: Optional[Mapping[Any, Any]]) -> None:
        if not fields:  # pending but trimmed from the stream: nothing left to handle
            self._redis.xack(self.stream, self.group, entry_id)
            return
        try:
            event = decode_entry(entry_id, fields)
        except (KeyError, ValueError, TypeError) as exc:
            log.error("StreamWorker %s: entry %s is not a sync_gateway event (%s); acknowledged and skipped",
                      self.consumer, _text(entry_id), exc)
            self._redis.xack(self.stream, self.group, entry_id)
            return
        try:
            self.handler(event)
        except Exception:
            self.handler_errors += 1
            log.exception("StreamWorker %s: handler raised on %r; the entry stays pending and is retried after %d ms",
                          self.consumer, event, self.claim_idle_ms)
            return
        self._redis.xack(self.stream, self.group, entry_id)
        self.acked += 1

    def close(self) -> None:
        self._redis.close()


def consume(
    url: str,
    *,
    handler: Callable[[StreamDispatch], Any],
    stream: str = DEFAULT_STREAM,
    group: str = "sync_gateway",
    consumer: Optional[str] = None,
    block_ms: int = 1000,
    stop: Optional[threading.Event] = None,
    **options: Any,
) -> int:
    """``StreamWorker(url, ...).run(stop)``: consume *stream* as *consumer* of *group* until *stop*
    is set; returns how many entries were handled and acknowledged."""
    worker = StreamWorker(
        url, handler=handler, stream=stream, group=group, consumer=consumer, block_ms=block_ms, **options
    )
    try:
        return worker.run(stop)
    finally:
        worker.close()

