"""Transport, limits and security on loopback (issue: transport, limits, REST and security)."""
import dataclasses
import logging
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

import sync_gateway as sg
from sync_gateway import connection as connection_mod
from sync_gateway.testing import FakeGateway
from support import FAST, TOKEN, Recorder, handshakes, wait_until

pytestmark = pytest.mark.timeout(90)


def started(make_client, **kw):
    client, rec = make_client(**kw)
    client.start()
    assert client.wait_until_ready(10)
    return client, rec


# ------------------------------------------------------------------------------ malformed input


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",  # invalid JSON
        "[1, 2, 3]",  # a JSON value that is not an object
        '{"op": 99, "d": null}',  # unknown opcode
        '{"op": 0, "s": null, "d": {}}',  # dispatch without t
    ],
    ids=["invalid-json", "not-an-object", "unknown-op", "dispatch-without-t"],
)
def test_malformed_text_frame_is_skipped_and_client_goes_on(gateway, make_client, raw):
    client, rec = started(make_client, compress=None)
    conn = gateway.connections[0]
    conn.send_raw(raw)
    gateway.dispatch("MESSAGE_CREATE", {"i": "after"})
    rec.wait_events("MESSAGE_CREATE", 1)
    assert client.status().state == "ready" and len(gateway.connections) == 1


@pytest.mark.parametrize("compress", [None, "zlib-stream"])
def test_an_event_with_a_good_head_and_a_broken_body_is_skipped_loudly(gateway, make_client, caplog, compress):
    """Events are parsed on the dispatcher thread: one whose head reads well but whose body is
    not JSON is logged, skipped and kept as last_error there; its seq counts, the session and
    the socket go on, and the next event arrives."""
    client, rec = started(make_client, compress=compress)
    conn = gateway.connection_for()
    texts = [b'{"t":"MESSAGE_CREATE","s":1001,"op":0,"d":{"i":"before"}}']
    texts.append(b'{"t":"MESSAGE_CREATE","s":1002,"op":0,"d":{oops}}')
    texts.append(b'{"t":"MESSAGE_CREATE","s":1003,"op":0,"d":{"i":"after"}}')
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        for text in texts:
            conn.send_text(text)
        rec.wait_events("MESSAGE_CREATE", 2)
        assert wait_until(lambda: "malformed" in (client.status().last_error or ""))
    assert [(e.seq, e.data) for e in rec.named("MESSAGE_CREATE")] == [(1001, {"i": "before"}), (1003, {"i": "after"})]
    assert "MESSAGE_CREATE (seq 1002) has a malformed payload" in caplog.text
    assert client.status().state == "ready" and len(gateway.connections) == 1


def test_a_stuck_handler_behind_a_long_burst_does_not_stop_the_reader(gateway, make_client):
    """Readers pace themselves while the handlers are far behind, but only for a few ms per
    batch: with a handler stuck and thousands of events queued behind it, an op 7 that arrives
    after them is still read at once, and the client moves to a new socket."""
    from sync_gateway import dispatch as dispatch_mod

    release, stuck = threading.Event(), threading.Event()
    client, rec = started(make_client)

    def handler(event):
        stuck.set()
        release.wait(30)

    client.on("MESSAGE_CREATE", handler)
    conn = gateway.connection_for()
    burst = 4 * dispatch_mod.PACE_BACKLOG
    try:
        gateway.dispatch("MESSAGE_CREATE", {"i": -1})
        assert stuck.wait(10)  # the handler holds the dispatcher: what comes next queues up
        gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(burst)])
        assert wait_until(lambda: client.load()["dispatch_backlog"] > dispatch_mod.PACE_BACKLOG, 10)
        gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(burst, 2 * burst)])  # read paced
        conn.send_op(7)
        gateway.wait_for_connections(2, 10)
        assert client.load()["reader_paced"] >= 1
    finally:
        release.set()
    rec.wait_events("MESSAGE_CREATE", 2 * burst + 1, timeout=30)


