"""Unit tests of the sans-I/O core: rules, payloads and the ShardMachine, on a fake clock."""
import os
import random

import pytest

from sync_gateway import protocol as p
from sync_gateway.errors import ConfigError, FatalGatewayError, GatewayError
from sync_gateway.intents import Intents

pytestmark = pytest.mark.timeout(30)

BOOT = "wss://gateway.discord.gg/?v=10&encoding=json&compress=zlib-stream"
RESUME_URL = "wss://gateway-us-east1-b.discord.gg"
RESUME_WITH_QUERY = "wss://gateway-us-east1-b.discord.gg/?v=10&encoding=json&compress=zlib-stream"


# ------------------------------------------------------------------------------------ rules


@pytest.mark.parametrize(
    "code,recovery",
    [
        (4000, p.Recovery.RESUME),
        (4001, p.Recovery.RESUME),
        (4002, p.Recovery.RESUME),
        (4003, p.Recovery.IDENTIFY),
        (4004, p.Recovery.FATAL),
        (4005, p.Recovery.RESUME),
        (4007, p.Recovery.IDENTIFY),
        (4008, p.Recovery.RESUME),
        (4009, p.Recovery.IDENTIFY),
        (4010, p.Recovery.FATAL),
        (4011, p.Recovery.FATAL),
        (4012, p.Recovery.FATAL),
        (4013, p.Recovery.FATAL),
        (4014, p.Recovery.FATAL),
        (1000, p.Recovery.RESUME),
        (1001, p.Recovery.RESUME),
        (1006, p.Recovery.RESUME),
        (1011, p.Recovery.RESUME),
        (1012, p.Recovery.RESUME),
        (4006, p.Recovery.RESUME),
        (None, p.Recovery.RESUME),
    ],
)
def test_close_code_policy(code, recovery):
    assert p.close_recovery(code) is recovery


def test_close_table_matches_discord_reconnect_column():
    assert p.FATAL_CLOSE_CODES == {4004, 4010, 4011, 4012, 4013, 4014}
    assert p.SESSION_KILLING_CLOSE_CODES == {4003, 4007, 4009}
    for code, info in p.CLOSE_CODES.items():
        assert info.reconnect == (code not in p.FATAL_CLOSE_CODES)
    assert "Rate limited" in p.describe_close(4008)
    assert "without a close frame" in p.describe_close(None)
    assert p.describe_close(1006, "x") == "close 1006: x"


def test_fatal_4014_names_privileged_intents_and_portal():
    err = p.fatal_error(4014, "Disallowed intent(s).", int(Intents.GUILDS | Intents.MESSAGE_CONTENT | Intents.GUILD_MEMBERS))
    assert isinstance(err, FatalGatewayError) and err.code == 4014
    text = str(err)
    assert "MESSAGE_CONTENT" in text and "GUILD_MEMBERS" in text and "GUILD_PRESENCES" not in text
    assert "Developer Portal" in text and "Privileged Gateway Intents" in text


def test_fatal_4004_says_check_token():
    assert "token" in str(p.fatal_error(4004)).lower()


def test_gateway_query_url():
    assert p.gateway_query_url("wss://gateway.discord.gg", "zlib-stream") == (
        "wss://gateway.discord.gg/?v=10&encoding=json&compress=zlib-stream"
    )
    assert p.gateway_query_url("ws://127.0.0.1:5/?v=6&x=1", None) == "ws://127.0.0.1:5/?x=1&v=10&encoding=json"
    with pytest.raises(ConfigError):
        p.gateway_query_url("https://discord.com", None)
    with pytest.raises(ConfigError):
        p.gateway_query_url("wss://", None)


def test_trusted_hosts():
    trusted = ("gateway.discord.gg", "*.discord.gg")
    assert p.host_is_trusted("wss://gateway.discord.gg/", trusted)
    assert p.host_is_trusted("wss://gateway-us-east1-b.discord.gg", trusted)
    assert not p.host_is_trusted("wss://evil.example.com", trusted)
    assert not p.host_is_trusted("wss://discord.gg.evil.com", trusted)
    assert not p.host_is_trusted("wss://evildiscord.gg", trusted)


# ------------------------------------------------------------------------------------ payloads


def test_identify_payload():
    d = p.identify("tok", 513, shard=(1, 4), large_threshold=100, presence=p.presence(status="idle"))
    assert d["op"] == 2
    assert d["d"]["token"] == "tok" and d["d"]["intents"] == 513 and d["d"]["shard"] == [1, 4]
    assert d["d"]["large_threshold"] == 100 and d["d"]["presence"]["status"] == "idle"
    assert set(d["d"]["properties"]) == {"os", "browser", "device"}
    assert "shard" not in p.identify("t", 1)["d"]


def test_resume_and_heartbeat_payloads():
    assert p.resume("tok", "abc", 42) == {"op": 6, "d": {"token": "tok", "session_id": "abc", "seq": 42}}
    assert p.heartbeat(None) == {"op": 1, "d": None}
    assert p.heartbeat(7) == {"op": 1, "d": 7}


