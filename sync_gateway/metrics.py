"""Prometheus metrics for a GatewayClient or ShardedClient (``pip install 'sync-gateway[metrics]'``).

>>> from sync_gateway.metrics import instrument
>>> metrics = instrument(client)     # before or after start(); registers on prometheus_client.REGISTRY
>>> server = metrics.serve(9108)     # GET http://host:9108/metrics; server.close() stops it

``serve_client(client, port)`` does both on a registry of its own (what ``tail --metrics-port`` uses).

Why it costs the gateway nothing: almost everything is read at scrape time, on the scraping
thread, from ``client.status()`` (the supervisor's own counters, so the numbers are the ones
``status()`` shows), ``client.load()`` and ``client.session_start_info()``. Only what status()
does not keep is counted as it happens, on the dispatcher thread that already runs handlers: one
``"*"`` handler counts events by name, one lifecycle handler counts disconnects by reason and
lifecycle steps (about 0.4 us per event). Nothing runs on the supervisor or reader threads, and
the only thread added is the HTTP server's, when :meth:`Metrics.serve` is used.

The series (label ``shard`` on all but the session-start budget, which belongs to the bot):

=================================================  =========  ==============================================
``sync_gateway_state{state}``                      gauge      1 for the shard's current state, 0 for others
``sync_gateway_connected``                         gauge      1 while READY/RESUMED
``sync_gateway_identifies_total``                  counter    status().identifies
``sync_gateway_resumes_total``                     counter    status().resumes
``sync_gateway_reconnects_total``                  counter    status().reconnects (sockets after the first)
``sync_gateway_disconnects_total{reason}``         counter    sockets ended, by reason (see REASONS); every
                                                              reason but ``user`` and fatal closes is
                                                              followed by a reconnect
``sync_gateway_lifecycle_events_total{kind}``      counter    LifecycleEvents (``session_lost``, ...)
``sync_gateway_events_total{event}``               counter    dispatches handed to handlers, by name
``sync_gateway_failed_attempts``                   gauge      connection attempts failed in a row
``sync_gateway_orphaned_readers_total``            counter    reader threads abandoned (invariant 6)
``sync_gateway_stale_frames_total``                counter    inputs from old sockets, ignored
``sync_gateway_duplicate_events_total``            counter    replayed events not delivered twice
``sync_gateway_heartbeat_latency_seconds``         histogram  heartbeat round trips (see below)
``sync_gateway_heartbeat_last_latency_seconds``    gauge      status().latency (absent before the first ACK)
``sync_gateway_heartbeat_ack_age_seconds``         gauge      seconds since the last ACK (liveness)
``sync_gateway_dispatch_backlog``                  gauge      events waiting for handlers
``sync_gateway_send_window_used``                  gauge      frames in the 120-per-60-s window (ready only)
``sync_gateway_send_window_limit``                 gauge      that window's size
``sync_gateway_session_starts_remaining``          gauge      IDENTIFYs left today (once known)
``sync_gateway_session_start_limit``               gauge      the daily total
=================================================  =========  ==============================================

The heartbeat histogram observes status().latency once per new ACK seen by a scrape: with scrapes
more frequent than heartbeats (Discord beats every ~41 s), that is every ACK, at no cost between
scrapes. Two instrumented objects cannot share one registry (their series would collide): give
each its own ``prometheus_client.CollectorRegistry``, or instrument the ShardedClient once.
"""
import re
import threading
import time
from types import TracebackType
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Type
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

try:
    from prometheus_client import (
        REGISTRY,
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
        make_wsgi_app,
    )
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "sync_gateway.metrics needs prometheus_client: pip install 'sync-gateway[metrics]'"
    ) from exc

from ._log import get_logger
from .protocol import CLOSE_CODES, LIFECYCLE_KINDS, STATES, Dispatch, LifecycleEvent, Status

log = get_logger(__name__)

