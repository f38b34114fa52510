"""Resume after restart: close(keep_session=True) and a SessionStore (in-process here; the file and
Redis stores have their own multi-process tests)."""
import pytest

import sync_gateway as sg
from sync_gateway.stores import MemorySessionStore, SessionRecord, session_key
from support import TOKEN, handshakes

pytestmark = pytest.mark.timeout(60)


def test_keep_session_then_restart_resumes_with_no_event_lost(gateway, make_client):
    store = MemorySessionStore()
    first, rec1 = make_client(session_store=store)
    first.start()
    assert first.wait_until_ready(10)
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(10)])
    rec1.wait_events("MESSAGE_CREATE", 10)
    first.close(keep_session=True)
    assert gateway.connections[0].client_close_code == 4000
    saved = store.load(session_key(TOKEN, 0, 1))
    assert saved is not None and saved.seq == 11 and saved.session_id == first.status().session_id
    # events the server sends while nobody is connected are replayed on RESUME
    gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(10, 15)], connection=gateway.connections[0])
    second, rec2 = make_client(session_store=store)
    second.start()
    rec2.wait_kind("resumed")
    rec2.wait_events("MESSAGE_CREATE", 5)
    assert [e.data["i"] for e in rec2.named("MESSAGE_CREATE")] == list(range(10, 15))
    assert handshakes(gateway) == ["I", "R"]
    assert second.status().identifies == 0


def test_plain_close_forgets_the_session(gateway, make_client):
    store = MemorySessionStore()
    client, rec = make_client(session_store=store)
    client.start()
    assert client.wait_until_ready(10)
    client.close()
    assert store.load(session_key(TOKEN, 0, 1)) is None


def test_stale_or_invalid_stored_session_falls_back_to_identify(gateway, make_client):
    store = MemorySessionStore()
    key = session_key(TOKEN, 0, 1)
    import time

    store.save(key, SessionRecord("no-such-session", 5, None, None, time.time()))
    client, rec = make_client(session_store=store)
    client.start()
    assert client.wait_until_ready(10)
    assert handshakes(gateway) == ["R", "I"]  # op 9 on the RESUME, then a clean IDENTIFY
    assert "session_lost" in rec.kinds() or rec.wait_kind("session_lost") is None
    client.close()
    store.save(key, SessionRecord("old", 5, None, None, time.time() - 3600))
    again, _ = make_client(session_store=store)
    again.start()
    assert again.wait_until_ready(10)
    assert handshakes(gateway)[-1] == "I"  # too old to try


def test_session_store_type_checked():
    with pytest.raises(sg.ConfigError):
        sg.GatewayClient(TOKEN, session_store={})


def test_store_catches_up_when_handlers_finish_after_the_burst(gateway, make_client):
    """The supervisor is not woken when handlers finish: it must look again by itself, or the
    store keeps an old seq until the next event or heartbeat (a flake seen in CI)."""
    import threading

    from support import wait_until

    store = MemorySessionStore()
    client, rec = make_client(session_store=store)
    release = threading.Event()
    client.on("*", lambda e: release.wait(5))  # READY's handler too: nothing handled yet
    client.start()
    assert client.wait_until_ready(10)
    seqs = gateway.dispatch_many("MESSAGE_CREATE", [{"i": i} for i in range(5)])
    assert wait_until(lambda: client.status().seq == seqs[-1])
    release.set()
    key = session_key(TOKEN, 0, 1)
    assert wait_until(lambda: (store.load(key) or SessionRecord("", None, None, None, 0)).seq == seqs[-1], timeout=5)
