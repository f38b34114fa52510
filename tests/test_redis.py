"""Redis-backed pieces against a private redis-server on 127.0.0.1: RedisIdentifyGate,
RedisSessionStore and RedisStreamSink/StreamWorker, across real processes."""
import json
import logging
import threading
import uuid

import pytest

import sync_gateway as sg
from procs.harness import REDIS_SERVER, Child, children, redis_server
from support import TOKEN, wait_until

redis = pytest.importorskip("redis", reason="the redis package is not installed (pip install 'sync-gateway[redis]')")

from sync_gateway.gates import UNAVAILABLE_RETRY, RedisIdentifyGate  # noqa: E402
from sync_gateway.ratelimit import bot_id_from_token, format_duration  # noqa: E402
from sync_gateway.sinks import RedisStreamSink, StreamDispatch, StreamWorker, consume  # noqa: E402
from sync_gateway.stores import RedisSessionStore, SessionRecord, session_key  # noqa: E402
from sync_gateway.testing import FakeGateway  # noqa: E402

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not on PATH (apt-get install redis-server)"),
]

LIMIT = {"total": 1000, "remaining": 50, "reset_after": 3_600_000, "max_concurrency": 2}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server(str(tmp_path_factory.mktemp("redis"))) as url:
        yield url


@pytest.fixture
def prefix():
    return f"t{uuid.uuid4().hex[:10]}"  # each test its own keys: no flushing between tests


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


# ---------------------------------------------------------------------------------------------
# RedisIdentifyGate


def test_gate_buckets_use_keys_with_an_expiry(redis_url, prefix, r):
    a = RedisIdentifyGate(redis_url, key_prefix=prefix)
    b = RedisIdentifyGate(redis_url, key_prefix=prefix)  # another process
    assert isinstance(a, sg.IdentifyGate)
    assert a.try_acquire(0, 2).granted
    refused = b.try_acquire(2, 2)
    assert not refused.granted and 4.9 < refused.wait <= 5.25 and refused.reason == "identify bucket 0 busy"
    assert 4900 < r.pttl(f"{prefix}:identify:bucket:0") <= 5250
    assert b.try_acquire(1, 2).granted
    assert not RedisIdentifyGate(redis_url, key_prefix=prefix + "x").try_acquire(0, 2).wait  # other bot, other keys
    assert not r.keys(f"*{TOKEN}*")


def test_gate_ledger_is_shared_and_the_floor_stops_grants(redis_url, prefix, caplog):
    a = RedisIdentifyGate(redis_url, key_prefix=prefix, interval=0.0, margin=0.0, daily_floor=47)
    b = RedisIdentifyGate(redis_url, key_prefix=prefix, interval=0.0, margin=0.0, daily_floor=47)
    assert a.session_start_info() == {}
    a.update_session_start_limit(LIMIT)
    assert a.try_acquire(0).granted and b.try_acquire(1).granted and a.try_acquire(0).granted
    info = b.session_start_info()
    assert info["remaining"] == 47 and info["total"] == 1000 and 3590 < info["resets_in"] <= 3600
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        first, again = b.try_acquire(0), b.try_acquire(1)
    assert not first.granted and not again.granted and 3590 < first.wait <= 3600
    # 59m, or 1h00m when not a millisecond passed since the limit was stored (a fast machine)
    assert first.reason == f"session start limit: 47 remaining (floor 47), resets in {format_duration(first.wait)}"
    assert format_duration(first.wait).startswith(("59m", "1h00m"))
    assert sum("daily session starts" in rec.getMessage() for rec in caplog.records) == 1
    # the same period observed again keeps the smaller remaining; a new period replaces it
    b.update_session_start_limit(dict(LIMIT, remaining=49))
    assert a.session_start_info()["remaining"] == 47
    b.update_session_start_limit(dict(LIMIT, remaining=1000, reset_after=80_000_000))
    assert a.session_start_info()["remaining"] == 1000 and a.try_acquire(0).granted