PREFIX = "sync_gateway"
#: Heartbeat latency buckets (seconds): loopback to a struggling link.
LATENCY_BUCKETS: Tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Distinct event names counted before the rest share ``event="other"`` (Discord has about 80;
#: the cap keeps a misbehaving gateway from growing the series without bound).
MAX_EVENT_NAMES = 256

# The disconnect reasons, from the ``disconnected`` LifecycleEvent (its ``reason`` text is for
# people; this turns it into a label with a fixed set of values). Peer closes become
# ``close_<code>`` for codes Discord or RFC 6455 define, else ``close_other``.
_OWN_REASONS: Tuple[Tuple[str, str], ...] = (
    ("closed by user", "user"),
    ("op 7", "op7_reconnect"),
    ("op 9", "op9_invalid_session"),
    ("zombie", "zombie"),
    ("hello-timeout", "hello_timeout"),
    ("connect-timeout", "connect_timeout"),
    ("ready-timeout", "ready_timeout"),
    ("bad HELLO", "bad_handshake"),
    ("bad READY", "bad_handshake"),
    ("fresh reconnect", "forced"),
    ("forced", "forced"),
)
REASONS: Tuple[str, ...] = tuple(sorted({label for _, label in _OWN_REASONS})) + (
    "close_<code>",
    "close_other",
    "connection_lost",
    "protocol_error",
    "network_error",
    "other",
)
_PEER_CLOSE = re.compile(r"^close (\d+)\b")


def disconnect_reason(event: LifecycleEvent) -> str:
    """The ``reason`` label for a ``disconnected`` event (one of :data:`REASONS`)."""
    text = event.reason
    match = _PEER_CLOSE.match(text)
    if match:
        code = int(match.group(1))
        return f"close_{code}" if code in CLOSE_CODES or 1000 <= code <= 1015 else "close_other"
    for prefix, label in _OWN_REASONS:
        if text.startswith(prefix):
            return label
    if event.code is None:
        if text.startswith("connection lost"):
            return "connection_lost"
        if text.startswith("protocol error"):
            return "protocol_error"
        return "network_error"
    return "other"


class _Histogram:
    """Cumulative bucket counts for one shard (what HistogramMetricFamily wants)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.last_ack_at: Optional[float] = None

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    def buckets(self) -> List[Tuple[str, float]]:
        out: List[Tuple[str, float]] = []
        running = 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
        return out


class _Families:
    """Fresh, empty metric families for one scrape (the table in the module docstring)."""

    def __init__(self) -> None:
        p = PREFIX
        shard = ["shard"]
        G, C = GaugeMetricFamily, CounterMetricFamily
        self.state = G(f"{p}_state", "1 for the shard's current state", labels=["shard", "state"])
        self.connected = G(f"{p}_connected", "1 while the session is READY/RESUMED", labels=shard)
        self.identifies = C(f"{p}_identifies", "IDENTIFYs sent", labels=shard)
        self.resumes = C(f"{p}_resumes", "RESUMEs sent", labels=shard)
        self.reconnects = C(f"{p}_reconnects", "sockets opened after the first", labels=shard)
        self.disconnects = C(f"{p}_disconnects", "sockets ended, by reason", labels=["shard", "reason"])
        self.lifecycle = C(f"{p}_lifecycle_events", "lifecycle events, by kind", labels=["shard", "kind"])
        self.events = C(f"{p}_events", "dispatches handed to handlers, by name", labels=["shard", "event"])
        self.failed_attempts = G(f"{p}_failed_attempts", "connection attempts failed in a row", labels=shard)
        self.orphaned_readers = C(f"{p}_orphaned_readers", "reader threads abandoned", labels=shard)
        self.stale_frames = C(f"{p}_stale_frames", "inputs from retired sockets, ignored", labels=shard)
        self.duplicate_events = C(f"{p}_duplicate_events", "replayed events not delivered twice", labels=shard)
        self.latency = HistogramMetricFamily(
            f"{p}_heartbeat_latency_seconds", "heartbeat round trips, one per ACK seen by a scrape", labels=shard
        )
        self.last_latency = G(f"{p}_heartbeat_last_latency_seconds", "the last heartbeat round trip", labels=shard)
        self.ack_age = G(f"{p}_heartbeat_ack_age_seconds", "seconds since the last heartbeat ACK", labels=shard)
        self.backlog = G(f"{p}_dispatch_backlog", "events waiting for handlers", labels=shard)
        self.window_used = G(f"{p}_send_window_used", "frames in the 60 s send window", labels=shard)
        self.window_limit = G(f"{p}_send_window_limit", "the send window's size", labels=shard)
        self.starts_remaining = G(f"{p}_session_starts_remaining", "session starts (IDENTIFYs) left today")
        self.start_limit = G(f"{p}_session_start_limit", "session starts allowed per day")

    def all(self) -> List[Metric]:
        return [m for m in vars(self).values() if isinstance(m, Metric)]


class Metrics(Collector):
    """A prometheus_client Collector for one GatewayClient or ShardedClient. Make it with
    :func:`instrument`; :meth:`close` unregisters it and removes its handlers."""

    def __init__(self, client: Any, registry: Optional[CollectorRegistry] = None) -> None:
        for name in ("status", "on", "off", "on_lifecycle", "off_lifecycle"):
            if not callable(getattr(client, name, None)):
                raise TypeError(f"instrument() needs a GatewayClient or ShardedClient, got {type(client).__name__}")
        self.client = client
        self.registry: CollectorRegistry = REGISTRY if registry is None else registry
        self._lock = threading.Lock()
        self._events: Dict[Tuple[int, str], int] = {}
        self._event_names: Dict[str, None] = {}
        self._lifecycle: Dict[Tuple[int, str], int] = {}
        self._disconnects: Dict[Tuple[int, str], int] = {}
        self._latency: Dict[int, _Histogram] = {}
        self._servers: List["MetricsServer"] = []
        self._closed = False
        self.registry.register(self)
        client.on("*", self._on_event)
        client.on_lifecycle(self._on_lifecycle)

    def __repr__(self) -> str:
        return f"<Metrics of {self.client!r}>"

    # ------------------------------------------------------------------ dispatcher-thread hooks

    def _on_event(self, event: Dispatch) -> None:
        name = event.name
        with self._lock:
            if name not in self._event_names:
                if len(self._event_names) >= MAX_EVENT_NAMES:
                    name = "other"
                else:
                    self._event_names[name] = None
            key = (event.shard_id, name)
            self._events[key] = self._events.get(key, 0) + 1

    def _on_lifecycle(self, event: LifecycleEvent) -> None:
        with self._lock:
            kind: Tuple[int, str] = (event.shard_id, event.kind)
            self._lifecycle[kind] = self._lifecycle.get(kind, 0) + 1
            if event.kind == "disconnected":
                reason = (event.shard_id, disconnect_reason(event))
                self._disconnects[reason] = self._disconnects.get(reason, 0) + 1

    # ------------------------------------------------------------------ scrape time

    def _shards(self) -> List[Tuple[int, Any]]:
        """(shard_id, GatewayClient) pairs; a ShardedClient has them from start() on."""
        clients = getattr(self.client, "clients", None)
        if isinstance(clients, Mapping):
            return sorted(clients.items())
        return [(int(getattr(self.client, "shard_id", 0)), self.client)]

    def describe(self) -> Iterable[Metric]:
        """The families without samples: lets the registry check names without a scrape."""
        return _Families().all()

    def collect(self) -> Iterable[Metric]:
        f = _Families()
        self._fill(f)
        return f.all()

    def _fill(self, f: _Families) -> None:
        shards = self._shards()
        now = time.monotonic()
        for sid, shard in shards:
            st: Status = shard.status()
            load: Mapping[str, Optional[int]] = shard.load() if callable(getattr(shard, "load", None)) else {}
            s = str(sid)
            for name in STATES:
                f.state.add_metric([s, name], 1.0 if st.state == name else 0.0)
            f.connected.add_metric([s], 1.0 if st.connected else 0.0)
            f.identifies.add_metric([s], st.identifies)
            f.resumes.add_metric([s], st.resumes)
            f.reconnects.add_metric([s], st.reconnects)
            f.failed_attempts.add_metric([s], st.failed_attempts)
            f.orphaned_readers.add_metric([s], st.orphaned_readers)
            f.stale_frames.add_metric([s], st.stale_frames)
            f.duplicate_events.add_metric([s], st.duplicate_events)
            with self._lock:
                h = self._latency.get(sid)
                if h is None:
                    h = self._latency[sid] = _Histogram(LATENCY_BUCKETS)
                ack_at = st.last_heartbeat_ack_at
                if st.latency is not None and ack_at is not None and ack_at != h.last_ack_at:
                    h.last_ack_at = ack_at
                    h.observe(st.latency)
                f.latency.add_metric([s], h.buckets(), h.total)
            if st.latency is not None:
                f.last_latency.add_metric([s], st.latency)
            if st.last_heartbeat_ack_at is not None:
                f.ack_age.add_metric([s], max(0.0, now - st.last_heartbeat_ack_at))
            backlog = load.get("dispatch_backlog")
            if backlog is not None:
                f.backlog.add_metric([s], backlog)
            used, limit = load.get("send_window_used"), load.get("send_window_limit")
            if used is not None and limit is not None:
                f.window_used.add_metric([s], used)
                f.window_limit.add_metric([s], limit)
        with self._lock:
            event_counts = sorted(self._events.items())
            lifecycle_counts = dict(self._lifecycle)
            disconnect_counts = sorted(self._disconnects.items())
        for (sid, name), n in event_counts:
            f.events.add_metric([str(sid), name], n)
        for sid, _ in shards:  # every kind, zeros included: rate() and alerts need the series to exist
            for kind in LIFECYCLE_KINDS:
                f.lifecycle.add_metric([str(sid), kind], lifecycle_counts.get((sid, kind), 0))
        for (sid, reason), n in disconnect_counts:
            f.disconnects.add_metric([str(sid), reason], n)
        if shards:  # the budget belongs to the bot: every shard's gate reads the same ledger
            info = self._session_start_info(shards[0][1])
            if isinstance(info.get("remaining"), int):
                f.starts_remaining.add_metric([], info["remaining"])
            if isinstance(info.get("total"), int):
                f.start_limit.add_metric([], info["total"])

    @staticmethod
    def _session_start_info(shard: Any) -> Dict[str, Any]:
        getter = getattr(shard, "session_start_info", None)
        if not callable(getter):
            return {}
        try:
            info = getter()
        except Exception as exc:  # a shared gate that cannot answer must not fail the whole scrape
            log.debug("session_start_info failed during a scrape: %s", exc)
            return {}
        return info if isinstance(info, dict) else {}

    # ------------------------------------------------------------------ serving and closing

    def serve(self, port: int, addr: str = "0.0.0.0") -> "MetricsServer":
        """Serve this Metrics' registry at ``http://addr:port/metrics`` (port 0: any free port,
        see ``.port``). Closed by :meth:`close`, or by the returned server's own ``close()``."""
        server = serve(port, addr, registry=self.registry)
        self._servers.append(server)
        return server

    def close(self) -> None:
        """Stop the servers :meth:`serve` started, unregister, and remove the handlers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for server in self._servers:
            server.close()
        try:
            self.registry.unregister(self)
        except KeyError:
            pass
        self.client.off("*", self._on_event)
        self.client.off_lifecycle(self._on_lifecycle)

    def __enter__(self) -> "Metrics":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def instrument(client: Any, registry: Optional[CollectorRegistry] = None) -> Metrics:
    """Export *client*'s (GatewayClient or ShardedClient) metrics on *registry* (default:
    prometheus_client's global REGISTRY, which ``start_http_server`` and most frameworks serve).
    Call it before or after ``start()``; events are counted from this call on."""
    return Metrics(client, registry)


def serve_client(client: Any, port: int, addr: str = "0.0.0.0") -> Metrics:
    """Instrument *client* on a registry of its own, with prometheus_client's process, platform and
    GC collectors, and serve it: for a program whose only metrics are the client's (``sync-gateway
    tail --metrics-port``). Nothing is left on the global REGISTRY; ``close()`` on the returned
    Metrics stops the server. Raises OSError when the port cannot be bound."""
    registry = CollectorRegistry()
    for extra in (ProcessCollector, PlatformCollector, GCCollector):
        extra(registry=registry)
    metrics = Metrics(client, registry)
    try:
        metrics.serve(port, addr)
    except BaseException:
        metrics.close()
        raise
    return metrics


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to our DEBUG log, not stderr; a scraper that stalls is dropped."""

    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics: %s - %s", self.address_string(), format % args)


