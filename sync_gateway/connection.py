"""One gateway socket and its reader thread (DESIGN.md: "A Connection is disposable").

The reader thread connects (TCP, TLS, websocket handshake), then reads, inflates and decodes
frames and *posts* them to the supervisor stamped with the socket's epoch. It never touches
lifecycle state and never runs user code. Its very last post is ``closed``, sent after the OS
socket is closed, so the supervisor knows that the socket can no longer carry anything.

We create and connect the OS socket ourselves and hand it to websocket-client (``socket=``), so
that :meth:`Connection.abort` can ``shutdown()`` and ``close()`` it at any moment — even during the
TLS or websocket handshake, which websocket-client itself offers no way to interrupt.
"""
import socket
import ssl
import struct
import threading
import time
from typing import Any, Callable, Optional, Tuple
from urllib.parse import urlsplit

import websocket

from ._log import get_logger
from ._version import __version__
from .codec import CompressionError, DecodeError, Decoder
from .protocol import SEND_LIMIT, SEND_PERIOD
from .ratelimit import SendWindow

log = get_logger(__name__)

#: What the reader posts: ("opened", epoch) | ("frame", epoch, payload) | ("bad_frame", epoch, text)
#: | ("closed", epoch, code, reason, error)
Post = Callable[[Tuple[Any, ...]], None]

_OP_TEXT = websocket.ABNF.OPCODE_TEXT
_OP_BINARY = websocket.ABNF.OPCODE_BINARY
_OP_CONT = websocket.ABNF.OPCODE_CONT
_OP_CLOSE = websocket.ABNF.OPCODE_CLOSE
_OP_PING = websocket.ABNF.OPCODE_PING
_OP_PONG = websocket.ABNF.OPCODE_PONG

#: Seconds added to Discord's 60 s send window, for clock and path jitter.
SEND_WINDOW_MARGIN = 1.0

#: How long the supervisor waits for a send in progress on another thread before giving up on a frame.
SUPERVISOR_SEND_LOCK_TIMEOUT = 0.5

#: Bytes asked of the OS per read; many small frames arrive in one read.
READ_AHEAD_BYTES = 256 * 1024
#: At most this many payloads are handed to the supervisor in one batch.
MAX_BATCH = 256

#: A single websocket message larger than this is refused (the socket is dropped).
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


