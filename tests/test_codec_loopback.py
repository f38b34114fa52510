"""zstd-stream end to end over loopback sockets, in the shapes an independent server may send.

FakeGateway compresses like Discord (one zstd frame per connection, a block flush per message;
covered in test_client.py). Here the test plays the server through ``send_raw`` with messages it
compresses itself: one complete zstd frame per message, and frames that end in the middle of the
stream with the next frame starting in the same message. The client must reach READY and receive
every dispatch, in order, on its first socket.
"""
import random

import pytest

zstandard = pytest.importorskip("zstandard")

from sync_gateway.codec import encode  # noqa: E402
from sync_gateway.testing.fake_gateway import APPLICATION_ID, DEFAULT_USER  # noqa: E402

pytestmark = pytest.mark.timeout(60)


class FramePerMessage:
    """Each message is a whole zstd frame (magic, content size, checksum)."""

    def __init__(self):
        self.cctx = zstandard.ZstdCompressor(write_checksum=True)

    def __call__(self, payload):
        return self.cctx.compress(encode(payload).encode())


class FramesEndMidStream:
    """A Discord-like stream that ends its frame every few messages; the end mark and the next
    frame's header travel with the next message."""

    def __init__(self, every=3):
        self.every = every
        self.count = 0
        self.carry = b""
        self.c = zstandard.ZstdCompressor().compressobj()

    def __call__(self, payload):
        msg = self.carry + self.c.compress(encode(payload).encode()) + self.c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self.carry = b""
        self.count += 1
        if self.count % self.every == 0:
            self.carry = self.c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
            self.c = zstandard.ZstdCompressor().compressobj()
        return msg


@pytest.mark.parametrize("shape", [FramePerMessage, FramesEndMidStream])
def test_zstd_server_shapes_reach_ready_and_deliver_everything(gateway, make_client, shape):
    gateway.send_hello = False  # the test sends every server message itself, in its own shape
    gateway.answer_identify = False
    gateway.ack_heartbeats = False  # no ACK in FakeGateway's own zstd stream (45 s interval: none due)
    enc = shape()
    client, rec = make_client(compress="zstd-stream")
    client.start()
    conn = gateway.wait_for_connections(1, timeout=10)
    assert conn.compress == "zstd-stream"
    assert conn.send_raw(enc({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None}))
    conn.wait_for(op=2, timeout=10)
    ready = {
        "v": 10,
        "user": DEFAULT_USER,
        "guilds": [],
        "session_id": "zstd-shapes",
        "resume_gateway_url": gateway.url,
        "application": {"id": APPLICATION_ID, "flags": 0},
    }
    assert conn.send_raw(enc({"op": 0, "t": "READY", "s": 1, "d": ready}))
    assert client.wait_until_ready(10)
    rnd = random.Random(11)
    sent = []
    for seq in range(2, 22):
        if seq == 9:
            d = {"id": "1", "members": [f"{rnd.getrandbits(64):x}" for _ in range(30000)]}
            t = "GUILD_CREATE"
        else:
            d = {"i": seq, "content": "hello " * (seq % 5)}
            t = "MESSAGE_CREATE"
        msg = enc({"op": 0, "t": t, "s": seq, "d": d})
        if t == "GUILD_CREATE":
            assert len(msg) > 100_000  # inflated in capped slices, not in one call
        sent.append((seq, t, d))
        assert conn.send_raw(msg)
    rec.wait_events("MESSAGE_CREATE", 19, timeout=10)
    rec.wait_events("GUILD_CREATE", 1, timeout=10)
    got = [(e.seq, e.name, e.data) for e in rec.events if e.name in ("MESSAGE_CREATE", "GUILD_CREATE")]
    assert got == sent
    assert len(gateway.connections) == 1 and not conn.closed.is_set()
    assert client.status().state == "ready"
