"""Every recovery path of the supervisor on real loopback sockets (issue: the lifecycle supervisor)."""
import dataclasses
import logging
import threading
import time

import pytest

import sync_gateway as sg
from sync_gateway.testing import FakeGateway
from support import FAST, TOKEN, Recorder, client_options, freezing_proxy, gateway_options, handshakes, wait_until

# Every test over ws:// and wss://; those marked ALL_TRANSPORTS also with frames in pieces (tls+trickle).
pytestmark = [pytest.mark.timeout(60), pytest.mark.transports("plain", "tls")]
ALL_TRANSPORTS = pytest.mark.transports("plain", "tls", "tls+trickle")


def fast_gate():
    return sg.MemoryIdentifyGate(interval=0, margin=0)


@pytest.fixture
def proxied(gateway, fast):
    """(proxy, make) where make(**kw) -> (client, recorder) connects through the freezing proxy."""
    clients = []
    with freezing_proxy(gateway) as proxy:
        gateway.resume_gateway_url = proxy.url

        def make(**kw):
            kw.setdefault("config", fast)
            kw.setdefault("identify_gate", fast_gate())
            client = sg.GatewayClient(TOKEN, gateway_url=proxy.url, **client_options(gateway, **kw))
            clients.append(client)
            return client, Recorder(client)

        yield proxy, make
        for c in clients:
            c.close(timeout=5)


@ALL_TRANSPORTS
def test_forced_fresh_reconnect_with_frozen_socket_identifies_in_time_one_live_socket(gateway, proxied):
    proxy, make = proxied
    client, rec = make()
    client.start()
    assert client.wait_until_ready(10)
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(10)])
    rec.wait_events("MESSAGE_CREATE", 10)
    proxy.freeze()
    started = time.monotonic()
    client.reconnect(fresh=True)
    second = gateway.wait_for_connections(2, 10)
    second.wait_for(op=2, timeout=10)
    took = time.monotonic() - started
    assert took < FAST.drain_timeout + FAST.force_close_timeout + 1.0, took
    assert second.resume is None
    assert proxy.max_live == 1
    rec.wait_kind("ready", 2)
    assert client.status().last_disconnect == "forced-fresh"
    assert rec.kinds().count("session_lost") == 1


@ALL_TRANSPORTS
def test_stale_frames_during_drain_reach_no_handler_and_open_nothing(gateway, make_client):
    gateway.close_reply_delay = 0.8  # the old socket answers our close late, talking meanwhile
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    old = gateway.connections[0]
    client.reconnect(fresh=True)
    assert wait_until(lambda: old.client_close_code is not None)
    for i in range(5):
        old.send({"op": 0, "t": "MESSAGE_CREATE", "s": 100 + i, "d": {"stale": True}})
    old.send_op(7)
    old.invalid_session(True)
    rec.wait_kind("ready", 2)
    assert rec.named("MESSAGE_CREATE") == []
    assert handshakes(gateway) == ["I", "I"]
    assert client.status().stale_frames >= 7


def test_close_during_backoff_returns_at_once(gateway, make_client, caplog):
    gateway.answer_identify = False
    client, rec = make_client(config=dataclasses.replace(FAST, ready_timeout=0.3, backoff_base=20.0, backoff_max=30.0))
    client.start()
    rec.wait_kind("reconnecting", timeout=10)
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        caplog.clear()  # what close() logs, whatever log level the run writes to its log file
        started = time.monotonic()
        client.close(timeout=5)
        assert time.monotonic() - started < 2.0
        warned = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("sync_gateway.")]
    assert len(gateway.connections) == 1
    assert not [r for r in warned if not r.name.startswith("sync_gateway.testing")]


def test_hello_never_arrives(gateway, make_client):
    gateway.send_hello = False
    client, rec = make_client(config=dataclasses.replace(FAST, hello_timeout=0.5))
    client.start()
    gateway.wait_for_connections(2, 10)
    assert client.status().last_disconnect == "hello-timeout"
    gateway.send_hello = True
    assert client.wait_until_ready(10)
    assert gateway.connections[0].identify is None


def test_zombie_connection_closes_4000_and_resumes(transport):
    with FakeGateway(heartbeat_interval=150, token=TOKEN, **gateway_options(transport)) as gw:
        client = sg.GatewayClient(TOKEN, **client_options(gw, gateway_url=gw.url, config=FAST, identify_gate=fast_gate()))
        rec = Recorder(client)
        try:
            client.start()
            assert client.wait_until_ready(10)
            gw.ack_heartbeats = False
            second = gw.wait_for_connections(2, 10)
            gw.ack_heartbeats = True
            rec.wait_kind("resumed", timeout=10)
            assert gw.connections[0].client_close_code == 4000
            assert second.resume is not None
            assert client.status().last_disconnect == "zombie"
        finally:
            client.close()