def test_hello_without_interval_reconnects(gateway, make_client):
    gateway.send_hello = False
    client, rec = make_client()
    client.start()
    conn = gateway.wait_for_connections(1, 5)
    conn.send({"op": 10, "d": {}})
    gateway.send_hello = True
    assert client.wait_until_ready(10)
    assert len(gateway.connections) == 2
    assert "HELLO" in (client.status().last_error or "")


def test_binary_frame_without_compression_is_skipped(gateway, make_client):
    client, rec = started(make_client, compress=None)
    gateway.connections[0].send_raw(b"\x00\x01binary")
    gateway.dispatch("MESSAGE_CREATE", {"i": 1})
    rec.wait_events("MESSAGE_CREATE", 1)
    assert len(gateway.connections) == 1


@pytest.mark.parametrize("compress", ["zlib-stream", "zstd-stream"])
def test_corrupt_compressed_stream_drops_socket_and_resumes(gateway, make_client, caplog, compress):
    if compress == "zstd-stream":
        pytest.importorskip("zstandard")
    client, rec = started(make_client, compress=compress)
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        garbage = b"\x28\xb5\x2f\xfd" + os.urandom(64) if compress == "zstd-stream" else b"garbage" + b"\x00\x00\xff\xff"
        gateway.connections[0].send_raw(garbage)
        gateway.dispatch("MESSAGE_CREATE", {"i": 1})  # sent after the corruption: replayed on RESUME
        rec.wait_kind("resumed")
        rec.wait_events("MESSAGE_CREATE", 1)
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("sync_gateway.") and r.levelname == "WARNING"]
    assert any("e1" in w and "corrupt" in w for w in warnings)
    assert handshakes(gateway) == ["I", "R"]


def test_oversized_message_drops_socket_and_resumes(gateway, make_client, monkeypatch):
    monkeypatch.setattr(connection_mod, "MAX_MESSAGE_BYTES", 64 * 1024)
    client, rec = started(make_client, compress=None)
    gateway.dispatch("MESSAGE_CREATE", {"blob": "x" * 100_000})
    rec.wait_kind("disconnected")
    assert "over" in (client.status().last_error or "")
    # every RESUME replays the same oversized event: after max_resume_failures the client gives
    # the poisoned session up and IDENTIFYs anew, and goes on delivering
    rec.wait_kind("ready", 2, timeout=20)
    assert handshakes(gateway) == ["I", "R", "R", "R", "I"]
    gateway.dispatch("MESSAGE_CREATE", {"i": "after"})
    rec.wait_events("MESSAGE_CREATE", 1)
    assert rec.named("MESSAGE_CREATE")[0].data == {"i": "after"}


def test_zlib_payload_split_over_frames_and_1mb_guild_create(gateway, make_client):
    gateway.split_frames = 5
    client, rec = started(make_client)
    guild = {"id": "9", "channels": [{"id": str(i), "name": "c" * 80, "topic": os.urandom(8).hex()} for i in range(9000)]}
    assert len(str(guild)) > 1_000_000
    gateway.dispatch("GUILD_CREATE", guild)
    rec.wait_events("GUILD_CREATE", 1)
    assert rec.named("GUILD_CREATE")[0].data == guild


def test_zstd_without_package_is_a_config_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **kw):
        if name == "zstandard":
            raise ImportError("no zstandard")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(sg.ConfigError, match=r"sync-gateway\[zstd\]"):
        sg.GatewayClient(TOKEN, compress="zstd-stream")


# ------------------------------------------------------------------------------ limits


