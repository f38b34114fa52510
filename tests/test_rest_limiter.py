"""The REST rate-limit rules (ratelimit_rest.py): route keys, and one suite of limiter rules run
against MemoryRateLimiter (a fake clock where time matters) and RedisRateLimiter (a private
redis-server on 127.0.0.1)."""
import logging
import threading
import time
import uuid

import pytest

from procs.harness import REDIS_SERVER, redis_server
from sync_gateway.ratelimit_rest import (
    MemoryRateLimiter,
    Observation,
    RateLimiter,
    Route,
    compile_route,
)

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------------------------
# routes


def test_template_keeps_major_parameters_and_folds_the_rest():
    a = compile_route("patch", "/channels/{channel_id}/messages/{message_id}", {"channel_id": 1, "message_id": 22})
    b = compile_route("PATCH", "/channels/{channel_id}/messages/{message_id}", {"channel_id": 1, "message_id": 23})
    c = compile_route("PATCH", "/channels/{channel_id}/messages/{message_id}", {"channel_id": 2, "message_id": 22})
    assert a.path == "/channels/1/messages/22" and a.method == "PATCH"
    assert a.key == b.key == c.key == "PATCH /channels/{channel_id}/messages/{message_id}"
    assert a.major == b.major == "channel_id=1" and c.major == "channel_id=2"
    assert a.authorized and a.use_global


def test_guild_and_webhook_majors():
    g = compile_route("GET", "/guilds/{guild_id}/members/{user_id}", {"guild_id": 5, "user_id": 6})
    assert g.major == "guild_id=5"
    w = compile_route("POST", "/webhooks/{webhook_id}/{webhook_token}", {"webhook_id": 7, "webhook_token": "s3cr3t-tok"})
    assert w.path == "/webhooks/7/s3cr3t-tok"
    assert w.major.startswith("webhook_id=7&webhook_token=") and "s3cr3t-tok" not in w.major  # hashed: keys go to Redis
    assert "s3cr3t-tok" not in w.display and w.display == "/webhooks/7/{webhook_token}"
    assert not w.authorized and not w.use_global


def test_interaction_callback_is_keyed_per_interaction_and_exempt():
    r = compile_route(
        "POST", "/interactions/{interaction_id}/{interaction_token}/callback", {"interaction_id": 9, "interaction_token": "tok"}
    )
    assert r.key == "POST /interactions/{interaction_id}/{interaction_token}/callback"
    assert r.major.startswith("interaction_id=9&interaction_token=")
    assert not r.authorized and not r.use_global
    assert r.display == "/interactions/9/{interaction_token}/callback"


def test_literal_paths_are_parsed_like_templates():
    r = compile_route("POST", "/channels/1/messages", {})
    assert (r.key, r.major, r.path) == ("POST /channels/{channel_id}/messages", "channel_id=1", "/channels/1/messages")
    r = compile_route("DELETE", "/channels/1/messages/99", {})
    assert r.key == "DELETE /channels/{channel_id}/messages/{id}" and r.major == "channel_id=1"
    r = compile_route("POST", "/webhooks/3/abc/messages", {})  # a token segment, then more path
    assert r.key == "POST /webhooks/{webhook_id}/{webhook_token}/messages" and not r.authorized
    r = compile_route("GET", "/channels/1/messages?limit=5", {})
    assert r.path == "/channels/1/messages?limit=5" and r.key == "GET /channels/{channel_id}/messages"
    assert compile_route("GET", "gateway/bot", {}).path == "/gateway/bot"


def test_parameters_are_url_quoted():
    r = compile_route(
        "PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me", {"channel_id": 1, "message_id": 2, "emoji": "👍"}
    )
    assert r.path == "/channels/1/messages/2/reactions/%F0%9F%91%8D/@me"
    assert compile_route("GET", "/x/{a}", {"a": "b/c?d"}).path == "/x/b%2Fc%3Fd"


@pytest.mark.parametrize(
    "route,params,message",
    [
        ("/channels/{channel_id}/messages", {}, "needs channel_id="),
        ("/channels/{channel_id}/messages", {"channel_id": 1, "chanel_id": 2}, "takes no parameter chanel_id"),
        ("/channels/1/messages", {"channel_id": 1}, "no {placeholders}"),
        ("/channels/{channel_id}/messages", {"channel_id": ""}, "empty"),
    ],
)
def test_route_mistakes_raise_type_error(route, params, message):
    with pytest.raises(TypeError, match=message.replace("{", r"\{").replace("}", r"\}")):
        compile_route("GET", route, params)


