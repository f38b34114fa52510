"""Frame decoding: JSON text frames, zlib-stream and zstd-stream (PROTOCOL.md §10). No I/O.

One :class:`Decoder` per socket: the compression context lives exactly as long as the socket.
Two kinds of failure are kept apart because they call for different actions:

* :class:`DecodeError`: one payload is not a JSON object; the stream is intact, skip it.
* :class:`CompressionError`: the compressed stream is corrupt; nothing after it can be trusted,
  so the socket is dropped (and the session resumed).
"""
import json
import zlib
from typing import Any, Callable, Dict, Optional, Union

from .errors import ConfigError

__all__ = ["Decoder", "DecodeError", "CompressionError", "COMPRESSIONS", "encode", "check_compress", "loads"]

COMPRESSIONS = (None, "zlib-stream", "zstd-stream")
ZLIB_SUFFIX = b"\x00\x00\xff\xff"
#: A decompressed payload larger than this is refused (a bomb or a broken peer), as a CompressionError.
MAX_INFLATED_BYTES = 64 * 1024 * 1024

try:  # optional speed extra
    import orjson as _orjson

    loads: Callable[[Union[bytes, str]], Any] = _orjson.loads
    _JSON_ERRORS: tuple = (_orjson.JSONDecodeError, UnicodeDecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None
    loads = json.loads
    _JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, ValueError)


class DecodeError(ValueError):
    """A payload that is not a JSON object (the stream itself is fine)."""


class CompressionError(ValueError):
    """The compressed stream is corrupt or truncated; the socket must be dropped."""


def check_compress(compress: Optional[str]) -> Optional[str]:
    """Validate the ``compress`` option; zstd-stream needs the ``zstd`` extra."""
    if compress not in COMPRESSIONS:
        raise ConfigError(f"compress must be one of None, 'zlib-stream', 'zstd-stream'; got {compress!r}")
    if compress == "zstd-stream":
        try:
            import zstandard  # noqa: F401
        except ImportError:
            raise ConfigError(
                "compress='zstd-stream' needs the zstandard package: pip install 'sync-gateway[zstd]' "
                "(from a checkout: pip install -e '.[zstd]')"
            ) from None
    return compress


def encode(payload: Dict[str, Any]) -> str:
    """Compact JSON for sending (client frames are never compressed)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


class Decoder:
    """Turns websocket messages of one socket into payload dicts."""

    __slots__ = ("compress", "_buffer", "_inflate", "_zstd")

    def __init__(self, compress: Optional[str] = None) -> None:
        check_compress(compress)
        self.compress = compress
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj() if compress == "zlib-stream" else None
        self._zstd = None
        if compress == "zstd-stream":
            import zstandard

            self._zstd = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: Union[bytes, bytearray, str], binary: bool) -> Optional[Dict[str, Any]]:
        """Feed one websocket message; return a payload, or None while a zlib payload is incomplete."""
        if not binary:
            return self._parse(data)
        if self.compress == "zlib-stream":
            return self._feed_zlib(data)
        if self.compress == "zstd-stream":
            return self._feed_zstd(data)
        raise DecodeError("binary frame on a connection without compression")

    def _feed_zlib(self, data: Union[bytes, bytearray, str]) -> Optional[Dict[str, Any]]:
        assert self._inflate is not None
        if len(data) >= 4 and data[-4:] == ZLIB_SUFFIX and not self._buffer:
            chunk = data  # the common case: one message, one payload, no copy
        else:
            self._buffer += data  # type: ignore[operator]
            if len(self._buffer) > MAX_INFLATED_BYTES:
                raise CompressionError("zlib-stream payload never completed (no 00 00 ff ff marker)")
            if self._buffer[-4:] != ZLIB_SUFFIX:
                return None
            chunk = bytes(self._buffer)
            self._buffer.clear()
        try:
            raw = self._inflate.decompress(chunk, MAX_INFLATED_BYTES)
        except zlib.error as exc:
            raise CompressionError(f"corrupt zlib-stream data: {exc}") from None
        if self._inflate.unconsumed_tail:
            raise CompressionError(f"inflated payload larger than {MAX_INFLATED_BYTES} bytes")
        return self._parse(raw)

    def _feed_zstd(self, data: Union[bytes, bytearray, str]) -> Optional[Dict[str, Any]]:
        import zstandard

        assert self._zstd is not None
        try:
            raw = self._zstd.decompress(bytes(data))
        except zstandard.ZstdError as exc:
            raise CompressionError(f"corrupt zstd-stream data: {exc}") from None
        if not raw:
            raise CompressionError("zstd-stream message decompressed to nothing (truncated?)")
        return self._parse(raw)

    @staticmethod
    def _parse(raw: Union[bytes, bytearray, str]) -> Dict[str, Any]:
        try:
            payload = loads(raw)
        except _JSON_ERRORS as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise DecodeError(f"payload is a JSON {type(payload).__name__}, not an object")
        return payload
