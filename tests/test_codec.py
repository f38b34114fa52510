"""Unit tests of frame decoding: JSON, zlib-stream (split payloads), zstd-stream, and bad input."""
import json
import pickle
import random
import tracemalloc
import zlib

import pytest

from sync_gateway import codec
from sync_gateway.codec import MAX_INFLATED_BYTES, CompressionError, DecodeError, Decoder, check_compress, encode
from sync_gateway.errors import ConfigError

pytestmark = pytest.mark.timeout(30)


def zlib_frames(payloads, split=1):
    c = zlib.compressobj()
    out = []
    for p in payloads:
        data = c.compress(json.dumps(p).encode()) + c.flush(zlib.Z_SYNC_FLUSH)
        step = max(1, -(-len(data) // split))
        out.append([data[i : i + step] for i in range(0, len(data), step)])
    return out


def test_json_text_frames():
    d = Decoder(None)
    assert d.feed('{"op": 11}', False) == {"op": 11}
    assert d.feed(b'{"op": 10, "d": {"heartbeat_interval": 1}}', False)["op"] == 10


@pytest.mark.parametrize("raw", ["{", "[1, 2]", '"x"', "null", b"\xff\xfe{}"])
def test_bad_json_is_a_decode_error(raw):
    with pytest.raises(DecodeError):
        Decoder(None).feed(raw, False)


def test_binary_frame_without_compression():
    with pytest.raises(DecodeError, match="binary frame"):
        Decoder(None).feed(b"\x00", True)


def test_zlib_stream_one_context_many_payloads_split_frames():
    payloads = [{"op": 0, "s": i, "t": "X", "d": {"i": i, "pad": "x" * (i * 37)}} for i in range(50)]
    d = Decoder("zlib-stream")
    got = []
    for parts in zlib_frames(payloads, split=3):
        results = [d.feed(part, True) for part in parts]
        assert all(r is None for r in results[:-1])
        got.append(results[-1])
    assert got == payloads


def test_zlib_stream_large_payload():
    big = {"op": 0, "s": 1, "t": "GUILD_CREATE", "d": {"members": ["m" * 100] * 10_000}}
    d = Decoder("zlib-stream")
    (parts,) = zlib_frames([big], split=7)
    assert [d.feed(x, True) for x in parts][-1] == big


def test_zlib_stream_corrupt_data():
    d = Decoder("zlib-stream")
    with pytest.raises(CompressionError):
        d.feed(b"garbage-not-zlib\x00\x00\xff\xff", True)


@pytest.mark.parametrize("split", [1, 2, 3])
@pytest.mark.parametrize("level,wbits", [(6, 15), (1, 9), (9, 12)])
def test_zlib_stream_header_whole_or_in_pieces_and_any_window(split, level, wbits):
    """The stream's 2-byte zlib header is read off once (the rest goes to a raw inflater, which
    computes no adler32 that zlib-stream would never check), whether the first message comes
    whole or cut inside or right after the header, and for every window a zlib stream may use."""
    c = zlib.compressobj(level, zlib.DEFLATED, wbits)
    payloads = [{"op": 0, "s": i, "t": "X", "d": {"i": i, "pad": "y" * (i * 300)}} for i in range(6)]
    bodies = [c.compress(json.dumps(p).encode()) + c.flush(zlib.Z_SYNC_FLUSH) for p in payloads]
    whole, cut = Decoder("zlib-stream"), Decoder("zlib-stream")
    assert cut.feed(bodies[0][:split], True) is None
    assert cut.feed(bodies[0][split:], True) == payloads[0] == whole.feed(bodies[0], True)
    for d in (whole, cut):
        assert [d.feed(b, True) for b in bodies[1:]] == payloads[1:]


def test_zlib_stream_with_a_preset_dictionary_or_a_broken_header_is_refused_as_before():
    c = zlib.compressobj(zdict=b'{"op":0,"t":')
    with_dict = c.compress(b'{"op":11}') + c.flush(zlib.Z_SYNC_FLUSH)
    assert with_dict[1] & 0x20  # FDICT: not a plain header, left to zlib
    with pytest.raises(CompressionError, match="corrupt zlib-stream data"):  # zlib: Z_NEED_DICT
        Decoder("zlib-stream").feed(with_dict, True)
    c = zlib.compressobj()
    broken = bytearray(c.compress(b'{"op":11}') + c.flush(zlib.Z_SYNC_FLUSH))
    broken[1] ^= 1
    with pytest.raises(CompressionError, match="header check"):
        Decoder("zlib-stream").feed(bytes(broken), True)


def test_zlib_stream_invalid_json_inside_is_decode_error_and_stream_survives():
    c = zlib.compressobj()
    d = Decoder("zlib-stream")
    with pytest.raises(DecodeError):
        d.feed(c.compress(b"{nope") + c.flush(zlib.Z_SYNC_FLUSH), True)
    assert d.feed(c.compress(b'{"op": 11}') + c.flush(zlib.Z_SYNC_FLUSH), True) == {"op": 11}


def test_zstd_stream():
    zstandard = pytest.importorskip("zstandard")
    c = zstandard.ZstdCompressor().compressobj()
    d = Decoder("zstd-stream")
    for i in range(20):
        raw = json.dumps({"op": 0, "s": i, "d": "y" * i}).encode()
        frame = c.compress(raw) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        assert d.feed(frame, True)["s"] == i


def test_zstd_stream_corrupt():
    pytest.importorskip("zstandard")
    with pytest.raises(CompressionError):
        Decoder("zstd-stream").feed(b"\x28\xb5\x2f\xfd garbage garbage", True)


def test_zlib_bomb_is_refused_with_a_hint():
    c = zlib.compressobj(9)
    mib = bytes(1 << 20)
    bomb = c.compress(b'{"d":"') + b"".join(c.compress(mib) for _ in range(80)) + c.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(CompressionError, match="larger than") as info:
        Decoder("zlib-stream").feed(bomb, True)
    assert "inflates past" in info.value.hint


def test_zlib_corrupt_data_hint_names_the_cause():
    zstandard = pytest.importorskip("zstandard")
    c = zstandard.ZstdCompressor().compressobj()
    data = c.compress(b'{"op": 11}') + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) + b"\x00\x00\xff\xff"
    with pytest.raises(CompressionError) as info:
        Decoder("zlib-stream").feed(data, True)
    assert "does not seem to send zlib-stream as Discord does" in info.value.hint
    assert "zstd data" in info.value.hint


# ---------------------------------------------------------------------------------------------
# zstd-stream: the shapes a server may send, the inflate cap, and broken input


def _payloads(n, pad=0):
    return [{"op": 0, "s": i, "t": "MESSAGE_CREATE", "d": {"i": i, "pad": "y" * (i * pad)}} for i in range(n)]


def _dumps(p):
    return json.dumps(p).encode()


def test_zstd_one_complete_frame_per_message():
    """An independent server may end a zstd frame per message: magic on every message."""
    zstandard = pytest.importorskip("zstandard")
    payloads = _payloads(30, pad=11)
    d = Decoder("zstd-stream")
    cctx = zstandard.ZstdCompressor()
    for p in payloads:
        msg = cctx.compress(_dumps(p))  # content size in the header, frame ended
        assert msg[:4] == b"\x28\xb5\x2f\xfd"
        assert d.feed(msg, True) == p


def test_zstd_one_frame_per_message_without_content_size_and_with_checksum():
    zstandard = pytest.importorskip("zstandard")
    cctx = zstandard.ZstdCompressor(write_content_size=False, write_checksum=True)
    d = Decoder("zstd-stream")
    for p in _payloads(10, pad=5):
        c = cctx.compressobj()
        assert d.feed(c.compress(_dumps(p)) + c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH), True) == p