class Connection:
    """A single websocket to the gateway, identified by its epoch."""

    def __init__(
        self,
        epoch: int,
        url: str,
        post: Post,
        *,
        shard_id: int = 0,
        compress: Optional[str] = None,
        connect_timeout: float = 20.0,
        ssl_context: Optional[ssl.SSLContext] = None,
    ) -> None:
        self.epoch = epoch
        self.url = url
        self.shard_id = shard_id
        self._post = post
        self._decoder = Decoder(compress)
        self._connect_timeout = connect_timeout
        self._ahead: Optional[_ReadAhead] = None
        self._read_timeout = connect_timeout + 10.0
        self._last_rx = 0.0
        self._ssl_context = ssl_context
        self._sock: Optional[socket.socket] = None
        self._ws: Optional[websocket.WebSocket] = None
        self._lock = threading.Lock()  # guards _sock/_aborted between the reader and abort()
        self._send_lock = threading.Lock()
        self._aborted = False
        self._close_sent: Optional[int] = None
        # Discord counts frames as it receives them; a second of margin absorbs the jitter of the
        # path between our clock and theirs (a frame freed at exactly 60 s could land at 59.99).
        self.window = SendWindow(limit=SEND_LIMIT, per=SEND_PERIOD + SEND_WINDOW_MARGIN)
        self.opened = threading.Event()
        self.ended = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"sync_gateway-reader-s{shard_id}-e{epoch}", daemon=True)

    def __repr__(self) -> str:
        host = urlsplit(self.url).hostname
        return f"<Connection e{self.epoch} {host} {'ended' if self.ended.is_set() else 'open' if self.opened.is_set() else 'connecting'}>"

    def start(self) -> None:
        self.thread.start()

    # ------------------------------------------------------------------ supervisor side

    def send_text(self, text: str, lock_timeout: Optional[float] = None) -> None:
        """Send one text frame. Raises OSError/WebSocketException if the socket is gone.

        The supervisor passes *lock_timeout*: a user thread stuck in a send on a stalled socket
        must never hold up heartbeats or a teardown (the frame is then dropped, ConnectionError).
        """
        ws = self._ws
        if ws is None or not self.opened.is_set():
            raise ConnectionError(f"socket e{self.epoch} is not open")
        if not self._send_lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout):
            raise ConnectionError(f"socket e{self.epoch} is busy sending")
        try:
            ws.send(text)
        finally:
            self._send_lock.release()

    def send_close(self, code: int, reason: str = "") -> None:
        """Send a close frame (best effort; never blocks on the peer's answer or a stalled send)."""
        ws = self._ws
        if ws is None or self._close_sent is not None:
            return
        self._close_sent = code
        if not self._send_lock.acquire(timeout=SUPERVISOR_SEND_LOCK_TIMEOUT):
            log.debug("e%d: close frame not sent: a send is stalled", self.epoch)
            return
        try:
            ws.send(struct.pack("!H", code) + reason.encode("utf-8")[:120], _OP_CLOSE)
        except (OSError, websocket.WebSocketException) as exc:
            log.debug("e%d: close frame not sent: %s", self.epoch, exc)
        finally:
            self._send_lock.release()

    def set_read_timeout(self, seconds: float) -> None:
        """A dead peer is declared after *seconds* without a byte from it.

        The reader may already be blocked in a read that took the old value; it re-checks the
        time since the last frame against this one before it gives up (see ``_read_loop``).
        """
        self._read_timeout = seconds
        sock = self._sock
        if sock is not None:
            try:
                sock.settimeout(seconds)
            except OSError:
                pass

    def abort(self) -> None:
        """Hard close: shut down and close the OS socket; the reader's next read fails."""
        with self._lock:
            self._aborted = True
            sock = self._sock
        if sock is None:
            return
        _hard_close(sock)

    # ------------------------------------------------------------------ reader thread

    def _run(self) -> None:
        code: Optional[int] = None
        reason = ""
        error: Optional[str] = None
        try:
            self._connect()
            self.opened.set()
            self._post(("opened", self.epoch))
            code, reason = self._read_loop()
        except _Aborted:
            error = "closed by us"
        except CompressionError as exc:
            error = f"protocol error: {exc}"
            log.warning("shard %d: e%d: %s; dropping the socket", self.shard_id, self.epoch, exc)
        except (OSError, websocket.WebSocketException, ssl.SSLError, ValueError) as exc:
            if self._aborted:
                error = "closed by us"
            else:
                error = _describe_error(exc, self.opened.is_set())
                log.debug("shard %d: e%d reader ended: %s", self.shard_id, self.epoch, error)
        except Exception as exc:  # a bug of ours: report it, still post "closed"
            error = f"reader error: {exc!r}"
            log.exception("shard %d: e%d reader failed", self.shard_id, self.epoch)
        finally:
            self._close_os_socket()
            self.ended.set()
            self._post(("closed", self.epoch, code, reason, error))

    def _connect(self) -> None:
        parts = urlsplit(self.url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        last: Optional[BaseException] = None
        for family, socktype, proto, _name, addr in infos:
            sock = socket.socket(family, socktype, proto)
            with self._lock:
                if self._aborted:
                    sock.close()
                    raise _Aborted()
                self._sock = sock
            try:
                sock.settimeout(self._connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.connect(addr)
                break
            except OSError as exc:
                last = exc
                sock.close()
                with self._lock:
                    self._sock = None
                    if self._aborted:
                        raise _Aborted() from None
        else:
            raise last or OSError(f"no address for {host}")
        if secure:
            context = self._ssl_context or ssl.create_default_context()
            tls = context.wrap_socket(self._sock, server_hostname=host)  # certificate and host verified
            with self._lock:
                self._sock = tls
                if self._aborted:
                    raise _Aborted()
        self._ahead = _ReadAhead(self._sock)
        ws = websocket.WebSocket(skip_utf8_validation=True)
        ws.connect(
            self.url,
            socket=self._ahead,
            timeout=self._connect_timeout,
            suppress_origin=True,
            header=[f"User-Agent: sync_gateway/{__version__}"],
        )
        self._ws = ws
        if self._aborted:
            raise _Aborted()

    def _read_loop(self) -> Tuple[Optional[int], str]:
        """Read frames until the peer's close frame (returned) or an error (raised).

        websocket-client did the handshake and does every send; reading is ours: server frames
        are unmasked and simple, and parsing them from one large read is several times cheaper
        than websocket-client's frame reader (three ``recv`` calls and many Python layers per
        frame) — the reader thread is the hot path of the whole client. Payloads whose
        successor has already arrived are handed over in one batch, so under load the supervisor
        wakes once per burst, not once per event.
        """
        ahead = self._ahead
        assert ahead is not None
        reader = _FrameReader(self, ahead.take_buffer())
        post = self._post
        epoch = self.epoch
        batch: list = []
        try:
            return self._read_frames(reader, post, epoch, batch)
        finally:
            if batch:
                post(("frames", epoch, batch))

    def _read_frames(self, reader: "_FrameReader", post: Post, epoch: int, batch: list) -> Tuple[Optional[int], str]:
        decoder = self._decoder
        next_frame = reader.next_frame
        fragments: list = []
        fragment_op = 0
        size = 0
        while True:
            fin, opcode, data = next_frame()
            if opcode == _OP_TEXT or opcode == _OP_BINARY:
                if fragments:
                    raise websocket.WebSocketProtocolException("new message inside a fragmented one")
                if not fin:
                    fragments, fragment_op, size = [data], opcode, len(data)
                    continue
            elif opcode == _OP_CONT:
                if not fragments:
                    raise websocket.WebSocketProtocolException("continuation frame without a start")
                fragments.append(data)
                size += len(data)
                if size > MAX_MESSAGE_BYTES:
                    raise websocket.WebSocketProtocolException(f"message over {MAX_MESSAGE_BYTES} bytes")
                if not fin:
                    continue
                data, opcode, fragments = b"".join(fragments), fragment_op, []
            elif opcode == _OP_CLOSE:
                return self._on_close_frame(data)
            elif opcode == _OP_PING:
                ws = self._ws
                assert ws is not None
                with self._send_lock:
                    ws.pong(data)
                continue
            elif opcode == _OP_PONG:
                continue
            else:
                raise websocket.WebSocketProtocolException(f"unknown websocket opcode {opcode}")
            try:
                payload = decoder.feed(data, opcode == _OP_BINARY)
            except DecodeError as exc:
                if batch:
                    post(("frames", epoch, batch[:]))
                    batch.clear()
                post(("bad_frame", epoch, str(exc)))
                continue
            if payload is None:
                continue
            if reader.pending() and len(batch) < MAX_BATCH:
                batch.append(payload)
            elif batch:
                batch.append(payload)
                post(("frames", epoch, batch[:]))
                batch.clear()
            else:
                post(("frame", epoch, payload))

    def _on_close_frame(self, data: bytes) -> Tuple[Optional[int], str]:
        code: Optional[int] = None
        reason = ""
        if len(data) >= 2:
            code = struct.unpack("!H", data[:2])[0]
            reason = data[2:].decode("utf-8", "replace")
        if self._close_sent is None:
            # Answer the peer's close. Never with 1000: that would drop a session we may resume.
            self.send_close(4000)
        return code, reason

    def _close_os_socket(self) -> None:
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is None:
            return
        _hard_close(sock)


def _hard_close(sock: socket.socket) -> None:
    """``shutdown(SHUT_RDWR)`` wakes a thread blocked reading it; ``close()`` frees the descriptor."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Aborted(Exception):
    pass


class _ReadAhead:
    """The OS socket as websocket-client sees it during the handshake: its one-byte reads of the
    HTTP response are served from one large ``recv``; what arrives after the response (HELLO,
    often) is handed to the frame reader by :meth:`take_buffer`."""

    __slots__ = ("sock", "_buf", "_pos")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos < len(buf):
            end = pos + n
            if end >= len(buf):
                self._buf, self._pos = b"", 0
                return buf[pos:] if pos else buf
            self._pos = end
            return buf[pos:end]
        data = self.sock.recv(max(n, 4096))
        if len(data) > n:
            self._buf, self._pos = data, n
            return data[:n]
        return data

    def take_buffer(self) -> bytes:
        rest = self._buf[self._pos :]
        self._buf, self._pos = b"", 0
        return rest

    def gettimeout(self) -> Optional[float]:
        return self.sock.gettimeout()

    @property
    def _closed(self) -> bool:  # websocket-client's shutdown() looks at it
        return bool(getattr(self.sock, "_closed", False))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


class _FrameReader:
    """RFC 6455 frames from the server, parsed out of large reads (no copy of what is not a payload).

    Refuses masked server frames, reserved bits (no extension was negotiated), control frames
    over 125 bytes or fragmented, and any frame over ``MAX_MESSAGE_BYTES`` before reading it.
    A read timeout only counts when nothing at all arrived for the connection's current read
    timeout (the supervisor may have raised it while a shorter read was in progress).
    """

    __slots__ = ("conn", "sock", "buf", "pos")

    def __init__(self, conn: "Connection", initial: bytes) -> None:
        self.conn = conn
        sock = conn._sock
        assert sock is not None
        self.sock = sock
        self.buf = bytearray(initial)
        self.pos = 0
        conn._last_rx = time.monotonic()
        sock.settimeout(conn._read_timeout)

    def pending(self) -> bool:
        return len(self.buf) > self.pos

    def _fill(self, need: int) -> None:
        buf = self.buf
        while len(buf) - self.pos < need:
            if self.pos:
                del buf[: self.pos]
                self.pos = 0
            try:
                data = self.sock.recv(max(READ_AHEAD_BYTES, need - len(buf)))
            except socket.timeout:
                conn = self.conn
                idle = time.monotonic() - conn._last_rx
                if idle < conn._read_timeout:
                    self.sock.settimeout(conn._read_timeout - idle)
                    continue
                raise websocket.WebSocketTimeoutException("read timeout") from None
            if not data:
                raise websocket.WebSocketConnectionClosedException("connection closed by the peer")
            self.conn._last_rx = time.monotonic()
            buf += data

    def next_frame(self) -> Tuple[bool, int, bytes]:
        buf = self.buf
        if len(buf) - self.pos < 2:
            self._fill(2)
        pos = self.pos
        b1 = buf[pos]
        b2 = buf[pos + 1]
        if b1 & 0x70:
            raise websocket.WebSocketProtocolException("reserved bits set in a frame (no extension was negotiated)")
        if b2 & 0x80:
            raise websocket.WebSocketProtocolException("the server sent a masked frame")
        opcode = b1 & 0x0F
        length = b2 & 0x7F
        head = 2
        if length == 126:
            if len(buf) - pos < 4:
                self._fill(4)
                pos = self.pos
            length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            head = 4
        elif length == 127:
            if len(buf) - pos < 10:
                self._fill(10)
                pos = self.pos
            length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            head = 10
        if opcode >= 8 and (length > 125 or not b1 & 0x80):
            raise websocket.WebSocketProtocolException("invalid control frame")
        if length > MAX_MESSAGE_BYTES:
            raise websocket.WebSocketProtocolException(f"message over {MAX_MESSAGE_BYTES} bytes")
        end = head + length
        if len(buf) - pos < end:
            self._fill(end)
            pos = self.pos
        data = bytes(buf[pos + head : pos + end])
        self.pos = pos + end
        return bool(b1 & 0x80), opcode, data


def _describe_error(exc: BaseException, opened: bool) -> str:
    if isinstance(exc, websocket.WebSocketTimeoutException) or isinstance(exc, socket.timeout):
        return "read timeout" if opened else "connect timeout"
    if isinstance(exc, websocket.WebSocketConnectionClosedException):
        return "connection lost"
    if isinstance(exc, websocket.WebSocketBadStatusException):
        return f"handshake refused: HTTP {getattr(exc, 'status_code', '?')}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc}"
    return f"{type(exc).__name__}: {exc}" if opened else f"connect failed: {type(exc).__name__}: {exc}"