class MetricsServer:
    """A small HTTP server for ``/metrics`` on one thread (``sync_gateway-metrics-<port>``);
    scrapes are served one at a time, which is plenty for Prometheus. A context manager."""

    def __init__(self, port: int, addr: str = "0.0.0.0", registry: Optional[CollectorRegistry] = None) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError("port must be an int from 0 to 65535")
        app = make_wsgi_app(REGISTRY if registry is None else registry)
        self._httpd = make_server(addr, port, app, WSGIServer, handler_class=_QuietHandler)
        self.addr = addr
        self.port: int = self._httpd.server_port
        self._once = threading.Lock()
        self.thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name=f"sync_gateway-metrics-{self.port}",
            daemon=True,
        )
        self.thread.start()
        log.info("serving metrics on http://%s:%d/metrics", addr or "0.0.0.0", self.port)

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.addr in ("", "0.0.0.0") else self.addr
        return f"http://{host}:{self.port}/metrics"

    def close(self, timeout: float = 5.0) -> None:
        """Stop serving and close the listening socket. Idempotent."""
        if not self._once.acquire(blocking=False):
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self.thread.join(timeout)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        self.close()


def serve(port: int, addr: str = "0.0.0.0", registry: Optional[CollectorRegistry] = None) -> MetricsServer:
    """Serve *registry* (default: the global REGISTRY) at ``http://addr:port/metrics`` on one
    daemon thread. Returns the server: ``.port`` (useful with port 0), ``.url``, ``.close()``."""
    return MetricsServer(port, addr, registry)


__all__ = ["Metrics", "MetricsServer", "instrument", "serve", "serve_client", "disconnect_reason", "REASONS", "LATENCY_BUCKETS"]