def test_presence_validation():
    assert p.presence_update(status="dnd", activities=[{"name": "x", "type": 0}]) == {
        "op": 3,
        "d": {"since": None, "activities": [{"name": "x", "type": 0}], "status": "dnd", "afk": False},
    }
    with pytest.raises(ConfigError):
        p.presence(status="busy")
    with pytest.raises(TypeError):
        p.presence(activities="playing")
    with pytest.raises(ConfigError):
        p.presence(activities=[{"name": "x"}])
    with pytest.raises(ConfigError):
        p.presence(activities=[{"name": "x", "type": 0, "details": "no"}])
    with pytest.raises(TypeError):
        p.presence(afk="no")


def test_request_guild_members_validation():
    d = p.request_guild_members(123, nonce="n")["d"]
    assert d == {"guild_id": "123", "query": "", "limit": 0, "presences": False, "nonce": "n"}
    d = p.request_guild_members("123", user_ids=[1, "2"])["d"]
    assert d["user_ids"] == ["1", "2"] and "query" not in d
    with pytest.raises(ConfigError):
        p.request_guild_members(1, nonce="x" * 33)
    with pytest.raises(ConfigError):
        p.request_guild_members("abc")
    with pytest.raises(TypeError):
        p.request_guild_members(1.5)
    with pytest.raises(ConfigError):
        p.request_guild_members(1, limit=-1)
    with pytest.raises(ConfigError):
        p.request_guild_members(1, user_ids=list(range(101)))


def test_lifecycle_config_validation():
    assert p.LifecycleConfig().invalid_session_delay == (1.0, 5.0)
    for bad in (
        dict(hello_timeout=0),
        dict(ready_timeout=-1),
        dict(drain_timeout="5"),
        dict(backoff_base=2, backoff_max=1),
        dict(invalid_session_delay=(5, 1)),
        dict(invalid_session_delay=3),
        dict(max_resume_failures=0),
        dict(max_attempts=0),
        dict(max_attempts=True),
    ):
        with pytest.raises(ConfigError):
            p.LifecycleConfig(**bad)


def test_default_backoff_grows_and_is_capped():
    cfg = p.LifecycleConfig(backoff_base=1.0, backoff_max=10.0)
    b = p.default_backoff(cfg)
    for n in range(1, 20):
        w = b(n)
        assert cfg.backoff_base <= w <= cfg.backoff_max
    assert b(1) <= 2.0
    assert b(10) == pytest.approx(10.0, abs=1e-9) or b(10) <= 10.0


# ------------------------------------------------------------------------------------ machine harness


class H:
    """Drives a ShardMachine with a fake clock and records every action."""

    def __init__(self, **cfg):
        defaults = dict(hello_timeout=20.0, ready_timeout=15.0, drain_timeout=5.0, force_close_timeout=1.0)
        defaults.update(cfg)
        self.m = p.ShardMachine(
            BOOT,
            config=p.LifecycleConfig(**defaults),
            rng=random.Random(7),
            backoff=lambda n: 2.0 * n,
            intents=int(Intents.DEFAULT),
        )
        self.now = 0.0
        self.log = []

    def __getattr__(self, name):
        method = getattr(self.m, name)

        def call(*args, **kw):
            if name in ("start", "tick"):
                out = method(self.now)
            elif name in ("request_stop", "request_reconnect"):
                out = method(self.now, *args, **kw)
            elif name in ("opened",):
                out = method(args[0], self.now)
            elif name == "closed":
                out = method(args[0], self.now, *args[1:], **kw)
            elif name in ("frame", "protocol_error"):
                out = method(args[0], args[1], self.now)
            elif name == "identify_deferred":
                out = method(*args, self.now)
            else:
                raise AttributeError(name)
            self.log += out
            return out

        return call

    def advance(self, seconds):
        self.now += seconds
        return self.tick()

    def until_deadline(self):
        d = self.m.next_deadline()
        assert d is not None
        self.now = max(self.now, d)
        return self.tick()

    def hello(self, epoch, interval=45000):
        return self.frame(epoch, {"op": 10, "d": {"heartbeat_interval": interval}})

    def ready(self, epoch, session="sess1", seq=1, url=RESUME_URL):
        return self.frame(epoch, {"op": 0, "t": "READY", "s": seq, "d": {"session_id": session, "resume_gateway_url": url}})

    def dispatch(self, epoch, seq, t="MESSAGE_CREATE"):
        return self.frame(epoch, {"op": 0, "t": t, "s": seq, "d": {"n": seq}})

    def connect_ready(self, session="sess1"):
        acts = self.start()
        op = only(acts, p.Open)
        self.opened(op.epoch)
        self.hello(op.epoch)
        self.ready(op.epoch, session)
        return op.epoch


def only(actions, kind):
    found = [a for a in actions if isinstance(a, kind)]
    assert len(found) == 1, f"expected one {kind.__name__} in {actions}"
    return found[0]


def kinds(actions):
    return [a.event.kind for a in actions if isinstance(a, p.Emit)]


def delivered(actions):
    return [a.dispatch for a in actions if isinstance(a, p.Deliver)]


# ------------------------------------------------------------------------------------ happy path