# ---------------------------------------------------------------------------------------------
# limiter rules, both implementations


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH")
    pytest.importorskip("redis")
    with redis_server(str(tmp_path_factory.mktemp("redis-rest"))) as url:
        yield url


@pytest.fixture(params=["memory", "redis"])
def limiter(request):
    if request.param == "memory":
        yield MemoryRateLimiter(clock=Clock())
        return
    from sync_gateway import RedisRateLimiter

    url = request.getfixturevalue("redis_url")
    lim = RedisRateLimiter(url, key_prefix=f"t{uuid.uuid4().hex[:10]}")
    yield lim
    lim.close()


MSG = compile_route("POST", "/channels/{channel_id}/messages", {"channel_id": 1})
MSG2 = compile_route("POST", "/channels/{channel_id}/messages", {"channel_id": 2})
EDIT = compile_route("PATCH", "/channels/{channel_id}/messages/{message_id}", {"channel_id": 1, "message_id": 5})
CALLBACK = compile_route(
    "POST", "/interactions/{interaction_id}/{interaction_token}/callback", {"interaction_id": 1, "interaction_token": "t"}
)


def take(limiter: RateLimiter, route: Route, *, global_limit: int = 50, refuse_at: int = 100):
    return limiter.acquire("bot", route, global_limit=global_limit, global_period=1.0, lease=30.0, refuse_at=refuse_at)


def ok(limit=3, remaining=2, reset_after=10.0, bucket="h1", status=200, reset=None) -> Observation:
    return Observation(status, bucket, limit, remaining, reset_after, reset=reset)


def test_an_unknown_bucket_lets_one_request_through_then_counts_before_sending(limiter):
    probe = take(limiter, MSG)
    assert probe.ticket is not None
    held = take(limiter, MSG)
    assert held.ticket is None and held.reason == "unknown"
    limiter.release("bot", MSG, probe.ticket, ok(limit=3, remaining=2))
    first, second, third = take(limiter, MSG), take(limiter, MSG), take(limiter, MSG)
    assert first.ticket is not None and second.ticket is not None  # 2 left, both taken before any answer
    assert third.ticket is None and third.reason == "bucket" and 9.0 < third.wait <= 10.0
    st = limiter.status("bot")
    assert st["routes"] == {MSG.key: "h1"}
    assert st["buckets"]["h1|channel_id=1"]["limit"] == 3 and st["buckets"]["h1|channel_id=1"]["remaining"] == 0


def test_a_failed_probe_frees_the_bucket_for_another(limiter):
    probe = take(limiter, MSG)
    limiter.release("bot", MSG, probe.ticket, None)  # connection error: nothing learned
    assert take(limiter, MSG).ticket is not None


def test_requests_on_the_wire_count_against_what_the_probe_learned(limiter):
    # Another route learned the hash meanwhile, so a second request went out as a probe of the
    # hashed bucket: when the first probe's answer arrives, that one is still on the wire.
    probe_a = take(limiter, MSG)
    probe_edit = take(limiter, EDIT)
    limiter.release("bot", EDIT, probe_edit.ticket, ok(limit=3, remaining=2, bucket="h1"))
    # EDIT and MSG share bucket h1 for channel 1 now; MSG's own probe is still out there.
    limiter.release("bot", MSG, probe_a.ticket, ok(limit=3, remaining=1, bucket="h1"))
    granted = [take(limiter, MSG).ticket for _ in range(3)]
    assert sum(t is not None for t in granted) <= 1  # 3 - 2 already used