def test_gate_ledger_refills_after_the_reset(redis_url, prefix):
    gate = RedisIdentifyGate(redis_url, key_prefix=prefix, interval=0.0, margin=0.0)
    gate.update_session_start_limit(dict(LIMIT, remaining=0, reset_after=200))
    assert not gate.try_acquire(0).granted
    assert wait_until(lambda: gate.try_acquire(0).granted, timeout=5)
    assert gate.session_start_info()["remaining"] == 999


def test_gate_without_redis_holds_identify_back(unused_port, caplog):
    gate = RedisIdentifyGate(f"redis://127.0.0.1:{unused_port}/0", socket_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        first, second = gate.try_acquire(0), gate.try_acquire(0)
    assert first.wait == second.wait == UNAVAILABLE_RETRY and "unavailable" in first.reason
    assert sum("unavailable" in rec.getMessage() for rec in caplog.records) == 1
    assert gate.session_start_info() == {}
    with pytest.raises(sg.GatewayError, match="cannot record the session start limit"):
        gate.update_session_start_limit(LIMIT)


def test_bad_arguments():
    for kwargs in ({"url": "http://x"}, {"url": 5}, {"url": "redis://x", "key_prefix": ""}, {"url": "redis://x", "daily_floor": -1}):
        with pytest.raises(sg.ConfigError):
            RedisIdentifyGate(**kwargs)
    with pytest.raises(sg.ConfigError):
        RedisSessionStore("redis://x", max_age=-1)
    with pytest.raises(sg.ConfigError):
        RedisStreamSink("redis://x", maxlen=0)
    with pytest.raises(sg.ConfigError):
        StreamWorker("redis://x", handler=None)
    assert "secret" not in repr(RedisSessionStore("redis://user:secret@127.0.0.1:1/0"))


def test_daily_floor_stops_a_client_with_a_clear_message(redis_url, prefix, caplog):
    with FakeGateway(token=TOKEN) as gw:
        gw.gateway_bot["session_start_limit"]["remaining"] = 3
        gate = RedisIdentifyGate(redis_url, key_prefix=prefix, daily_floor=3)
        client = sg.GatewayClient(TOKEN, api_base=gw.api_base, identify_gate=gate)
        try:
            with caplog.at_level(logging.WARNING, logger="sync_gateway"):
                client.start()
                assert wait_until(lambda: client.status().identify_wait is not None, timeout=10)
            assert client.status().identify_wait.startswith("session start limit: 3 remaining (floor 3), resets in 3h59m")
            assert all(c.identify is None for c in gw.connections)
            assert any(
                "IDENTIFY held back: 3 of 1000 daily session starts remaining (floor 3)" in rec.getMessage()
                for rec in caplog.records
            )
        finally:
            client.close()


def test_processes_sharing_a_redis_gate_never_identify_one_bucket_within_5s(redis_url, prefix):
    bot = bot_id_from_token(TOKEN)  # keys are per bot: the children bind their gates to it
    RedisIdentifyGate(redis_url, key_prefix=prefix).for_bot(bot).update_session_start_limit(LIMIT)
    # shards 0 and 2 (twice) are bucket 0 with max_concurrency 2; shard 1 is bucket 1
    shards = ["0/4", "2/4", "2/4", "1/4"]
    with FakeGateway(token=TOKEN, heartbeat_interval=1000) as gw, children() as procs:
        for shard in shards:
            procs.append(
                Child("gateway_child.py", "--url", gw.url, "--gate", f"redis:{redis_url}", "--prefix", prefix,
                      "--shard", shard, "--mc", "2", token=TOKEN)
            )
        for child in procs:
            child.wait_line(lambda line: line == "LC ready", timeout=30, what="READY")
        identifies = sorted(
            (at, p["d"]["shard"][0]) for conn in gw.connections for at, p in conn.received if p.get("op") == 2
        )
        assert len(identifies) == 4
        bucket0 = [at for at, sid in identifies if sid % 2 == 0]
        bucket1 = [at for at, sid in identifies if sid % 2 == 1]
        assert all(b - a >= 5.0 for a, b in zip(bucket0, bucket0[1:])), bucket0
        assert bucket1[0] < bucket0[1]  # bucket 1 did not queue behind bucket 0
        for child in procs:
            assert child.stop() == 0
    ledger = RedisIdentifyGate(redis_url, key_prefix=prefix).for_bot(bot).session_start_info()
    assert ledger["remaining"] == 46  # four session starts, counted once each across processes


# ---------------------------------------------------------------------------------------------
# RedisSessionStore


def test_store_keys_expire_with_max_age(redis_url, prefix, r):
    store = RedisSessionStore(redis_url, key_prefix=prefix, max_age=60.0)
    assert isinstance(store, sg.stores.SessionStore)
    key = session_key(TOKEN, 3, 4)
    assert store.load(key) is None
    import time

    record = SessionRecord("sess", 7, "ws://127.0.0.1:1/", [3, 4], time.time())
    store.save(key, record)
    assert store.load(key) == record and store.load_fresh(key) == record
    assert 59_000 < r.pttl(f"{prefix}:session:{key}") <= 60_000
    assert TOKEN not in json.dumps([k.decode() for k in r.keys("*")]) + r.get(f"{prefix}:session:{key}").decode()
    store.delete(key)
    assert store.load(key) is None
    short = RedisSessionStore(redis_url, key_prefix=prefix, max_age=0.2)
    short.save(key, record)
    assert wait_until(lambda: short.load(key) is None, timeout=5)  # a stale session vanishes by itself


def test_store_load_during_an_outage_means_identify(unused_port, caplog):
    store = RedisSessionStore(f"redis://127.0.0.1:{unused_port}/0", socket_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        assert store.load("k") is None
    assert any("identifying instead" in rec.getMessage() for rec in caplog.records)


def test_sigkilled_process_resumes_from_the_redis_store(redis_url, prefix):
    from test_stores import kill_and_restart_resumes

    store = RedisSessionStore(redis_url, key_prefix=prefix)
    key = session_key(TOKEN, 0, 1)

    def stored_seq():
        rec = store.load(key)
        return rec.seq if rec else None

    with FakeGateway(token=TOKEN) as gw:
        kill_and_restart_resumes(gw, f"redis:{redis_url}", stored_seq, extra=("--prefix", prefix))
    assert store.load(key) is None


# ---------------------------------------------------------------------------------------------
# RedisStreamSink and StreamWorker


def test_sink_entry_fields(redis_url, prefix, r):
    sink = RedisStreamSink(redis_url, stream=f"{prefix}:events", maxlen=10)
    entry = sink(sg.Dispatch("MESSAGE_CREATE", {"content": "hé", "n": [1]}, 12, 3, "sess"))
    sink(sg.Dispatch("X", None, None))
    (got_id, fields), second = r.xrange(f"{prefix}:events")
    assert got_id.decode() == entry
    assert fields == {b"name": b"MESSAGE_CREATE", b"seq": b"12", b"shard_id": b"3", b"session_id": b"sess",
                      b"data": json.dumps({"content": "hé", "n": [1]}, separators=(",", ":"), ensure_ascii=False).encode()}
    assert second[1][b"seq"] == b"" and second[1][b"session_id"] == b""
    for i in range(300):
        sink(sg.Dispatch("X", i, i))
    assert r.xlen(f"{prefix}:events") < 300  # approximately capped
    with pytest.raises(TypeError):
        sink({"name": "X"})
    sink.close()


def test_sink_gives_up_after_retry_for(unused_port, caplog):
    sink = RedisStreamSink(f"redis://127.0.0.1:{unused_port}/0", retry_for=0.3, socket_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="sync_gateway"), pytest.raises(sg.GatewayError):
        sink(sg.Dispatch("X", {}, 1))
    assert sink.dropped == 1
    assert any(rec.levelno == logging.ERROR and "not written" in rec.getMessage() for rec in caplog.records)


def test_worker_in_process_gets_its_own_pending_entries_after_a_restart(redis_url, prefix):
    stream = f"{prefix}:events"
    sink = RedisStreamSink(redis_url, stream=stream)
    for i in range(1, 6):
        sink(sg.Dispatch("E", {"i": i}, i, 0, "s"))
    got, stop = [], threading.Event()

    def failing(event):
        got.append(event.seq)
        if event.seq == 3:
            raise RuntimeError("boom")  # not acknowledged: stays pending
        if len(got) == 5:
            stop.set()

    assert consume(redis_url, stream=stream, group="g", consumer="c1", handler=failing, block_ms=100, stop=stop) == 4
    again, stop2 = [], threading.Event()

    def ok(event):
        assert isinstance(event, StreamDispatch) and event.entry_id
        again.append((event.seq, event.data, event.session_id))
        stop2.set()

    # same consumer name: its unacknowledged entry comes first, before anything new
    assert consume(redis_url, stream=stream, group="g", consumer="c1", handler=ok, block_ms=100, stop=stop2) == 1
    assert got == [1, 2, 3, 4, 5] and again == [(3, {"i": 3}, "s")]


def test_events_reach_a_worker_process_once_per_acknowledgement(redis_url, prefix, make_client, gateway, r):
    stream, group = f"{prefix}:events", "workers"
    sink = RedisStreamSink(redis_url, stream=stream)
    client, rec = make_client()
    client.on("*", sink)
    client.start()
    assert client.wait_until_ready(10)
    first = gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(10)])  # seqs 2..11 (READY is 1)
    assert wait_until(lambda: r.xlen(stream) == 11, timeout=5)
    die_at = first[4]
    with children() as procs:
        doomed = Child("worker_child.py", "--redis", redis_url, "--stream", stream, "--group", group,
                       "--consumer", "w1", "--die-at", str(die_at))
        procs.append(doomed)
        doomed.proc.wait(20)  # it SIGKILLs itself inside the handler of die_at, before XACK
        doomed.drain_to_eof()
        assert doomed.proc.returncode == -9, doomed.output()
        # it read the whole batch, so everything from die_at on is pending for it, unacknowledged
        delivered = [1] + first
        assert r.xpending(stream, group)["pending"] == len(delivered) - delivered.index(die_at)
        # a new worker (another name) claims the dead one's entry once it has been idle 300 ms
        heir = Child("worker_child.py", "--redis", redis_url, "--stream", stream, "--group", group,
                     "--consumer", "w2", "--claim-idle-ms", "300")
        procs.append(heir)
        heir.wait_line(lambda line: line == f"GOT {first[-1]} MESSAGE_CREATE", what="the last event")
        more = gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(10, 15)])
        heir.wait_line(lambda line: line == f"GOT {more[-1]} MESSAGE_CREATE", what="the new events")
        assert heir.stop() == 0
    seqs_doomed = [int(v.split()[0]) for v in doomed.values("GOT")]
    seqs_heir = [int(v.split()[0]) for v in heir.values("GOT")]
    everything = [1] + first + more
    assert seqs_doomed == everything[: everything.index(die_at) + 1]
    assert sorted(seqs_heir) == everything[everything.index(die_at):]  # the unacked one again, then the rest
    assert len(seqs_heir) == len(set(seqs_heir))
    assert heir.values("ACKED") == [str(len(seqs_heir))]
    # every entry acknowledged exactly once in all: none pending, acks == entries
    assert r.xpending(stream, group)["pending"] == 0
    assert len(seqs_doomed) - 1 + len(seqs_heir) == r.xlen(stream) == len(everything)