def test_start_opens_bootstrap_and_identifies_after_hello():
    h = H()
    acts = h.start()
    op = only(acts, p.Open)
    assert op.url == BOOT and not op.resume and op.epoch == 1
    assert kinds(acts) == ["connecting"]
    assert h.m.state == "connecting"
    assert h.opened(1)
    acts = h.hello(1)
    assert kinds(acts) == ["hello", "identifying"]
    only(acts, p.SendIdentify)
    assert only(acts, p.SetReadTimeout).seconds == pytest.approx(55.0)
    assert h.m.state == "identifying"
    # first beat: interval * random() after HELLO
    assert 0 <= h.m.next_deadline() <= 45.0


def test_ready_stores_session_and_delivers():
    h = H()
    h.start(), h.opened(1), h.hello(1)
    acts = h.ready(1)
    assert kinds(acts) == ["ready"]
    (d,) = delivered(acts)
    assert d.name == "READY" and d.seq == 1
    st = h.m.status()
    assert st.connected and st.state == "ready" and st.session_id == "sess1" and st.resume_url == RESUME_URL
    assert st.last_disconnect is None and st.connected_at == h.now and st.identifies == 1


def test_heartbeat_cadence_payload_and_ack_latency():
    h = H()
    e = h.connect_ready()
    acts = h.until_deadline()
    hb = only(acts, p.SendHeartbeat)
    assert hb.seq == 1
    first = h.now
    h.now += 0.05
    h.frame(e, {"op": 11})
    assert h.m.latency == pytest.approx(0.05)
    assert h.m.next_deadline() == pytest.approx(first + 45.0)
    h.dispatch(e, 2)
    acts = h.until_deadline()
    assert only(acts, p.SendHeartbeat).seq == 2


def test_server_heartbeat_request_answered_at_once_without_moving_timer():
    h = H()
    e = h.connect_ready()
    before = h.m.next_deadline()
    acts = h.frame(e, {"op": 1})
    assert only(acts, p.SendHeartbeat).seq == 1
    assert h.m.next_deadline() == before


def test_seq_each_once_ascending():
    h = H()
    e = h.connect_ready()
    seen = []
    for s in (2, 3, 3, 2, 5, 4, 6):
        seen += [d.seq for d in delivered(h.dispatch(e, s))]
    assert seen == [2, 3, 5, 6]
    assert h.m.status().duplicate_events == 3
    assert h.m.session.seq == 6


def test_dispatch_without_name_tracks_seq_but_is_not_delivered():
    h = H()
    e = h.connect_ready()
    assert delivered(h.frame(e, {"op": 0, "s": 2, "d": {}})) == []
    assert h.m.session.seq == 2


def test_unknown_opcode_ignored():
    h = H()
    e = h.connect_ready()
    assert h.frame(e, {"op": 99, "d": None}) == []
    assert h.m.state == "ready"


# ------------------------------------------------------------------------------------ recovery paths


def resume_cycle(h, old_epoch):
    """The old socket is gone: the next one RESUMEs on the resume URL."""
    acts = h.closed(old_epoch, 4000, "")
    op = only(acts, p.Open)
    assert op.resume and op.url == RESUME_WITH_QUERY
    return op.epoch


def test_op7_resumes_on_resume_url_with_4000():
    h = H()
    e = h.connect_ready()
    h.dispatch(e, 2)
    acts = h.frame(e, {"op": 7, "d": None})
    assert only(acts, p.CloseSocket).code == 4000
    assert kinds(acts) == ["disconnected", "reconnecting"]
    assert h.m.status().last_disconnect == "op 7 reconnect"
    # frames of the old socket during the drain are inert
    assert h.dispatch(e, 3) == []
    assert h.frame(e, {"op": 7}) == []
    assert h.m.status().stale_frames >= 2
    e2 = resume_cycle(h, e)
    assert e2 == e + 1
    h.opened(e2)
    acts = h.hello(e2)
    r = only(acts, p.SendResume)
    assert (r.session_id, r.seq) == ("sess1", 2)
    assert kinds(acts) == ["hello", "resuming"]
    acts = h.dispatch(e2, 3)
    assert [d.seq for d in delivered(acts)] == [3]
    acts = h.frame(e2, {"op": 0, "t": "RESUMED", "s": 4, "d": {}})
    assert kinds(acts) == ["resumed"]
    st = h.m.status()
    assert st.resumes == 1 and st.identifies == 1 and st.reconnects == 1 and st.connected


def test_op7_before_hello():
    h = H()
    h.start()
    h.opened(1)
    acts = h.frame(1, {"op": 7})
    assert only(acts, p.CloseSocket).code == 4000
    h.closed(1, 4000)
    # no session yet: the next socket IDENTIFYs on the bootstrap URL after a backoff
    assert h.m.state == "reconnecting"
    acts = h.until_deadline()
    op = only(acts, p.Open)
    assert not op.resume and op.url == BOOT