def test_150_sends_never_exceed_120_per_60s_and_heartbeats_flow():
    """150 user sends from a worker thread: at the server, no 60 s window holds more than 120
    frames (heartbeats included), heartbeats keep flowing, and nothing is closed with 4008."""
    with FakeGateway(heartbeat_interval=5000, token=TOKEN) as gw:
        client = sg.GatewayClient(TOKEN, gateway_url=gw.url, config=FAST, identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))
        errors = []
        try:
            client.start()
            assert client.wait_until_ready(10)

            def worker():
                try:
                    for i in range(150):
                        client.update_presence(status="online", activities=[{"name": f"n{i}", "type": 0}], timeout=90)
                except Exception as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            t = threading.Thread(target=worker, name="test-sender")
            t.start()
            conn = gw.connections[0]
            t.join(85)
            assert not t.is_alive() and not errors
            # the fake records frames on its own thread: let it catch up with the last send
            assert wait_until(lambda: sum(1 for _, p in conn.received if p.get("op") == 3) == 150)
            assert len(gw.connections) == 1 and conn.client_close_code is None and not conn.closed.is_set()
            times = [ts for ts, _ in conn.received]
            for i, start in enumerate(times):
                in_window = sum(1 for ts in times[i:] if ts < start + 60.0)
                assert in_window <= 120
            beats = [ts for ts, _ in conn.heartbeats]
            gaps = [b - a for a, b in zip(beats, beats[1:])]
            assert len(beats) >= 10 and max(gaps) < 6.5  # the 5 s interval held while the window was full
            assert sum(1 for _, p in conn.received if p.get("op") == 3) == 150
        finally:
            client.close()


def test_two_clients_sharing_a_gate_identify_5s_apart():
    gate = sg.MemoryIdentifyGate()
    with FakeGateway(token=TOKEN) as gw:
        clients = [sg.GatewayClient(TOKEN, gateway_url=gw.url, config=FAST, identify_gate=gate) for _ in range(2)]
        try:
            for c in clients:
                c.start()
            for c in clients:
                assert c.wait_until_ready(20)
            ids = sorted(ts for conn in gw.connections for ts, p in conn.received if p.get("op") == 2)
            assert len(ids) == 2 and ids[1] - ids[0] >= 5.0
            assert any(c.status().identify_wait is None for c in clients)
        finally:
            for c in clients:
                c.close()


def test_session_start_limit_exhausted_delays_identify(gateway, caplog):
    gateway.gateway_bot["session_start_limit"].update(remaining=0, reset_after=1500)
    client = sg.GatewayClient(TOKEN, api_base=gateway.api_base, config=FAST, identify_gate=sg.MemoryIdentifyGate())
    rec = Recorder(client)
    try:
        with caplog.at_level(logging.WARNING, logger="sync_gateway"):
            t0 = time.monotonic()
            client.start()
            conn = gateway.wait_for_connections(1, 5)
            assert wait_until(lambda: client.status().identify_wait is not None)
            assert "session start limit" in client.status().identify_wait
            assert client.wait_until_ready(10)
            sent = [ts for ts, p in conn.received if p.get("op") == 2][0]
            assert sent - t0 >= 1.4
        assert any("daily session starts remaining" in r.getMessage() for r in caplog.records)
        assert client.status().identify_wait is None
    finally:
        client.close()


def test_send_window_is_per_socket_and_user_sends_wait_for_ready(gateway, make_client):
    client, rec = started(make_client)
    assert gateway.connections[0].wait_for(op=2)
    conn_obj = client._supervisor.ready_connection
    assert conn_obj is not None and conn_obj.window.used() >= 1  # IDENTIFY counted
    gateway.connections[0].send_op(7)
    rec.wait_kind("resumed")
    assert client._supervisor.ready_connection is not conn_obj


# ------------------------------------------------------------------------------ security


