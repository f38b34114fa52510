"""Issue 10: each promise that broke off the idealised path, as a regression test on loopback.

Every test here failed on the code before the fix (numbers are the issue's items).
"""
import base64
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib

import pytest

import sync_gateway as sg
from sync_gateway import ConfigError, FileIdentifyGate, FileSessionStore, GatewayClient, LifecycleConfig, MemoryIdentifyGate, PayloadTooLarge
from sync_gateway.stores import session_key
from sync_gateway.testing import FakeGateway
from sync_gateway.testing.proxy import FreezingProxy
from support import FAST, TOKEN, Recorder, handshakes, stuck_reader_factory, wait_until

pytestmark = pytest.mark.timeout(90)


def _frame(opcode, payload):
    """An unmasked server frame."""
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


def _other_token(bot_id):
    head = base64.urlsafe_b64encode(str(bot_id).encode()).decode().rstrip("=")
    return f"{head}.other.token-for-tests"


class StallServer:
    """Accepts TCP and never answers (a TLS ClientHello or an HTTP upgrade stalls); counts live
    connections, seeing each one's close at once (it keeps reading)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.live = 0
        self.max_live = 0
        self.accepted = 0
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.listener, selectors.EVENT_READ)
        self.thread = threading.Thread(target=self._run, name="test-stall-server", daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.05):
                if key.fileobj is self.listener:
                    conn, _ = self.listener.accept()
                    self._sel.register(conn, selectors.EVENT_READ)
                    with self.cond:
                        self.live += 1
                        self.accepted += 1
                        self.max_live = max(self.max_live, self.live)
                        self.cond.notify_all()
                else:
                    try:
                        data = key.fileobj.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._sel.unregister(key.fileobj)
                        key.fileobj.close()
                        with self.cond:
                            self.live -= 1
                            self.cond.notify_all()

    def wait(self, predicate, timeout):
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self), timeout)

    def close(self):
        self._stop.set()
        self.thread.join(5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()


# -------------------------------------------------------------------------------- 1


@pytest.mark.parametrize("exc", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_01_handler_raising_base_exception_is_logged_and_dispatch_goes_on(make_client, gateway, caplog, exc):
    client, rec = make_client()

    @client.on("MESSAGE_CREATE")
    def boom(event):
        if event.data["i"] == 0:
            raise exc("from a handler")

    client.start()
    assert client.wait_until_ready(10)
    with caplog.at_level(logging.ERROR, logger="sync_gateway"):
        gateway.dispatch_many("MESSAGE_CREATE", [{"i": 0}, {"i": 1}])
        rec.wait_events("MESSAGE_CREATE", 2)
        assert wait_until(lambda: client.status().seq == 3)
    assert any("boom" in r.getMessage() and exc.__name__ in r.getMessage() for r in caplog.records)
    assert client._supervisor.dispatcher.thread.is_alive()
    gateway.dispatch("MESSAGE_CREATE", {"i": 2})
    rec.wait_events("MESSAGE_CREATE", 3)


# -------------------------------------------------------------------------------- 2


def test_02_presence_too_large_for_identify_is_a_config_error():
    big = {"status": "online", "activities": [{"name": "x" * 120, "type": 0}] * 40}
    with pytest.raises(ConfigError, match="IDENTIFY would be"):
        GatewayClient(TOKEN, presence=big, gateway_url="ws://127.0.0.1:1/")


def test_02_rejected_presence_update_changes_nothing(make_client, gateway):
    client, rec = make_client(presence={"status": "idle"})
    client.start()
    assert client.wait_until_ready(10)
    with pytest.raises(PayloadTooLarge):
        client.update_presence("dnd", activities=[{"name": "y" * 120, "type": 0}] * 40, timeout=5)
    client.reconnect(fresh=True)
    rec.wait_kind("ready", 2)
    identify = gateway.connections[-1].identify
    assert identify["presence"]["status"] == "idle"
    sent = [p for conn in gateway.connections for _, p in conn.received]
    assert all(len(sg.codec.encode(p).encode()) <= 4096 for p in sent)
    client.update_presence("dnd", timeout=5)  # a valid update is kept for the next IDENTIFY
    client.reconnect(fresh=True)
    rec.wait_kind("ready", 3)
    assert gateway.connections[-1].identify["presence"]["status"] == "dnd"


# -------------------------------------------------------------------------------- 3


def test_03_gateway_url_still_respects_the_daily_session_start_limit(gateway):
    gateway.gateway_bot["session_start_limit"] = {"total": 1000, "remaining": 0, "reset_after": 3_600_000,
                                                  "max_concurrency": 1}
    client = GatewayClient(TOKEN, gateway_url=gateway.url, api_base=gateway.api_base, config=FAST,
                           identify_gate=MemoryIdentifyGate())
    try:
        client.start()
        assert wait_until(lambda: client.status().identify_wait is not None, timeout=10)
        assert client.status().identify_wait.startswith("session start limit: 0 remaining")
        assert all(c.identify is None for c in gateway.connections)
        assert any(path.endswith("/gateway/bot") for _method, path, _h in gateway.rest_requests)
    finally:
        client.close()


def test_03_unreachable_limit_source_is_said_once_and_costs_little(gateway, unused_port, caplog):
    client = GatewayClient(TOKEN, gateway_url=gateway.url, api_base=f"http://127.0.0.1:{unused_port}/api/v10",
                           config=FAST, identify_gate=MemoryIdentifyGate(interval=0, margin=0))
    try:
        with caplog.at_level(logging.WARNING, logger="sync_gateway"):
            started = time.monotonic()
            client.start()
            assert time.monotonic() - started < sg.client.LIMIT_LOOKUP_TIMEOUT + 1.0
            assert client.wait_until_ready(10)
        said = [r for r in caplog.records if "session-start limit" in r.getMessage()]
        assert len(said) == 1 and TOKEN not in said[0].getMessage()
    finally:
        client.close()


def test_03_loopback_gateway_without_api_base_asks_nobody(gateway):
    client = GatewayClient(TOKEN, gateway_url=gateway.url, config=FAST)  # default gate: per fake gateway
    try:
        client.start()
        assert client.wait_until_ready(10)
        assert gateway.rest_requests == []
    finally:
        client.close()


# -------------------------------------------------------------------------------- 4


class _SlowAPI:
    """An HTTP API that answers GET /gateway/bot only when released."""

    def __init__(self, gateway_url):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.listener.getsockname()[1]}/api/v10"
        self.asked = threading.Event()
        self.release = threading.Event()
        self.url = gateway_url
        self.thread = threading.Thread(target=self._run, daemon=True, name="test-slow-api")
        self.thread.start()

    def _run(self):
        self.listener.settimeout(20)
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            self.asked.set()
            self.release.wait(20)
            body = ('{"url": "%s", "shards": 1, "session_start_limit": {"total": 1000, "remaining": 999, '
                    '"reset_after": 1000, "max_concurrency": 1}}' % self.url).encode()
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
            except OSError:
                pass

    def close(self):
        self.release.set()
        self.listener.close()
        self.thread.join(5)


def test_04_close_during_start_wins(gateway):
    api = _SlowAPI(gateway.url)
    client = GatewayClient(TOKEN, api_base=api.base, config=FAST, identify_gate=MemoryIdentifyGate(interval=0, margin=0))
    errors = []

    def starter():
        try:
            client.start()
        except Exception as exc:  # reported below: start() may say it was interrupted
            errors.append(exc)

    t = threading.Thread(target=starter)
    t.start()
    try:
        assert api.asked.wait(10)
        client.close(timeout=2)  # e.g. a SIGTERM handler, while discovery is in flight
        api.release.set()
        t.join(15)
        assert not t.is_alive()
        assert client.threads() == []
        assert gateway.connections == []
        assert client.status().state == "closed"
        assert all(not isinstance(e, sg.GatewayError) or "closed" in str(e) for e in errors)
    finally:
        api.close()


def test_04_close_at_every_point_of_start(gateway):
    """close() from another thread at a spread of moments during start(): once close() returned
    and the threads are gone, nothing connects any more."""
    sockets = 0  # opened by the clients of this test, all of them
    for delay in (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01):
        client = GatewayClient(TOKEN, gateway_url=gateway.url, config=FAST,
                               identify_gate=MemoryIdentifyGate(interval=0, margin=0))
        closed = threading.Event()

        def closer(client=client, delay=delay):
            threading.Event().wait(delay)
            client.close(timeout=2)
            closed.set()

        t = threading.Thread(target=closer)
        t.start()
        try:
            client.start()
        except RuntimeError:
            pass  # close() came first: "was closed"
        t.join(10)
        assert closed.is_set()
        assert wait_until(lambda: client.threads() == [], timeout=5)
        assert wait_until(lambda: gateway.live_connections() == 0, timeout=5)
        opened = client.status().epoch  # the sockets this client opened, all before close() returned
        threading.Event().wait(0.2)  # nothing may happen now: there is no event for "nothing"
        assert client.status().epoch == opened and client.status().state in ("closed", "idle")
        # The fake registers a connection when it has read its upgrade request, which can come
        # after the client's threads are gone (CI saw it once): it may show one of those sockets
        # late, never one more than the clients opened.
        sockets += opened
        assert len(gateway.connections) <= sockets


# -------------------------------------------------------------------------------- 5


def test_05_stalled_tls_handshake_is_aborted_by_close():
    server = StallServer()
    try:
        client = GatewayClient(TOKEN, gateway_url=f"wss://127.0.0.1:{server.port}/", config=FAST,
                               identify_gate=MemoryIdentifyGate(interval=0, margin=0))
        client.start()
        assert server.wait(lambda s: s.live == 1, 10)
        started = time.monotonic()
        client.close(timeout=2)
        assert time.monotonic() - started < 2.5
        assert server.wait(lambda s: s.live == 0, FAST.force_close_timeout + 1.0)
        assert client.threads() == []
    finally:
        server.close()


def test_05_forced_reconnects_during_tls_stall_never_two_sockets():
    server = StallServer()
    config = LifecycleConfig(hello_timeout=30.0, ready_timeout=3.0, drain_timeout=1.0, force_close_timeout=0.5,
                             backoff_base=0.05, backoff_max=0.2)
    client = GatewayClient(TOKEN, gateway_url=f"wss://127.0.0.1:{server.port}/", config=config,
                           identify_gate=MemoryIdentifyGate(interval=0, margin=0))
    try:
        client.start()
        for n in range(1, 4):
            assert server.wait(lambda s: s.accepted == n and s.live == 1, 10)
            client.reconnect(fresh=True)
        assert server.wait(lambda s: s.accepted == 4, 10)
        assert server.max_live == 1
    finally:
        client.close(timeout=3)
        server.close()


# -------------------------------------------------------------------------------- 6


_HOLD_LOCK = """
import fcntl, os, sys
fds = [os.open(p, os.O_RDWR | os.O_CREAT, 0o600) for p in sys.argv[1:]]
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