def test_zstd_frame_ends_inside_a_message_and_the_next_starts_there():
    """Message k carries the end of one frame (its last, empty block) and the start of the next."""
    zstandard = pytest.importorskip("zstandard")
    payloads = _payloads(12, pad=7)
    d = Decoder("zstd-stream")
    c = zstandard.ZstdCompressor().compressobj()
    carry = b""
    for i, p in enumerate(payloads):
        msg = carry + c.compress(_dumps(p)) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        carry = b""
        if i % 3 == 2:  # end this frame lazily: its end mark travels with the next message
            carry = c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
            c = zstandard.ZstdCompressor(write_checksum=bool(i % 2)).compressobj()
        assert d.feed(msg, True) == p


def test_zstd_frame_ends_and_next_starts_inside_a_large_message():
    """The same boundary inside a message long enough to be decompressed in capped slices."""
    zstandard = pytest.importorskip("zstandard")
    rnd = random.Random(7)
    big = {"op": 0, "s": 2, "t": "GUILD_CREATE", "d": [f"{rnd.getrandbits(64):x}" for _ in range(20000)]}
    first = {"op": 0, "s": 1, "t": "X", "d": None}
    c = zstandard.ZstdCompressor().compressobj()
    m1 = c.compress(_dumps(first)) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    c2 = zstandard.ZstdCompressor().compressobj()
    m2 = c.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH) + c2.compress(_dumps(big)) + c2.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert len(m2) > 100_000  # well past the one-call size: the sliced path
    d = Decoder("zstd-stream")
    assert d.feed(m1, True) == first
    assert d.feed(bytearray(m2), True) == big  # any bytes-like message
    m3 = c2.compress(b'{"op": 11}') + c2.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    assert d.feed(memoryview(m3), True) == {"op": 11}