@ALL_TRANSPORTS
@pytest.mark.parametrize("resumable", [True, False])
def test_op9(gateway, make_client, resumable):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(3)])
    rec.wait_events("MESSAGE_CREATE", 3)
    gateway.connections[0].invalid_session(resumable)
    if resumable:
        rec.wait_kind("resumed")
        assert handshakes(gateway) == ["I", "R"], (client.status().last_disconnect, client.status().last_error)
        assert gateway.connections[0].client_close_code == 4000
    else:
        rec.wait_kind("ready", 2)
        assert handshakes(gateway) == ["I", "I"]
        assert "session_lost" in rec.kinds()
        assert gateway.connections[0].client_close_code == 1000
        # the new session numbers from 1 again and its events are delivered
        gateway.dispatch("MESSAGE_CREATE", {"i": "new"})
        rec.wait_events("MESSAGE_CREATE", 4)
        assert rec.named("MESSAGE_CREATE")[-1].seq == 2


@ALL_TRANSPORTS
@pytest.mark.parametrize("code,expect", [(4000, "R"), (4007, "I"), (4009, "I"), (4008, "R"), (1001, "R")])
def test_server_close_codes(gateway, make_client, code, expect):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    gateway.connections[0].close(code)
    rec.wait_kind("resumed" if expect == "R" else "ready", 1 if expect == "R" else 2)
    assert handshakes(gateway) == ["I", expect]
    assert client.status().last_disconnect == f"close {code}"
    assert ("session_lost" in rec.kinds()) == (expect == "I")


@pytest.mark.parametrize("code", [4004, 4014])
def test_fatal_codes_after_ready(gateway, make_client, code):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    gateway.connections[0].close(code)
    with pytest.raises(sg.FatalGatewayError) as info:
        client.run_forever()
    assert info.value.code == code and len(gateway.connections) == 1


@ALL_TRANSPORTS
def test_resume_url_that_fails_to_connect_falls_back_to_bootstrap(gateway, make_client, unused_port):
    gateway.resume_gateway_url = f"ws://127.0.0.1:{unused_port}/"
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    gateway.connections[0].drop()
    rec.wait_kind("resumed", timeout=10)
    assert handshakes(gateway) == ["I", "R"]
    assert client.status().resume_url is None


def test_untrusted_resume_host_is_never_contacted(gateway, make_client):
    # READY names a host that is not the bootstrap host nor *.discord.gg: RESUME must not go there
    gateway.resume_gateway_url = "ws://localhost:1/"
    client, rec = make_client()  # bootstrap host is 127.0.0.1
    client.start()
    assert client.wait_until_ready(10)
    gateway.connections[0].drop()
    rec.wait_kind("resumed", timeout=10)
    assert handshakes(gateway) == ["I", "R"]


@ALL_TRANSPORTS
def test_orphaned_reader_counted_and_client_recovers_through_proxy(gateway, proxied):
    from support import stuck_reader_factory

    release = threading.Event()
    proxy, make = proxied
    client, rec = make(_connection_factory=stuck_reader_factory(release, epochs={1}))
    try:
        client.start()
        assert client.wait_until_ready(10)
        gateway.dispatch("MESSAGE_CREATE", {"i": 0})
        rec.wait_events("MESSAGE_CREATE", 1)
        proxy.freeze()
        client.reconnect()  # a resume this time
        rec.wait_kind("resumed", timeout=15)
        assert client.status().orphaned_readers == 1
        assert proxy.max_live == 1
    finally:
        release.set()


def test_reconnect_requests_coalesce(gateway, make_client):
    gateway.close_reply_delay = 0.5
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    client.reconnect()
    client.reconnect()
    client.reconnect(fresh=True)  # upgrades the pending resume
    client.reconnect()
    rec.wait_kind("ready", 2)
    assert handshakes(gateway) == ["I", "I"]
    assert rec.kinds().count("session_lost") == 1


# Over tls+trickle this caught a client bug: the reader's SSL_read and the supervisor's SSL_write
# ran at once on one OpenSSL object, and the reader saw a spurious EOF ('connection lost') or
# EAGAIN (BlockingIOError): one reconnect too many. TLS I/O is now serialised (connection.py).
@ALL_TRANSPORTS
def test_repeated_forced_reconnects_on_frozen_sockets_never_two_live(gateway, proxied, fast):
    proxy, make = proxied
    cfg = dataclasses.replace(fast, drain_timeout=0.3, force_close_timeout=0.2)
    client, rec = make(config=cfg)
    client.start()
    assert client.wait_until_ready(10)
    for i in range(12):
        fresh = i % 2 == 0
        proxy.freeze()
        client.reconnect(fresh=fresh)
        rec.wait_kind("ready" if fresh else "resumed", count=(i // 2 + 2) if fresh else (i // 2 + 1), timeout=10)
    assert proxy.max_live == 1
    assert len(client.threads()) == 3
    st = client.status()
    assert st.orphaned_readers == 0 and st.reconnects == 12, (st.last_disconnect, st.last_error)
    assert handshakes(gateway)[1:] == ["I", "R"] * 6
