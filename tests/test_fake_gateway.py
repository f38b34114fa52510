"""FakeGateway driven by a plain websocket-client socket and requests: the fake must speak Discord's
protocol (and break it on request) exactly as its contract says, because the client's integration
tests trust it."""
import json
import socket
import struct
import threading
import time
import zlib
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
import requests
import websocket
from websocket import ABNF

from sync_gateway.testing import FakeGateway, ServerConnection

pytestmark = pytest.mark.timeout(30)

TOKEN = "test-token-0123456789"
PROPS = {"os": "linux", "browser": "test", "device": "test"}


def _our_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fake_gateway-")]


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    yield
    alive = _our_threads()
    assert not alive, f"threads left alive: {alive}"


@pytest.fixture
def gw() -> Iterator[FakeGateway]:
    with FakeGateway(token=TOKEN, heartbeat_interval=41250) as gateway:
        yield gateway


def connect(url: str, compress: Optional[str] = None, timeout: float = 5.0) -> websocket.WebSocket:
    query = "?v=10&encoding=json" + (f"&compress={compress}" if compress else "")
    return websocket.create_connection(url + query, timeout=timeout)


def recv_json(ws: websocket.WebSocket) -> Dict[str, Any]:
    opcode, data = ws.recv_data()
    assert opcode == ABNF.OPCODE_TEXT, f"expected a text frame, got opcode {opcode}"
    return json.loads(data)


def send(ws: websocket.WebSocket, payload: Dict[str, Any]) -> None:
    ws.send(json.dumps(payload))


def identify_payload(token: str = TOKEN, **extra: Any) -> Dict[str, Any]:
    return {"op": 2, "d": {"token": token, "intents": 513, "properties": PROPS, **extra}}


