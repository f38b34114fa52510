"""The chaos engine and the invariant ledger (sync_gateway.testing.chaos).

Each fault of the catalogue is injected once against a real client on loopback and must recover as
it requires; the ledger is checked on synthetic input (a lost event, a duplicate) and on real
violations it must notice (two live sockets, too many threads).
"""
import threading
import time
from types import SimpleNamespace

import pytest
import websocket

import sync_gateway as sg
from sync_gateway.testing import FakeGateway
from sync_gateway.testing.chaos import (
    FAULTS,
    NON_FATAL_CLOSE_CODES,
    ChaosRig,
    Ledger,
    ServerChaos,
    StuckReaders,
    chaos_config,
    fault_names,
    get_fault,
)
from support import TOKEN, wait_until

pytestmark = pytest.mark.timeout(60)

#: Short enough that every recovery is well under a second or two, sane enough for a slow machine.
CONFIG = chaos_config(
    hello_timeout=1.0,
    ready_timeout=1.0,
    drain_timeout=0.5,
    force_close_timeout=0.3,
    backoff_base=0.05,
    backoff_max=0.2,
    invalid_session_delay=(0.05, 0.1),
)


def test_catalogue_covers_every_fault_the_brief_names():
    names = set(fault_names())
    assert {f"close-{c}" for c in NON_FATAL_CLOSE_CODES} <= names
    assert set(NON_FATAL_CLOSE_CODES) == {4000, 4001, 4002, 4003, 4005, 4007, 4008, 4009, 1001, 1011}
    assert {
        "op7", "op9-resumable", "op9-not-resumable", "zombie", "hello-stall", "ready-stall", "frozen-fresh",
        "tcp-drop", "malformed-frame", "corrupt-compressed", "stuck-reader",
    } <= names
    needs_identify = {f.name for f in FAULTS if f.requires_identify}
    assert needs_identify == {"op9-not-resumable", "close-4003", "close-4007", "close-4009", "frozen-fresh"}
    assert get_fault("malformed-frame").expect == "none"
    with pytest.raises(ValueError):
        get_fault("no-such-fault")


@pytest.mark.parametrize("name", fault_names())
def test_each_fault_recovers_as_required(name):
    fault = get_fault(name)
    with ChaosRig(config=CONFIG, heartbeat_interval=500, rate=400, faults=[name], every=1.0) as rig:
        rig.start()
        assert rig.ledger.wait_delivered(20, 10)
        result = rig.chaos.inject(name)
        assert result.recovered, result
        assert result.outcome == fault.expect, result
        before = rig.ledger.delivered_count()
        assert rig.ledger.wait_delivered(before + 20, 10), "events stopped flowing after the recovery"
        summary = rig.finish()
    assert summary["faults"][name] == {"injected": 1, "recovered": 1, "unexpected": 0, "failed": 0}
    assert summary["settled"]
    assert summary["lost"] == 0 and summary["duplicates"] == 0 and summary["mismatched"] == 0, summary
    assert summary["max_live_sockets"] == 1
    assert summary["threads_bounded"], summary
    assert summary["identifies_used"] == summary["identifies_required"] == (2 if fault.requires_identify else 1)
    assert summary["ok"]
    if name == "stuck-reader":
        assert summary["orphaned_readers"] == 1
        assert summary["threads_max"] <= 4
    if fault.expect == "none":
        assert summary["resumes"] == 0 and summary["lifecycle"].get("disconnected") == 1  # only the final close
    if fault.expect == "resumed":
        assert summary["resumes"] >= 1 and summary["dropped_with_lost_session"] == 0


def test_ready_stall_escalation_counts_as_a_required_identify():
    config = chaos_config(**{**CONFIG.__dict__, "max_resume_failures": 1})
    with ChaosRig(config=config, heartbeat_interval=500, rate=400, faults=["ready-stall"]) as rig:
        rig.start()
        assert rig.ledger.wait_delivered(20, 10)
        result = rig.chaos.inject("ready-stall")
        assert result.recovered and result.outcome == "ready" and result.unexpected, result
        summary = rig.finish()
    assert summary["faults"]["ready-stall"]["unexpected"] == 1
    assert summary["identifies_used"] == summary["identifies_required"] == 2
    assert summary["ok"], summary