def test_a_probe_still_out_when_another_major_teaches_the_hash_counts_in_its_bucket(limiter):
    """Channel 1's first request is out (its bucket unknown) when channel 2's answer teaches the
    route's hash. Channel 1's next requests go to the hashed bucket, which must still count the
    first one: found by tools/bench_rest.py as one 429 in some runs on a loaded machine (16
    threads, 4 channels: the first requests of all channels go out at once)."""
    probe_1 = take(limiter, MSG).ticket
    probe_2 = take(limiter, MSG2).ticket
    assert probe_1 is not None and probe_2 is not None
    limiter.release("bot", MSG2, probe_2, ok(limit=3, remaining=2, bucket="h1"))
    assert limiter.status("bot")["routes"] == {MSG.key: "h1"}
    held = take(limiter, MSG)  # channel 1's limit is still unknown and its probe is out: wait
    assert held.ticket is None and held.reason == "unknown"
    limiter.release("bot", MSG, probe_1, ok(limit=3, remaining=2, bucket="h1"))
    granted = [take(limiter, MSG).ticket for _ in range(3)]
    assert [t is not None for t in granted] == [True, True, False]  # 3 - the probe
    st = limiter.status("bot")["buckets"]["h1|channel_id=1"]
    assert st["limit"] == 3 and st["remaining"] == 0
    assert not any(b.startswith("?") for b in limiter.status("bot")["buckets"])


def test_routes_with_one_hash_share_a_bucket_per_major_parameter(limiter):
    probe = take(limiter, MSG)
    limiter.release("bot", MSG, probe.ticket, ok(limit=2, remaining=1, bucket="h1"))
    edit_probe = take(limiter, EDIT)  # EDIT's route is not known yet: one probe
    assert edit_probe.ticket is not None
    limiter.release("bot", EDIT, edit_probe.ticket, ok(limit=2, remaining=0, bucket="h1"))
    assert limiter.status("bot")["routes"] == {MSG.key: "h1", EDIT.key: "h1"}
    assert take(limiter, MSG).ticket is None  # the edit used channel 1's last slot
    other = take(limiter, MSG2)  # channel 2: the same hash, its own bucket (unknown: a probe)
    assert other.ticket is not None and other.ticket.bucket == "h1|channel_id=2"


def test_global_limit_and_exempt_routes(limiter):
    routes = [compile_route("GET", "/channels/{channel_id}", {"channel_id": n}) for n in range(4)]
    grants = [take(limiter, r, global_limit=3) for r in routes]
    assert [g.ticket is not None for g in grants] == [True, True, True, False]
    assert grants[3].reason == "global" and 0.9 < grants[3].wait <= 1.0
    assert take(limiter, CALLBACK, global_limit=3).ticket is not None  # interaction callbacks are exempt


def test_429_scopes(limiter):
    probe = take(limiter, MSG)
    limiter.release("bot", MSG, probe.ticket, Observation(429, "h1", 5, 0, 4.0, retry_after=4.0, scope="user"))
    held = take(limiter, MSG)
    assert held.ticket is None and held.reason == "bucket" and 3.0 < held.wait <= 4.0
    other = take(limiter, MSG2)
    limiter.release("bot", MSG2, other.ticket, Observation(429, None, None, None, None, retry_after=6.0, scope="global"))
    blocked = take(limiter, compile_route("GET", "/users/@me", {}))
    assert blocked.ticket is None and blocked.reason == "global" and 5.0 < blocked.wait <= 6.0
    assert take(limiter, CALLBACK).ticket is not None  # exempt from the global limit, and from its 429
    assert limiter.status("bot")["global_wait"] > 5.0


def test_invalid_requests_are_counted_and_refused_at_the_threshold(limiter):
    routes = [compile_route("GET", "/channels/{channel_id}", {"channel_id": n}) for n in range(10)]
    counts = []
    for route, status, scope in [
        (routes[0], 403, None),
        (routes[1], 401, None),
        (routes[2], 429, "shared"),  # does not count
        (routes[3], 429, "user"),
        (routes[4], 404, None),  # does not count
    ]:
        grant = take(limiter, route, refuse_at=10)
        assert grant.ticket is not None
        counts.append(limiter.release("bot", route, grant.ticket, Observation(status, None, None, None, None, 0.01 if status == 429 else None, scope)))
    assert counts == [1, 2, 2, 3, 3]
    refused = take(limiter, routes[5], refuse_at=3)
    assert refused.ticket is None and refused.reason == "invalid" and refused.invalid == 3
    assert 590 < refused.wait <= 600
    assert limiter.status("bot")["invalid_requests"] == 3
    assert take(limiter, routes[5], refuse_at=4).ticket is not None