def test_dropped_tcp_resumes_immediately_when_ready():
    h = H()
    e = h.connect_ready()
    acts = h.closed(e, None, "", error="connection lost")
    assert kinds(acts)[0] == "disconnected"
    op = only(acts, p.Open)
    assert op.resume and op.url == RESUME_WITH_QUERY
    assert h.m.status().last_disconnect == "connection lost"


@pytest.mark.parametrize("code", [4000, 4001, 4002, 4005, 4008, 1000, 1001, 1006, 1011])
def test_resumable_close_codes(code):
    h = H()
    e = h.connect_ready()
    acts = h.closed(e, code, "")
    assert only(acts, p.Open).resume
    assert "session_lost" not in kinds(acts)


@pytest.mark.parametrize("code", [4003, 4007, 4009])
def test_session_killing_close_codes(code):
    h = H()
    e = h.connect_ready()
    acts = h.closed(e, code, "")
    assert "session_lost" in kinds(acts)
    assert not any(isinstance(a, p.Open) for a in acts)
    assert h.m.session.session_id is None and h.m.session.seq is None and h.m.session.resume_url is None
    delay = h.m.next_deadline() - h.now
    assert 1.0 <= delay <= 5.0
    op = only(h.until_deadline(), p.Open)
    assert not op.resume and op.url == BOOT


@pytest.mark.parametrize("code", sorted(p.FATAL_CLOSE_CODES))
def test_fatal_close_codes_stop(code):
    h = H()
    e = h.connect_ready()
    acts = h.closed(e, code, "nope")
    stop = only(acts, p.Stopped)
    assert isinstance(stop.error, FatalGatewayError) and stop.error.code == code
    assert kinds(acts) == ["disconnected", "fatal", "closed"]
    assert not any(isinstance(a, p.Open) for a in acts)
    assert h.m.state == "failed" and h.m.next_deadline() is None


def test_fatal_before_ready():
    h = H()
    h.start(), h.opened(1), h.hello(1)
    acts = h.closed(1, 4004, "Authentication failed.")
    assert isinstance(only(acts, p.Stopped).error, FatalGatewayError)
    assert "ready" not in kinds(h.log)


def test_op9_false_drops_session_waits_and_identifies():
    h = H()
    e = h.connect_ready()
    h.dispatch(e, 5)
    acts = h.frame(e, {"op": 9, "d": False})
    assert kinds(acts) == ["session_lost", "disconnected", "reconnecting"]
    assert only(acts, p.CloseSocket).code == 1000
    assert h.m.session.seq is None
    h.closed(e, 1000)
    delay = h.m.next_deadline() - h.now
    assert 1.0 <= delay <= 5.0
    op = only(h.until_deadline(), p.Open)
    assert not op.resume and op.url == BOOT
    h.opened(op.epoch)
    assert only(h.hello(op.epoch), p.SendIdentify)
    acts = h.ready(op.epoch, "sess2", seq=1)
    assert [d.seq for d in delivered(acts)] == [1]


def test_op9_true_resumes():
    h = H()
    e = h.connect_ready()
    acts = h.frame(e, {"op": 9, "d": True})
    assert only(acts, p.CloseSocket).code == 4000
    assert "session_lost" not in kinds(acts)
    h.closed(e, 4000)
    op = only(h.until_deadline(), p.Open)
    assert op.resume


def test_zombie_closes_4000_hard_and_resumes():
    h = H()
    e = h.connect_ready()
    only(h.until_deadline(), p.SendHeartbeat)
    acts = h.until_deadline()  # next beat time, no ACK came
    assert only(acts, p.CloseSocket).code == 4000
    only(acts, p.AbortSocket)
    assert h.m.status().last_disconnect == "zombie"
    acts = h.closed(e, None, error="closed by us")
    assert only(acts, p.Open).resume


def test_hello_timeout():
    h = H(hello_timeout=3.0)
    h.start()
    h.opened(1)
    acts = h.advance(3.0)
    only(acts, p.AbortSocket)
    assert h.m.status().last_disconnect == "hello-timeout"
    h.closed(1, None, error="closed by us")
    assert h.m.state == "reconnecting"
    only(h.until_deadline(), p.Open)


def test_connect_timeout_named():
    h = H(hello_timeout=3.0)
    h.start()
    acts = h.advance(3.0)
    only(acts, p.AbortSocket)
    assert not any(isinstance(a, p.CloseSocket) for a in acts)  # nothing to send a close frame on
    assert h.m.status().last_disconnect == "connect-timeout"


def test_bad_hello_reconnects():
    h = H()
    h.start(), h.opened(1)
    acts = h.frame(1, {"op": 10, "d": {}})
    only(acts, p.AbortSocket)
    assert h.m.status().last_error == "HELLO without heartbeat_interval"


def test_ready_timeout_forces_fresh_and_then_ready():
    """Seed 4: READY not within ready_timeout: one line, a fresh reconnect, then READY."""
    h = H(ready_timeout=2.0)
    h.start(), h.opened(1), h.hello(1)
    acts = h.advance(2.0)
    only(acts, p.AbortSocket)
    assert h.m.status().last_disconnect == "ready-timeout"
    h.closed(1, None, error="closed by us")
    op = only(h.until_deadline(), p.Open)
    assert not op.resume
    h.opened(op.epoch)
    only(h.hello(op.epoch), p.SendIdentify)
    assert kinds(h.ready(op.epoch)) == ["ready"]