@pytest.mark.parametrize("shape", ["stream", "frames"])
def test_zstd_large_payloads_both_shapes(shape):
    zstandard = pytest.importorskip("zstandard")
    rnd = random.Random(shape)
    payloads = [
        {"op": 0, "s": i, "t": "GUILD_CREATE", "d": {"members": [f"{rnd.getrandbits(48):x}" for _ in range(n)]}}
        for i, n in enumerate([10, 50_000, 3, 120_000, 1])
    ]
    d = Decoder("zstd-stream")
    c = zstandard.ZstdCompressor().compressobj()
    cctx = zstandard.ZstdCompressor()
    for p in payloads:
        raw = _dumps(p)
        msg = c.compress(raw) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) if shape == "stream" else cctx.compress(raw)
        assert d.feed(msg, True) == p


def _zstd_bomb(shape, inflated):
    """A few KB that inflate to *inflated* bytes, built without holding them in memory."""
    import zstandard

    mib = bytes(1 << 20)
    c = zstandard.ZstdCompressor().compressobj(size=inflated if shape == "frame" else -1)
    parts = [c.compress(b'{"d":"')]
    parts += [c.compress(mib) for _ in range((inflated - 6) >> 20)]
    parts.append(c.compress(bytes((inflated - 6) & ((1 << 20) - 1))))
    end = zstandard.COMPRESSOBJ_FLUSH_FINISH if shape == "frame" else zstandard.COMPRESSOBJ_FLUSH_BLOCK
    parts.append(c.flush(end))
    return b"".join(parts)