def test_server_only_chaos_skips_what_needs_a_client_and_sees_recovery_at_the_gateway():
    """`fake-gateway --chaos` use: no client or proxy known to the engine (a foreign client)."""
    with FakeGateway(heartbeat_interval=500, token=TOKEN) as gw:
        client = sg.GatewayClient(TOKEN, gateway_url=gw.url, config=CONFIG,
                                  identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))
        ledger = Ledger(gw)  # no proxy: live sockets sampled at the gateway on every accept
        ledger.attach(client)
        try:
            client.start()
            ledger.start()
            assert client.wait_until_ready(10)
            chaos = ServerChaos(gw, faults=["frozen-fresh", "stuck-reader", "op7", "tcp-drop", "close-4009"],
                                every=0.2, seed=3, max_faults=4, ledger=ledger)
            chaos.start()
            assert chaos.wait_done(30)
            chaos.stop()
            assert set(chaos.counts) <= {"op7", "tcp-drop", "close-4009"}
            assert chaos.injected == chaos.recovered == 4, chaos.counts
            assert all(r.outcome == get_fault(r.kind).expect for r in chaos.results), chaos.results
        finally:
            client.close()
            ledger.stop()
        summary = ledger.summary()
    assert summary["max_live_sockets"] == 1 and summary["max_live_source"] == "gateway"
    assert summary["identifies_used"] == summary["identifies_required"]
    assert summary["faults_injected"] == 4


def test_chaos_stop_is_prompt_and_restores_switches():
    with FakeGateway(heartbeat_interval=45000, token=TOKEN) as gw:
        client = sg.GatewayClient(TOKEN, gateway_url=gw.url, config=CONFIG,
                                  identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))
        try:
            client.start()
            assert client.wait_until_ready(10)
            injected = threading.Event()
            # a zombie is noticed only after two 45 s heartbeat intervals: stop() must not wait for it
            chaos = ServerChaos(gw, client=client, faults=["zombie"], every=0.05,
                                on_fault=lambda phase, r: injected.set())
            chaos.start()
            assert injected.wait(10)
            started = time.monotonic()
            chaos.stop(timeout=5)
            assert time.monotonic() - started < 2.0
            assert gw.ack_heartbeats is True
            assert chaos.done.is_set()
        finally:
            client.close()


# ------------------------------------------------------------------------------------------------
# The ledger on synthetic input


def fake_gateway_record(sessions):
    """A stand-in for FakeGateway: only what the ledger reads (sessions and their event logs)."""
    return SimpleNamespace(
        sessions={sid: SimpleNamespace(session_id=sid, seq=max(s for s, _, _ in evs), events=evs, invalidated=inv)
                  for sid, (evs, inv) in sessions.items()},
        connections=[],
    )


def msg(n):
    return {"n": n}


def test_ledger_counts_a_lost_event_and_a_duplicate():
    a_events = [(1, "READY", {"session_id": "A"})] + [(s, "MESSAGE_CREATE", msg(s)) for s in range(2, 7)] + [
        (7, "RESUMED", {}),
        (8, "MESSAGE_CREATE", msg(8)),
    ]
    b_events = [(1, "READY", {"session_id": "B"}), (2, "MESSAGE_CREATE", msg(102)), (3, "MESSAGE_CREATE", msg(103))]
    gw = fake_gateway_record({"A": (a_events, True), "B": (b_events, False)})
    ledger = Ledger(gw)
    D, L = sg.Dispatch, sg.LifecycleEvent
    ledger.on_event(D("READY", {"session_id": "A"}, 1))
    for s in (2, 3, 3, 5, 6):  # 3 twice (a duplicate), 4 never (lost: the session was RESUMED at 7)
        ledger.on_event(D("MESSAGE_CREATE", msg(s), s))
    ledger.on_event(D("RESUMED", {}, 7))
    ledger.on_lifecycle(L("session_lost", 0.0, reason="op 9"))  # seq 8 of A goes with the session
    ledger.on_event(D("READY", {"session_id": "B"}, 1))
    ledger.on_event(D("MESSAGE_CREATE", msg(102), 2))
    ledger.on_event(D("MESSAGE_CREATE", msg(103), 3))
    s = ledger.summary()
    assert s["lost"] == 1 and s["lost_examples"] == [["A", 4]]
    assert s["duplicates"] == 1 and s["duplicate_examples"] == [["A", 3]]
    assert s["dropped_with_lost_session"] == 1
    assert s["events_sent"] == 8 and s["events_delivered"] == 6
    assert s["mismatched"] == 0 and s["in_flight"] == 0
    assert not s["ok"] and not ledger.ok


