"""One shard end to end over loopback: GatewayClient against FakeGateway (real sockets)."""
import logging
import threading
import time

import pytest

import sync_gateway as sg
from sync_gateway.testing import FakeGateway

from support import FAST, TOKEN, Recorder

pytestmark = pytest.mark.timeout(60)


def test_identify_payload_and_url_query(gateway, make_client):
    client, rec = make_client(intents=sg.Intents.GUILDS | sg.Intents.GUILD_MESSAGES, large_threshold=100,
                              presence={"status": "idle"})
    client.start()
    assert client.wait_until_ready(10)
    conn = gateway.connections[0]
    assert conn.query == {"v": "10", "encoding": "json", "compress": "zlib-stream"}
    d = conn.identify
    assert d["token"] == TOKEN and d["intents"] == 513 and d["large_threshold"] == 100
    assert d["presence"]["status"] == "idle"
    assert set(d["properties"]) == {"os", "browser", "device"}
    assert "shard" not in d
    st = client.status()
    assert st.connected and st.state == "ready" and st.last_disconnect is None and st.connected_at is not None
    rec.wait_kind("ready")
    assert rec.kinds()[:4] == ["connecting", "hello", "identifying", "ready"]


def test_heartbeat_cadence_and_payload():
    with FakeGateway(heartbeat_interval=200, token=TOKEN) as gw:
        client = sg.GatewayClient(TOKEN, gateway_url=gw.url, config=FAST,
                                  identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))
        try:
            client.start()
            assert client.wait_until_ready(10)
            conn = gw.connections[0]
            gw.dispatch("MESSAGE_CREATE", {"content": "x"})
            conn.wait_for(predicate=lambda p: p.get("op") == 1 and p.get("d") == 2, timeout=5)
            deadline = time.monotonic() + 10
            while len(conn.heartbeats) < 6 and time.monotonic() < deadline:
                conn.wait_for(op=1, start=len(conn.received), timeout=5)
            beats = [t for t, _ in conn.heartbeats]
            gaps = [b - a for a, b in zip(beats, beats[1:])]
            # every gap is the interval (loopback jitter aside); the first beat is interval * random
            steady = gaps[1:]
            assert all(0.1 <= g <= 0.45 for g in steady), gaps
            assert sum(steady) / len(steady) == pytest.approx(0.2, abs=0.06)
            assert client.status().latency is not None
            assert client.status().last_heartbeat_ack_at is not None
        finally:
            client.close()


def test_thousand_dispatches_in_order_slow_handler_does_not_delay_heartbeats():
    with FakeGateway(heartbeat_interval=100, token=TOKEN) as gw:
        client = sg.GatewayClient(TOKEN, gateway_url=gw.url, config=FAST,
                                  identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))
        rec = Recorder(client)
        release = threading.Event()
        entered = threading.Event()

        @client.on("MESSAGE_CREATE")
        def slow(event):
            if event.data["i"] == 0:
                entered.set()
                release.wait(10)

        try:
            client.start()
            assert client.wait_until_ready(10)
            conn = gw.connections[0]
            gw.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(1000)])
            assert entered.wait(5)
            # while the handler blocks, heartbeats keep going and are acknowledged
            start = len(conn.heartbeats)
            for _ in range(4):
                conn.wait_for(op=1, start=len(conn.received), timeout=2)
            assert len(conn.heartbeats) >= start + 4
            assert client.status().state == "ready"
            release.set()
            rec.wait_events("MESSAGE_CREATE", 1000)
            assert [e.data["i"] for e in rec.named("MESSAGE_CREATE")] == list(range(1000))
            assert rec.seqs() == list(range(2, 1002))
            assert rec.threads == {"sync_gateway-dispatch-s0"}
        finally:
            release.set()
            client.close()


def test_op7_resumes_with_no_event_lost_or_duplicated(gateway, make_client):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    first = gateway.connections[0]
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(50)])
    rec.wait_events("MESSAGE_CREATE", 50)
    first.send_op(7)
    first.closed.wait(5)
    # events sent while the client is between sockets are replayed on RESUME
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(50, 80)])
    second = gateway.wait_for_connections(2, 5)
    rec.wait_kind("resumed")
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(80, 100)])
    rec.wait_events("MESSAGE_CREATE", 100)
    assert [e.data["i"] for e in rec.named("MESSAGE_CREATE")] == list(range(100))
    assert first.client_close_code == 4000
    assert second.resume is not None and second.identify is None
    assert second.query == first.query  # same v/encoding/compress on the resume URL
    st = client.status()
    assert st.resumes == 1 and st.identifies == 1 and st.last_disconnect == "op 7 reconnect"


