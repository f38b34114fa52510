"""Frame decoding: JSON text frames, zlib-stream and zstd-stream (PROTOCOL.md §10). No I/O.

One :class:`Decoder` per socket: the compression context lives exactly as long as the socket.
Two kinds of failure are kept apart because they call for different actions:

* :class:`DecodeError`: one payload is not a JSON object; the stream is intact, skip it.
* :class:`CompressionError`: the compressed stream is corrupt; nothing after it can be trusted,
  so the socket is dropped (and the session resumed). Its :attr:`~CompressionError.hint` names the
  likely cause, for the caller to report once the same failure keeps coming back on new sockets.

Both compressions cap a decompressed payload at :data:`MAX_INFLATED_BYTES` and refuse it as a
CompressionError without first allocating the whole of it: a few KB of hostile input cannot make
the client allocate hundreds of MB.
"""
import json
import json.scanner
import re
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple, Type, Union, cast

from .errors import ConfigError

__all__ = [
    "Decoder",
    "DecodeError",
    "CompressionError",
    "COMPRESSIONS",
    "encode",
    "check_compress",
    "loads",
    "dispatch_head",
    "cut_dispatch",
    "dispatch_text",
    "dispatch_data",
]

COMPRESSIONS = (None, "zlib-stream", "zstd-stream")
ZLIB_SUFFIX = b"\x00\x00\xff\xff"
#: A decompressed payload larger than this is refused (a bomb or a broken peer), as a CompressionError.
MAX_INFLATED_BYTES = 64 * 1024 * 1024

# A zstd block regenerates at most 128 KiB (RFC 8878 3.1.1.2.4) and takes at least 4 bytes on the wire
# (3-byte header + 1 byte of an RLE block), so n compressed bytes inflate to at most n * 32 KiB, plus one
# block that an earlier message left incomplete. That bound lets _inflate_zstd feed slices small enough
# that one call cannot overshoot the cap by more than a block: zstandard's decompressobj has no max_length.
_ZSTD_BLOCK_MAX = 128 * 1024
_ZSTD_MAX_RATIO = _ZSTD_BLOCK_MAX // 4
#: Longest message that cannot inflate past the cap in one call (about 2 KB; nearly every message).
_ZSTD_ONE_CALL = (MAX_INFLATED_BYTES - _ZSTD_BLOCK_MAX) // _ZSTD_MAX_RATIO
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_FCS_SIZES = (0, 2, 4, 8)  # Frame_Content_Size field by FCS_flag (0 means 1 byte if single-segment)
_ZSTD_DID_SIZES = (0, 1, 2, 4)
# Where a message may end: after a whole block inside a frame, or after a whole frame.
_ZSTD_BETWEEN_FRAMES = 0
_ZSTD_IN_FRAME = 1  # the frame has no checksum
_ZSTD_IN_FRAME_CHECKSUM = 2

_HINT_ZLIB = (
    "the server does not seem to send zlib-stream as Discord does (one zlib context for the whole "
    "connection, every payload ending in 00 00 ff ff); try compress=None"
)
_HINT_ZSTD = (
    "the server does not seem to send zstd-stream as Discord does (one zstd stream for the whole "
    "connection with a block flush after every payload, or one complete zstd frame per message); "
    "try compress='zlib-stream' or compress=None"
)
_HINT_BOMB = (
    f"the server sent a payload that inflates past {MAX_INFLATED_BYTES} bytes "
    "(a decompression bomb, or a broken server)"
)

try:  # optional speed extra
    import orjson

    loads: Callable[[Union[bytes, bytearray, str]], Any] = orjson.loads
    _ORJSON_LOADS: Any = orjson.loads
    _JSON_ERRORS: Tuple[Type[BaseException], ...] = (orjson.JSONDecodeError, UnicodeDecodeError, ValueError)
except ImportError:  # pragma: no cover - depends on the environment
    loads = json.loads
    _ORJSON_LOADS = None
    _JSON_ERRORS = (json.JSONDecodeError, UnicodeDecodeError, ValueError)