def test_ledger_clean_run_is_ok_and_a_misattributed_event_is_not():
    events = [(1, "READY", {"session_id": "A"}), (2, "MESSAGE_CREATE", msg(2)), (3, "MESSAGE_CREATE", msg(3))]
    gw = fake_gateway_record({"A": (events, False)})
    gw.connections = [SimpleNamespace(identify={}, resume=None, session_id="A", ready=threading.Event(), index=0)]
    ledger = Ledger(gw)
    ledger.on_event(sg.Dispatch("READY", {"session_id": "A"}, 1))
    ledger.on_event(sg.Dispatch("MESSAGE_CREATE", msg(2), 2))
    assert ledger.summary()["in_flight"] == 1  # not settled yet: the tail is in flight, not lost
    ledger.on_event(sg.Dispatch("MESSAGE_CREATE", msg(3), 3))
    assert ledger.settle(1)
    s = ledger.summary()
    assert (s["lost"], s["duplicates"], s["mismatched"], s["max_live_sockets"]) == (0, 0, 0, 1)
    assert s["identifies_used"] == s["identifies_required"] == 1
    assert s["ok"]
    ledger.on_event(sg.Dispatch("MESSAGE_CREATE", {"n": "from another session"}, 4))  # not in A's log
    assert ledger.summary()["mismatched"] == 1 and not ledger.ok


def test_ledger_sees_two_live_sockets_at_the_gateway():
    with FakeGateway(token=TOKEN) as gw:
        ledger = Ledger(gw, live_grace=0.05).start()
        first = websocket.create_connection(gw.url, timeout=5)
        second = websocket.create_connection(gw.url, timeout=5)
        try:
            gw.wait_for_connections(2, 5)
            assert wait_until(lambda: ledger.max_live_sockets()[0] >= 2, 5)
        finally:
            first.close()
            second.close()
            ledger.stop()
        assert ledger.max_live_sockets() == (2, "gateway")


def test_ledger_thread_bound_counts_client_threads_over_time():
    gw = fake_gateway_record({"A": ([(1, "READY", {"session_id": "A"})], False)})
    ledger = Ledger(gw)
    release = threading.Event()
    threads = [threading.Thread(target=release.wait, args=(10,), name=f"sync_gateway-fake-{i}") for i in range(4)]
    for t in threads:
        t.start()
    try:
        assert ledger.sample_threads() == 4
    finally:
        release.set()
        for t in threads:
            t.join(5)
    assert ledger.sample_threads() == 0
    s = ledger.summary()
    assert (s["threads_min"], s["threads_max"], s["thread_violations"]) == (0, 4, 1)
    assert not s["threads_bounded"]


def test_stuck_readers_release_everything():
    stuck = StuckReaders()
    with FakeGateway(token=TOKEN) as gw:
        client = sg.GatewayClient(TOKEN, gateway_url=gw.url, config=CONFIG,
                                  identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0),
                                  _connection_factory=stuck.factory)
        try:
            client.start()
            assert client.wait_until_ready(10)
            stuck.arm(1)
            client.reconnect()
            assert wait_until(lambda: client.status().orphaned_readers >= 1, 10)
            assert client.status().orphaned_readers == 1 and stuck.stuck == 1
            assert client.wait_until_ready(10)
        finally:
            client.close()
            stuck.release()
            for t in client.threads():
                t.join(5)
    assert stuck.stuck == 0 and stuck.total_stuck == 1