def stall_resume(h, epoch):
    h.opened(epoch)
    acts = h.hello(epoch)
    handshake = [type(a).__name__ for a in acts if isinstance(a, (p.SendResume, p.SendIdentify))]
    h.advance(h.m.config.ready_timeout)
    h.closed(epoch, None, error="closed by us")
    return handshake


def test_resume_stalls_escalate_to_identify():
    """Seed 14: with max_resume_failures=3 the handshakes are RESUME, RESUME, RESUME, IDENTIFY."""
    h = H(ready_timeout=2.0, max_resume_failures=3)
    e = h.connect_ready()
    e = resume_cycle(h, e)
    shakes = []
    for _ in range(3):
        shakes += stall_resume(h, e)
        e = only(h.until_deadline(), p.Open).epoch
    h.opened(e)
    shakes += [type(a).__name__ for a in h.hello(e) if isinstance(a, (p.SendResume, p.SendIdentify))]
    assert shakes == ["SendResume", "SendResume", "SendResume", "SendIdentify"]
    assert "session_lost" in kinds(h.log)


def test_success_between_stalls_resets_count():
    """Seed 15: RESUMED between stalls starts the count again."""
    h = H(ready_timeout=2.0, max_resume_failures=2)
    e = h.connect_ready()
    e = resume_cycle(h, e)
    assert stall_resume(h, e) == ["SendResume"]
    e = only(h.until_deadline(), p.Open).epoch
    h.opened(e), h.hello(e)
    h.frame(e, {"op": 0, "t": "RESUMED", "s": 2, "d": {}})
    assert h.m.resume_failures == 0
    e = resume_cycle(h, e)
    assert stall_resume(h, e) == ["SendResume"]
    e = only(h.until_deadline(), p.Open).epoch
    h.opened(e)
    assert only(h.hello(e), p.SendResume)  # one stall since the success: still resuming


def test_never_ready_keeps_recovering_until_max_attempts():
    """Seed 10: READY never comes: keep recovering with backoff, state reconnecting, until max_attempts."""
    h = H(ready_timeout=1.0, max_attempts=4)
    h.start()
    e = 1
    waits = []
    for attempt in range(4):
        h.opened(e), h.hello(e)
        h.advance(1.0)
        acts = h.closed(e, None, error="closed by us")
        if attempt < 3:
            assert h.m.state == "reconnecting" and "ready-timeout" in h.m.status().last_error
            waits.append(h.m.next_deadline() - h.now)
            e = only(h.until_deadline(), p.Open).epoch
    assert waits == [2.0, 4.0, 6.0]  # the injected backoff
    stop = only(acts, p.Stopped)
    assert isinstance(stop.error, GatewayError) and "gave up after 4" in str(stop.error)
    assert h.m.state == "failed"


def test_resume_url_that_fails_to_connect_is_forgotten():
    h = H()
    e = h.connect_ready()
    e2 = resume_cycle(h, e)
    acts = h.closed(e2, None, error="connection refused")  # never opened
    assert h.m.session.resume_url is None
    op = only(h.until_deadline(), p.Open)
    assert op.resume and op.url == BOOT


def test_untrusted_resume_host_is_never_contacted():
    h = H()
    e = h.connect_ready()
    h.ready  # noqa
    h.m.session.resume_url = "wss://evil.example.com/"
    acts = h.closed(e, 4000)
    op = only(acts, p.Open)
    assert op.resume and op.url == BOOT


# ------------------------------------------------------------------------------------ forced reconnect


def test_forced_fresh_reconnect_frozen_socket_seeds_5_6_7():
    """Seeds 5, 6, 7: session cached with seq 123; reconnect(fresh=True) against a socket that never
    answers: the session is cleared first, close 1000, hard close after the drain, the reader is
    orphaned, and exactly one new socket IDENTIFYs (never RESUMEs)."""
    h = H()
    e = h.connect_ready()
    h.dispatch(e, 123)
    acts = h.request_reconnect(fresh=True)
    assert kinds(acts)[0] == "session_lost"
    assert h.m.session == p.Session()
    assert only(acts, p.CloseSocket).code == 1000
    assert not any(isinstance(a, p.AbortSocket) for a in acts)
    # the old socket's late op 7, frames and close are inert
    assert h.frame(e, {"op": 7}) == [] and h.dispatch(e, 124) == []
    acts = h.advance(5.0)  # drain_timeout
    only(acts, p.AbortSocket)
    acts = h.advance(1.0)  # force_close_timeout: the reader still lives
    only(acts, p.OrphanReader)
    op = only(acts, p.Open)
    assert not op.resume and op.url == BOOT
    assert h.m.status().orphaned_readers == 1
    h.opened(op.epoch)
    acts = h.hello(op.epoch)
    only(acts, p.SendIdentify)
    assert not any(isinstance(a, p.SendResume) for a in h.log)
    # the orphan finally dies: nothing happens
    assert h.closed(e, 4000) == []
    assert kinds(h.ready(op.epoch, "sess2")) == ["ready"]
    assert sum(isinstance(a, p.Open) for a in h.log) == 2