#: json's own scanner (the C one where there is one): (text, index) -> (object, end index)
_scan_json: Callable[[str, int], Tuple[Any, int]] = cast(Any, json.scanner).make_scanner(json.JSONDecoder())
_JSON_LOADS = json.loads


def _loads_json(raw: Union[bytes, bytearray, str]) -> Any:
    """``json.loads`` without its per-call Python layers (encoding sniffing, the whitespace regex
    twice): the C scanner on the UTF-8 text, about 1.5 us less per ~750-byte event. Anything
    unusual (a BOM or UTF-16/32, surrounding whitespace, trailing data, invalid input) goes to
    ``json.loads`` itself, so results and errors are exactly json.loads's."""
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        obj, end = _scan_json(text, 0)
        if end == len(text):
            return obj
    except (StopIteration, UnicodeDecodeError, ValueError, RecursionError):
        pass
    return _JSON_LOADS(raw)


class DecodeError(ValueError):
    """A payload that is not a JSON object (the stream itself is fine)."""


class CompressionError(ValueError):
    """The compressed stream is corrupt or truncated; the socket must be dropped.

    ``hint`` (keyword-only, default ``""``) names the likely cause in words a user can act on, e.g.
    that the server does not speak zstd-stream the way Discord does. It is the same string for every
    occurrence of one cause, while ``str(exc)`` may carry details of one message: a caller that sees
    the same ``hint`` on socket after socket can stop retrying quietly and report it as an ERROR.
    """

    def __init__(self, *args: object, hint: str = "") -> None:
        super().__init__(*args)
        self.hint = hint

    def __reduce__(self) -> Any:  # keep ``hint`` across pickling (ValueError pickles args only)
        return (_compression_error, (self.args, self.hint))


def _compression_error(args: Tuple[Any, ...], hint: str) -> CompressionError:
    return CompressionError(*args, hint=hint)


def _sniff(data: Union[bytes, bytearray, str]) -> str:
    """What a message that failed to decompress looks like, for a hint ("" if nothing telling)."""
    head = bytes(data[:4]) if not isinstance(data, str) else data[:4].encode("utf-8", "replace")
    if head[:1] in (b"{", b"["):
        return "; the message is plain JSON, not compressed"
    if head == _ZSTD_MAGIC:
        return "; the message is zstd data"
    if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0:
        return "; the message starts like zlib data"
    return ""


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


_SEAM = re.compile(rb"\}\{")


def _split_objects(joined: bytes, count: int) -> Optional[List[bytes]]:
    """*joined*, the texts of *count* payloads one after the other, cut into them; None unless
    the cut is unambiguous (then the caller inflates message by message).

    Discord writes every payload as one compact object whose first key is "t", so a burst reads
    ``{"t":...}{"t":...}``. Outside a string, valid JSON never holds ``}{``, and inside one the
    quote after it would end the string, which no letter may follow: so when the text holds
    exactly count - 1 of them, each followed by ``"t":``, each is where a payload ends. A ``}{``
    inside a message's string, or a payload written otherwise, makes the count or the check fail
    and the burst goes message by message. Only a burst holding both a message that is not one
    JSON object (two in one, or broken JSON with a payload head inside) and a message that is not
    a compact object could be cut elsewhere; Discord sends neither.
    """
    if not joined.startswith(b'{"t":') or joined[-1:] != b"}":
        return None
    parts = _SEAM.split(joined)  # one pass; the seams are put back below
    if len(parts) != count:
        return None
    texts = [parts[0] + b"}"]
    for part in parts[1:-1]:
        if not part.startswith(b'"t":'):
            return None
        texts.append(b"{%s}" % part)
    last = parts[-1]
    if not last.startswith(b'"t":'):
        return None
    texts.append(b"{" + last)
    return texts


