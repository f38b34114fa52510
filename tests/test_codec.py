"""Unit tests of frame decoding: JSON, zlib-stream (split payloads), zstd-stream, and bad input."""
import json
import zlib

import pytest

from sync_gateway.codec import CompressionError, DecodeError, Decoder, check_compress, encode
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


def test_check_compress():
    assert check_compress(None) is None
    with pytest.raises(ConfigError):
        check_compress("gzip")


def test_encode_compact():
    assert encode({"op": 1, "d": None}) == '{"op":1,"d":null}'
