"""ShardedClient: one GatewayClient per shard sharing handlers, gate and store (loopback)."""
import threading
import time

import pytest

import sync_gateway as sg
from sync_gateway.sharding import ShardedClient, ShardedStatus, shard_for_guild
from sync_gateway.stores import MemorySessionStore
from sync_gateway.testing import FakeGateway
from support import TOKEN, Recorder, handshakes

pytestmark = pytest.mark.timeout(60)

# The IDENTIFY gate can hold a socket for a whole 5 s interval before anything but heartbeats
# flows on it; a short HELLO timeout would turn that wait into a read timeout (see the report).
CONFIG = sg.LifecycleConfig(
    hello_timeout=10.0,
    ready_timeout=10.0,
    drain_timeout=1.0,
    force_close_timeout=0.5,
    backoff_base=0.05,
    backoff_max=0.2,
    invalid_session_delay=(0.05, 0.1),
)


def fast_gate():
    return sg.MemoryIdentifyGate(interval=0.0, margin=0.0)


@pytest.fixture
def gw():
    with FakeGateway(token=TOKEN, heartbeat_interval=1000) as gateway:
        yield gateway


@pytest.fixture
def sharded(gw):
    made = []

    def make(**kwargs):
        kwargs.setdefault("config", CONFIG)
        kwargs.setdefault("identify_gate", fast_gate())
        if "api_base" not in kwargs:
            kwargs.setdefault("gateway_url", gw.url)
        client = ShardedClient(TOKEN, **kwargs)
        made.append(client)
        return client, Recorder(client)

    yield make
    for client in made:
        client.close(timeout=5.0)


def identifies_by_shard(gateway):
    """shard_id -> (server receive time of its IDENTIFY, connection)."""
    out = {}
    for conn in gateway.connections:
        for at, payload in conn.received:
            if payload.get("op") == 2:
                out[payload["d"]["shard"][0]] = (at, conn)
    return out


def conn_of_shard(gateway, shard_id):
    for conn in reversed(gateway.connections):
        if conn.identify is not None and conn.identify["shard"][0] == shard_id and not conn.closed.is_set():
            return conn
    raise AssertionError(f"no live connection for shard {shard_id}")


def test_four_shards_identify_in_ordered_buckets_five_seconds_apart(gw, sharded):
    gw.gateway_bot["shards"] = 4
    gw.gateway_bot["session_start_limit"]["max_concurrency"] = 2
    gate = sg.MemoryIdentifyGate()  # the real 5 s (+0.25 s margin)
    client, rec = sharded(api_base=gw.api_base, identify_gate=gate)
    assert client.shard_count is None and client.status().state == "idle"
    started = time.monotonic()
    client.start()
    assert client.shard_count == 4 and client.shard_ids == (0, 1, 2, 3) and client.max_concurrency == 2
    assert client.wait_until_ready(20)
    elapsed = time.monotonic() - started
    assert 5.0 <= elapsed < 15.0

    # one REST discovery for all shards
    assert [p for (_m, p, _h) in gw.rest_requests if p.endswith("/gateway/bot")] == ["/api/v10/gateway/bot"]
    ids = identifies_by_shard(gw)
    assert sorted(ids) == [0, 1, 2, 3]
    assert all(conn.identify["shard"] == [sid, 4] for sid, (_, conn) in ids.items())
    t = {sid: at for sid, (at, _) in ids.items()}
    assert t[2] - t[0] >= 5.0 and t[3] - t[1] >= 5.0  # same bucket: 5 s apart, at the server
    assert max(t[0], t[1]) < min(t[2], t[3])  # buckets in order: 0..mc-1 first
    assert abs(t[0] - t[1]) < 2.0  # different buckets do not wait for each other
    assert gate.session_start_info()["remaining"] == 996

    # events carry their shard, handlers are shared
    for sid in range(4):
        gw.dispatch("MESSAGE_CREATE", {"from": sid}, connection=conn_of_shard(gw, sid))
    rec.wait_events("MESSAGE_CREATE", 4)
    assert sorted((e.shard_id, e.data["from"]) for e in rec.named("MESSAGE_CREATE")) == [(i, i) for i in range(4)]
    assert sorted(e.shard_id for e in rec.lifecycle if e.kind == "ready") == [0, 1, 2, 3]

    status = client.status()
    assert isinstance(status, ShardedStatus)
    assert status.state == "ready" and status.ready == 4 and status.shard_count == 4
    assert status.identifies == 4 and status.resumes == 0 and status.orphaned_readers == 0
    assert sorted(status.shards) == [0, 1, 2, 3]
    assert all(s.shard_id == sid and s.state == "ready" for sid, s in status.shards.items())
    with pytest.raises(TypeError):
        status.shards[0] = None  # read-only

    guild = (123456789 << 22) | 42
    assert client.shard_for_guild(guild) == (123456789 % 4) == shard_for_guild(str(guild), 4)
    target = conn_of_shard(gw, client.shard_for_guild(guild))
    client.request_guild_members(guild, query="ab", limit=5, timeout=5)
    payload = target.wait_for(op=8, timeout=5)
    assert payload["d"]["guild_id"] == str(guild)
    assert len(client.threads()) == 12  # 3 per shard: supervisor, reader, dispatcher
    client.close()
    assert client.status().state == "closed"
    assert client.threads() == []