def _beats(conn):
    return [at for at, p in conn.received if p.get("op") == 1]


def test_06_file_locks_held_by_another_process_cost_no_heartbeat(tmp_path):
    gate_path, store_path = tmp_path / "gate.json", tmp_path / "sessions.json"
    with FakeGateway(token=TOKEN, heartbeat_interval=300) as gw:
        client = GatewayClient(TOKEN, gateway_url=gw.url, config=FAST, identify_gate=FileIdentifyGate(gate_path),
                               session_store=FileSessionStore(store_path))
        rec = Recorder(client)
        holder = None
        try:
            client.start()
            assert client.wait_until_ready(10)
            holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(gate_path) + ".lock",
                                       str(store_path) + ".lock"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            assert holder.stdout.readline().strip() == b"locked"
            conn = gw.connections[-1]
            gw.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(20)])  # store writes now wait on the lock
            rec.wait_events("MESSAGE_CREATE", 20)
            n = len(_beats(conn))
            assert wait_until(lambda: len(_beats(conn)) >= n + 6, timeout=4)  # 300 ms beats go on
            beats = _beats(conn)[n:]
            assert max(b - a for a, b in zip(beats, beats[1:])) < 0.3 + 0.35
            assert client.status().state == "ready"
            client.reconnect(fresh=True)  # the IDENTIFY gate's lock is held too: IDENTIFY waits, beats go on
            assert wait_until(lambda: len(gw.connections) == 2, 10)
            conn2 = gw.connections[1]
            assert wait_until(lambda: len(_beats(conn2)) >= 4, timeout=5)
            assert conn2.identify is None
            started = time.monotonic()
            client.close(timeout=2)
            assert time.monotonic() - started < 2.5
        finally:
            if holder is not None:
                holder.stdin.close()
                holder.wait(10)
                holder.stdout.close()
            client.close()