def test_a_route_without_limit_headers_is_not_serialised(limiter):
    route = compile_route("GET", "/gateway", {})
    probe = take(limiter, route)
    limiter.release("bot", route, probe.ticket, Observation(200))
    assert all(take(limiter, route).ticket is not None for _ in range(5))


def test_scopes_are_separate(limiter):
    probe = take(limiter, MSG)
    assert probe.ticket is not None
    assert limiter.acquire("other-bot", MSG, global_limit=50, global_period=1.0, lease=30.0, refuse_at=100).ticket is not None


def test_wait_returns_at_once_when_cancelled_and_is_woken_by_a_release(limiter):
    cancel = threading.Event()
    cancel.set()
    limiter.wait(30.0, cancel)  # would hang the test otherwise (pytest-timeout)
    probe = take(limiter, MSG)
    woke = threading.Event()

    def waiter():
        limiter.wait(30.0)
        woke.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    while not woke.is_set():  # a release notifies every waiter in this process
        limiter.release("bot", MSG, probe.ticket, ok())
        woke.wait(0.05)
    thread.join(5.0)


# ---------------------------------------------------------------------------------------------
# time-dependent rules: MemoryRateLimiter with a fake clock


def memory():
    clock = Clock()
    return MemoryRateLimiter(clock=clock), clock


def test_window_rolls_over_and_requests_on_the_wire_count_in_the_next_window():
    lim, clock = memory()
    probe = take(lim, MSG)
    lim.release("bot", MSG, probe.ticket, ok(limit=3, remaining=2, reset_after=1.0))
    a, b = take(lim, MSG).ticket, take(lim, MSG).ticket
    assert a and b and take(lim, MSG).ticket is None
    lim.release("bot", MSG, a, ok(limit=3, remaining=1, reset_after=0.9))
    clock.now += 1.0  # the window is over; b is still on the wire and may land in the next one
    got = [take(lim, MSG).ticket for _ in range(3)]
    assert [t is not None for t in got] == [True, True, False]
    assert lim.status("bot")["buckets"]["h1|channel_id=1"]["resets_in"] is None  # learned from this window's first answer
    waiting = take(lim, MSG)
    assert waiting.reason == "unknown"
    lim.release("bot", MSG, got[0], ok(limit=3, remaining=1, reset_after=1.0))
    assert 0.99 < take(lim, MSG).wait <= 1.0


def test_a_late_answer_from_an_older_window_changes_nothing():
    lim, clock = memory()
    probe = take(lim, MSG)
    lim.release("bot", MSG, probe.ticket, ok(limit=5, remaining=4, reset_after=1.0))
    old = take(lim, MSG).ticket
    clock.now += 1.5
    fresh = take(lim, MSG).ticket
    lim.release("bot", MSG, fresh, ok(limit=5, remaining=4, reset_after=1.0))
    lim.release("bot", MSG, old, ok(limit=5, remaining=0, reset_after=0.1))  # from the old window
    assert sum(take(lim, MSG).ticket is not None for _ in range(5)) == 3  # 5 - fresh - old (counted at rollover)


def test_the_earliest_end_of_a_window_wins():
    lim, clock = memory()
    probe = take(lim, MSG)
    lim.release("bot", MSG, probe.ticket, ok(limit=5, remaining=4, reset_after=1.0))  # ends at +1.0
    a, b = take(lim, MSG).ticket, take(lim, MSG).ticket
    clock.now += 0.1
    lim.release("bot", MSG, a, ok(limit=5, remaining=3, reset_after=0.95))  # a slower answer: +1.05
    assert lim.status("bot")["buckets"]["h1|channel_id=1"]["resets_in"] == pytest.approx(0.9)
    lim.release("bot", MSG, b, ok(limit=5, remaining=2, reset_after=0.85))  # a faster one: +0.95
    assert lim.status("bot")["buckets"]["h1|channel_id=1"]["resets_in"] == pytest.approx(0.85)


def test_an_answer_from_discords_next_window_counts_in_ours():
    lim, clock = memory()
    probe = take(lim, MSG)
    lim.release("bot", MSG, probe.ticket, ok(limit=3, remaining=2, reset_after=1.0))
    a, b = take(lim, MSG).ticket, take(lim, MSG).ticket
    clock.now += 0.9
    # a reached Discord after its window ended (a stalled thread): its window ends a second later.
    lim.release("bot", MSG, a, ok(limit=3, remaining=2, reset_after=1.0))
    assert lim.status("bot")["buckets"]["h1|channel_id=1"]["resets_in"] == pytest.approx(0.1)
    clock.now += 0.1
    got = [take(lim, MSG).ticket for _ in range(3)]
    assert [t is not None for t in got] == [True, False, False]  # 3 - a (carried) - b (on the wire)