def test_constructor_checks_arguments_and_does_nothing_else():
    before = threading.active_count()
    for kwargs in (
        {"shard_count": 0},
        {"shard_count": "many"},
        {"shard_count": True},
        {"shard_count": 4, "shard_ids": [4]},
        {"shard_count": 4, "shard_ids": [1, 1]},
        {"shard_count": 4, "shard_ids": []},
        {"shard_count": 4, "shard_ids": "01"},
        {"shard_ids": [0]},  # ids need an explicit count
        {"max_concurrency": 0},
        {"identify_gate": {}},
        {"session_store": {}},
        {"compress": "gzip"},
        {"intents": -1},
        {"gateway_url": "http://example.com"},
    ):
        with pytest.raises(sg.ConfigError):
            ShardedClient(TOKEN, **kwargs)
    with pytest.raises(sg.ConfigError):
        ShardedClient("")
    with pytest.raises(TypeError):
        ShardedClient(TOKEN, bogus=1)
    client = ShardedClient(TOKEN, shard_count=4, shard_ids=[3, 1])
    assert client.shard_ids == (1, 3) and client.shard_count == 4
    assert client.shard_for_guild(1 << 22) == 1
    with pytest.raises(RuntimeError):
        ShardedClient(TOKEN).shard_for_guild(1)  # "auto": unknown before start
    with pytest.raises(RuntimeError):
        client.reconnect()
    assert threading.active_count() == before
    assert TOKEN not in repr(client)


def test_shard_for_guild_formula():
    assert shard_for_guild(0, 1) == 0
    assert shard_for_guild(81384788765712384, 2) == (81384788765712384 >> 22) % 2
    with pytest.raises(ValueError):
        shard_for_guild("abc", 2)
    with pytest.raises(ValueError):
        shard_for_guild(1, 0)


def test_subset_of_shards_and_routing(gw, sharded):
    client, rec = sharded(shard_count=4, shard_ids=[1, 3], max_concurrency=4)
    client.start()
    assert client.wait_until_ready(10)
    assert sorted(c.identify["shard"][0] for c in gw.connections) == [1, 3]
    assert gw.rest_requests == []  # url, count and max_concurrency given: no discovery
    with pytest.raises(ValueError, match="shard 0"):
        client.request_guild_members(4 << 22, timeout=1)  # shard 0 lives elsewhere
    with pytest.raises(ValueError):
        client.reconnect(shard_id=0)


def test_presence_and_send_go_to_every_shard(gw, sharded):
    client, rec = sharded(shard_count=3, max_concurrency=3)
    client.start()
    assert client.wait_until_ready(10)
    client.update_presence("idle", timeout=5)
    for sid in range(3):
        assert conn_of_shard(gw, sid).wait_for(op=3, timeout=5)["d"]["status"] == "idle"
    client.send(3, {"since": None, "activities": [], "status": "dnd", "afk": False}, timeout=5, shard_id=2)
    assert conn_of_shard(gw, 2).wait_for(op=3, predicate=lambda p: p["d"]["status"] == "dnd", timeout=5)


def test_reconnect_one_shard_resumes_only_that_one(gw, sharded):
    client, rec = sharded(shard_count=2, max_concurrency=2)
    client.start()
    assert client.wait_until_ready(10)
    client.reconnect(shard_id=1)
    rec.wait_for(lambda r: any(e.kind == "resumed" and e.shard_id == 1 for e in r.lifecycle), what="shard 1 resumed")
    status = client.status()
    assert status.shards[1].resumes == 1 and status.shards[0].resumes == 0
    assert status.resumes == 1 and status.reconnects == 1 and status.identifies == 2
    assert len(gw.connections) == 3


def test_run_forever_raises_the_first_fatal_error_and_closes_the_rest(gw, sharded):
    client, rec = sharded(shard_count=3, max_concurrency=3)
    client.start()
    assert client.wait_until_ready(10)
    conn_of_shard(gw, 1).close(4014, "Disallowed intent(s).")
    with pytest.raises(sg.FatalGatewayError) as info:
        client.run_forever()
    assert info.value.code == 4014
    status = client.status()
    assert status.shards[1].state == "failed"
    assert status.shards[0].state == "closed" and status.shards[2].state == "closed"
    assert client.threads() == []


def test_close_is_parallel_and_bounded(gw, sharded):
    gw.close_reply_delay = None  # the server never answers a close frame: each shard drains 1 s
    client, rec = sharded(shard_count=4, max_concurrency=4)
    client.start()
    assert client.wait_until_ready(10)
    started = time.monotonic()
    client.close(timeout=5.0)
    elapsed = time.monotonic() - started
    assert elapsed < 2.5, f"closing 4 shards took {elapsed:.1f}s: not in parallel"
    assert client.threads() == []
    client.close()  # idempotent
    with pytest.raises(RuntimeError):
        client.start()


def test_close_from_inside_a_handler(gw, sharded):
    client, rec = sharded(shard_count=2, max_concurrency=2)
    returned = threading.Event()

    @client.on("MESSAGE_CREATE")
    def stop(event):
        client.close(timeout=5.0)
        returned.set()

    client.start()
    assert client.wait_until_ready(10)
    gw.dispatch("MESSAGE_CREATE", {}, connection=conn_of_shard(gw, 0))
    assert returned.wait(10)
    assert all(c.wait_until_ready(0) is False for c in client.clients.values())


def test_keep_session_then_restart_resumes_every_shard(gw, sharded):
    store = MemorySessionStore()
    first, _ = sharded(shard_count=2, max_concurrency=1, session_store=store, identify_gate=sg.MemoryIdentifyGate(interval=0.3, margin=0.0))
    first.start()
    assert first.wait_until_ready(10)
    first.close(keep_session=True)
    second, rec = sharded(shard_count=2, max_concurrency=1, session_store=store, identify_gate=sg.MemoryIdentifyGate(interval=0.3, margin=0.0))
    second.start()
    assert second.wait_until_ready(10)
    assert handshakes(gw) == ["I", "I", "R", "R"]
    status = second.status()
    assert status.resumes == 2 and status.identifies == 0