def test_dropped_tcp_resumes_with_no_event_lost_or_duplicated(gateway, make_client):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(20)])
    rec.wait_events("MESSAGE_CREATE", 20)
    gateway.connections[0].drop()
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(20, 40)])
    rec.wait_kind("resumed")
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(40, 60)])
    rec.wait_events("MESSAGE_CREATE", 60)
    assert [e.data["i"] for e in rec.named("MESSAGE_CREATE")] == list(range(60))
    assert len(gateway.connections) == 2 and gateway.connections[1].resume is not None


def test_fatal_close_raises_from_run_forever(gateway, make_client):
    gateway.identify_close_code = 4004
    client, rec = make_client()
    started = time.monotonic()
    with pytest.raises(sg.FatalGatewayError) as info:
        client.run_forever()
    assert info.value.code == 4004
    assert time.monotonic() - started < 5
    assert len(gateway.connections) == 1  # no retry
    assert TOKEN not in str(info.value)
    assert client.status().state == "failed"
    assert "fatal" in rec.kinds()


def test_close_sends_1000_and_leaves_no_thread(gateway, make_client):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    assert len(client.threads()) == 3  # supervisor, reader, dispatcher
    client.close()
    conn = gateway.connections[0]
    assert conn.closed.wait(5)
    assert conn.client_close_code == 1000
    assert client.threads() == []
    assert client.status().state == "closed"
    assert rec.kinds()[-1] == "closed"
    client.close()  # idempotent


def test_start_twice_and_context_manager(gateway):
    with sg.GatewayClient(TOKEN, gateway_url=gateway.url, config=FAST,
                          identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0)) as client:
        client.start()
        with pytest.raises(RuntimeError):
            client.start()
        assert client.wait_until_ready(10)
    assert client.threads() == []
    assert gateway.connections[0].closed.wait(5)


@pytest.mark.parametrize("compress,split", [(None, 1), ("zlib-stream", 3), ("zstd-stream", 1)])
def test_compression_modes_and_large_payload(gateway, make_client, compress, split):
    if compress == "zstd-stream":
        pytest.importorskip("zstandard")
    gateway.split_frames = split
    client, rec = make_client(compress=compress)
    client.start()
    assert client.wait_until_ready(10)
    assert gateway.connections[0].compress == compress
    big = {"id": "1", "members": [{"user": {"id": str(i), "username": "u" * 40}} for i in range(12000)]}
    gateway.dispatch("GUILD_CREATE", big)
    gateway.dispatch("MESSAGE_CREATE", {"i": 1})
    rec.wait_events("MESSAGE_CREATE", 1)
    (guild,) = rec.named("GUILD_CREATE")
    assert guild.data == big


def test_send_presence_and_member_request_reach_server(gateway, make_client):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    conn = gateway.connections[0]
    client.update_presence(status="dnd", activities=[{"name": "tests", "type": 0}])
    p = conn.wait_for(op=3, timeout=5)
    assert p["d"]["status"] == "dnd" and p["d"]["activities"][0]["name"] == "tests"
    client.request_guild_members(123, query="ab", limit=5, nonce="n1")
    p = conn.wait_for(op=8, timeout=5)
    assert p["d"] == {"guild_id": "123", "query": "ab", "limit": 5, "presences": False, "nonce": "n1"}
    with pytest.raises(sg.PayloadTooLarge):
        client.send(3, {"x": "y" * 5000})
    with pytest.raises(ValueError):
        client.send(2, {})
    with pytest.raises(TypeError):
        client.send("3", {})


def test_send_waits_for_ready(gateway, make_client):
    gateway.answer_identify = False
    client, rec = make_client()
    client.start()
    with pytest.raises(TimeoutError):
        client.send(3, {"status": "online", "since": None, "activities": [], "afk": False}, timeout=0.3)
    done = threading.Event()

    def sender():
        client.update_presence(status="idle", timeout=10)
        done.set()

    t = threading.Thread(target=sender)
    t.start()
    conn = gateway.connections[0]
    conn.wait_for(op=2, timeout=5)
    assert not done.wait(0.3)
    gateway.answer_identify = True
    client.reconnect(fresh=True)  # the stalled IDENTIFY is retried on a fresh socket
    assert done.wait(10)
    t.join(5)
    presence = gateway.connections[-1].wait_for(op=3, timeout=5)
    assert presence["d"]["status"] == "idle"
    assert gateway.connections[-1].identify is not None  # it went out only after the new READY