@pytest.mark.parametrize("shape", ["stream", "frame"])
def test_zstd_bomb_is_refused_without_inflating_it(shape):
    """6 KB that inflate to 200 MiB: refused at the cap, never holding much more than the cap."""
    pytest.importorskip("zstandard")
    bomb = _zstd_bomb(shape, 200 << 20)
    assert len(bomb) < 7000
    d = Decoder("zstd-stream")
    tracemalloc.start()
    try:
        with pytest.raises(CompressionError, match="larger than") as info:
            d.feed(bomb, True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "inflates past" in info.value.hint
    # the output held before refusing is the cap plus at most one zstd block (128 KiB)
    assert peak < MAX_INFLATED_BYTES + (1 << 20), peak


def test_zstd_cap_is_exact():
    """A payload of exactly the cap passes the decompressor (then fails as JSON); one byte more is refused."""
    zstandard = pytest.importorskip("zstandard")
    for size, error in ((MAX_INFLATED_BYTES, DecodeError), (MAX_INFLATED_BYTES + 1, CompressionError)):
        c = zstandard.ZstdCompressor().compressobj()
        chunk = b"x" * (1 << 20)
        msg = b"".join(c.compress(chunk) for _ in range(size >> 20)) + c.compress(b"x" * (size & 0xFFFFF))
        msg += c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        with pytest.raises(error):
            Decoder("zstd-stream").feed(msg, True)


def _first_block_type(frame):
    """Block_Type of the first block of a zstd frame (0 raw, 1 RLE, 2 compressed)."""
    fhd = frame[4]
    single = fhd & 0x20
    fcs = (0, 2, 4, 8)[fhd >> 6] or (1 if single else 0)
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
    return (frame[at] >> 1) & 3


@pytest.mark.parametrize("block", ["raw", "compressed"])
def test_zstd_stream_truncated_message(block):
    """A message cut anywhere is a broken stream (CompressionError), never a bad payload (DecodeError).

    The decoder streams a raw block out as it arrives (short payloads are raw blocks), so a cut one
    still yields a prefix of the payload; a cut inside a checksum yields the whole payload. Only the
    block walk tells that the message ended too early.
    """
    zstandard = pytest.importorskip("zstandard")
    if block == "raw":
        text = b'{"op": 10, "d": {"heartbeat_interval": 41250}}'
    else:
        text = _dumps({"op": 0, "d": ["abcabc" * 20] * 20})
    for cctx in (zstandard.ZstdCompressor(), zstandard.ZstdCompressor(write_checksum=True)):
        whole = cctx.compress(text)
        assert _first_block_type(whole) == (0 if block == "raw" else 2)
        assert Decoder("zstd-stream").feed(whole, True) == json.loads(text)
        for cut in range(1, len(whole)):
            with pytest.raises(CompressionError, match="truncated") as info:
                Decoder("zstd-stream").feed(whole[:cut], True)
            assert "does not seem to send zstd-stream as Discord does" in info.value.hint
    # the Discord shape: a later message of the one stream, cut by one byte
    c = zstandard.ZstdCompressor().compressobj()
    d = Decoder("zstd-stream")
    assert d.feed(c.compress(b'{"op": 11}') + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK), True) == {"op": 11}
    second = c.compress(text) + c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    with pytest.raises(CompressionError, match="truncated"):
        d.feed(second[:-1], True)
    with pytest.raises(CompressionError):
        Decoder("zstd-stream").feed(b"", True)


def test_zstd_skippable_frames_between_payload_frames():
    zstandard = pytest.importorskip("zstandard")
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    d = Decoder("zstd-stream")
    cctx = zstandard.ZstdCompressor()
    for p in _payloads(4):
        assert d.feed(skippable + cctx.compress(_dumps(p)), True) == p


def test_zstd_stream_garbage_after_a_complete_frame():
    zstandard = pytest.importorskip("zstandard")
    msg = zstandard.ZstdCompressor().compress(b'{"op": 11}') + b"not a frame"
    with pytest.raises(CompressionError, match="corrupt zstd-stream"):
        Decoder("zstd-stream").feed(msg, True)


@pytest.mark.parametrize(
    "what,make",
    [
        ("zlib data", lambda: zlib.compress(b'{"op": 10}')[:-4] + b"\x00\x00\xff\xff"),
        ("plain JSON", lambda: b'{"op": 10, "d": {"heartbeat_interval": 41250}}'),
    ],
)
def test_zstd_wrong_format_hint_names_it(what, make):
    pytest.importorskip("zstandard")
    with pytest.raises(CompressionError) as info:
        Decoder("zstd-stream").feed(make(), True)
    hint = info.value.hint
    assert hint.startswith("the server does not seem to send zstd-stream as Discord does")
    assert what in hint
    # one cause, one hint: what a caller compares to see the same failure again on the next socket
    with pytest.raises(CompressionError) as again:
        Decoder("zstd-stream").feed(make(), True)
    assert again.value.hint == hint and str(again.value) == str(info.value)