def test_06_frozen_redis_costs_no_heartbeat_and_close_keeps_its_timeout(tmp_path):
    redis = pytest.importorskip("redis")  # noqa: F841
    from procs.harness import REDIS_SERVER, redis_server

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH")
    with redis_server(str(tmp_path)) as url, FakeGateway(token=TOKEN, heartbeat_interval=300) as gw:
        client = GatewayClient(TOKEN, gateway_url=gw.url, config=FAST,
                               identify_gate=sg.RedisIdentifyGate(url, key_prefix="frozen"),
                               session_store=sg.RedisSessionStore(url, key_prefix="frozen"))
        rec = Recorder(client)
        stopped = False
        try:
            client.start()
            assert client.wait_until_ready(10)
            os.kill(url.pid, signal.SIGSTOP)
            stopped = True
            conn = gw.connections[-1]
            gw.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(5)])
            rec.wait_events("MESSAGE_CREATE", 1)
            n = len(_beats(conn))
            assert wait_until(lambda: len(_beats(conn)) >= n + 8, timeout=5)
            beats = _beats(conn)[n:]
            assert max(b - a for a, b in zip(beats, beats[1:])) < 0.3 + 0.35
            started = time.monotonic()
            client.close(timeout=2, keep_session=True)
            assert time.monotonic() - started < 2.5
        finally:
            if stopped:
                os.kill(url.pid, signal.SIGCONT)
            client.close()