def test_token_never_logged_over_a_whole_session(gateway, make_client, caplog):
    with caplog.at_level(logging.DEBUG):
        client, rec = started(make_client, api_base=gateway.api_base, gateway_url=None)
        gateway.dispatch("MESSAGE_CREATE", {"i": 1})
        rec.wait_events("MESSAGE_CREATE", 1)
        gateway.connections[0].send_op(7)
        rec.wait_kind("resumed")
        gateway.connections[-1].invalid_session(False)
        rec.wait_kind("ready", 2)
        client.update_presence(status="idle")
        client.close()
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert len(caplog.records) > 20
    assert TOKEN not in text
    assert TOKEN not in repr(client) and TOKEN not in str(client.status())


def test_wss_certificate_is_verified(tmp_path, make_client):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1"],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip("openssl cannot make a test certificate here")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    port = server.getsockname()[1]
    stop = threading.Event()
    handshakes_seen = []

    def serve():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                raw, _ = server.accept()
            except OSError:
                continue
            try:
                raw.settimeout(2)
                ctx.wrap_socket(raw, server_side=True).close()
                handshakes_seen.append("completed")
            except (ssl.SSLError, OSError):
                handshakes_seen.append("refused by client")
            finally:
                raw.close()

    t = threading.Thread(target=serve, name="test-tls-server")
    t.start()
    try:
        client, rec = make_client(url=f"wss://127.0.0.1:{port}/")
        client.start()
        assert wait_until(lambda: "certificate" in (client.status().last_error or ""), timeout=10)
        assert "completed" not in handshakes_seen
        client.close()
    finally:
        stop.set()
        t.join(5)
        server.close()


def test_dead_peer_caught_by_read_timeout(monkeypatch):
    """Heartbeats aside, the socket's read timeout (heartbeat interval + 10 s) catches a dead peer."""
    from sync_gateway import protocol

    calls = []
    real = protocol.ShardMachine._on_hello

    def spy(self, s, payload, now):
        out = real(self, s, payload, now)
        calls.extend(a.seconds for a in out if isinstance(a, protocol.SetReadTimeout))
        return out

    monkeypatch.setattr(protocol.ShardMachine, "_on_hello", spy)
    with FakeGateway(heartbeat_interval=1000, token=TOKEN) as gw:
        client = sg.GatewayClient(TOKEN, gateway_url=gw.url, config=FAST, identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))
        try:
            client.start()
            assert client.wait_until_ready(10)
            assert calls == [11.0]
            sock = client._supervisor.ready_connection._sock
            assert sock.gettimeout() == pytest.approx(11.0)
        finally:
            client.close()


class _LateFirstBeat:
    """An RNG whose first heartbeat comes late in the interval (and op 9 delays stay short)."""

    def random(self):
        return 0.99

    def uniform(self, a, b):
        return a


def test_identify_gate_wait_longer_than_hello_timeout_is_not_a_read_timeout(gateway, make_client):
    """After HELLO, while the gate holds IDENTIFY and no heartbeat is due yet, nothing arrives:
    the reader must use the read timeout set after HELLO, not the connect timeout it started with."""
    gate = sg.MemoryIdentifyGate(interval=2.0, margin=0)
    assert gate.try_acquire(0, 1).wait == 0  # someone else just identified
    client, rec = make_client(identify_gate=gate, config=dataclasses.replace(FAST, hello_timeout=0.5),
                              _rng=_LateFirstBeat())
    client.start()
    assert client.wait_until_ready(10)
    assert len(gateway.connections) == 1 and rec.kinds().count("disconnected") == 0


def _server_frame(first_byte, payload, masked=False):
    n = len(payload)
    if n < 126:
        head = bytes([first_byte, n | (0x80 if masked else 0)])
    elif n < 65536:
        head = bytes([first_byte, 126 | (0x80 if masked else 0)]) + n.to_bytes(2, "big")
    else:
        head = bytes([first_byte, 127 | (0x80 if masked else 0)]) + n.to_bytes(8, "big")
    return head + (b"\x00\x00\x00\x00" if masked else b"") + payload