def test_forced_reconnect_peer_answers_close_quickly():
    h = H()
    e = h.connect_ready()
    acts = h.request_reconnect(fresh=False)
    assert only(acts, p.CloseSocket).code == 4000
    assert h.m.status().last_disconnect == "forced"
    op = only(h.closed(e, 4000), p.Open)
    assert op.resume


def test_fresh_request_during_resume_teardown_upgrades_it():
    h = H()
    e = h.connect_ready()
    h.frame(e, {"op": 7})  # resume teardown in progress
    acts = h.request_reconnect(fresh=True)
    assert kinds(acts) == ["session_lost"]
    op = only(h.closed(e, 4000), p.Open)
    assert not op.resume


def test_fresh_request_during_backoff_skips_the_wait():
    h = H(ready_timeout=1.0)
    h.start(), h.opened(1), h.hello(1)
    h.advance(1.0)
    h.closed(1, None)
    assert h.m.state == "reconnecting" and h.m.next_deadline() > h.now
    acts = h.request_reconnect(fresh=True)
    assert only(acts, p.Open)


def test_stop_during_drain_opens_nothing_seed_8_9():
    h = H()
    e = h.connect_ready()
    h.request_reconnect(fresh=True)
    h.advance(1.0)
    acts = h.request_stop(budget=10.0)
    assert acts == []
    acts = h.until_deadline()
    only(acts, p.AbortSocket)
    acts = h.closed(e, None, error="closed by us")
    assert kinds(acts) == ["closed"]
    only(acts, p.Stopped)
    assert not any(isinstance(a, p.Open) for a in h.log[1:]) or sum(isinstance(a, p.Open) for a in h.log) == 1
    assert h.m.state == "closed"


def test_stop_after_drain_timeout_with_orphan():
    h = H()
    e = h.connect_ready()
    h.request_reconnect(fresh=True)
    h.advance(5.0)
    h.request_stop()
    acts = h.advance(1.0)
    only(acts, p.OrphanReader)
    only(acts, p.Stopped)
    assert sum(isinstance(a, p.Open) for a in h.log) == 1
    assert h.closed(e, None) == []


def test_stop_during_backoff_is_immediate():
    h = H(ready_timeout=1.0)
    h.start(), h.opened(1), h.hello(1)
    h.advance(1.0)
    h.closed(1, None)
    acts = h.request_stop()
    only(acts, p.Stopped)
    assert h.m.state == "closed"


def test_stop_when_ready_closes_1000_and_waits_for_reader():
    h = H()
    e = h.connect_ready()
    acts = h.request_stop()
    assert only(acts, p.CloseSocket).code == 1000
    assert h.m.state == "closing"
    acts = h.closed(e, 1000)
    only(acts, p.Stopped)


def test_stop_budget_shortens_drain():
    h = H(drain_timeout=5.0)
    h.connect_ready()
    h.request_stop(budget=2.0)
    assert h.m.next_deadline() - h.now <= 1.0 + 1e-9


def test_stop_before_first_ready_never_reports_ready_seed_19():
    h = H()
    h.start(), h.opened(1), h.hello(1)
    h.request_stop()
    h.ready(1)  # late READY from the retired socket
    h.closed(1, 1000)
    assert "ready" not in kinds(h.log)
    assert not h.m.status().connected


def test_late_close_of_previous_socket_changes_nothing_seed_20():
    h = H()
    e = h.connect_ready()
    e2 = resume_cycle(h, e)
    h.opened(e2), h.hello(e2)
    h.frame(e2, {"op": 0, "t": "RESUMED", "s": 2, "d": {}})
    before = h.m.status()
    assert h.closed(e, 4009) == [] and h.frame(e, {"op": 9, "d": False}) == []
    after = h.m.status()
    assert after.session_id == before.session_id and after.state == "ready" and after.epoch == before.epoch


def test_reconnect_before_start_and_after_close_are_ignored():
    h = H()
    assert h.request_reconnect(fresh=True) == []
    h.connect_ready()
    h.request_stop()
    assert h.request_reconnect() == []


def test_identify_deferred_by_gate_retries_later_and_heartbeats_go_on():
    h = H()
    h.start(), h.opened(1)
    h.hello(1, interval=1000)
    h.identify_deferred(1, 3.0, "identify bucket 0 busy")
    assert h.m.status().identifies == 0 and h.m.status().identify_wait == "identify bucket 0 busy"
    beats = 0
    for _ in range(10):
        acts = h.until_deadline()
        beats += sum(isinstance(a, p.SendHeartbeat) for a in acts)
        if any(isinstance(a, p.SendIdentify) for a in acts):
            break
        h.frame(1, {"op": 11})
    assert beats >= 2 and h.now == pytest.approx(3.0)
    assert h.m.status().identifies == 1


# ------------------------------------------------------------------------------------ properties

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