# -------------------------------------------------------------------------------- 7


def test_07_keep_session_saves_the_seq_of_the_last_handled_event(gateway, tmp_path):
    store = FileSessionStore(tmp_path / "s.json")
    handled = []
    gate = MemoryIdentifyGate(interval=0, margin=0)

    def make():
        client = GatewayClient(TOKEN, gateway_url=gateway.url, config=FAST, identify_gate=gate, session_store=store)

        @client.on("MESSAGE_CREATE")
        def slow(event):
            threading.Event().wait(0.02)
            handled.append(event.seq)

        return client, Recorder(client)

    first, rec1 = make()
    first.start()
    assert first.wait_until_ready(10)
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(60)])
    assert wait_until(lambda: len(handled) >= 5, timeout=10)
    first.close(timeout=10, keep_session=True)  # the backlog is still running when close() starts
    saved = store.load(session_key(TOKEN, 0, 1))
    assert saved is not None and saved.seq == handled[-1] and len(handled) == 60
    second, rec2 = make()
    try:
        second.start()
        rec2.wait_kind("resumed")
        gateway.dispatch("MESSAGE_CREATE", {"i": 60})
        assert wait_until(lambda: len(handled) == 61, timeout=10)
        # seqs 2..61 were the 60 events, 62 the RESUMED: each event handled exactly once
        assert handled == list(range(2, 62)) + [63]
    finally:
        second.close()