def test_rest_discovery_uses_gateway_bot(gateway):
    client = sg.GatewayClient(TOKEN, api_base=gateway.api_base, config=FAST,
                              identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))
    try:
        client.start()
        assert client.wait_until_ready(10)
        assert any(path.endswith("/gateway/bot") for _, path, _ in gateway.rest_requests)
        assert client.gateway_info["session_start_limit"]["max_concurrency"] == 1
    finally:
        client.close()


def test_start_with_bad_token_raises_and_leaves_no_thread(gateway):
    client = sg.GatewayClient("not-the-right-token-123", api_base=gateway.api_base, config=FAST)
    with pytest.raises(sg.AuthenticationError) as info:
        client.start()
    assert "not-the-right-token-123" not in str(info.value)
    assert client.threads() == []


def test_start_with_unreachable_api_raises(unused_port):
    client = sg.GatewayClient(TOKEN, api_base=f"http://127.0.0.1:{unused_port}/api/v10", config=FAST)
    with pytest.raises(sg.GatewayUnreachable):
        client.start()
    assert client.threads() == []


def test_handler_exception_is_logged_and_client_goes_on(gateway, make_client, caplog):
    client, rec = make_client()

    @client.on("MESSAGE_CREATE")
    def boom(event):
        if event.data["i"] == 0:
            raise RuntimeError("handler bug")

    client.start()
    assert client.wait_until_ready(10)
    with caplog.at_level(logging.ERROR, logger="sync_gateway"):
        gateway.dispatch_many("MESSAGE_CREATE", [{"i": 0}, {"i": 1}])
        rec.wait_events("MESSAGE_CREATE", 2)
        client.close()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "boom" in errors[0].getMessage() and "MESSAGE_CREATE" in errors[0].getMessage()


def test_close_from_inside_a_handler(gateway, make_client):
    client, rec = make_client()
    closed = threading.Event()

    @client.on("MESSAGE_CREATE")
    def stop(event):
        client.close()
        closed.set()

    client.start()
    assert client.wait_until_ready(10)
    gateway.dispatch("MESSAGE_CREATE", {"i": 0})
    assert closed.wait(10)
    rec.wait_kind("closed")


def test_public_api_type_errors():
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(123)
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient("")
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, intents="GUILDS")
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, intents=1 << 30)
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, compress="gzip")
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, gateway_url="http://x")
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, shard=(2, 2))
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, config={"hello_timeout": 1})
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, large_threshold=10)
    client = sg.GatewayClient(TOKEN)
    assert TOKEN not in repr(client)

    async def coro(event):
        pass

    with pytest.raises(TypeError):
        client.on("MESSAGE_CREATE", coro)
    with pytest.raises(TypeError):
        client.on("MESSAGE_CREATE", 5)
    with pytest.raises(RuntimeError):
        client.reconnect()
    assert client.status().state == "idle"


def test_lowercase_event_name_warns(caplog):
    client = sg.GatewayClient(TOKEN)
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        client.on("message_create", lambda e: None)
    assert any("upper case" in r.getMessage() for r in caplog.records)


def test_off_removes_handler(gateway, make_client):
    client, rec = make_client()
    seen = []
    fn = client.on("MESSAGE_CREATE", seen.append)
    assert client.off("MESSAGE_CREATE", fn) and not client.off("MESSAGE_CREATE", fn)
    client.start()
    assert client.wait_until_ready(10)
    gateway.dispatch("MESSAGE_CREATE", {"i": 0})
    rec.wait_events("MESSAGE_CREATE", 1)
    assert seen == []


def test_fatal_close_without_close_call_leaves_no_thread(gateway, make_client):
    """After a fatal close the client stops by itself; its dispatcher must end too, even if the
    program never calls close() (the thread-leak fixture checks)."""
    gateway.identify_close_code = 4004
    client, rec = make_client()
    client.start()
    rec.wait_kind("closed")
    assert client._supervisor.stopped.wait(5)
    client._supervisor.dispatcher.thread.join(5)
    assert client.threads() == []