def test_compression_error_hint_is_optional_and_survives_pickling():
    plain = CompressionError("boom")
    assert plain.hint == "" and str(plain) == "boom" and isinstance(plain, ValueError)
    hinted = CompressionError("boom", hint="why")
    copy = pickle.loads(pickle.dumps(hinted))
    assert (str(copy), copy.hint) == ("boom", "why")


def test_check_compress():
    assert check_compress(None) is None
    with pytest.raises(ConfigError):
        check_compress("gzip")


def test_encode_compact():
    assert encode({"op": 1, "d": None}) == '{"op":1,"d":null}'


# ------------------------------------------------------------------ the reader's batch decode

_BATCH_TEXTS = [
    b'{"t":"A","s":1,"op":0,"d":{"x":"}{"}}',  # a string holding the join of two objects
    b'{"t":"B","s":2,"op":0,"d":null}',
    b'{"t":"C","s":3,"op":0,"d":{"x":"}{\\"t\\":"}}',  # ... and of two payloads
    b'{"t":null,"s":null,"op":11,"d":null}',
    b'{"t":"D","s":4,"op":0,"d":{"a":[{"b":{}},{}]}}',
    b' {"op":11} ',  # whitespace around: json.loads accepts it, the scanner alone would not
    b"[1, 2]",  # JSON, not an object: DecodeError in its place
    b'{"op": 1',  # cut short: DecodeError
    b"",  # nothing: DecodeError
    b'{"op":0}{"op":0}',  # two objects in one message: DecodeError (json.loads: extra data)
    b'{"t":"E","s":5,"op":0,"d":{}}{"t":"F","s":6,"op":0,"d":{}}',  # two payloads in one message
    '{"op":0,"t":"\u00e9\u20ac\U0001f600","s":3}'.encode("utf-8"),
    b"\xef\xbb\xbf{}",  # a UTF-8 BOM: json.loads refuses it; so must we
    b'{"op":7}',
]


def _outcome(item):
    return ("error", str(item)) if isinstance(item, DecodeError) else ("ok", item)


def _one_by_one(texts):
    d = Decoder("zlib-stream")
    c = zlib.compressobj()
    out = []
    for t in texts:
        try:
            out.append(("ok", d.feed(c.compress(t) + c.flush(zlib.Z_SYNC_FLUSH), True)))
        except DecodeError as exc:
            out.append(("error", str(exc)))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_inflate_many_then_parse_is_feed_message_by_message(seed):
    """inflate_many (the reader's half: texts, not parsed) followed by parse gives exactly what
    feed() gives message by message: the same payloads, the same errors in the same places, and
    the zlib context stays usable afterwards. A burst of plain Discord payloads is inflated in
    one call; anything else message by message."""
    rng = random.Random(seed)
    texts = [rng.choice(_BATCH_TEXTS) for _ in range(rng.randint(2, 12))]
    plain = [b'{"t":"B","s":2,"op":0,"d":null}', b'{"t":null,"s":null,"op":11,"d":null}', _BATCH_TEXTS[4]]
    if seed == 0:
        texts = plain * 3  # the fast path
    expected = _one_by_one(texts + [b'{"op":11}'])
    d = Decoder("zlib-stream")
    c = zlib.compressobj()
    hello = b'{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}'
    assert d.feed(c.compress(hello) + c.flush(zlib.Z_SYNC_FLUSH), True)["op"] == 10  # the stream's start, alone
    bodies = [(c.compress(t) + c.flush(zlib.Z_SYNC_FLUSH), True) for t in texts]
    calls = []

    class Counting:  # counts the inflate calls (zlib's object takes no attributes)
        def __init__(self, inner):
            self.inner = inner

        def decompress(self, data, max_length=0):
            calls.append(len(data))
            return self.inner.decompress(data, max_length)

        def copy(self):
            return Counting(self.inner.copy())

        @property
        def unconsumed_tail(self):
            return self.inner.unconsumed_tail

    d._inflate = Counting(d._inflate)
    got, error = d.inflate_many(bodies)
    assert error is None
    cuts = [x for x in got if isinstance(x, tuple)]
    got = [codec.dispatch_text(*x) if isinstance(x, tuple) else x for x in got]
    assert got == texts  # the very texts, unparsed (or cut at their heads, and given back byte for byte)
    assert not cuts or len(cuts) == len(texts)  # a burst is cut whole or not at all
    if all(t in plain for t in texts):
        assert len(calls) == 1
    elif any(b"}{" in t for t in texts) or any(not t.startswith(b'{"t":') for t in texts):
        assert len(calls) == 1 + len(texts)  # tried at once, then message by message

    def parsed(text):
        try:
            return Decoder.parse(text)
        except DecodeError as exc:
            return exc

    after = d.feed(c.compress(b'{"op":11}') + c.flush(zlib.Z_SYNC_FLUSH), True)
    assert [_outcome(parsed(x)) for x in got] + [("ok", after)] == expected


