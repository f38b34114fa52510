"""The production path (issue 10): wss://, frames that arrive in pieces, a server that stalls a
handshake — where every real Discord connection runs, and where the loopback suite did not look.

Transport bugs of issue 10 covered here: item 5 (the TLS handshake could not be aborted: on the
code before the fix, close() left the stalled socket open for the whole connect timeout and three
fresh reconnects left 4 TCP connections open at once) and item 8 (a complete frame waited for the
next one: every ``test_complete_frame_is_delivered_while_the_next_is_incomplete`` case timed out).
"""
import dataclasses
import time

import pytest

import sync_gateway as sg
from sync_gateway.testing import FakeGateway, Trickle
from support import FAST, PIECES, TOKEN, Recorder, client_options, freezing_proxy, handshakes, wait_until

pytestmark = pytest.mark.timeout(60)

COMPRESSIONS = [None, "zlib-stream", "zstd-stream"]


def _need(compress):
    if compress == "zstd-stream":
        pytest.importorskip("zstandard")


# ------------------------------------------------------------------------------ item 5: stalled handshakes


@pytest.fixture
def stalled(gateway):
    """A proxy in front of the TLS gateway whose new connections are accepted and never answered."""
    with freezing_proxy(gateway) as proxy:
        proxy.stall_new = True
        yield proxy


def _in_tls_handshake(proxy, connections):
    """Wait until the client's ClientHello of connection number ``connections`` was swallowed."""
    proxy.wait_for_connections(connections, timeout=10)
    assert wait_until(lambda: proxy.bytes_from_clients > 0, timeout=5), "no ClientHello reached the proxy"


@pytest.mark.transports("tls")
def test_close_during_stalled_tls_handshake_closes_the_tcp_connection(stalled, make_client):
    client, rec = make_client(url=stalled.url)
    client.start()
    _in_tls_handshake(stalled, 1)
    assert stalled.live == 1
    client.close(timeout=5)
    # hello_timeout (the connect timeout) is 3 s: a socket that abort() cannot reach lives that long
    assert wait_until(lambda: stalled.live == 0, timeout=FAST.force_close_timeout + 0.25), (
        f"{stalled.live} TCP connection(s) still open after close() returned"
    )


@pytest.mark.transports("tls")
def test_fresh_reconnects_during_stalled_tls_handshake_never_two_live(stalled, make_client):
    client, rec = make_client(url=stalled.url)
    client.start()
    _in_tls_handshake(stalled, 1)
    for n in range(2, 5):
        client.reconnect(fresh=True)
        stalled.wait_for_connections(n, timeout=10)
    assert stalled.max_live == 1, f"{stalled.max_live} TCP connections open at once"
    client.close(timeout=5)
    assert wait_until(lambda: stalled.live == 0, timeout=FAST.force_close_timeout + 0.25)


@pytest.mark.transports("plain", "tls")
def test_close_during_stalled_websocket_upgrade_closes_the_tcp_connection(gateway, make_client):
    """The next stage: TLS done (over wss), the HTTP upgrade request never answered."""
    gateway.stall_upgrade = True
    with freezing_proxy(gateway) as proxy:
        client, rec = make_client(url=proxy.url)
        client.start()
        assert wait_until(lambda: gateway.held_requests == 1, timeout=10)
        assert proxy.live == 1
        client.close(timeout=5)
        assert wait_until(lambda: proxy.live == 0, timeout=FAST.force_close_timeout + 0.25)
        assert gateway.connections == []  # the upgrade never completed
        gateway.stall_upgrade = False


@pytest.mark.transports("tls")
def test_stalled_tls_handshake_times_out_and_the_client_goes_on(stalled, gateway, make_client):
    """A handshake that never completes is a failed connect: the client retries and reaches READY
    once the server answers again, on a single live socket at a time."""
    client, rec = make_client(url=stalled.url, config=dataclasses.replace(FAST, hello_timeout=0.5))
    client.start()
    _in_tls_handshake(stalled, 1)
    stalled.stall_new = False  # the next connection gets through
    assert client.wait_until_ready(15)
    assert stalled.total >= 2 and handshakes(gateway) == ["I"]


# ------------------------------------------------------------------------------ item 8: a frame held back