def _next_window_told_by_its_reset(lim, window_over):
    """The window's first answer (the probe's) took a while, so our window's end is late; a
    request that reached Discord in its next window answers before ours ends. By ``now +
    Reset-After`` it looks like this window's; its X-RateLimit-Reset, one window later than the
    probe's, says otherwise, and it counts in the next window (else that window grants one too
    many: a 429, seen under load in CI with 0.25 s windows)."""
    reset = 1_800_000_000.0  # Discord's clock, epoch seconds: not ours
    probe = take(lim, MSG)
    lim.release("bot", MSG, probe.ticket, ok(limit=3, remaining=2, reset_after=0.4, reset=reset))
    a, b = take(lim, MSG).ticket, take(lim, MSG).ticket
    assert a and b
    lim.release("bot", MSG, a, ok(limit=3, remaining=2, reset_after=0.4, reset=reset + 0.4))
    window_over()
    got = [take(lim, MSG).ticket for _ in range(3)]
    assert [t is not None for t in got] == [True, False, False]  # 3 - a (carried) - b (on the wire)


def test_an_answer_whose_reset_is_a_window_later_counts_in_the_next_one():
    lim, clock = memory()

    def window_over():
        clock.now += 0.4

    _next_window_told_by_its_reset(lim, window_over)


def test_redis_tells_the_next_window_by_its_reset(redis_url):
    from sync_gateway import RedisRateLimiter

    lim = RedisRateLimiter(redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}")

    def window_over():  # the Redis script keeps the server's time: wait (bounded) for the window's end
        deadline = time.monotonic() + 10.0
        while lim.status("bot")["buckets"]["h1|channel_id=1"]["resets_in"] is not None:
            assert time.monotonic() < deadline, lim.status("bot")
            threading.Event().wait(0.02)

    try:
        _next_window_told_by_its_reset(lim, window_over)
    finally:
        lim.close()


def test_a_late_answer_with_this_windows_reset_is_not_carried():
    lim, clock = memory()
    probe = take(lim, MSG)
    lim.release("bot", MSG, probe.ticket, ok(limit=3, remaining=2, reset_after=1.0, reset=5000.0))
    a, b = take(lim, MSG).ticket, take(lim, MSG).ticket
    # a was handled 0.3 s into the window and its answer took 0.6 s: now + Reset-After is 0.6 s past
    # the window's end, but its Reset is the window's own. It counted in this window, not the next.
    clock.now += 0.9
    lim.release("bot", MSG, a, ok(limit=3, remaining=1, reset_after=0.7, reset=5000.0))
    clock.now += 0.1
    got = [take(lim, MSG).ticket for _ in range(3)]
    assert [t is not None for t in got] == [True, True, False]  # 3 - b (on the wire)


def test_the_global_log_slides():
    lim, clock = memory()
    routes = [compile_route("GET", "/channels/{channel_id}", {"channel_id": n}) for n in range(6)]
    assert all(take(lim, r, global_limit=2).ticket for r in routes[:2])
    clock.now += 0.6
    assert take(lim, routes[2], global_limit=2).wait == pytest.approx(0.4)
    clock.now += 0.4
    assert take(lim, routes[2], global_limit=2).ticket is not None


def test_an_answered_request_counts_in_the_global_log_from_its_answer():
    """Discord counts a request when it arrives, at the latest when it answers: once answered, a
    request holds its place in the global log from the answer's time, not the grant's (a
    request slow to arrive must not leave the local second before it left Discord's)."""
    lim, clock = memory()
    routes = [compile_route("GET", "/channels/{channel_id}", {"channel_id": n}) for n in range(4)]
    a = take(lim, routes[0], global_limit=2).ticket
    b = take(lim, routes[1], global_limit=2).ticket
    assert a is not None and b is not None
    clock.now += 0.5
    lim.release("bot", routes[0], a, None)  # a's answer: at 0.5
    clock.now += 0.6  # 1.1: b (granted at 0, never answered: a lost ticket) has left; a has not
    assert take(lim, routes[2], global_limit=2).ticket is not None
    assert take(lim, routes[3], global_limit=2).wait == pytest.approx(0.4)  # a counts until 1.5
    lim.release("bot", routes[1], b, None)  # b's entry left the log already: nothing comes back
    assert take(lim, routes[3], global_limit=2).wait == pytest.approx(0.4)