INPUT = st.one_of(
    st.tuples(st.just("advance"), st.floats(0, 30)),
    st.tuples(st.just("opened"), st.integers(-1, 1)),
    st.tuples(st.just("hello"), st.integers(-1, 1)),
    st.tuples(st.just("ready"), st.integers(-1, 1)),
    st.tuples(st.just("resumed"), st.integers(-1, 1)),
    st.tuples(st.just("dispatch"), st.integers(-1, 1), st.integers(1, 30)),
    st.tuples(st.just("ack"), st.integers(-1, 1)),
    st.tuples(st.just("op"), st.integers(-1, 1), st.sampled_from([1, 7, 9, 99])),
    st.tuples(st.just("op9"), st.integers(-1, 1), st.booleans()),
    st.tuples(st.just("closed"), st.integers(-2, 1), st.sampled_from([None, 1000, 4000, 4003, 4007, 4009, 1006, 4014])),
    st.tuples(st.just("reconnect"), st.booleans()),
    st.tuples(st.just("stop"),),
)


@settings(max_examples=int(os.environ.get("SG_HYPOTHESIS_EXAMPLES", "300")), deadline=None)
@given(st.lists(INPUT, max_size=60), st.integers(0, 2**16))
def test_invariants_hold_for_any_input_sequence(inputs, seed):
    """One live socket; stale epochs inert; seq ascending within a session; nothing after Stopped."""
    m = p.ShardMachine(BOOT, config=p.LifecycleConfig(max_attempts=None), rng=random.Random(seed), backoff=lambda n: float(n))
    now = 0.0
    live = set()  # epochs opened whose teardown has not finished (reader alive, socket not hard-closed)
    aborted = set()
    last_seq = None
    stopped = False
    acts = m.start(now)

    def apply(actions):
        nonlocal last_seq, stopped
        for a in actions:
            assert not stopped, f"action after Stopped: {a}"
            if isinstance(a, p.Open):
                # invariant 1: every earlier socket is gone or was hard-closed before this one opens
                assert live <= aborted, f"open e{a.epoch} while {live - aborted} alive"
                live.add(a.epoch)
            elif isinstance(a, p.AbortSocket):
                aborted.add(a.epoch)
            elif isinstance(a, p.OrphanReader):
                assert a.epoch in aborted
                live.discard(a.epoch)
            elif isinstance(a, p.Deliver):
                d = a.dispatch
                if d.name == "READY":
                    last_seq = d.seq
                elif d.seq is not None:
                    assert last_seq is None or d.seq > last_seq, (d.seq, last_seq)
                    last_seq = d.seq
            elif isinstance(a, p.Emit) and a.event.kind == "session_lost":
                last_seq = None
            elif isinstance(a, p.Stopped):
                stopped = True

    apply(acts)
    for item in inputs:
        kind = item[0]
        cur = m.epoch
        live_before = m.live_epoch
        epoch = lambda off: cur + off  # noqa: E731
        target = None
        if kind == "advance":
            now += item[1]
            out = m.tick(now)
        elif kind == "opened":
            target = epoch(item[1])
            out = m.opened(target, now)
        elif kind == "hello":
            target = epoch(item[1])
            out = m.frame(target, {"op": 10, "d": {"heartbeat_interval": 1000}}, now)
        elif kind == "ready":
            target = epoch(item[1])
            out = m.frame(target, {"op": 0, "t": "READY", "s": 1, "d": {"session_id": "x", "resume_gateway_url": RESUME_URL}}, now)
        elif kind == "resumed":
            target = epoch(item[1])
            out = m.frame(target, {"op": 0, "t": "RESUMED", "s": None, "d": {}}, now)
        elif kind == "dispatch":
            target = epoch(item[1])
            out = m.frame(target, {"op": 0, "t": "X", "s": item[2], "d": {}}, now)
        elif kind == "ack":
            target = epoch(item[1])
            out = m.frame(target, {"op": 11}, now)
        elif kind == "op":
            target = epoch(item[1])
            out = m.frame(target, {"op": item[2], "d": None}, now)
        elif kind == "op9":
            target = epoch(item[1])
            out = m.frame(target, {"op": 9, "d": item[2]}, now)
        elif kind == "closed":
            e = epoch(item[1])
            retiring = m.teardown is not None and m.teardown.epoch == e
            was_live = m.live_epoch == e or retiring
            out = m.closed(e, now, code=item[2])
            if was_live:
                live.discard(e)
            else:
                # invariant 2: a stale report changes nothing
                assert out == []
        elif kind == "reconnect":
            out = m.request_reconnect(now, fresh=item[1])
        else:
            out = m.request_stop(now)
        if target is not None and target != live_before:
            # invariant 2: input from a socket that is not the live one is inert
            assert out == [], (kind, target, live_before, out)
        apply(out)
        assert len(live - aborted) <= 1


PAYLOAD = st.one_of(
    st.builds(lambda s, t: {"op": 0, "t": t, "s": s, "d": {"x": 1}},
              st.one_of(st.none(), st.integers(0, 40), st.booleans()),
              st.sampled_from(["MESSAGE_CREATE", "READY", "RESUMED", "", None])),
    st.just({"op": 11}),
    st.just({"op": 1}),
    st.just({"op": 7}),
    st.builds(lambda d: {"op": 9, "d": d}, st.booleans()),
)


