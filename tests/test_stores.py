"""FileSessionStore: sessions that survive a process, shared by the processes of one host."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import sync_gateway as sg
from sync_gateway.stores import FileSessionStore, SessionRecord, session_key
from sync_gateway.testing import FakeGateway
from procs.harness import Child, child_env, children
from support import TOKEN, handshakes, wait_until

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="FileSessionStore needs fcntl.flock (POSIX)"),
]

KEY = session_key(TOKEN, 0, 1)


def record(seq=5, session_id="abc", age=0.0):
    return SessionRecord(session_id, seq, "ws://127.0.0.1:1/", [0, 1], time.time() - age)


def test_save_load_delete_and_the_file(tmp_path):
    path = tmp_path / "sessions.json"
    store = FileSessionStore(path)
    assert isinstance(store, sg.stores.SessionStore)
    assert store.load(KEY) is None  # no file yet
    saved = record()
    store.save(KEY, saved)
    other = FileSessionStore(str(path))  # another process's view
    assert other.load(KEY) == saved
    assert other.load_fresh(KEY).seq == 5
    data = json.loads(path.read_text())
    assert list(data["sessions"]) == [KEY] and TOKEN not in path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    other.delete(KEY)
    assert store.load(KEY) is None
    other.delete(KEY)  # deleting nothing is fine


def test_stale_records_are_not_resumed_and_are_pruned(tmp_path):
    store = FileSessionStore(tmp_path / "s.json", max_age=60.0)
    store.save("old", record(age=120.0))
    assert store.load("old") is not None and store.load_fresh("old") is None
    store.save(KEY, record())
    assert store.load("old") is None  # pruned by the next write
    assert store.load_fresh(KEY) is not None


def test_threads_of_two_store_objects_lose_no_write(tmp_path):
    path = tmp_path / "s.json"
    stores = [FileSessionStore(path), FileSessionStore(path)]
    errors = []

    def writer(n):
        try:
            for i in range(25):
                stores[n % 2].save(f"k{n}-{i}", record(seq=i))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,), name=f"writer-{n}") for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert len(json.loads(path.read_text())["sessions"]) == 100


def test_two_processes_lose_no_write(tmp_path):
    path = str(tmp_path / "s.json")
    code = (
        "import sys, time\n"
        "from sync_gateway.stores import FileSessionStore, SessionRecord\n"
        "s = FileSessionStore(sys.argv[1])\n"
        "for i in range(150):\n"
        "    s.save(f'{sys.argv[2]}-{i}', SessionRecord('x', i, None, None, time.time()))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, path, name], env=child_env(TOKEN)) for name in ("a", "b")
    ]
    assert [p.wait(30) for p in procs] == [0, 0]
    assert len(json.loads(open(path).read())["sessions"]) == 300
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temporary file left


def test_corrupt_file_is_ignored_then_replaced(tmp_path, caplog):
    path = tmp_path / "s.json"
    path.write_text("[1, 2")
    store = FileSessionStore(path)
    assert store.load(KEY) is None
    store.save(KEY, record())
    assert store.load(KEY).seq == 5


def test_bad_arguments(tmp_path):
    with pytest.raises(sg.ConfigError):
        FileSessionStore(tmp_path / "nope" / "s.json")
    with pytest.raises(sg.ConfigError):
        FileSessionStore(tmp_path / "s.json", max_age=0)
    with pytest.raises(sg.ConfigError):
        FileSessionStore(None)


def kill_and_restart_resumes(gateway, store_spec, stored_seq, extra=()):
    """A child handles events, is SIGKILLed, misses events, restarts: it must RESUME from the
    store and the union of handled seqs must have no gap (each once, as we wait for the save)."""
    with children() as procs:
        args = ("gateway_child.py", "--url", gateway.url, "--store", store_spec, *extra)
        first = Child(*args, token=TOKEN)
        procs.append(first)
        first.wait_line(lambda line: line == "LC ready", what="READY")
        before = gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(20)])
        first.wait_line(lambda line: line == f"EV MESSAGE_CREATE {before[-1]}", what="the last event")
        # The client saves the handled seq at most once per second: wait for the store to hold it.
        assert wait_until(lambda: stored_seq() == before[-1], timeout=5), f"store holds seq {stored_seq()}"
        first.kill()
        assert first.proc.returncode == -9
        assert gateway.connections[0].closed.wait(5)
        during = gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(20, 30)])  # nobody listening
        second = Child(*args, token=TOKEN)
        procs.append(second)
        second.wait_line(lambda line: line == "LC resumed", what="RESUMED")
        after = gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(30, 35)])
        second.wait_line(lambda line: line == f"EV MESSAGE_CREATE {after[-1]}", what="the last event")
        assert second.stop() == 0

    def handled(child):
        return [int(v.split()[1]) for v in child.values("EV") if v.startswith("MESSAGE_CREATE ")]

    one, two = handled(first), handled(second)
    assert one == before
    assert two == during + after  # the missed ones replayed on RESUME, in order, none twice
    assert handshakes(gateway) == ["I", "R"]  # the restart sent RESUME, not IDENTIFY
    assert "LC ready" not in second.lines
    return one, two


def test_sigkilled_process_resumes_from_the_file_store(tmp_path):
    path = str(tmp_path / "sessions.json")
    store = FileSessionStore(path)

    def stored_seq():
        rec = store.load(KEY)
        return rec.seq if rec else None

    with FakeGateway(token=TOKEN) as gw:
        kill_and_restart_resumes(gw, f"file:{path}", stored_seq)
    assert store.load(KEY) is None  # the clean close at the end dropped it


def test_redis_classes_need_the_redis_extra(monkeypatch):
    from sync_gateway.gates import RedisIdentifyGate
    from sync_gateway.sinks import RedisStreamSink, StreamWorker
    from sync_gateway.stores import RedisSessionStore

    monkeypatch.setitem(sys.modules, "redis", None)  # import redis -> ImportError
    for make in (
        lambda: RedisSessionStore("redis://127.0.0.1:1/0"),
        lambda: RedisIdentifyGate("redis://127.0.0.1:1/0"),
        lambda: RedisStreamSink("redis://127.0.0.1:1/0"),
        lambda: StreamWorker("redis://127.0.0.1:1/0", handler=print),
    ):
        with pytest.raises(sg.ConfigError, match=r"pip install 'sync-gateway\[redis\]'"):
            make()