# -------------------------------------------------------------------------------- 8


def test_08_a_complete_frame_is_not_held_for_the_next_one():
    with FakeGateway(token=TOKEN, heartbeat_interval=45000) as gw:
        client = GatewayClient(TOKEN, gateway_url=gw.url, config=FAST, compress=None,
                               identify_gate=MemoryIdentifyGate(interval=0, margin=0))
        got = threading.Event()
        client.on("MESSAGE_CREATE", lambda e: got.set() if e.data["i"] == 1 else None)
        try:
            client.start()
            assert client.wait_until_ready(10)
            conn = gw.connections[-1]
            seq = client.status().seq
            a = _frame(1, sg.codec.encode({"op": 0, "t": "MESSAGE_CREATE", "s": seq + 1, "d": {"i": 1}}).encode())
            b = _frame(1, sg.codec.encode({"op": 0, "t": "MESSAGE_CREATE", "s": seq + 2, "d": {"i": 2}}).encode())
            assert conn._write(a + b[:3])  # A whole, and the first bytes of B
            assert got.wait(2.0), "a complete frame waited for the bytes of the next one"
            assert conn._write(b[3:])
        finally:
            client.close()


# -------------------------------------------------------------------------------- 9


def test_09_close_returns_with_a_warning_and_no_later_handler_starts(make_client, gateway, caplog):
    client, rec = make_client()
    release = threading.Event()
    calls = []

    @client.on("MESSAGE_CREATE")
    def stuck(event):
        calls.append(event.data["i"])
        release.wait(20)

    client.start()
    assert client.wait_until_ready(10)
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": 0}, {"i": 1}])
    assert wait_until(lambda: calls == [0])
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        started = time.monotonic()
        client.close(timeout=1)
        assert time.monotonic() - started < 1.6
    assert any("stuck" in r.getMessage() and "still runs" in r.getMessage() for r in caplog.records)
    release.set()
    dispatcher = client._supervisor.dispatcher
    dispatcher.thread.join(5)
    assert not dispatcher.thread.is_alive()
    assert calls == [0]


def test_09_a_stuck_handler_and_a_store_locked_elsewhere_cost_close_no_more_than_its_timeout(
        make_client, gateway, tmp_path, caplog):
    store_path = tmp_path / "sessions.json"
    client, rec = make_client(session_store=FileSessionStore(store_path))
    release = threading.Event()
    handled = []

    @client.on("MESSAGE_CREATE")
    def stuck(event):
        handled.append(event.seq)
        release.wait(20)

    holder = None
    try:
        client.start()
        assert client.wait_until_ready(10)
        holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(store_path) + ".lock"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert holder.stdout.readline().strip() == b"locked"
        gateway.dispatch_many("MESSAGE_CREATE", [{"i": 0}, {"i": 1}])
        assert wait_until(lambda: len(handled) == 1)
        with caplog.at_level(logging.WARNING, logger="sync_gateway"):
            started = time.monotonic()
            client.close(timeout=2, keep_session=True)
            assert time.monotonic() - started < 2.5
        messages = [r.getMessage() for r in caplog.records]
        assert any("still runs" in m for m in messages)
        assert any("finishes in the background" in m for m in messages)
        saver = client._supervisor.saver
        assert saver is not None and saver in client.threads()
        holder.stdin.close()  # the other process lets go: the save goes through
        holder.wait(10)
        saver.join(10)
        assert not saver.is_alive()
        saved = FileSessionStore(store_path).load(session_key(TOKEN, 0, 1))
        # the handler that never returned does not count as handled: the next RESUME replays it
        assert saved is not None and saved.seq == handled[0] - 1
    finally:
        release.set()
        if holder is not None and holder.poll() is None:
            holder.stdin.close()
            holder.wait(10)
        if holder is not None:
            holder.stdout.close()
        client._supervisor.dispatcher.thread.join(5)
    assert handled == handled[:1]


