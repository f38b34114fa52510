"""The reference fix's regression scenarios (../shared/SEED_SCENARIOS.md), one test each, on
real loopback sockets: GatewayClient against FakeGateway, through the freezing proxy where the
scenario needs a socket that will not answer."""
import dataclasses
import logging
import threading
import time

import pytest

import sync_gateway as sg
from support import FAST, TOKEN, client_options, freezing_proxy, handshakes, stuck_reader_factory, wait_until

# Every scenario over ws:// and wss://; those marked ALL_TRANSPORTS also with frames in pieces (tls+trickle).
pytestmark = [pytest.mark.timeout(60), pytest.mark.transports("plain", "tls")]
ALL_TRANSPORTS = pytest.mark.transports("plain", "tls", "tls+trickle")


def ours(caplog, level):
    return [r for r in caplog.records if r.name.startswith("sync_gateway") and not r.name.startswith("sync_gateway.testing")
            and r.levelno >= level]


def test_seed_01_starting_fails_raises_and_leaves_no_thread(gateway, unused_port):
    bad_token = sg.GatewayClient("wrong-token-abcdefgh", api_base=gateway.api_base, config=FAST)
    with pytest.raises(sg.AuthenticationError):
        bad_token.start()
    assert bad_token.threads() == []
    unreachable = sg.GatewayClient(TOKEN, api_base=f"http://127.0.0.1:{unused_port}/api/v10", config=FAST)
    with pytest.raises(sg.GatewayUnreachable):
        unreachable.start()
    assert unreachable.threads() == []
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, config=sg.LifecycleConfig(hello_timeout=-1))


@ALL_TRANSPORTS
def test_seed_02_healthy_session_reaches_ready_and_close_cleans_up(gateway, make_client):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    assert len(client.threads()) == 3
    client.close()
    assert client.threads() == []
    assert rec.kinds()[-1] == "closed"


def test_seed_03_status_on_connect(gateway, make_client):
    client, rec = make_client()
    assert client.status().connected is False
    client.start()
    assert client.wait_until_ready(10)
    st = client.status()
    assert st.connected is True and st.last_disconnect is None and st.connected_at is not None
    assert st.connected_at <= time.monotonic()
    rec.wait_kind("ready")


def test_seed_04_ready_timeout_forces_fresh_reconnect_then_ready(gateway, make_client, caplog):
    gateway.answer_identify = False
    client, rec = make_client(config=dataclasses.replace(FAST, ready_timeout=1.0))
    with caplog.at_level(logging.INFO, logger="sync_gateway"):
        client.start()
        first = gateway.wait_for_connections(1, 5)
        first.wait_for(op=2, timeout=5)
        gateway.answer_identify = True
        assert client.wait_until_ready(10)
    assert handshakes(gateway) == ["I", "I"]
    assert client.status().last_disconnect == "ready-timeout"
    lines = [r.getMessage() for r in ours(caplog, logging.INFO) if "ready-timeout" in r.getMessage()]
    assert len(lines) == 1 and "no READY within 1s" in lines[0]


@ALL_TRANSPORTS
def test_seed_05_stale_socket_would_auto_resume(gateway, make_client, caplog):
    """Session cached at seq 123; the old socket's close would start a RESUME. After
    reconnect(fresh=True): one new connection, IDENTIFY only, nothing of the old socket acted on."""
    gateway.close_reply_delay = None  # the old socket never answers our close frame
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    old = gateway.connections[0]
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(122)])
    rec.wait_events("MESSAGE_CREATE", 122)
    assert client.status().seq == 123
    with caplog.at_level(logging.DEBUG, logger="sync_gateway"):
        client.reconnect(fresh=True)
        rec.wait_kind("session_lost")
        assert wait_until(lambda: old.client_close_code is not None)
        assert old.client_close_code == 1000  # the session is dropped on purpose
        st = client.status()
        assert st.session_id is None and st.seq is None and st.resume_url is None
        # the old socket keeps talking during the drain: frames, op 7, then a close
        before = len(rec.events)
        old.send({"op": 0, "t": "MESSAGE_CREATE", "s": 124, "d": {"i": "stale"}})
        old.send_op(7)
        old.close(4000)
        rec.wait_kind("ready", 2)
    assert handshakes(gateway) == ["I", "I"]
    assert all(e.data.get("i") != "stale" for e in rec.named("MESSAGE_CREATE"))
    assert [e.name for e in rec.events[before:]] == ["READY"]
    assert client.status().resumes == 0
    assert not ours(caplog, logging.WARNING)
    assert len(gateway.connections) == 2


