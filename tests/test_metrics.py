"""sync_gateway.metrics: scraped over real HTTP, parsed with prometheus_client's own parser, while
faults are injected on a loopback FakeGateway; the numbers must be the ones status() shows."""
import collections
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import sync_gateway as sg
from sync_gateway.metrics import REASONS, disconnect_reason, instrument
from sync_gateway.protocol import LIFECYCLE_KINDS, STATES, LifecycleEvent, describe_close
from sync_gateway.sharding import ShardedClient
from sync_gateway.testing import FakeGateway
from support import FAST, TOKEN, Recorder, wait_until

pytestmark = pytest.mark.timeout(90)


def fast_gate():
    return sg.MemoryIdentifyGate(interval=0.0, margin=0.0)


def scrape(url):
    """{sample name: {frozenset(labels): value}} of one GET, parsed by prometheus_client."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode("utf-8")
    out = collections.defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][frozenset(s.labels.items())] = s.value
    return out


def value(samples, name, **labels):
    return samples[name][frozenset((k, str(v)) for k, v in labels.items())]


def by_label(samples, name, label, **fixed):
    """{label value: sample value} for the samples of *name* whose other labels are *fixed*."""
    want = {(k, str(v)) for k, v in fixed.items()}
    out = {}
    for labels, v in samples.get(name, {}).items():
        d = dict(labels)
        if want <= set(labels):
            out[d[label]] = v
    return out


class Scraper:
    """Scrapes in a loop (an Event wait between scrapes) while the test injects faults; every
    scrape must parse and no counter may go down."""

    COUNTERS = ("sync_gateway_identifies_total", "sync_gateway_resumes_total", "sync_gateway_reconnects_total")

    def __init__(self, url):
        self.url = url
        self.stop = threading.Event()
        self.count = 0
        self.errors = []
        self.last = {}
        self.thread = threading.Thread(target=self._run, name="test-scraper", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(10)

    def _run(self):
        while not self.stop.is_set():
            try:
                samples = scrape(self.url)
                for name in self.COUNTERS:
                    for labels, v in samples[name].items():
                        if v < self.last.get((name, labels), 0):
                            self.errors.append(f"{name}{dict(labels)} went down to {v}")
                        self.last[(name, labels)] = v
                self.count += 1
            except Exception as exc:  # reported by the test thread
                self.errors.append(repr(exc))
            self.stop.wait(0.02)


@pytest.fixture
def fast_gateway():
    """Heartbeats every 100 ms, so ACKs (and the latency histogram) happen during the test."""
    with FakeGateway(heartbeat_interval=100, token=TOKEN) as gw:
        yield gw


def test_scrape_during_faults_matches_status(fast_gateway):
    gw = fast_gateway
    client = sg.GatewayClient(TOKEN, api_base=gw.api_base, config=FAST, identify_gate=fast_gate())
    registry = CollectorRegistry()
    metrics = instrument(client, registry)  # before the recorder: it has counted what the recorder saw
    rec = Recorder(client)
    server = metrics.serve(0, "127.0.0.1")
    try:
        before = scrape(server.url)  # not started: one idle shard, no traffic yet
        assert value(before, "sync_gateway_state", shard=0, state="idle") == 1
        assert value(before, "sync_gateway_identifies_total", shard=0) == 0
        assert "sync_gateway_session_starts_remaining" not in before

        with Scraper(server.url) as scraper:
            client.start()
            assert client.wait_until_ready(10)
            gw.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(20)])
            gw.dispatch_many("TYPING_START", [{"i": i} for i in range(3)])
            rec.wait_events("TYPING_START", 3)

            gw.connections[-1].send_op(7)  # op 7: resume
            rec.wait_kind("resumed", 1)
            gw.connections[-1].close(4000)  # peer close 4000: resume
            rec.wait_kind("resumed", 2)
            gw.connections[-1].invalid_session(False)  # op 9: session lost, fresh IDENTIFY
            rec.wait_kind("ready", 2)
            gw.connections[-1].drop()  # no close frame at all: resume
            rec.wait_kind("resumed", 3)
            gw.dispatch("MESSAGE_CREATE", {"i": 20})
            rec.wait_events("MESSAGE_CREATE", 21)
            mark = client.status().last_heartbeat_ack_at
            assert wait_until(lambda: client.status().last_heartbeat_ack_at != mark, timeout=10)
            assert wait_until(lambda: scraper.count >= 5, timeout=20)
        assert not scraper.errors, scraper.errors

        load_before = client.load()
        samples = scrape(server.url)
        load_after = client.load()
        st = client.status()
        with rec.cond:  # what the handlers had seen at the scrape (close() adds more)
            events, lifecycle = list(rec.events), list(rec.lifecycle)
    finally:
        metrics.close()
        client.close(timeout=5)

    assert st.state == "ready" and st.identifies == 2 and st.resumes == 3 and st.reconnects == 4
    assert value(samples, "sync_gateway_state", shard=0, state="ready") == 1
    assert sum(by_label(samples, "sync_gateway_state", "state", shard=0).values()) == 1
    assert set(by_label(samples, "sync_gateway_state", "state", shard=0)) == set(STATES)
    assert value(samples, "sync_gateway_connected", shard=0) == 1
    for field in ("identifies", "resumes", "reconnects", "orphaned_readers", "stale_frames", "duplicate_events"):
        assert value(samples, f"sync_gateway_{field}_total", shard=0) == getattr(st, field), field
    assert value(samples, "sync_gateway_failed_attempts", shard=0) == st.failed_attempts

    # events by name, as the handlers saw them
    seen = collections.Counter(e.name for e in events)
    assert seen["MESSAGE_CREATE"] == 21 and seen["TYPING_START"] == 3
    assert by_label(samples, "sync_gateway_events_total", "event", shard=0) == dict(seen)

    # lifecycle kinds and disconnect reasons, as the lifecycle handlers saw them
    kinds = collections.Counter(e.kind for e in lifecycle)
    assert by_label(samples, "sync_gateway_lifecycle_events_total", "kind", shard=0) == {
        k: kinds.get(k, 0) for k in LIFECYCLE_KINDS
    }
    reasons = by_label(samples, "sync_gateway_disconnects_total", "reason", shard=0)
    assert reasons == dict(collections.Counter(disconnect_reason(e) for e in lifecycle if e.kind == "disconnected"))
    assert reasons["op7_reconnect"] == 1 and reasons["close_4000"] == 1 and reasons["op9_invalid_session"] == 1
    assert sum(reasons.values()) == 4 == st.reconnects

    # heartbeats: the scrapes saw ACKs, the gauges are status()'s
    assert samples["sync_gateway_heartbeat_latency_seconds_count"][frozenset({("shard", "0")})] >= 1
    inf = value(samples, "sync_gateway_heartbeat_latency_seconds_bucket", shard=0, le="+Inf")
    assert inf == samples["sync_gateway_heartbeat_latency_seconds_count"][frozenset({("shard", "0")})]
    assert value(samples, "sync_gateway_heartbeat_last_latency_seconds", shard=0) >= 0
    assert 0 <= value(samples, "sync_gateway_heartbeat_ack_age_seconds", shard=0) < 10

    # pressure and budget
    assert value(samples, "sync_gateway_dispatch_backlog", shard=0) == 0
    used = value(samples, "sync_gateway_send_window_used", shard=0)
    assert 1 <= load_before["send_window_used"] <= used <= load_after["send_window_used"] <= 120
    assert value(samples, "sync_gateway_send_window_limit", shard=0) == load_after["send_window_limit"]
    info = client.session_start_info()
    assert value(samples, "sync_gateway_session_start_limit") == info["total"] == 1000
    assert value(samples, "sync_gateway_session_starts_remaining") == info["remaining"] == 1000 - st.identifies

    # close() stopped the server, unregistered, and removed both handlers
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=5)
    assert list(registry.collect()) == []
    assert client.off("*", metrics._on_event) is False
    assert client.off_lifecycle(metrics._on_lifecycle) is False


def test_sharded_client_has_a_series_per_shard(fast_gateway):
    gw = fast_gateway
    gw.gateway_bot["shards"] = 2
    client = ShardedClient(TOKEN, api_base=gw.api_base, config=FAST, identify_gate=fast_gate())
    registry = CollectorRegistry()
    metrics = instrument(client, registry)
    rec = Recorder(client)
    try:
        with metrics.serve(0, "127.0.0.1") as server:
            assert scrape(server.url)["sync_gateway_identifies_total"] == {}  # no shard before start()
            client.start()
            assert client.wait_until_ready(15)
            for conn in gw.connections:
                gw.dispatch("GUILD_CREATE", {"id": conn.index}, connection=conn)
            rec.wait_events("GUILD_CREATE", 2)
            client.reconnect(shard_id=1)
            rec.wait_kind("resumed", 1)
            samples = scrape(server.url)
            st = client.status()
    finally:
        metrics.close()
        client.close(timeout=5)
    for sid, shard in st.shards.items():
        assert value(samples, "sync_gateway_identifies_total", shard=sid) == shard.identifies == 1
        assert value(samples, "sync_gateway_resumes_total", shard=sid) == shard.resumes
        assert value(samples, "sync_gateway_state", shard=sid, state=shard.state) == 1
        assert value(samples, "sync_gateway_events_total", shard=sid, event="GUILD_CREATE") == 1
    assert value(samples, "sync_gateway_resumes_total", shard=1) == 1
    assert by_label(samples, "sync_gateway_disconnects_total", "reason") == {"forced": 1}
    # the daily budget is the bot's: one series, not one per shard
    assert samples["sync_gateway_session_starts_remaining"] == {frozenset(): 998.0}


def _event(reason, code=None):
    return LifecycleEvent("disconnected", 0.0, code, reason)


@pytest.mark.parametrize(
    "event, label",
    [
        (_event("closed by user", 1000), "user"),
        (_event("op 7 reconnect request", 4000), "op7_reconnect"),
        (_event("op 9 invalid session (resumable)", 4000), "op9_invalid_session"),
        (_event("zombie: no heartbeat ACK since the last beat", 4000), "zombie"),
        (_event("hello-timeout: no HELLO within 3s", 4000), "hello_timeout"),
        (_event("connect-timeout: no connection within 3s", 4000), "connect_timeout"),
        (_event("ready-timeout: no READY within 3s of IDENTIFY", 4000), "ready_timeout"),
        (_event("bad HELLO", 4000), "bad_handshake"),
        (_event("forced-fresh", 1000), "forced"),
        (_event(describe_close(4000, "x"), 4000), "close_4000"),
        (_event(describe_close(4014), 4014), "close_4014"),
        (_event(describe_close(1001), 1001), "close_1001"),
        (_event(describe_close(4999), 4999), "close_other"),
        (_event(describe_close(None)), "connection_lost"),
        (_event("protocol error: bad zlib stream"), "protocol_error"),
        (_event("connection refused"), "network_error"),
        (_event("something new", 4000), "other"),
    ],
)
def test_disconnect_reasons_are_a_closed_set(event, label):
    assert disconnect_reason(event) == label
    assert label in REASONS or (label.startswith("close_") and "close_<code>" in REASONS)


def test_one_registry_refuses_a_second_instrumented_client(gateway):
    a = sg.GatewayClient(TOKEN, gateway_url=gateway.url)
    b = sg.GatewayClient(TOKEN, gateway_url=gateway.url)
    registry = CollectorRegistry()
    with instrument(a, registry):
        with pytest.raises(ValueError):
            instrument(b, registry)
    with pytest.raises(TypeError):
        instrument(object(), CollectorRegistry())


@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGTERM")
def test_tail_metrics_port_serves_the_client_metrics(gateway, unused_port):
    """`sync-gateway tail --metrics-port N`, as an operator runs it: curl-able while faults happen."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DISCORD_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    url = f"http://127.0.0.1:{unused_port}/metrics"
    p = subprocess.Popen(
        [sys.executable, "-m", "sync_gateway", "tail", "--json", "--gateway-url", gateway.url,
         "--metrics-port", str(unused_port)],
        env=env, cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines = queue.Queue()
    pump = threading.Thread(target=lambda: [lines.put(line) for line in p.stdout], name="test-tail-stdout", daemon=True)
    pump.start()
    try:
        conn = gateway.wait_for_connections(1, timeout=60)
        assert conn.ready.wait(60)
        assert json.loads(lines.get(timeout=60))["name"] == "READY"
        gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(3)])
        for _ in range(3):
            lines.get(timeout=60)
        samples = scrape(url)
        assert value(samples, "sync_gateway_state", shard=0, state="ready") == 1
        assert value(samples, "sync_gateway_identifies_total", shard=0) == 1
        assert value(samples, "sync_gateway_events_total", shard=0, event="MESSAGE_CREATE") == 3
        assert "process_cpu_seconds_total" in samples or sys.platform != "linux"

        conn.send_op(7)  # a fault while the operator watches: the counters follow it
        after = {}

        def resumed():
            after.update(scrape(url))
            key = frozenset({("shard", "0"), ("reason", "op7_reconnect")})
            ready = frozenset({("shard", "0"), ("state", "ready")})
            # resumes_total counts RESUMEs sent: wait for RESUMED (state ready) as well
            return after["sync_gateway_resumes_total"].get(frozenset({("shard", "0")})) == 1 and (
                after["sync_gateway_disconnects_total"].get(key) == 1 and after["sync_gateway_state"].get(ready) == 1
            )

        assert wait_until(resumed, 60, step=0.05), dict(after)
        assert value(after, "sync_gateway_reconnects_total", shard=0) == 1
        assert value(after, "sync_gateway_state", shard=0, state="ready") == 1

        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(60)
        pump.join(10)
        p.stdout.close()
        p.stderr.close()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_tail_metrics_port_in_use_is_a_usage_error(gateway):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DISCORD_TOKEN=TOKEN)
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with socket.create_server(("0.0.0.0", 0)) as busy:
        port = busy.getsockname()[1]
        r = subprocess.run(
            [sys.executable, "-m", "sync_gateway", "tail", "--gateway-url", gateway.url, "--metrics-port", str(port)],
            env=env, cwd=repo, capture_output=True, text=True, timeout=60,
        )
    assert r.returncode == 2, r.stderr
    assert f"--metrics-port {port}: cannot listen" in r.stderr
    assert not gateway.connections  # refused before connecting