def _ready_machine():
    m = p.ShardMachine(BOOT, rng=random.Random(3), backoff=lambda n: 1.0)
    m.start(0.0)
    m.opened(1, 0.0)
    m.frame(1, {"op": 10, "d": {"heartbeat_interval": 1000}}, 0.0)
    m.frame(1, {"op": 0, "t": "READY", "s": 1, "d": {"session_id": "s", "resume_gateway_url": RESUME_URL}}, 0.0)
    return m


@settings(max_examples=300, deadline=None)
@given(st.lists(PAYLOAD, max_size=30), st.integers(0, 2))
def test_frames_batch_is_the_same_as_frame_by_frame(payloads, stale_offset):
    """The batch fast path changes nothing but speed: same actions, same state."""
    epoch = 1 + stale_offset
    a, b = _ready_machine(), _ready_machine()
    one_by_one = []
    for payload in payloads:
        one_by_one += a.frame(epoch, payload, 1.0)
    batched = b.frames(epoch, payloads, 1.0)
    assert batched == one_by_one
    assert a.status() == b.status()
    assert a.session == b.session


_KEY_ORDERS = [("t", "s", "op", "d"), ("op", "t", "s", "d"), ("op", "d", "s", "t"), ("d", "op")]


def _text(payload, order):
    import json

    keys = [k for k in order if k in payload] + [k for k in payload if k not in order]
    return json.dumps({k: payload[k] for k in keys}, separators=(",", ":")).encode()


RAW = st.one_of(
    st.tuples(PAYLOAD, st.sampled_from(_KEY_ORDERS)).map(lambda po: _text(*po)),
    st.sampled_from([b"{not json", b"[1, 2]", b'{"t":"X","s":1,"op":0,"d":{"a":1},"t":"Y"}']),
    st.builds(lambda s: b'{"t":"MESSAGE_CREATE","s":%d,"op":0,"d":{"content":"}{\\"t\\":"}}' % s, st.integers(0, 40)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(RAW, st.booleans()), max_size=30), st.integers(0, 2))
def test_raw_frames_deliver_exactly_what_parsing_each_frame_delivers(raws_cut, stale_offset):
    """The read path (events judged by their heads, parsed on the dispatcher) and the parsed path
    (each text parsed whole, then frame()) are one rule: the same actions in the same order once
    the dispatcher has parsed each run, the same state. Both key orders with "d" last take the
    head path, whether the reader cut them already (as it does a burst) or the machine does;
    the rest, and READY, are parsed whole."""
    from sync_gateway.codec import DecodeError, Decoder, cut_dispatch
    from sync_gateway.dispatch import Dispatcher, Registry

    raws = [raw for raw, _ in raws_cut]
    handed = [(cut_dispatch(raw) or raw) if cut else raw for raw, cut in raws_cut]
    epoch = 1 + stale_offset
    a, b = _ready_machine(), _ready_machine()
    expanded = []
    runs = 0
    for action in a.raw_frames(epoch, handed, 1.0):
        if isinstance(action, p.DeliverRun):
            runs += 1
            expanded += [p.Deliver(d) for d in Dispatcher(Registry())._expand([action])]
        else:
            expanded.append(action)
    one_by_one = []
    for raw in raws:
        try:
            payload = Decoder.parse(raw)
        except DecodeError as exc:
            one_by_one += b.protocol_error(epoch, str(exc), 1.0)
            continue
        one_by_one += b.frame(epoch, payload, 1.0)
    assert expanded == one_by_one
    assert a.status() == b.status()
    assert a.session == b.session
    assert runs <= len([x for x in one_by_one if isinstance(x, p.Deliver)])


def test_an_event_whose_body_does_not_parse_is_skipped_by_the_dispatcher_and_its_seq_counts(caplog):
    """A head that reads well over a body that does not: the machine has taken the seq (the
    event is not asked for again), the dispatcher logs it, skips it, counts it as handled and
    reports it; the events around it are delivered."""
    import logging

    from sync_gateway.dispatch import Dispatcher, Registry

    m = _ready_machine()
    raws = [
        b'{"t":"A","s":2,"op":0,"d":{"n":2}}',
        b'{"t":"A","s":3,"op":0,"d":{broken}}',
        b'{"t":"A","s":4,"op":0,"d":{"n":4}}',
    ]
    actions = m.raw_frames(1, raws, 1.0)
    assert [type(x) for x in actions] == [p.DeliverRun] and m.session.seq == 4
    dispatcher = Dispatcher(Registry())
    reported = []
    dispatcher.on_bad_payload = reported.append
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        got = list(dispatcher._expand(actions))
        assert [(d.name, d.seq, d.data) for d in got] == [("A", 2, {"n": 2}), ("A", 4, {"n": 4})]
    assert dispatcher.bad_payloads == 1 and len(reported) == 1 and "seq 3" in reported[0]
    assert "skipped an event: A (seq 3) has a malformed payload" in caplog.text
    m.bad_payload(reported[0])
    assert "seq 3" in (m.status().last_error or "")