@ALL_TRANSPORTS
def test_seed_06_old_socket_ignores_close_frame_hard_close_after_drain(gateway, make_client, caplog):
    gateway.close_reply_delay = None
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    with caplog.at_level(logging.INFO, logger="sync_gateway"):
        started = time.monotonic()
        client.reconnect(fresh=True)
        rec.wait_kind("ready", 2)
        took = time.monotonic() - started
    assert took < FAST.drain_timeout + FAST.force_close_timeout + 2.0
    assert any("forcing it closed" in r.getMessage() for r in ours(caplog, logging.INFO))
    assert handshakes(gateway) == ["I", "I"]


@ALL_TRANSPORTS
def test_seed_07_reader_survives_hard_close_is_orphaned(gateway, fast):
    release = threading.Event()
    with freezing_proxy(gateway) as proxy:
        gateway.resume_gateway_url = proxy.url
        client = sg.GatewayClient(TOKEN, **client_options(
            gateway, gateway_url=proxy.url, config=fast, identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0),
            _connection_factory=stuck_reader_factory(release, epochs={1})))
        from support import Recorder

        rec = Recorder(client)
        try:
            client.start()
            assert client.wait_until_ready(10)
            proxy.freeze()
            client.reconnect(fresh=True)
            rec.wait_kind("ready", 2, timeout=15)
            st = client.status()
            assert st.orphaned_readers == 1 and st.state == "ready" and st.epoch == 2
            assert proxy.max_live == 1
            assert handshakes(gateway)[-1] == "I"
        finally:
            release.set()
            client.close()


def test_seed_08_close_during_drain_opens_nothing(gateway, make_client):
    gateway.close_reply_delay = None
    client, rec = make_client(config=dataclasses.replace(FAST, drain_timeout=5.0))
    client.start()
    assert client.wait_until_ready(10)
    client.reconnect()
    rec.wait_kind("disconnected")
    started = time.monotonic()
    client.close(timeout=3.0)
    assert time.monotonic() - started < 3.0
    assert len(gateway.connections) == 1
    assert client.threads() == []
    assert "connecting" not in rec.kinds()[rec.kinds().index("disconnected"):]


def test_seed_09_drain_times_out_after_close_no_error(gateway, make_client, caplog):
    gateway.close_reply_delay = None
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    with caplog.at_level(logging.DEBUG, logger="sync_gateway"):
        client.close(timeout=5.0)
    assert not ours(caplog, logging.WARNING)
    assert len(gateway.connections) == 1
    assert any("drain timeout" in r.getMessage() for r in ours(caplog, logging.DEBUG))


def test_seed_10_ready_never_comes_keeps_recovering_until_max_attempts(gateway, make_client):
    gateway.answer_identify = False
    client, rec = make_client(config=dataclasses.replace(FAST, ready_timeout=0.5, max_attempts=3))
    states = []
    client.on_lifecycle(lambda e: states.append(client.status()) if e.kind == "reconnecting" else None)
    with pytest.raises(sg.GatewayError, match="gave up after 3"):
        client.run_forever()
    assert len(gateway.connections) == 3
    assert states and all(s.state == "reconnecting" for s in states)
    assert all("ready-timeout" in (s.last_error or "") for s in states)
    assert client.status().state == "failed"


def test_seed_11_close_4014_is_fatal_and_names_intents(gateway, make_client):
    gateway.identify_close_code = 4014
    client, rec = make_client(intents=sg.Intents.DEFAULT | sg.Intents.MESSAGE_CONTENT)
    with pytest.raises(sg.FatalGatewayError) as info:
        client.run_forever()
    assert info.value.code == 4014
    assert "MESSAGE_CONTENT" in str(info.value) and "Developer Portal" in str(info.value)
    assert len(gateway.connections) == 1


@ALL_TRANSPORTS
def test_seed_12_transient_error_logged_once_and_client_goes_on(gateway, make_client, caplog):
    client, rec = make_client()
    client.start()
    assert client.wait_until_ready(10)
    with caplog.at_level(logging.INFO, logger="sync_gateway"):
        gateway.connections[0].drop()
        rec.wait_kind("resumed")
    lines = [r.getMessage() for r in ours(caplog, logging.INFO) if "reconnecting" in r.getMessage()]
    assert len(lines) == 1
    assert not ours(caplog, logging.WARNING)
    assert client.status().state == "ready"


def test_seed_13_fatal_close_before_ready_raised_promptly(gateway, make_client):
    gateway.identify_close_code = 4013
    client, rec = make_client()
    started = time.monotonic()
    with pytest.raises(sg.FatalGatewayError) as info:
        client.run_forever()
    assert info.value.code == 4013 and time.monotonic() - started < 5
    assert len(gateway.connections) == 1 and "ready" not in rec.kinds()


def test_seed_14_resume_stalls_escalate_to_identify(gateway, make_client):
    client, rec = make_client(config=dataclasses.replace(FAST, ready_timeout=0.5, max_resume_failures=3))
    client.start()
    assert client.wait_until_ready(10)
    gateway.answer_resume = False
    gateway.connections[0].drop()
    rec.wait_kind("ready", 2, timeout=20)
    assert handshakes(gateway) == ["I", "R", "R", "R", "I"]
    assert "session_lost" in rec.kinds()