def test_inflate_many_cuts_a_burst_of_dispatches_at_their_heads_in_one_call():
    """A burst of Discord's dispatches comes back as (d text, name, seq) for each, from one
    inflate and one split; a seam that only looks like one, inside a string, is not cut."""
    texts = [
        b'{"t":"MESSAGE_CREATE","s":2,"op":0,"d":{"content":"}{\\"t\\":\\"X\\""}}',
        b'{"t":"GUILD_CREATE","s":3,"op":0,"d":null}',
        b'{"t":"MESSAGE_CREATE","s":40,"op":0,"d":[{"a":{}},{"b":"}"}]}',
    ]
    d = Decoder("zlib-stream")
    c = zlib.compressobj()
    got, error = d.inflate_many([(c.compress(t) + c.flush(zlib.Z_SYNC_FLUSH), True) for t in texts])
    assert error is None
    assert got == [
        (b'{"content":"}{\\"t\\":\\"X\\""}', "MESSAGE_CREATE", 2),
        (b"null", "GUILD_CREATE", 3),
        (b'[{"a":{}},{"b":"}"}]', "MESSAGE_CREATE", 40),
    ]
    assert got[0][1] is got[2][1]  # one str per event name
    assert [codec.dispatch_text(*x) for x in got] == texts
    assert codec._cut_burst(texts[1], 1) is None  # one message is no burst: inflated on its own


def test_inflate_many_returns_the_texts_before_a_corrupt_message():
    d = Decoder("zlib-stream")
    c = zlib.compressobj()
    good = c.compress(b'{"op":11}') + c.flush(zlib.Z_SYNC_FLUSH)
    got, error = d.inflate_many([(good, True), (b"\x00garbage\x00\x00\xff\xff", True)])
    assert got == [b'{"op":11}']
    assert isinstance(error, CompressionError)


def test_inflate_many_puts_a_binary_frame_without_compression_in_its_place():
    got, error = Decoder(None).inflate_many([(b'{"op":11}', False), (b"\x00\x01", True), (b'{"op":1}', False)])
    assert error is None
    assert got[0] == b'{"op":11}' and isinstance(got[1], DecodeError) and got[2] == b'{"op":1}'


# ---------------------------------------------------------------------------------- dispatch heads