# -------------------------------------------------------------------------------- 10


def test_10_zstd_bomb_over_loopback_drops_the_socket_and_resumes(caplog):
    zstandard = pytest.importorskip("zstandard")
    with FakeGateway(token=TOKEN, heartbeat_interval=45000) as gw:
        client = GatewayClient(TOKEN, gateway_url=gw.url, config=FAST, compress="zstd-stream",
                               identify_gate=MemoryIdentifyGate(interval=0, margin=0))
        rec = Recorder(client)
        try:
            client.start()
            assert client.wait_until_ready(10)
            conn = gw.connections[-1]
            # 200 MiB of JSON in the connection's own zstd stream (as Discord would send it): a few KB
            assert conn._send_encoded([b'{"op":0,"t":"X","s":99,"d":"' + b"a" * (200 * 1024 * 1024) + b'"}'])
            rec.wait_kind("resumed", timeout=20)
            assert "larger than" in (client.status().last_error or "")
        finally:
            client.close()


# -------------------------------------------------------------------------------- 11


def test_11_orphaned_readers_are_forgotten_when_they_end(make_client, gateway):
    release = threading.Event()
    client, rec = make_client(_connection_factory=stuck_reader_factory(release, epochs={1, 2}))
    try:
        client.start()
        assert client.wait_until_ready(10)
        client.reconnect()  # e1's reader hangs after its socket closed: orphaned
        rec.wait_kind("resumed", timeout=15)
        assert wait_until(lambda: len(client._supervisor.orphans) == 1, timeout=10)
        assert client.status().orphaned_readers == 1
    finally:
        release.set()
    assert wait_until(lambda: client._supervisor.orphans == [], timeout=10)
    assert client.status().orphaned_readers == 1  # the count stays: it happened


# -------------------------------------------------------------------------------- 12


def test_12_two_bots_sharing_a_gate_do_not_wait_on_each_other(tmp_path):
    gate = FileIdentifyGate(tmp_path / "gate.json")  # one file, default everything, two bots
    other = _other_token(200000000000000002)
    assert sg.ratelimit.bot_id_from_token(TOKEN) != sg.ratelimit.bot_id_from_token(other)
    with FakeGateway(token=TOKEN) as gw_a, FakeGateway(token=other) as gw_b:
        a = GatewayClient(TOKEN, gateway_url=gw_a.url, config=FAST, identify_gate=gate)
        b = GatewayClient(other, gateway_url=gw_b.url, config=FAST, identify_gate=gate)
        try:
            a.start()
            assert a.wait_until_ready(10)
            b.start()
            assert b.wait_until_ready(3)  # not behind a's 5 s bucket
            assert b.status().identify_wait is None
        finally:
            a.close()
            b.close()
    gate.update_session_start_limit({"total": 1000, "remaining": 7, "reset_after": 60_000})
    assert gate.session_start_info()["remaining"] == 7
    assert gate.for_bot(sg.ratelimit.bot_id_from_token(other)).session_start_info() == {}


# -------------------------------------------------------------------------------- 13


def test_13_a_stream_broken_the_same_way_every_time_is_one_error(caplog):
    zstandard = pytest.importorskip("zstandard")  # noqa: F841
    config = LifecycleConfig(hello_timeout=3.0, ready_timeout=3.0, drain_timeout=1.0, force_close_timeout=0.5,
                             backoff_base=0.05, backoff_max=0.1)
    with FakeGateway(token=TOKEN) as gw:
        gw.answer_identify = False
        client = GatewayClient(TOKEN, gateway_url=gw.url, config=config, compress="zstd-stream",
                               identify_gate=MemoryIdentifyGate(interval=0, margin=0))
        try:
            with caplog.at_level(logging.DEBUG, logger="sync_gateway"):
                client.start()
                for n in range(1, 6):
                    assert wait_until(lambda: len(gw.connections) >= n and gw.connections[n - 1].identify, 10)
                    gw.connections[n - 1]._write(_frame(2, zlib.compress(b'{"op": 0}')))  # zlib, not zstd
                assert wait_until(lambda: len(gw.connections) >= 6, 10)
        finally:
            client.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("sync_gateway")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "zstd" in r.getMessage()]
    assert len(errors) == 1 and "Likely cause" in errors[0].getMessage()
    assert len(warnings) <= 2