def test_seed_15_success_between_stalls_resets_count(gateway, make_client):
    client, rec = make_client(config=dataclasses.replace(FAST, ready_timeout=0.5, max_resume_failures=2))
    client.start()
    assert client.wait_until_ready(10)
    gateway.answer_resume = False
    gateway.connections[0].drop()
    gateway.wait_for_connections(2, 5).wait_for(op=6, timeout=5)
    gateway.answer_resume = True  # the second RESUME succeeds
    rec.wait_kind("resumed", 1, timeout=10)
    gateway.answer_resume = False
    gateway.connections[-1].drop()
    n = len(gateway.connections)
    gateway.wait_for_connections(n + 1, 5).wait_for(op=6, timeout=5)
    gateway.answer_resume = True
    rec.wait_kind("resumed", 2, timeout=10)
    assert handshakes(gateway) == ["I", "R", "R", "R", "R"]
    assert "session_lost" not in rec.kinds()


def test_seed_16_no_ready_for_long_escalates_inside_supervisor_never_stops(gateway, make_client):
    client, rec = make_client(config=dataclasses.replace(FAST, ready_timeout=0.4, max_resume_failures=2))
    client.start()
    assert client.wait_until_ready(10)
    gateway.answer_resume = False
    gateway.answer_identify = False
    gateway.connections[0].drop()
    # RESUME, RESUME (stalled) -> fresh IDENTIFYs that stall too; the client keeps going
    gateway.wait_for_connections(5, 15)
    assert handshakes(gateway)[:4] == ["I", "R", "R", "I"]
    rec.wait_kind("session_lost")
    assert client.status().state in ("reconnecting", "connecting", "identifying")
    gateway.answer_identify = True
    rec.wait_kind("ready", 2, timeout=15)


def test_seed_17_successful_reopen_disarms_stall_deadlines(gateway, make_client):
    client, rec = make_client(config=dataclasses.replace(FAST, ready_timeout=0.5))
    client.start()
    assert client.wait_until_ready(10)
    gateway.connections[0].drop()
    rec.wait_kind("resumed")
    # well past ready_timeout: no stall deadline may fire on the healthy socket
    with rec.cond:
        fired = rec.cond.wait_for(lambda: rec.kinds().count("disconnected") > 1, timeout=1.5)
    assert not fired
    assert client.status().state == "ready" and len(gateway.connections) == 2


@ALL_TRANSPORTS
def test_seed_18_errors_expected_while_shutting_down_logged_at_debug(gateway, caplog, fast):
    with freezing_proxy(gateway) as proxy:
        client = sg.GatewayClient(TOKEN, **client_options(
            gateway, gateway_url=proxy.url, config=fast, identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0)))
        client.start()
        assert client.wait_until_ready(10)
        proxy.freeze()
        with caplog.at_level(logging.DEBUG, logger="sync_gateway"):
            client.close(timeout=5)
        assert client.threads() == []
    assert not ours(caplog, logging.WARNING)
    assert ours(caplog, logging.DEBUG)


@ALL_TRANSPORTS
def test_seed_19_close_before_first_ready(gateway, make_client):
    gateway.answer_identify = False
    client, rec = make_client()
    seen_connected = []
    client.on_lifecycle(lambda e: seen_connected.append(client.status().connected))
    client.start()
    gateway.wait_for_connections(1, 5).wait_for(op=2, timeout=5)
    client.close()
    assert "ready" not in rec.kinds() and not any(seen_connected)
    assert client.status().connected is False and client.status().state == "closed"


@ALL_TRANSPORTS
def test_seed_20_late_close_from_previous_socket_changes_nothing(gateway, make_client):
    release = threading.Event()
    client, rec = make_client(_connection_factory=stuck_reader_factory(release, epochs={1}))
    gateway.close_reply_delay = None
    try:
        client.start()
        assert client.wait_until_ready(10)
        client.reconnect(fresh=True)
        rec.wait_kind("ready", 2, timeout=15)
        before = client.status()
        assert before.orphaned_readers == 1
        release.set()  # the orphaned reader of socket 1 finally reports its close
        orphan = [t for t in threading.enumerate() if t.name == "sync_gateway-reader-s0-e1"]
        for t in orphan:
            t.join(5)
        assert wait_until(lambda: client.status().stale_frames > before.stale_frames)
        after = client.status()
        assert after.state == "ready" and after.epoch == before.epoch and after.session_id == before.session_id
        assert after.stale_frames >= before.stale_frames + 1
        assert rec.kinds().count("disconnected") == 1
    finally:
        release.set()