def test_reader_takes_whole_plain_messages_at_once_and_leaves_everything_else_to_next_frame():
    """take_messages (the reader's fast path) takes whole, unfragmented text and binary frames of
    every length encoding, in order, up to the limit, and stops at anything else: a control frame,
    a fragment, a masked frame, reserved bits, a frame not yet whole. Those go to next_frame()."""
    a, b = socket.socketpair()
    try:
        conn = dataclasses.make_dataclass("C", ["_sock", "_read_timeout", "_last_rx", "_tls_lock"])(a, 5.0, 0.0, None)
        big = os.urandom(70_000)
        buf = (
            _server_frame(0x82, b"x" * 10)
            + _server_frame(0x81, b"y" * 200)
            + _server_frame(0x82, big)
            + _server_frame(0x89, b"ping")  # a ping stops the batch
            + _server_frame(0x82, b"after")
            + _server_frame(0x02, b"frag")  # a fragment's first frame (no FIN)
            + _server_frame(0x80, b"ment")
            + _server_frame(0xC2, b"rsv")  # a reserved bit
        )
        reader = connection_mod._FrameReader(conn, buf)
        out = []
        reader.take_messages(out, 2)  # the limit holds
        assert [bytes(d) for d, _ in out] == [b"x" * 10, b"y" * 200]
        reader.take_messages(out, 64)
        assert [(bytes(d), binary) for d, binary in out] == [(b"x" * 10, True), (b"y" * 200, False), (big, True)]
        assert reader.next_frame() == (True, 0x9, b"ping")
        out.clear()
        reader.take_messages(out, 64)
        assert [bytes(d) for d, _ in out] == [b"after"]
        out.clear()
        reader.take_messages(out, 64)
        assert out == []  # the fragment is next_frame()'s
        assert reader.next_frame() == (False, 0x2, b"frag")
        assert reader.next_frame() == (True, 0x0, b"ment")
        reader.take_messages(out, 64)
        assert out == []
        with pytest.raises(Exception, match="reserved bits"):
            reader.next_frame()

        masked = connection_mod._FrameReader(conn, _server_frame(0x82, b"m", masked=True))
        masked.take_messages(out, 64)
        assert out == []
        with pytest.raises(Exception, match="masked"):
            masked.next_frame()

        frame = _server_frame(0x82, b"z" * 300)
        cut = connection_mod._FrameReader(conn, frame[:150])  # the rest has not arrived
        cut.take_messages(out, 64)
        assert out == [] and cut.complete() is False
        b.sendall(frame[150:])
        assert cut.next_frame() == (True, 0x2, b"z" * 300)
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("upgrade", [False, True], ids=["during-upgrade", "after-upgrade"])
def test_peer_eof_during_the_handshake_is_told_apart_from_eof_on_an_open_socket(upgrade):
    """A peer that closes TCP before answering the upgrade ends the reader with 'connection lost
    during the handshake'; after a 101 (the socket is open), with plain 'connection lost'."""
    import base64
    import hashlib

    listener = socket.create_server(("127.0.0.1", 0))
    served = threading.Event()

    def serve():
        peer, _ = listener.accept()
        with peer:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = peer.recv(4096)
                if not chunk:
                    break
                head += chunk
            if upgrade:
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key:")
                )
                accept = base64.b64encode(hashlib.sha1(key + connection_mod._WS_GUID).digest())
                peer.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
        served.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    posts = []
    conn = connection_mod.Connection(1, f"ws://127.0.0.1:{listener.getsockname()[1]}/", posts.append, connect_timeout=5.0)
    try:
        conn.start()
        assert conn.ended.wait(10)
        assert served.wait(10)
        closed = [p for p in posts if p[0] == "closed"]
        assert closed == [("closed", 1, None, "", "connection lost" if upgrade else "connection lost during the handshake")]
        assert conn.opened.is_set() is upgrade
    finally:
        conn.abort()
        conn.thread.join(5)
        thread.join(5)
        listener.close()