# -------------------------------------------------------------------------------- 14


def test_14_a_network_outage_does_not_cost_the_session():
    config = LifecycleConfig(hello_timeout=3.0, ready_timeout=3.0, drain_timeout=1.0, force_close_timeout=0.5,
                             backoff_base=0.05, backoff_max=0.2, max_resume_failures=2)
    with FakeGateway(token=TOKEN) as gw:
        proxy = FreezingProxy(gw.host, gw.port).start()
        port = int(proxy.url.rsplit(":", 1)[1].strip("/"))
        gw.resume_gateway_url = proxy.url
        client = GatewayClient(TOKEN, gateway_url=proxy.url, config=config,
                               identify_gate=MemoryIdentifyGate(interval=0, margin=0))
        rec = Recorder(client)
        try:
            client.start()
            assert client.wait_until_ready(10)
            proxy.stop()  # the network goes away: connects are refused
            gw.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(5)])  # missed while down
            rec.wait_kind("disconnected", 1)
            assert wait_until(lambda: client.status().failed_attempts >= 6, timeout=20)
            proxy = FreezingProxy(gw.host, gw.port, port=port).start()  # back
            rec.wait_kind("resumed", timeout=20)
            rec.wait_events("MESSAGE_CREATE", 5)
            assert "session_lost" not in rec.kinds()
            assert handshakes(gw) == ["I", "R"]
        finally:
            client.close()
            proxy.stop()


# -------------------------------------------------------------------------------- 15


def test_15_reconnect_during_a_long_backoff_after_a_corrupt_stream_starts_now():
    config = LifecycleConfig(hello_timeout=3.0, ready_timeout=3.0, drain_timeout=1.0, force_close_timeout=0.5,
                             backoff_base=30.0, backoff_max=60.0)
    with FakeGateway(token=TOKEN) as gw:
        gw.answer_identify = False
        client = GatewayClient(TOKEN, gateway_url=gw.url, config=config, compress="zlib-stream",
                               identify_gate=MemoryIdentifyGate(interval=0, margin=0))
        rec = Recorder(client)
        try:
            client.start()
            assert wait_until(lambda: gw.connections and gw.connections[0].identify, 10)
            gw.connections[0]._write(_frame(2, b"\x00garbage\x00\x00\xff\xff"))
            rec.wait_kind("reconnecting")
            assert float(rec.lifecycle[-1].reason.split(" in ")[1].split("s ")[0]) >= 30.0  # a long backoff
            gw.answer_identify = True
            started = time.monotonic()
            client.reconnect()
            assert client.wait_until_ready(5)
            assert time.monotonic() - started < 5
        finally:
            client.close()


def test_15_identifying_is_emitted_once_when_the_gate_defers(gateway):
    gate = MemoryIdentifyGate(interval=1.0, margin=0.0)
    first = GatewayClient(TOKEN, gateway_url=gateway.url, config=FAST, identify_gate=gate)
    second = GatewayClient(TOKEN, gateway_url=gateway.url, config=FAST, identify_gate=gate)
    rec = Recorder(second)
    try:
        first.start()
        assert first.wait_until_ready(10)
        second.start()
        assert second.wait_until_ready(10)
        assert rec.kinds().count("identifying") == 1
    finally:
        first.close()
        second.close()