class Decoder:
    """Turns websocket messages of one socket into payload dicts."""

    __slots__ = ("compress", "_buffer", "_inflate", "_zlib_started", "_zstd", "_zstd_error", "_zstd_state")

    def __init__(self, compress: Optional[str] = None) -> None:
        check_compress(compress)
        self.compress = compress
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj() if compress == "zlib-stream" else None
        self._zlib_started = False  # the stream's 2-byte zlib header has been looked at (_zlib_first)
        self._zstd: Any = None
        self._zstd_error: Any = None
        self._zstd_state = _ZSTD_BETWEEN_FRAMES
        if compress == "zstd-stream":
            import zstandard

            # read_across_frames: a frame that ends (a server sending one whole frame per message, or
            # ending one frame mid-stream and starting the next) is followed by the next frame, instead
            # of "cannot use a decompressobj multiple times" on every later message.
            self._zstd = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
            self._zstd_error = zstandard.ZstdError

    def feed(self, data: Union[bytes, bytearray, str], binary: bool) -> Optional[Dict[str, Any]]:
        """Feed one websocket message; return a payload, or None while a zlib payload is incomplete."""
        raw = self.inflate(data, binary)
        return None if raw is None else self.parse(raw)

    def _zlib_first(self, data: Any) -> Any:
        """The stream's first compressed bytes, without their zlib header when it is a plain one.

        Discord's zlib-stream is one zlib stream that never ends, so the adler32 checksum zlib
        computes over every inflated byte is never checked (it would be, at a stream end). Behind
        a valid 2-byte header (deflate, a window zlib can take, no preset dictionary) the stream
        goes to a raw inflater, which does not compute it: a quarter of the time spent inflating
        (~0.2 us of ~0.7 per ~750-byte event). Any other start stays with the zlib inflater, which
        rejects it exactly as before."""
        self._zlib_started = True
        if len(data) >= 2:
            cmf, flg = data[0], data[1]
            if cmf & 0x0F == 8 and cmf >> 4 <= 7 and not flg & 0x20 and (cmf << 8 | flg) % 31 == 0:
                self._inflate = zlib.decompressobj(-zlib.MAX_WBITS)
                return data[2:]
        return data

    def _inflate_zlib_buffered(self, data: Union[bytes, bytearray, str]) -> Optional[bytes]:
        """A zlib-stream payload split over several messages: buffered until its 00 00 ff ff."""
        assert self._inflate is not None
        self._buffer += data.encode("utf-8") if isinstance(data, str) else data
        if len(self._buffer) > MAX_INFLATED_BYTES:
            raise CompressionError(
                "zlib-stream payload never completed (no 00 00 ff ff marker)", hint=_HINT_ZLIB + _sniff(self._buffer)
            )
        if self._buffer[-4:] != ZLIB_SUFFIX:
            return None
        chunk = bytes(self._buffer)
        self._buffer.clear()
        body = chunk if self._zlib_started else self._zlib_first(chunk)
        try:
            raw = self._inflate.decompress(body, MAX_INFLATED_BYTES)
        except zlib.error as exc:
            raise CompressionError(f"corrupt zlib-stream data: {exc}", hint=_HINT_ZLIB + _sniff(chunk)) from None
        if self._inflate.unconsumed_tail:
            raise CompressionError(f"inflated payload larger than {MAX_INFLATED_BYTES} bytes", hint=_HINT_BOMB)
        return raw

    def _inflate_zstd(self, data: Union[bytes, bytearray, str]) -> bytes:
        if not isinstance(data, bytes):
            data = bytes(data)  # type: ignore[arg-type]
        try:
            if len(data) <= _ZSTD_ONE_CALL:
                raw = self._zstd.decompress(data)  # the common case: cannot pass the cap
            else:
                raw = self._inflate_zstd_capped(data)
        except self._zstd_error as exc:
            raise CompressionError(f"corrupt zstd-stream data: {exc}", hint=_HINT_ZSTD + _sniff(data)) from None
        if not raw:
            raise CompressionError(
                "zstd-stream message decompressed to nothing (truncated?)", hint=_HINT_ZSTD + _sniff(data)
            )
        if not self._zstd_message_complete(data):
            # The decoder streams a raw block out as it arrives, so a cut message can still yield a
            # prefix of a payload: that would pass for a bad payload (DecodeError, stream intact).
            raise CompressionError("zstd-stream message ends inside a zstd block (truncated?)", hint=_HINT_ZSTD)
        return bytes(raw) if not isinstance(raw, bytes) else raw

    def _zstd_message_complete(self, data: bytes) -> bool:
        """Walk the frame and block headers of a message the decoder accepted (RFC 8878 section 3.1).

        True if it ends after a whole block or a whole frame, as every message must when each one
        carries exactly one payload. The decoder has validated the bytes; this only tracks where they
        end, which the decoder does not tell. A few integer operations per block (one block per
        message, usually).
        """
        end = len(data)
        pos = 0
        state = self._zstd_state
        while pos < end:
            if state == _ZSTD_BETWEEN_FRAMES:
                if data[pos : pos + 4] != _ZSTD_MAGIC:  # a skippable frame: magic, 4-byte size, data
                    if end - pos < 8:
                        return False
                    pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
                    continue
                if end - pos < 5:
                    return False
                fhd = data[pos + 4]
                single = fhd & 0x20
                fcs = _ZSTD_FCS_SIZES[fhd >> 6] or (1 if single else 0)
                pos += 5 + (0 if single else 1) + _ZSTD_DID_SIZES[fhd & 3] + fcs
                state = _ZSTD_IN_FRAME_CHECKSUM if fhd & 0x04 else _ZSTD_IN_FRAME
                continue
            if end - pos < 3:
                return False
            header = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            pos += 4 if header & 6 == 2 else 3 + (header >> 3)  # an RLE block holds one byte
            if header & 1:  # the frame's last block, then its checksum if it has one
                if state == _ZSTD_IN_FRAME_CHECKSUM:
                    pos += 4
                state = _ZSTD_BETWEEN_FRAMES
        self._zstd_state = state
        return pos == end

    def _inflate_zstd_capped(self, data: bytes) -> bytes:
        """Decompress a long message in slices sized so the output stops within a block of the cap."""
        pieces = []
        total = 0
        pos = 0
        end = len(data)
        view = memoryview(data)
        while pos < end:
            step = max(1, (MAX_INFLATED_BYTES - total - _ZSTD_BLOCK_MAX) // _ZSTD_MAX_RATIO)
            out = self._zstd.decompress(view[pos : pos + step])
            pos += step
            if out:
                total += len(out)
                if total > MAX_INFLATED_BYTES:
                    raise CompressionError(f"inflated payload larger than {MAX_INFLATED_BYTES} bytes", hint=_HINT_BOMB)
                pieces.append(out)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def inflate(self, data: Union[bytes, bytearray, str], binary: bool) -> Union[bytes, bytearray, str, None]:
        """The first half of :meth:`feed`: one message to its JSON text (None while a zlib payload
        is incomplete), without parsing it. The reader inflates each message as it comes and
        parses the complete ones together (:meth:`parse`), one batch per read."""
        if not binary:
            return data
        if self.compress == "zlib-stream":
            if not self._buffer and data[-4:] == ZLIB_SUFFIX:  # the common case: one message, one payload
                body = data if self._zlib_started else self._zlib_first(data)
                inflate = self._inflate
                assert inflate is not None
                try:
                    raw = inflate.decompress(cast(bytes, body), MAX_INFLATED_BYTES)
                except zlib.error as exc:
                    raise CompressionError(f"corrupt zlib-stream data: {exc}", hint=_HINT_ZLIB + _sniff(data)) from None
                if inflate.unconsumed_tail:
                    raise CompressionError(f"inflated payload larger than {MAX_INFLATED_BYTES} bytes", hint=_HINT_BOMB)
                return raw
            return self._inflate_zlib_buffered(data)
        if self.compress == "zstd-stream":
            return self._inflate_zstd(data)
        raise DecodeError("binary frame on a connection without compression")

    def inflate_many(self, messages: List[Tuple[Any, bool]]) -> Tuple[List[Any], Optional["CompressionError"]]:
        """Messages of this socket, in order -> (their JSON texts, not parsed, with a DecodeError in
        the place of a message that cannot be one; the CompressionError that ended the stream, if
        one did). The texts before a corrupt message are still returned: they were fine. A burst of
        plain dispatches comes already cut (:func:`_cut_burst`): a :data:`Cut` in each place, the
        same payload as its text (:func:`dispatch_text` gives the text back byte for byte).

        Parsing is left to whoever reads the payload (see :func:`dispatch_head`): an event is
        parsed on the dispatcher thread, where its handlers run and its objects are freed, not on
        the reader thread; objects made on one core and used and freed on another cost more than
        the parsing itself."""
        out: List[Any] = []
        if (
            len(messages) > 1
            and self._inflate is not None
            and not self._buffer
            and all([binary and data.endswith(ZLIB_SUFFIX) for data, binary in messages])
        ):
            # A burst of whole zlib-stream messages: ONE inflate call for all of them. Each call
            # releases the GIL, and with several shards in one process a release per event was a
            # thread switch per event. The texts are cut apart where one payload ends and the next
            # begins (_cut_burst); when that is not unambiguous, the burst is inflated again
            # message by message from a copy of the context taken before.
            if not self._zlib_started:  # the stream's first message: its header, once (also below)
                messages = [(self._zlib_first(messages[0][0]), True)] + messages[1:]
            zobj = self._inflate
            snapshot = zobj.copy()
            try:
                joined = zobj.decompress(b"".join([data for data, _ in messages]), MAX_INFLATED_BYTES)
                if not zobj.unconsumed_tail:
                    cut = _cut_burst(joined, len(messages))
                    if cut is not None:
                        return cut, None
            except zlib.error:
                pass
            self._inflate = snapshot
        inflate = self.inflate
        for data, binary in messages:
            try:
                text = inflate(data, binary)
            except DecodeError as exc:
                out.append(exc)
                continue
            except CompressionError as exc:
                return out, exc
            if text is not None:
                out.append(text)
        return out, None

    @staticmethod
    def parse(raw: Union[bytes, bytearray, str]) -> Dict[str, Any]:
        """The second half of :meth:`feed`: JSON text to a payload dict (DecodeError if it is not one)."""
        fn = loads
        try:
            payload = _loads_json(raw) if fn is _JSON_LOADS else fn(raw)
        except _JSON_ERRORS as exc:
            raise DecodeError(f"invalid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise DecodeError(f"payload is a JSON {type(payload).__name__}, not an object")
        return payload


# The head of a dispatch, up to its "d": as Discord sends it ({"t":"NAME","s":SEQ,"op":0,"d":...})
# and as its documentation writes it ({"op":0,"t":"NAME","s":SEQ,"d":...}). Inside a JSON string a
# quote is always escaped, so these bytes at the start of a message are the payload's own keys.
_NAME = rb'"([A-Z0-9_]{1,100})"'
_SEQ = rb"(0|[1-9][0-9]{0,17})"  # as json writes an int: int() and %d give the same bytes back
_HEAD_T_FIRST = re.compile(rb'\{"t":' + _NAME + rb',"s":' + _SEQ + rb',"op":0,"d":').match
_HEAD_OP_FIRST = re.compile(rb'\{"op":0,"t":' + _NAME + rb',"s":' + _SEQ + rb',"d":').match
#: Where one dispatch of a burst ends and the next begins, with the next one's head (_cut_burst).
_HEAD_SEAM = re.compile(rb'\}\{"t":' + _NAME + rb',"s":' + _SEQ + rb',"op":0,"d":')
_EVENT_NAMES: Dict[bytes, str] = {}  # one str per event name, not one per event

#: A dispatch cut at its head: (the JSON text of its "d", its name, its seq). The text of the whole
#: payload is ``{"t":NAME,"s":SEQ,"op":0,"d":`` + that + ``}`` (:func:`dispatch_text`).
Cut = Tuple[Union[bytes, bytearray], str, int]


def _event_name(name_bytes: bytes) -> str:
    name = _EVENT_NAMES.get(name_bytes)
    if name is None:
        name = name_bytes.decode("ascii")
        if len(_EVENT_NAMES) < 1000:  # Discord has about a hundred; a hostile peer gets no more room
            _EVENT_NAMES[bytes(name_bytes)] = name
    return name


def dispatch_head(raw: Any) -> Optional[Tuple[str, int, int]]:
    """(event name, seq, where the value of "d" starts) of a dispatch's JSON text whose keys come
    in one of the two usual orders with "d" last; None for anything else (other payloads, other
    orders, text that is not bytes), which is then parsed whole. Reads the head only."""
    if raw.__class__ is not bytes and raw.__class__ is not bytearray:
        return None
    m = _HEAD_T_FIRST(raw) or _HEAD_OP_FIRST(raw)
    if m is None:
        return None
    name_bytes, seq = m.groups()
    return _event_name(name_bytes), int(seq), m.end()


def cut_dispatch(raw: Any) -> Optional[Cut]:
    """The :data:`Cut` of a dispatch's JSON text (:func:`dispatch_head`, ending in the brace that
    closes the payload); None for anything else, which is then parsed whole."""
    head = dispatch_head(raw)
    if head is None or raw[-1:] != b"}":
        return None
    name, seq, start = head
    return raw[start:-1], name, seq


def _cut_burst(joined: bytes, count: int) -> Optional[List[Any]]:
    """*joined*, the texts of *count* payloads one after the other, cut into them: into their
    :data:`Cut` s in one pass when every one is a dispatch as Discord writes it, else into their
    texts (:func:`_split_objects`); None unless the cut is unambiguous (then the caller inflates
    message by message).

    Every seam of a burst of Discord's dispatches reads ``}{"t":"NAME","s":SEQ,"op":0,"d":``, and
    (see _split_objects) outside a string valid JSON never holds ``}{``, while inside one the
    quote after it would end the string: when the text holds exactly count - 1 such seams and
    starts with such a head, each seam is where a payload ends, and one ``re.split`` yields every
    name, seq and "d" text at once (no per-message head to read on the supervisor)."""
    parts = _HEAD_SEAM.split(joined)
    if count > 1 and len(parts) == 3 * count - 2 and joined[-1:] == b"}":
        m = _HEAD_T_FIRST(parts[0])
        if m is not None:
            first, rest = parts[0], parts[1:]
            rest[-1] = rest[-1][:-1]  # the last payload's closing brace (the others' went with their seams)
            names_bytes = rest[0::3]
            names = list(map(_EVENT_NAMES.get, names_bytes))
            if None in names:
                names = [_event_name(b) for b in names_bytes]
            name0, seq0 = m.groups()
            cuts: List[Any] = [(first[m.end() :], _event_name(name0), int(seq0))]
            cuts += zip(rest[2::3], names, map(int, rest[1::3]))
            return cuts
    return _split_objects(joined, count)


def dispatch_text(d: Union[bytes, bytearray], name: str, seq: int) -> bytes:
    """The JSON text of the payload a :data:`Cut` was cut from (with its keys in Discord's order)."""
    return b'{"t":"%s","s":%d,"op":0,"d":%s}' % (name.encode("ascii"), seq, d)


def dispatch_data(d: Union[bytes, bytearray], name: str, seq: int) -> Any:
    """The value of "d" of the dispatch cut as ``(d, name, seq)`` (:data:`Cut`); DecodeError if
    the payload is not valid JSON or its keys say otherwise than its head (a key given twice).
    Parses *d* alone, and the whole payload when *d* is not one JSON value (a key after "d")."""
    fn = loads
    try:
        if fn is _ORJSON_LOADS:
            return fn(d)
        if fn is _JSON_LOADS:
            text = str(d, "utf-8")
            obj, end = _scan_json(text, 0)
            if end == len(text):
                return obj
        else:
            return fn(d)
    except (StopIteration, UnicodeDecodeError, ValueError, RecursionError):  # orjson's errors are ValueErrors
        pass
    payload = Decoder.parse(dispatch_text(d, name, seq))
    if payload.get("op") != 0 or payload.get("t") != name or payload.get("s") != seq:
        raise DecodeError(f"dispatch {name} (seq {seq}): its keys disagree with its head (a key given twice?)")
    return payload.get("d")