@pytest.mark.transports("plain", "tls")
@pytest.mark.parametrize("compress", COMPRESSIONS)
def test_complete_frame_is_delivered_while_the_next_is_incomplete(gateway, make_client, compress):
    """Frame A whole and the first byte of frame B in one write; B's rest follows only once A was
    handled (or after the 1 s the test allows). A reader that batches A until B is complete
    delivers A only when the rest of B arrives — seconds late on a real network."""
    _need(compress)
    client, rec = make_client(compress=compress)
    client.start()
    assert client.wait_until_ready(10)
    gateway.ack_heartbeats = False  # nothing else may be written between B's two parts
    conn = gateway.connection_for()
    _, a = gateway.encode_dispatch("MESSAGE_CREATE", {"i": "A"})
    _, b = gateway.encode_dispatch("MESSAGE_CREATE", {"i": "B", "pad": "x" * 300})
    try:
        assert conn.send_bytes(a + b[:1])
        rec.wait_events("MESSAGE_CREATE", 1, timeout=1.0)
    finally:
        conn.send_bytes(b[1:])
    rec.wait_events("MESSAGE_CREATE", 2)
    assert [e.data["i"] for e in rec.named("MESSAGE_CREATE")] == ["A", "B"]
    assert len(gateway.connections) == 1


@pytest.mark.transports("plain", "tls")
@pytest.mark.parametrize("cut", [1, 2, 4, 10])
def test_frame_cut_anywhere_is_reassembled(gateway, make_client, cut):
    """The same write pattern, B cut after its 1st/2nd/4th/10th byte (inside the header, in the
    extended length, in the payload): B is delivered whole once its rest arrives."""
    client, rec = make_client(compress=None)
    client.start()
    assert client.wait_until_ready(10)
    gateway.ack_heartbeats = False
    conn = gateway.connection_for()
    _, a = gateway.encode_dispatch("MESSAGE_CREATE", {"i": "A"})
    _, b = gateway.encode_dispatch("MESSAGE_CREATE", {"i": "B", "pad": "é" * 200})
    assert conn.send_bytes(a + b[:cut])
    assert conn.send_bytes(b[cut:])
    rec.wait_events("MESSAGE_CREATE", 2)
    assert [e.data["i"] for e in rec.named("MESSAGE_CREATE")] == ["A", "B"]
    assert rec.named("MESSAGE_CREATE")[1].data["pad"] == "é" * 200


# ------------------------------------------------------------------------------ READY and RESUME in pieces


def _ready_resume_replay(gw, client, rec):
    """READY, 20 live events, a dropped socket, 10 events while it is down, RESUME with replay:
    every event exactly once, in seq order, intact."""
    client.start()
    assert client.wait_until_ready(15), client.status().last_error
    assert handshakes(gw) == ["I"], (client.status().last_error, rec.kinds())
    first = [{"i": i, "text": "ünï ✓" * i} for i in range(20)]
    gw.dispatch_many("MESSAGE_CREATE", first)
    rec.wait_events("MESSAGE_CREATE", 20, timeout=20)
    gw.connections[0].drop()
    assert wait_until(lambda: gw.connections[0].closed.is_set())
    gw.dispatch_many("MESSAGE_CREATE", [{"i": 20 + i} for i in range(10)])
    rec.wait_kind("resumed", timeout=20)
    rec.wait_events("MESSAGE_CREATE", 30, timeout=20)
    got = rec.named("MESSAGE_CREATE")
    assert [e.data["i"] for e in got] == list(range(30))
    assert [e.data["text"] for e in got[:20]] == [d["text"] for d in first]
    seqs = [e.seq for e in got]
    assert seqs == sorted(set(seqs))
    assert handshakes(gw) == ["I", "R"]
    assert client.status().state == "ready"


@pytest.mark.parametrize("compress", COMPRESSIONS)
@pytest.mark.parametrize(
    "trickle,tls",
    [
        (Trickle(seed=1, chunk=(1, 64), pause=(0.0, 0.001)), True),  # wss: records of 1-7 plaintext bytes
        (Trickle(seed=2, chunk=(1, 64), pause=(0.0, 0.001), records=(1, 1)), True),  # wss: every byte its own record
        (Trickle(seed=3), False),  # ws: TCP pieces of 1-7 bytes
    ],
    ids=["wss-records-1-7", "wss-records-1", "ws-pieces-1-7"],
)
def test_ready_and_resume_with_every_frame_in_pieces(compress, trickle, tls):
    _need(compress)
    with FakeGateway(token=TOKEN, tls=tls, trickle=trickle) as gw:
        client = sg.GatewayClient(TOKEN, **client_options(
            gw, gateway_url=gw.url, config=PIECES, compress=compress,
            identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0)))
        rec = Recorder(client)
        try:
            _ready_resume_replay(gw, client, rec)
        finally:
            client.close(timeout=5)


@pytest.mark.transports("tls")
def test_large_message_over_wss(gateway, make_client):
    """A message over 64 KiB (8-byte websocket length) across many TLS records, uncompressed."""
    client, rec = make_client(compress=None)
    client.start()
    assert client.wait_until_ready(10)
    big = "z" * 200_000
    gateway.dispatch("GUILD_CREATE", {"id": "1", "blob": big})
    gateway.dispatch("MESSAGE_CREATE", {"i": 1})
    rec.wait_events("MESSAGE_CREATE", 1)
    assert rec.named("GUILD_CREATE")[0].data["blob"] == big