_HEADED = [
    b'{"t":"MESSAGE_CREATE","s":5,"op":0,"d":{"content":"hi","n":[1,2.5,null,true]}}',  # Discord's order
    b'{"op":0,"t":"MESSAGE_CREATE","s":5,"d":{"x":"}{"}}',  # the documentation's order, "d" last
    b'{"t":"A","s":0,"op":0,"d":null}',
    b'{"t":"A","s":7,"op":0,"d":"\xc3\xa9\xe2\x82\xac"}',  # UTF-8 text
    b'{"t":"A","s":7,"op":0,"d":{"x":1},"extra":2}',  # "d" not last after all: parsed whole
    b'{"t":"A","s":7,"op":0,"d":{"x":1} }',  # whitespace before the brace: parsed whole
    b'{"t":"A","s":7,"op":0,"d":{},"t":"B"}',  # a key given twice: its head says A, json says B
    b'{"t":"A","s":7,"op":0,"d":{},"s":8}',
    b'{"t":"A","s":7,"op":0,"d":{bad}}',  # invalid JSON behind a good head
    b'{"t":"A","s":7,"op":0,"d":1}}',  # one brace too many
    b'{"t":"A","s":7,"op":0,"d":"\xff"}',  # not UTF-8
    b'{"t":"A","s":7,"op":0,"d":{"x":1}',  # cut short
    b'{"t":"A","s":7,"op":0,"d":}',
    b'{"t":"A","s":7,"op":0,"d":"\\ud800"}',  # a lone surrogate escape: json takes it, orjson does not
]
_HEADLESS = [
    b'{"op":0,"d":{},"s":5,"t":"A"}',  # "d" first: no head, parsed whole
    b'{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}',
    b'{"t":"A","s":01,"op":0,"d":{}}',  # not JSON
    b'{"t":"a","s":1,"op":0,"d":{}}',  # not an event name as Discord writes them
    b'{"t":"A","s":-1,"op":0,"d":{}}',
    b'{"t":"A","s":1,"op":1,"d":{}}',
    b'{"t":"A","s":1,"op":0,"d" :{}}',
    b' {"t":"A","s":1,"op":0,"d":{}}',
    b"[1]",
    b"",
]


@pytest.mark.parametrize("loads_name", ["json", "orjson"])
@pytest.mark.parametrize("raw", _HEADED + _HEADLESS)
def test_dispatch_head_and_data_say_what_parsing_the_whole_payload_says(monkeypatch, loads_name, raw):
    """The dispatcher's half (dispatch_data of the text of "d" cut at the head) agrees with
    parsing the whole payload, for both JSON libraries: the same "d", or a DecodeError exactly
    when the payload is not valid JSON or its keys say otherwise than its head."""
    if loads_name == "orjson":
        orjson = pytest.importorskip("orjson")
        monkeypatch.setattr(codec, "loads", orjson.loads)
    else:
        monkeypatch.setattr(codec, "loads", json.loads)
    head = codec.dispatch_head(raw)
    cut = codec.cut_dispatch(raw)
    for text in (raw, bytearray(raw)):  # the reader hands over bytes or bytearrays
        assert codec.dispatch_head(text) == head
        assert codec.cut_dispatch(text) == cut
    if raw in _HEADLESS:
        assert head is None and cut is None
        return
    assert head is not None
    name, seq, start = head
    assert raw[start - 4 : start] == b'"d":'
    if not raw.endswith(b"}"):
        assert cut is None  # parsed whole
        return
    assert cut == (raw[start:-1], name, seq)
    try:
        whole = Decoder.parse(raw)
        expected = (
            ("ok", whole["d"]) if (whole.get("op"), whole.get("t"), whole.get("s")) == (0, name, seq) else ("error",)
        )
    except DecodeError:
        expected = ("error",)
    for d in (cut[0], bytearray(cut[0])):
        try:
            got = ("ok", codec.dispatch_data(d, name, seq))
        except DecodeError:
            got = ("error",)
        assert got == expected


def test_dispatch_head_keeps_one_string_per_event_name_and_takes_no_str():
    from sync_gateway.codec import dispatch_head

    a = dispatch_head(b'{"t":"GUILD_CREATE","s":1,"op":0,"d":{}}')
    b = dispatch_head(bytearray(b'{"t":"GUILD_CREATE","s":2,"op":0,"d":{}}'))
    assert a is not None and b is not None and a[0] is b[0] and a[1:] == (1, len(b'{"t":"GUILD_CREATE","s":1,"op":0,"d":')) and b[1] == 2
    assert dispatch_head('{"t":"GUILD_CREATE","s":1,"op":0,"d":{}}') is None  # text: parsed whole
    assert dispatch_head(b'{"t":"' + b"A" * 101 + b'","s":1,"op":0,"d":{}}') is None
    assert dispatch_head(b'{"t":"A","s":1234567890123456789,"op":0,"d":{}}') is None  # 19 digits