def test_redis_moves_an_answered_request_to_its_answer_time_in_the_global_log(redis_url):
    from sync_gateway import RedisRateLimiter

    lim = RedisRateLimiter(redis_url, key_prefix=f"t{uuid.uuid4().hex[:10]}")
    try:
        route = compile_route("GET", "/channels/{channel_id}", {"channel_id": 1})
        ticket = take(lim, route).ticket
        assert ticket is not None
        key = lim._prefix("bot") + ":global"
        granted = lim._redis.zscore(key, ticket.id)
        assert granted is not None
        lim._redis.zadd(key, {ticket.id: granted - 900})  # as if granted 0.9 s ago
        lim.release("bot", route, ticket, None)
        assert lim._redis.zscore(key, ticket.id) >= granted  # now: the answer's time
        other = take(lim, compile_route("GET", "/channels/{channel_id}", {"channel_id": 2})).ticket
        lim._redis.zrem(key, other.id)  # a ticket whose entry left the log ...
        lim.release("bot", route, other, None)
        assert lim._redis.zscore(key, other.id) is None  # ... is not put back
    finally:
        lim.close()


def test_lost_tickets_expire_with_their_lease():
    lim, clock = memory()
    assert take(lim, MSG).ticket is not None  # a process died with it
    assert take(lim, MSG).reason == "unknown"
    clock.now += 30.0
    assert take(lim, MSG).ticket is not None


def test_idle_buckets_are_forgotten():
    lim, clock = memory()
    probe = take(lim, MSG)
    lim.release("bot", MSG, probe.ticket, ok(limit=5, remaining=4, reset_after=1.0))
    assert lim.status("bot")["buckets"]
    clock.now += 700.0
    take(lim, MSG2)
    assert "h1|channel_id=1" not in lim.status("bot")["buckets"]


# ---------------------------------------------------------------------------------------------
# Redis specifics


def test_redis_keys_hold_no_secret(redis_url):
    import redis

    from sync_gateway import RedisRateLimiter

    prefix = f"t{uuid.uuid4().hex[:10]}"
    lim = RedisRateLimiter(redis_url, key_prefix=prefix)
    hook = compile_route("POST", "/webhooks/{webhook_id}/{webhook_token}", {"webhook_id": 3, "webhook_token": "hook-secret-123"})
    grant = take(lim, hook)
    lim.release("bot", hook, grant.ticket, ok(bucket="wh"))
    r = redis.Redis.from_url(redis_url)
    try:
        keys = [k.decode() for k in r.keys(f"{prefix}:*")]
        assert keys and all(k.startswith(f"{prefix}:rest:bot:") for k in keys)
        dump = " ".join(keys) + " ".join(str(r.hgetall(k)) for k in keys if r.type(k) == b"hash")
        assert "hook-secret-123" not in dump
        assert all(r.pttl(k) > 0 for k in keys)  # everything expires when idle
    finally:
        r.close()
        lim.close()


def test_redis_outage_falls_back_to_local_limits_with_one_warning(caplog):
    import socket

    from sync_gateway import RedisRateLimiter

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens: every call fails fast
    lim = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", socket_timeout=0.5)
    caplog.set_level(logging.WARNING, logger="sync_gateway")
    probe = take(lim, MSG)
    assert probe.ticket is not None and probe.ticket.fallback
    assert take(lim, MSG).reason == "unknown"  # the rules still hold, in this process
    lim.release("bot", MSG, probe.ticket, ok(limit=2, remaining=1))
    assert take(lim, MSG).ticket is not None and take(lim, MSG).ticket is None
    assert lim.status("bot")["buckets"]["h1|channel_id=1"]["limit"] == 2
    warnings = [r for r in caplog.records if "RedisRateLimiter" in r.getMessage()]
    assert len(warnings) == 1 and "kept in this process" in warnings[0].getMessage()
    lim.close()
