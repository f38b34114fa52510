"""FileIdentifyGate: the IDENTIFY limits shared by the processes of one host (POSIX)."""
import json
import logging
import os
import sys

import pytest

import sync_gateway as sg
from sync_gateway.gates import UNAVAILABLE_RETRY, FileIdentifyGate
from sync_gateway.testing import FakeGateway
from procs.harness import Child, children
from support import TOKEN, wait_until

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="FileIdentifyGate needs fcntl.flock (POSIX)"),
]

LIMIT = {"total": 1000, "remaining": 3, "reset_after": 3_600_000, "max_concurrency": 1}


def test_two_gate_objects_on_one_file_share_buckets(tmp_path):
    path = tmp_path / "gate.json"
    a, b = FileIdentifyGate(path), FileIdentifyGate(str(path))
    assert isinstance(a, sg.IdentifyGate)
    assert a.try_acquire(0, 2).granted
    refused = b.try_acquire(2, 2)  # bucket 0 again, from "another process"
    assert not refused.granted and 5.0 <= refused.wait <= 5.25 and "bucket 0" in refused.reason
    assert b.try_acquire(1, 2).granted  # bucket 1 is free
    state = json.loads(path.read_text())
    assert sorted(state["buckets"]) == ["0", "1"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_grants_spend_the_shared_daily_budget_and_the_floor_stops_them(tmp_path, caplog):
    path = tmp_path / "gate.json"
    a = FileIdentifyGate(path, interval=0.0, margin=0.0, daily_floor=1)
    b = FileIdentifyGate(path, interval=0.0, margin=0.0, daily_floor=1)
    a.update_session_start_limit(LIMIT)
    assert a.try_acquire(0).granted and b.try_acquire(0).granted
    assert b.session_start_info()["remaining"] == 1
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        first = a.try_acquire(0)
        again = a.try_acquire(0)
    assert not first.granted and 3500 < first.wait <= 3600
    assert "session start limit: 1 remaining (floor 1)" in first.reason
    assert not again.granted
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "daily session starts" in r.getMessage()]
    assert len(warnings) == 1  # one WARNING per wait period


def test_a_new_observation_of_the_same_period_keeps_the_smaller_remaining(tmp_path):
    gate = FileIdentifyGate(tmp_path / "gate.json", interval=0.0, margin=0.0)
    gate.update_session_start_limit(dict(LIMIT, remaining=10))
    assert gate.try_acquire(0).granted and gate.try_acquire(0).granted  # 8 left here
    gate.update_session_start_limit(dict(LIMIT, remaining=9))  # Discord has not counted one yet
    assert gate.session_start_info()["remaining"] == 8
    gate.update_session_start_limit(dict(LIMIT, remaining=1000, reset_after=86_000_000))  # a new period
    assert gate.session_start_info()["remaining"] == 1000


def test_corrupt_file_is_replaced_and_storage_errors_hold_identify_back(tmp_path, caplog):
    path = tmp_path / "gate.json"
    path.write_text("{not json")
    gate = FileIdentifyGate(path, interval=0.0, margin=0.0)
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        assert gate.try_acquire(0).granted
    assert any("not valid JSON" in r.getMessage() for r in caplog.records)
    assert "buckets" in json.loads(path.read_text())
    gate.path = str(tmp_path / "gone" / "gate.json")  # the directory vanished
    gate._lock_path = gate.path + ".lock"
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        permit = gate.try_acquire(0)
        gate.try_acquire(0)
    assert permit.wait == UNAVAILABLE_RETRY and "unavailable" in permit.reason
    assert sum("unavailable" in r.getMessage() for r in caplog.records) == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(sg.ConfigError):
        FileIdentifyGate(tmp_path / "missing-dir" / "gate.json")
    with pytest.raises(sg.ConfigError):
        FileIdentifyGate(5)
    with pytest.raises(sg.ConfigError):
        FileIdentifyGate(tmp_path / "g.json", daily_floor=-1)
    assert not os.listdir(tmp_path)  # the constructor touches nothing


def test_daily_floor_stops_a_client_with_a_clear_message(tmp_path, caplog):
    with FakeGateway(token=TOKEN) as gw:
        gw.gateway_bot["session_start_limit"]["remaining"] = 3
        gate = FileIdentifyGate(tmp_path / "gate.json", daily_floor=3)
        client = sg.GatewayClient(TOKEN, api_base=gw.api_base, identify_gate=gate)
        try:
            with caplog.at_level(logging.WARNING, logger="sync_gateway"):
                client.start()  # REST discovery records session_start_limit in the gate
                assert wait_until(lambda: client.status().identify_wait is not None, timeout=10)
            wait = client.status().identify_wait
            assert "session start limit: 3 remaining (floor 3)" in wait and "resets in 3h59m" in wait
            assert not client.wait_until_ready(0.2)
            assert all(c.identify is None for c in gw.connections)  # nothing was spent
            messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert any("IDENTIFY held back: 3 of 1000 daily session starts remaining (floor 3)" in m for m in messages)
            assert all(TOKEN not in m for m in messages)
        finally:
            client.close()


def test_two_processes_sharing_a_file_gate_never_identify_one_bucket_within_5s(tmp_path):
    path = str(tmp_path / "gate.json")
    with FakeGateway(token=TOKEN, heartbeat_interval=1000) as gw, children() as procs:
        for _ in range(2):
            procs.append(Child("gateway_child.py", "--url", gw.url, "--gate", f"file:{path}", token=TOKEN))
        for child in procs:
            child.wait_line(lambda line: line == "LC ready", timeout=20, what="READY")
        times = sorted(at for conn in gw.connections for at, p in conn.received if p.get("op") == 2)
        assert len(times) == 2
        assert times[1] - times[0] >= 5.0
        for child in procs:
            assert child.stop() == 0