def recv_close_code(ws: websocket.WebSocket) -> int:
    """Read until the server's close frame; return its code (websocket-client answers it)."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


def ready_client(gw: FakeGateway, **identify_extra: Any) -> Tuple[websocket.WebSocket, ServerConnection, Dict[str, Any]]:
    ws = connect(gw.url)
    hello = recv_json(ws)
    assert hello["op"] == 10
    send(ws, identify_payload(**identify_extra))
    ready = recv_json(ws)
    assert ready["t"] == "READY"
    conn = [c for c in gw.connections if c.session_id == ready["d"]["session_id"]][0]
    return ws, conn, ready


def expect_silence(ws: websocket.WebSocket, seconds: float = 0.3) -> None:
    """Negative check: nothing arrives within ``seconds``."""
    ws.settimeout(seconds)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()
    ws.settimeout(5.0)


# --------------------------------------------------------------------------- handshake basics


def test_hello_heartbeat_ack_and_connection_record(gw: FakeGateway) -> None:
    ws = connect(gw.url)
    conn = gw.wait_for_connections(1)
    assert conn.index == 0
    assert conn.query == {"v": "10", "encoding": "json"}
    assert conn.compress is None
    assert recv_json(ws) == {"op": 10, "d": {"heartbeat_interval": 41250}, "s": None, "t": None}
    send(ws, {"op": 1, "d": None})
    assert recv_json(ws) == {"op": 11}
    conn.wait_for(op=1)
    assert [d for _, d in conn.heartbeats] == [None]
    assert gw.live_connections() == 1
    gw.ack_heartbeats = False
    send(ws, {"op": 1, "d": 7})
    conn.wait_for(op=1, start=1)
    expect_silence(ws)
    assert [d for _, d in conn.heartbeats] == [None, 7]
    ws.close(status=4000)
    assert conn.closed.wait(2)
    assert gw.live_connections() == 0


def test_identify_ready_and_dispatch(gw: FakeGateway) -> None:
    ws, conn, ready = ready_client(gw, shard=[0, 1])
    d = ready["d"]
    assert ready["s"] == 1 and ready["op"] == 0
    assert d["v"] == 10
    assert d["user"]["username"] == "fake-bot"
    assert d["resume_gateway_url"] == gw.url
    assert d["shard"] == [0, 1]
    assert d["guilds"] == []
    assert d["application"] == {"id": "100000000000000001", "flags": 0}
    assert conn.ready.is_set() and conn.session_id == d["session_id"]
    assert conn.identify is not None and conn.identify["token"] == TOKEN
    assert gw.gateway_bot["session_start_limit"]["remaining"] == 999

    assert gw.dispatch("MESSAGE_CREATE", {"content": "hi"}) == 2
    assert recv_json(ws) == {"op": 0, "t": "MESSAGE_CREATE", "s": 2, "d": {"content": "hi"}}
    assert gw.dispatch_many("TYPING_START", [{"i": i} for i in range(3)]) == [3, 4, 5]
    assert [recv_json(ws)["s"] for _ in range(3)] == [3, 4, 5]
    session = gw.sessions[d["session_id"]]
    assert session.seq == 5
    assert [(s, t) for s, t, _ in session.events] == [
        (1, "READY"),
        (2, "MESSAGE_CREATE"),
        (3, "TYPING_START"),
        (4, "TYPING_START"),
        (5, "TYPING_START"),
    ]
    assert session.connection is conn and not session.invalidated
    ws.close(status=4000)


def test_resume_url_attribute_and_custom_user() -> None:
    user = {"id": "42", "username": "other", "discriminator": "0", "bot": True}
    with FakeGateway(user=user, resume_gateway_url="ws://resume.invalid/") as gw:
        ws, _conn, ready = ready_client(gw)
        assert ready["d"]["resume_gateway_url"] == "ws://resume.invalid/"
        assert ready["d"]["user"] == user
        ws.close(status=4000)


def test_dispatch_without_session_raises(gw: FakeGateway) -> None:
    with pytest.raises(RuntimeError):
        gw.dispatch("X", {})
    ws = connect(gw.url)
    conn = gw.wait_for_connections(1)
    with pytest.raises(RuntimeError):
        gw.dispatch("X", {}, connection=conn)
    ws.close(status=4000)


def test_switches_hello_and_identify(gw: FakeGateway) -> None:
    gw.send_hello = False
    gw.answer_identify = False
    ws = connect(gw.url)
    conn = gw.wait_for_connections(1)
    send(ws, identify_payload())
    conn.wait_for(op=2)
    expect_silence(ws)
    assert conn.identify is not None and conn.session_id is None and not conn.ready.is_set()
    assert gw.sessions == {}
    ws.close(status=4000)


# --------------------------------------------------------------------------- resume


def test_resume_replays_missed_events_then_resumed(gw: FakeGateway) -> None:
    ws, conn1, ready = ready_client(gw)
    session_id = ready["d"]["session_id"]
    assert gw.dispatch("A", {"n": 1}) == 2
    assert recv_json(ws)["s"] == 2
    ws.close(status=4000)  # resumable close
    assert conn1.closed.wait(2)
    assert conn1.client_close_code == 4000
    missed = [gw.dispatch("B", {"n": n}) for n in range(3)]  # recorded, not sent
    assert missed == [3, 4, 5]

    ws2 = connect(gw.url)
    assert recv_json(ws2)["op"] == 10
    send(ws2, {"op": 6, "d": {"token": TOKEN, "session_id": session_id, "seq": 2}})
    got = [recv_json(ws2) for _ in range(4)]
    assert [(p["t"], p["s"]) for p in got] == [("B", 3), ("B", 4), ("B", 5), ("RESUMED", 6)]
    assert [p["d"] for p in got[:3]] == [{"n": 0}, {"n": 1}, {"n": 2}]
    conn2 = gw.connections[1]
    assert conn2.ready.is_set() and conn2.session_id == session_id
    assert conn2.resume == {"token": TOKEN, "session_id": session_id, "seq": 2}
    assert gw.sessions[session_id].connection is conn2
    assert gw.gateway_bot["session_start_limit"]["remaining"] == 999  # RESUME is not a session start
    assert gw.dispatch("C", {}) == 7
    assert recv_json(ws2)["s"] == 7

    # A second resume from an older seq skips READY and the earlier RESUMED.
    ws2.close(status=4000)
    ws3 = connect(gw.url)
    recv_json(ws3)
    send(ws3, {"op": 6, "d": {"token": TOKEN, "session_id": session_id, "seq": 1}})
    got = [recv_json(ws3) for _ in range(6)]
    assert [(p["t"], p["s"]) for p in got] == [("A", 2), ("B", 3), ("B", 4), ("B", 5), ("C", 7), ("RESUMED", 8)]
    ws3.close(status=4000)


def test_resume_takes_session_from_still_open_connection(gw: FakeGateway) -> None:
    ws1, conn1, ready = ready_client(gw)
    session_id = ready["d"]["session_id"]
    ws2 = connect(gw.url)
    recv_json(ws2)
    send(ws2, {"op": 6, "d": {"token": TOKEN, "session_id": session_id, "seq": 1}})
    assert recv_json(ws2)["t"] == "RESUMED"
    gw.dispatch("LIVE", {})
    assert recv_json(ws2)["t"] == "LIVE"
    expect_silence(ws1)
    # An explicit connection still makes the stale socket talk (scenario: late frame from socket N-1).
    seq = gw.dispatch("STALE", {}, connection=conn1)
    assert recv_json(ws1) == {"op": 0, "t": "STALE", "s": seq, "d": {}}
    # Closing the stale socket with 1000 does not kill the session now served elsewhere.
    ws1.close()
    assert conn1.closed.wait(2)
    assert not gw.sessions[session_id].invalidated
    ws2.close(status=4000)


def test_resume_unknown_or_invalidated_session_gets_op9_false(gw: FakeGateway) -> None:
    ws = connect(gw.url)
    recv_json(ws)
    send(ws, {"op": 6, "d": {"token": TOKEN, "session_id": "nope", "seq": 1}})
    assert recv_json(ws) == {"op": 9, "d": False, "s": None, "t": None}
    # Lenient: IDENTIFY on the same connection after the failed resume works.
    send(ws, identify_payload())
    ready = recv_json(ws)
    assert ready["t"] == "READY"
    session_id = ready["d"]["session_id"]
    ws.close(status=4000)

    gw.invalidate_session(session_id)
    ws = connect(gw.url)
    recv_json(ws)
    send(ws, {"op": 6, "d": {"token": TOKEN, "session_id": session_id, "seq": 1}})
    assert recv_json(ws)["op"] == 9
    ws.close(status=4000)


@pytest.mark.parametrize("code, invalidated", [(1000, True), (1001, True), (4000, False), (4900, False)])
def test_client_close_code_decides_if_session_survives(gw: FakeGateway, code: int, invalidated: bool) -> None:
    ws, conn, ready = ready_client(gw)
    session_id = ready["d"]["session_id"]
    ws.close(status=code)
    assert conn.closed.wait(2)
    assert conn.close_received.is_set()
    assert conn.client_close_code == code
    assert gw.sessions[session_id].invalidated is invalidated
    ws = connect(gw.url)
    recv_json(ws)
    send(ws, {"op": 6, "d": {"token": TOKEN, "session_id": session_id, "seq": 1}})
    if invalidated:
        assert recv_json(ws) == {"op": 9, "d": False, "s": None, "t": None}
    else:
        assert recv_json(ws)["t"] == "RESUMED"
    ws.close(status=4000)


def test_dropped_tcp_keeps_session_resumable(gw: FakeGateway) -> None:
    ws, conn, ready = ready_client(gw)
    ws.shutdown()  # no close frame
    assert conn.closed.wait(2)
    assert conn.client_close_code is None
    assert not gw.sessions[ready["d"]["session_id"]].invalidated


def test_resume_with_seq_from_the_future_closes_4007(gw: FakeGateway) -> None:
    ws, _conn, ready = ready_client(gw)
    ws.close(status=4000)
    ws = connect(gw.url)
    recv_json(ws)
    send(ws, {"op": 6, "d": {"token": TOKEN, "session_id": ready["d"]["session_id"], "seq": 99}})
    assert recv_close_code(ws) == 4007


def test_answer_resume_false_records_only(gw: FakeGateway) -> None:
    ws, _conn, ready = ready_client(gw)
    ws.close(status=4000)
    gw.answer_resume = False
    ws = connect(gw.url)
    conn = gw.wait_for_connections(2)
    recv_json(ws)
    send(ws, {"op": 6, "d": {"token": TOKEN, "session_id": ready["d"]["session_id"], "seq": 1}})
    assert conn.wait_for(op=6)["d"]["seq"] == 1
    expect_silence(ws)
    assert not conn.ready.is_set() and conn.resume is not None
    ws.close(status=4000)


# --------------------------------------------------------------------------- protocol errors


def test_second_identify_closes_4005(gw: FakeGateway) -> None:
    ws, conn, _ = ready_client(gw)
    send(ws, identify_payload())
    assert recv_close_code(ws) == 4005
    ws.shutdown()
    assert conn.closed.wait(3)
    assert conn.server_close_code == 4005


def test_op_before_identify_closes_4003(gw: FakeGateway) -> None:
    ws = connect(gw.url)
    recv_json(ws)
    send(ws, {"op": 3, "d": {"since": None, "activities": [], "status": "online", "afk": False}})
    assert recv_close_code(ws) == 4003


def test_unknown_op_after_identify_closes_4001(gw: FakeGateway) -> None:
    ws, _conn, _ = ready_client(gw)
    send(ws, {"op": 3, "d": {"since": None, "activities": [], "status": "idle", "afk": False}})  # fine
    send(ws, {"op": 99, "d": None})
    assert recv_close_code(ws) == 4001


def test_invalid_json_closes_4002_and_is_recorded(gw: FakeGateway) -> None:
    ws = connect(gw.url)
    conn = gw.wait_for_connections(1)
    recv_json(ws)
    ws.send("{not json")
    assert recv_close_code(ws) == 4002
    assert conn.received[-1][1] == {"_invalid": "{not json"}


def test_payload_over_4096_bytes_closes_4002(gw: FakeGateway) -> None:
    ws = connect(gw.url)
    recv_json(ws)
    big = {"op": 1, "d": None, "pad": "é" * 2100}  # under 4096 characters, over 4096 UTF-8 bytes
    assert len(json.dumps(big, ensure_ascii=False)) < 4096
    ws.send(json.dumps(big, ensure_ascii=False))
    assert recv_close_code(ws) == 4002


def test_rate_limit_121st_frame_closes_4008(gw: FakeGateway) -> None:
    gw.ack_heartbeats = False
    ws = connect(gw.url)
    conn = gw.wait_for_connections(1)
    recv_json(ws)
    for i in range(120):
        send(ws, {"op": 1, "d": i})
    conn.wait_for(predicate=lambda p: p.get("d") == 119)
    assert not conn.closed.is_set() and conn.server_close_code is None
    send(ws, {"op": 1, "d": 120})
    assert recv_close_code(ws) == 4008


@pytest.mark.parametrize("op", [2, 6])
def test_bad_token_closes_4004(gw: FakeGateway, op: int) -> None:
    ws = connect(gw.url)
    recv_json(ws)
    if op == 2:
        send(ws, identify_payload(token="wrong"))
    else:
        send(ws, {"op": 6, "d": {"token": "wrong", "session_id": "x", "seq": 1}})
    assert recv_close_code(ws) == 4004


def test_identify_close_code_and_missing_fields(gw: FakeGateway) -> None:
    gw.identify_close_code = 4014
    ws = connect(gw.url)
    recv_json(ws)
    send(ws, identify_payload())
    assert recv_close_code(ws) == 4014
    gw.identify_close_code = None
    ws = connect(gw.url)
    recv_json(ws)
    send(ws, {"op": 2, "d": {"token": TOKEN}})
    assert recv_close_code(ws) == 4001


# --------------------------------------------------------------------------- compression


def test_zlib_stream_split_over_three_messages(gw: FakeGateway) -> None:
    gw.split_frames = 3
    ws = connect(gw.url, compress="zlib-stream")
    conn = gw.wait_for_connections(1)
    assert conn.compress == "zlib-stream" and conn.query["compress"] == "zlib-stream"
    inflator = zlib.decompressobj()
    messages_per_payload: List[int] = []

    def recv_payload() -> Dict[str, Any]:
        buf = b""
        count = 0
        while True:
            opcode, data = ws.recv_data()
            assert opcode == ABNF.OPCODE_BINARY
            buf += data
            count += 1
            if buf.endswith(b"\x00\x00\xff\xff"):
                messages_per_payload.append(count)
                return json.loads(inflator.decompress(buf))

    assert recv_payload()["op"] == 10
    send(ws, identify_payload())
    assert recv_payload()["t"] == "READY"
    gw.dispatch_many("MESSAGE_CREATE", [{"content": "x" * 300, "n": n} for n in range(5)])
    assert [recv_payload()["d"]["n"] for _ in range(5)] == list(range(5))
    assert messages_per_payload == [3] * 7
    gw.split_frames = 1
    gw.dispatch("ONE", {})
    assert recv_payload()["t"] == "ONE"
    assert messages_per_payload[-1] == 1
    ws.close(status=4000)


def test_zstd_stream_one_message_per_payload(gw: FakeGateway) -> None:
    zstandard = pytest.importorskip("zstandard")
    ws = connect(gw.url, compress="zstd-stream")
    conn = gw.wait_for_connections(1)
    assert conn.compress == "zstd-stream"
    decomp = zstandard.ZstdDecompressor().decompressobj()

    def recv_payload() -> Dict[str, Any]:
        opcode, data = ws.recv_data()
        assert opcode == ABNF.OPCODE_BINARY
        return json.loads(decomp.decompress(data))

    assert recv_payload()["op"] == 10
    send(ws, identify_payload())
    assert recv_payload()["t"] == "READY"
    gw.dispatch_many("E", [{"n": n} for n in range(3)])
    assert [recv_payload()["s"] for _ in range(3)] == [2, 3, 4]
    ws.close(status=4000)


# --------------------------------------------------------------------------- closing games


def test_frames_after_client_close_when_reply_is_withheld(gw: FakeGateway) -> None:
    gw.close_reply_delay = None
    ws, conn, ready = ready_client(gw)
    ws.send_close(status=4000)  # close frame only; we keep reading the socket
    assert conn.close_received.wait(2)
    assert conn.client_close_code == 4000
    assert conn.send_op(7)
    seq = gw.dispatch("LATE", {"x": 1}, connection=conn)
    assert conn.send_raw("not json at all")
    assert conn.send_raw(b"\x00\x01binary")
    assert recv_json(ws) == {"op": 7, "d": None, "s": None, "t": None}
    assert recv_json(ws) == {"op": 0, "t": "LATE", "s": seq, "d": {"x": 1}}
    assert ws.recv_data() == (ABNF.OPCODE_TEXT, b"not json at all")
    assert ws.recv_data() == (ABNF.OPCODE_BINARY, b"\x00\x01binary")
    # The close frame is never answered: nothing more arrives, the socket stays open.
    ws.settimeout(0.4)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv_frame()
    assert not conn.closed.is_set() and gw.live_connections() == 1
    assert not gw.sessions[ready["d"]["session_id"]].invalidated
    ws.sock.close()  # the client gives up and drops TCP
    assert conn.closed.wait(2)
    assert gw.live_connections() == 0


def test_close_reply_delay(gw: FakeGateway) -> None:
    gw.close_reply_delay = 0.5
    ws, conn, _ = ready_client(gw)
    started = time.monotonic()
    ws.send_close(status=4000)
    frame = ws.recv_frame()
    elapsed = time.monotonic() - started
    assert frame.opcode == ABNF.OPCODE_CLOSE
    assert struct.unpack("!H", frame.data[:2])[0] == 4000  # echoed
    assert 0.4 <= elapsed < 2.0
    with pytest.raises((websocket.WebSocketConnectionClosedException, OSError)):
        ws.recv_frame()  # the server half-closed TCP (FIN) after its answer
    ws.shutdown()
    assert conn.closed.wait(2)


def test_server_close_then_client_answer(gw: FakeGateway) -> None:
    ws, conn, _ = ready_client(gw)
    conn.close(4000, "bye")
    opcode, frame = ws.recv_data_frame(control_frame=True)  # websocket-client answers with 1000
    assert opcode == ABNF.OPCODE_CLOSE and frame.data == struct.pack("!H", 4000) + b"bye"
    assert conn.close_received.wait(2)
    ws.shutdown()
    assert conn.closed.wait(2)
    assert conn.server_close_code == 4000 and conn.client_close_code == 1000
    # an answer to the server's close is not a client-initiated 1000: the session survives
    assert not gw.sessions[conn.session_id].invalidated  # type: ignore[index]
    assert not conn.send_op(1)  # nothing can be sent any more


def test_server_close_unanswered_drops_tcp_after_2s(gw: FakeGateway) -> None:
    ws = connect(gw.url)
    conn = gw.wait_for_connections(1)
    recv_json(ws)
    started = time.monotonic()
    conn.close(4009)
    frame = ws.recv_frame()  # low level: no automatic answer
    assert frame.opcode == ABNF.OPCODE_CLOSE
    assert conn.closed.wait(4)
    assert 1.8 <= time.monotonic() - started < 3.5
    ws.shutdown()


def test_drop_aborts_without_close_frame(gw: FakeGateway) -> None:
    ws, conn, _ = ready_client(gw)
    conn.drop()
    assert conn.closed.is_set()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        ws.recv_frame()
    assert conn.client_close_code is None and conn.server_close_code is None
    assert gw.live_connections() == 0
    ws.shutdown()


def test_invalid_session_and_wait_for_timeouts(gw: FakeGateway) -> None:
    ws = connect(gw.url)
    conn = gw.wait_for_connections(1)
    recv_json(ws)
    conn.invalid_session(True)
    assert recv_json(ws) == {"op": 9, "d": True, "s": None, "t": None}
    with pytest.raises(TimeoutError):
        conn.wait_for(op=2, timeout=0.2)
    with pytest.raises(TimeoutError):
        gw.wait_for_connections(2, timeout=0.2)
    send(ws, {"op": 1, "d": None})
    assert conn.wait_for(predicate=lambda p: p["op"] == 1)["d"] is None
    ws.shutdown()
    assert conn.closed.wait(2)
    with pytest.raises(TimeoutError):  # closed: fails at once instead of waiting
        conn.wait_for(op=2, timeout=10)


def test_stop_closes_live_connections() -> None:
    gw = FakeGateway().start()
    ws = connect(gw.url)
    conn = gw.wait_for_connections(1)
    recv_json(ws)
    gw.stop()
    assert conn.closed.is_set()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        ws.recv_frame()
    ws.shutdown()
    gw.stop()  # idempotent


# --------------------------------------------------------------------------- REST


def test_rest_routes_and_auth(gw: FakeGateway) -> None:
    auth = {"Authorization": f"Bot {TOKEN}", "User-Agent": "DiscordBot (test, 0)"}
    r = requests.get(gw.api_base + "/gateway/bot", headers=auth, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json() == {
        "url": gw.url,
        "shards": 1,
        "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 14400000, "max_concurrency": 1},
    }
    assert requests.get(gw.api_base + "/gateway", timeout=5).json() == {"url": gw.url}
    assert requests.get(gw.api_base + "/users/@me", headers=auth, timeout=5).json()["username"] == "fake-bot"
    app = requests.get(gw.api_base + "/oauth2/applications/@me", headers=auth, timeout=5).json()
    assert app["id"] == "100000000000000001" and app["bot"]["id"] == "100000000000000001"

    for headers in ({}, {"Authorization": "Bot wrong"}, {"Authorization": TOKEN}):
        r = requests.get(gw.api_base + "/gateway/bot", headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.json() == {"message": "401: Unauthorized", "code": 0}
    assert requests.get(gw.api_base + "/gateway", headers={"Authorization": "Bot wrong"}, timeout=5).status_code == 401
    assert requests.get(gw.api_base + "/nope", headers=auth, timeout=5).status_code == 404

    gw.gateway_bot["shards"] = 4
    assert requests.get(gw.api_base + "/gateway/bot", headers=auth, timeout=5).json()["shards"] == 4
    log = gw.rest_requests
    assert log[0][0] == "GET" and log[0][1] == "/api/v10/gateway/bot"
    assert log[0][2]["Authorization"] == f"Bot {TOKEN}"
    assert len(log) == 10
    assert gw.connections == []  # REST requests are not websocket connections


def test_rest_without_token_configured_needs_no_auth() -> None:
    with FakeGateway() as gw:
        assert requests.get(gw.api_base + "/gateway/bot", timeout=5).status_code == 200
        # a plain HTTP request to the websocket path is refused, not a crash
        assert requests.get(gw.url.replace("ws://", "http://"), timeout=5).status_code == 426


def test_malformed_http_is_survived(gw: FakeGateway) -> None:
    with socket.create_connection((gw.host, gw.port), timeout=5) as s:
        s.sendall(b"garbage\r\n\r\n")
        s.recv(1024)  # whatever comes back (or EOF), the server lives on
    ws, _conn, _ = ready_client(gw)
    ws.close(status=4000)


# --------------------------------------------------------------------------- TLS (wss:// and https://)


def tls_connect(gw: FakeGateway, timeout: float = 5.0) -> websocket.WebSocket:
    return websocket.create_connection(
        gw.url + "?v=10&encoding=json", timeout=timeout, sslopt={"context": gw.client_ssl_context()}
    )


def test_tls_gateway_serves_wss_and_https() -> None:
    with FakeGateway(token=TOKEN, tls=True) as gw:
        assert gw.url == f"wss://127.0.0.1:{gw.port}/" and gw.api_base.startswith("https://127.0.0.1:")
        ws = tls_connect(gw)
        assert recv_json(ws)["op"] == 10
        send(ws, identify_payload())
        assert recv_json(ws)["t"] == "READY"
        gw.dispatch_many("MESSAGE_CREATE", [{"i": i, "pad": "x" * 3000} for i in range(50)])
        assert [recv_json(ws)["d"]["i"] for _ in range(50)] == list(range(50))
        ws.close()
        r = requests.get(gw.api_base + "/gateway", verify=gw.ca_file, timeout=5)
        assert r.json() == {"url": gw.url}
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(gw.api_base + "/gateway", timeout=5)  # the system's CAs do not know it


def test_tls_client_that_refuses_the_certificate_changes_nothing() -> None:
    import ssl

    with FakeGateway(token=TOKEN, tls=True) as gw:
        with pytest.raises(ssl.SSLCertVerificationError):
            websocket.create_connection(gw.url, timeout=5, sslopt={"context": ssl.create_default_context()})
        ws = tls_connect(gw)  # still serving
        assert recv_json(ws)["op"] == 10
        assert len(gw.connections) == 1
        ws.close()


def test_tls_stop_during_handshake_and_drop() -> None:
    gw = FakeGateway(tls=True).start()
    silent = socket.create_connection((gw.host, gw.port))  # TCP only: the server waits for a ClientHello
    ws = tls_connect(gw)
    conn = gw.wait_for_connections(1)
    recv_json(ws)
    conn.drop()
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
        ws.recv_frame()
    started = time.monotonic()
    gw.stop()
    assert time.monotonic() - started < 2.0
    assert silent.recv(16) == b""  # closed by stop()
    silent.close()


def test_tls_records_cut_the_plaintext() -> None:
    """trickle.records: every write goes out as TLS records of that many plaintext bytes, so the
    client's TLS layer hands the reader the stream in exactly those pieces (here: byte by byte)."""
    import ssl

    from sync_gateway.testing import Trickle

    with FakeGateway(tls=True, trickle=Trickle(records=(1, 1), chunk=(1, 64), pause=(0.0, 0.0), hold_bytes=0)) as gw:
        raw = socket.create_connection((gw.host, gw.front_port), timeout=5)
        tls = gw.client_ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
        tls.sendall(
            b"GET /?v=10&encoding=json HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        sizes, data = [], b""
        while not data.endswith(b"}"):  # the 101 response, then HELLO
            piece = tls.recv(65536)
            assert piece
            sizes.append(len(piece))
            data += piece
        assert data.startswith(b"HTTP/1.1 101") and b'"heartbeat_interval"' in data
        assert set(sizes) == {1}
        tls.close()


def test_stall_upgrade_holds_the_101_until_cleared(gw: FakeGateway) -> None:
    gw.stall_upgrade = True
    result: Dict[str, Any] = {}

    def run() -> None:
        ws = connect(gw.url)
        result["hello"] = recv_json(ws)
        ws.close()

    t = threading.Thread(target=run, name="test-stall-upgrade")
    t.start()
    deadline = time.monotonic() + 5
    while gw.held_requests < 1 and time.monotonic() < deadline:
        threading.Event().wait(0.01)
    assert gw.held_requests == 1
    t.join(0.3)
    assert t.is_alive() and gw.connections == []  # no 101 while held
    gw.stall_upgrade = False
    t.join(5)
    assert result["hello"]["op"] == 10


def test_encode_and_send_bytes_cut_a_frame_anywhere(gw: FakeGateway) -> None:
    ws, conn, ready = ready_client(gw)
    seq, data = gw.encode_dispatch("MESSAGE_CREATE", {"i": 1})
    assert seq == 2 and gw.connection_for() is conn
    assert conn.send_bytes(data[:3])
    assert conn.send_bytes(data[3:])
    assert recv_json(ws) == {"op": 0, "t": "MESSAGE_CREATE", "s": 2, "d": {"i": 1}}
    assert [s for s, _, _ in gw.sessions[ready["d"]["session_id"]].events] == [1, 2]
    ws.close()
