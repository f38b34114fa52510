"""One gateway socket and its reader thread (DESIGN.md: "A Connection is disposable").

The reader thread connects (TCP, TLS, websocket handshake), then reads and inflates frames and
*posts* their JSON texts to the supervisor stamped with the socket's epoch (the supervisor reads
each event's head, the dispatcher parses it). It never touches lifecycle state and never runs
user code. Its very last post is ``closed``, sent after the OS socket is closed, so the
supervisor knows that the socket can no longer carry anything.

The connection owns its one socket at every stage: TCP connect, proxy CONNECT, TLS handshake,
websocket upgrade and frames are all done here on the same object, published in ``self._sock``
before each stage starts, so :meth:`Connection.abort` can ``shutdown()`` and ``close()`` it at any
moment (invariant 1). websocket-client lends its frame masking only; it never holds our socket.

Over ``wss://`` the reader and the senders (supervisor, user threads) share one OpenSSL object, which
must never be used by two threads at once: a concurrent SSL_read and SSL_write clobber each other's
error state, and the reader then sees a spurious EOF ('connection lost') or EAGAIN
(``BlockingIOError``), or the record layer breaks. So once the socket is open, TLS I/O is
non-blocking and every call into OpenSSL is made under ``Connection._tls_lock``, which is never held
while waiting: a thread waits for the socket outside the lock (see ``_tls_recv`` and ``_tls_send``).
"""
import base64
import hashlib
import os
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

import websocket

from ._log import get_logger
from ._version import __version__
from .codec import CompressionError, Decoder
from .errors import ConfigError
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
#: At most this many payloads are handed to the supervisor in one batch. Measured (tools/bench.py,
#: 2 cores), now that a batch is texts (the dispatcher parses): 256 beat 64 by ~10 % with one
#: shard and ~20 % with 4, and 512 beat 256 by ~2 % with either (10 alternating rounds; an
#: earlier "4 shards collapse at 512" was the benchmark's own handler lock, see tools/bench.py).
#: The readers' pacing (Dispatcher.pace) keeps them from running far ahead of the handlers.
MAX_BATCH = 512

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
        proxy: Optional["Proxy"] = None,
        pace: Optional[Callable[[], None]] = None,
    ) -> None:
        self.epoch = epoch
        #: Called after each batch handed over: waits briefly while the handlers are far behind
        #: (:meth:`sync_gateway.dispatch.Dispatcher.pace`).
        self._pace = pace
        self.url = url
        self.shard_id = shard_id
        self._post = post
        self._decoder = Decoder(compress)
        self._connect_timeout = connect_timeout
        self._initial = b""  # bytes that arrived after the upgrade response (HELLO, often)
        self._read_timeout = connect_timeout + 10.0
        self._last_rx = 0.0
        self._ssl_context = ssl_context
        self._proxy = proxy
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()  # guards _sock/_aborted between the reader and abort()
        self._send_lock = threading.Lock()
        #: Over TLS, once open: held around every call into the SSL object (never while waiting)
        self._tls_lock: Optional[threading.Lock] = None
        self._aborted = False
        self._close_sent: Optional[int] = None
        self.error_hint: Optional[str] = None
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
        if not self.opened.is_set():
            raise ConnectionError(f"socket e{self.epoch} is not open")
        if not self._send_lock.acquire(timeout=-1 if lock_timeout is None else lock_timeout):
            raise ConnectionError(f"socket e{self.epoch} is busy sending")
        try:
            self._send_frame(_OP_TEXT, text.encode("utf-8"))
        finally:
            self._send_lock.release()

    def send_close(self, code: int, reason: str = "") -> None:
        """Send a close frame (best effort; never blocks on the peer's answer or a stalled send)."""
        if not self.opened.is_set() or self._close_sent is not None:
            return
        self._close_sent = code
        if not self._send_lock.acquire(timeout=SUPERVISOR_SEND_LOCK_TIMEOUT):
            log.debug("e%d: close frame not sent: a send is stalled", self.epoch)
            return
        try:
            self._send_frame(_OP_CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:120])
        except OSError as exc:
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
        if sock is not None and self._tls_lock is None:  # a TLS reader waits by itself (_tls_recv)
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
            self.error_hint = getattr(exc, "hint", None)  # the supervisor reports repeats with it
        except (OSError, websocket.WebSocketException, ssl.SSLError, ValueError, HandshakeError) as exc:
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
        """TCP connect (through the proxy, if any), TLS, then the websocket upgrade, on one socket.

        ``self._sock`` always holds the object whose ``shutdown()`` reaches the file descriptor in
        use, from before the TCP connect to the end: :meth:`abort` interrupts every stage.
        """
        parts = urlsplit(self.url)
        secure = parts.scheme == "wss"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        proxy = self._proxy
        sock = self._tcp_connect(proxy.host, proxy.port) if proxy else self._tcp_connect(host, port)
        if proxy is not None:
            proxy.tunnel(sock, host, port, self._connect_timeout)
        if secure:
            context = self._ssl_context or ssl.create_default_context()
            # The handshake is done by hand, after the TLS socket is published: wrap_socket()
            # detaches the TCP socket, and a handshake inside it could not be aborted.
            tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
            with self._lock:
                self._sock = tls
                if self._aborted:
                    raise _Aborted()
            tls.do_handshake()  # certificate and host name verified by the context
            sock = tls
        self._initial = _upgrade(sock, parts, host, port, secure)
        if self._aborted:
            raise _Aborted()
        if secure:
            # From here on the reader and the senders share the SSL object: non-blocking calls, one
            # thread at a time (see the module docstring). Nothing else runs on it yet.
            sock.setblocking(False)
            self._tls_lock = threading.Lock()

    def _tcp_connect(self, host: str, port: int) -> socket.socket:
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
                return sock
            except OSError as exc:
                last = exc
                sock.close()
                with self._lock:
                    self._sock = None
                    if self._aborted:
                        raise _Aborted() from None
        raise last or OSError(f"no address for {host}")

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise ConnectionError(f"socket e{self.epoch} is closed")
        if self._tls_lock is None:
            sock.sendall(encode_frame(opcode, payload))
        else:
            self._tls_send(sock, encode_frame(opcode, payload))

    def _tls_send(self, sock: socket.socket, data: bytes) -> None:
        """``sendall`` over TLS: each SSL_write under the TLS lock, the wait for room outside it.
        Gives up like a blocking send would, after the read timeout without progress."""
        lock = self._tls_lock
        assert lock is not None
        view = memoryview(data)
        deadline = time.monotonic() + self._read_timeout
        while view:
            want_write = True
            with lock:
                try:
                    n = sock.send(view)  # an SSL_write is retried with the same bytes, as OpenSSL wants
                except ssl.SSLWantWriteError:
                    n = 0
                except ssl.SSLWantReadError:
                    n, want_write = 0, False
            if n:
                view = view[n:]
                deadline = time.monotonic() + self._read_timeout
                continue
            if not _wait_io(sock, want_write, deadline - time.monotonic()):
                raise socket.timeout("the write operation timed out")

    def _tls_recv(self, n: int) -> bytes:
        """``recv`` over TLS: SSL_read under the TLS lock, the wait for bytes outside it. Raises
        ``socket.timeout`` when the read timeout has passed since the last byte arrived."""
        sock = self._sock
        lock = self._tls_lock
        if sock is None or lock is None:
            raise ConnectionError(f"socket e{self.epoch} is closed")
        while True:
            with lock:
                try:
                    return sock.recv(n)
                except ssl.SSLWantReadError:
                    want_write = False
                except ssl.SSLWantWriteError:
                    want_write = True
            remaining = self._read_timeout - (time.monotonic() - self._last_rx)
            if not _wait_io(sock, want_write, remaining):
                raise socket.timeout("the read operation timed out")

    def _read_loop(self) -> Tuple[Optional[int], str]:
        """Read frames until the peer's close frame (returned) or an error (raised).

        Reading is ours, not websocket-client's: server frames are unmasked and simple, and
        parsing them out of one large read is several times cheaper than a frame reader that
        does three ``recv`` calls per frame; the reader thread is the hot path of the whole
        client. Payloads that are complete in the buffer together are handed over in one batch,
        so under load the supervisor wakes once per burst, not once per event; but a complete
        frame is never held back waiting for bytes that have not arrived (invariant 10).
        """
        reader = _FrameReader(self, self._initial)
        self._initial = b""
        decoder = self._decoder
        inflate_many = decoder.inflate_many
        pace = self._pace
        post = self._post
        epoch = self.epoch
        next_frame = reader.next_frame
        take_messages = reader.take_messages
        complete = reader.complete
        raws: List[Tuple[Any, bool]] = []  # whole messages (body, binary), not yet inflated and handed over
        fragments: List[Any] = []
        fragment_op = 0
        size = 0

        def flush() -> None:
            """Inflate the pending messages and hand them over in one batch, unparsed: the
            supervisor reads each event's head and the dispatcher parses it (DESIGN.md, "Where
            an event is parsed"); a message that cannot be a payload goes as its DecodeError, in
            its place."""
            texts, error = inflate_many(raws)
            raws.clear()
            if texts:
                post(("raws", epoch, texts))
                if pace is not None:
                    pace()
            if error is not None:
                raise error

        try:
            while True:
                if not fragments:
                    # Every whole unfragmented message already in the buffer, at once (no read).
                    take_messages(raws, MAX_BATCH)
                if raws and (len(raws) >= MAX_BATCH or not complete()):
                    # A full batch, or nothing more is complete yet: hand over before waiting.
                    flush()
                    continue
                # Anything else, one frame: a control frame, a fragment, or (reading) the next one.
                fin, opcode, data = next_frame()
                if fin and not fragments and (opcode == _OP_BINARY or opcode == _OP_TEXT):
                    pass  # one frame, one message (a frame that arrived in pieces)
                elif opcode == _OP_TEXT or opcode == _OP_BINARY:
                    if fragments:
                        raise websocket.WebSocketProtocolException("new message inside a fragmented one")
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
                    if raws:
                        flush()
                    return self._on_close_frame(bytes(data))
                elif opcode == _OP_PING:
                    with self._send_lock:
                        self._send_frame(_OP_PONG, bytes(data))
                    continue
                elif opcode == _OP_PONG:
                    continue
                else:
                    raise websocket.WebSocketProtocolException(f"unknown websocket opcode {opcode}")
                raws.append((data, opcode == _OP_BINARY))
        finally:
            if raws:
                flush()

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
    """``shutdown(SHUT_RDWR)`` wakes a thread blocked reading it; ``close()`` frees the descriptor.

    The TCP shutdown is socket.socket's own, also for an SSLSocket: SSLSocket.shutdown() first drops
    its SSL object, and a send racing with it would then go out as plain ``socket.send``, unencrypted.
    """
    try:
        if isinstance(sock, ssl.SSLSocket):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


def _wait_io(sock: socket.socket, write: bool, timeout: float) -> bool:
    """Wait until *sock* is readable (or writable); False when *timeout* seconds pass first.
    poll() where there is one: select() cannot watch a descriptor over FD_SETSIZE."""
    if timeout <= 0:
        return False
    fd = sock.fileno()
    if fd < 0:
        raise OSError(9, "the socket is closed")  # EBADF: abort() closed it
    if _HAS_POLL:
        poller = select.poll()
        poller.register(fd, (select.POLLOUT if write else select.POLLIN) | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(max(1, int(timeout * 1000 + 0.999))))
    r, w, x = select.select([] if write else [fd], [fd] if write else [], [fd], timeout)
    return bool(r or w or x)


_HAS_POLL = hasattr(select, "poll")


class _Aborted(Exception):
    pass


class _FrameReader:
    """RFC 6455 frames from the server, parsed out of large reads (no copy of what is not a payload).

    Refuses masked server frames, reserved bits (no extension was negotiated), control frames
    over 125 bytes or fragmented, and any frame over ``MAX_MESSAGE_BYTES`` before reading it.
    A read timeout only counts when nothing at all arrived for the connection's current read
    timeout (the supervisor may have raised it while a shorter read was in progress).
    """

    __slots__ = ("conn", "sock", "recv", "buf", "pos")

    def __init__(self, conn: "Connection", initial: bytes) -> None:
        self.conn = conn
        sock = conn._sock
        assert sock is not None
        self.sock = sock
        self.buf = bytearray(initial)
        self.pos = 0
        conn._last_rx = time.monotonic()
        # over TLS: non-blocking SSL_read under the TLS lock, waiting outside it (Connection._tls_recv)
        self.recv: Callable[[int], bytes] = sock.recv if conn._tls_lock is None else conn._tls_recv
        if conn._tls_lock is None:
            sock.settimeout(conn._read_timeout)

    def complete(self) -> bool:
        """True when a whole frame is already in the buffer (next_frame() will not read)."""
        buf, pos = self.buf, self.pos
        avail = len(buf) - pos
        if avail < 2:
            return False
        length = buf[pos + 1] & 0x7F
        if length < 126:
            return avail >= 2 + length
        if length == 126:
            return avail >= 4 and avail >= 4 + int.from_bytes(buf[pos + 2 : pos + 4], "big")
        return avail >= 10 and avail >= 10 + int.from_bytes(buf[pos + 2 : pos + 10], "big")

    def take_messages(self, out: List[Tuple[Any, bool]], limit: int) -> None:
        """Append ``(payload, binary)`` for each whole, unfragmented text or binary frame at the
        head of the buffer, without reading, until *out* holds *limit* messages. Stops at anything
        else (a frame not yet whole, a control frame, a fragment, any bit that is not plain), which
        :meth:`next_frame` then takes, with its checks and errors. One call per burst: the first
        header byte of a plain message is 0x81 or 0x82 (FIN, no reserved bits, text or binary) and
        the second is below 0x80 (not masked), so one comparison each classifies it."""
        buf = self.buf
        pos = self.pos
        end_buf = len(buf)
        append = out.append
        n = len(out)
        while n < limit and end_buf - pos >= 2:
            b1 = buf[pos]
            if b1 != 0x82 and b1 != 0x81:
                break
            length = buf[pos + 1]
            head = 2
            if length >= 126:
                if length == 126:
                    if end_buf - pos < 4:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                    head = 4
                elif length == 127:
                    if end_buf - pos < 10:
                        break
                    length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                    head = 10
                    if length > MAX_MESSAGE_BYTES:
                        break
                else:
                    break  # masked
            end = pos + head + length
            if end > end_buf:
                break
            append((buf[pos + head : end], b1 == 0x82))
            n += 1
            pos = end
        self.pos = pos

    def _fill(self, need: int) -> None:
        buf = self.buf
        while len(buf) - self.pos < need:
            if self.pos:
                del buf[: self.pos]
                self.pos = 0
            try:
                data = self.recv(max(READ_AHEAD_BYTES, need - len(buf)))
            except socket.timeout:
                conn = self.conn
                idle = time.monotonic() - conn._last_rx
                if idle < conn._read_timeout:
                    if conn._tls_lock is None:
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


class HandshakeError(Exception):
    """The websocket upgrade was refused or answered with something that is not a websocket."""


class ProxyError(Exception):
    """The HTTP proxy refused the CONNECT tunnel (its message names the proxy, never credentials)."""


#: An HTTP response head larger than this is refused (a broken or hostile peer).
MAX_HEAD_BYTES = 64 * 1024
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 5.2); websocket-client's XOR does the masking."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + websocket.ABNF.mask(mask, payload)


def _read_head(sock: socket.socket, what: str) -> Tuple[int, Dict[str, str], bytes]:
    """Read an HTTP/1.1 response head: (status, lower-cased headers, bytes that came after it)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD_BYTES:
            raise HandshakeError(f"{what}: response head over {MAX_HEAD_BYTES} bytes")
        data = sock.recv(4096)
        if not data:
            raise websocket.WebSocketConnectionClosedException(f"{what}: connection closed during the handshake")
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("iso-8859-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise HandshakeError(f"{what}: not an HTTP response: {lines[0][:80]!r}")
    headers: Dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, rest


def _host_header(host: str, port: int, default: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default else f"{shown}:{port}"


def _upgrade(sock: socket.socket, parts: Any, host: str, port: int, secure: bool) -> bytes:
    """The websocket opening handshake (RFC 6455 4.1) on our own socket; returns what followed it."""
    key = base64.b64encode(os.urandom(16)).decode("ascii")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\n"
        f"Host: {_host_header(host, port, 443 if secure else 80)}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"User-Agent: sync_gateway/{__version__}\r\n\r\n"
    )
    sock.sendall(request.encode("ascii"))
    status, headers, rest = _read_head(sock, "websocket upgrade")
    if status != 101:
        raise HandshakeError(f"handshake refused: HTTP {status}")
    accept = base64.b64encode(hashlib.sha1(key.encode("ascii") + _WS_GUID).digest()).decode("ascii")
    if headers.get("upgrade", "").lower() != "websocket" or "upgrade" not in headers.get("connection", "").lower():
        raise HandshakeError("handshake refused: the server did not switch to websocket")
    if headers.get("sec-websocket-accept") != accept:
        raise HandshakeError("handshake refused: wrong Sec-WebSocket-Accept")
    if headers.get("sec-websocket-extensions"):
        raise HandshakeError("handshake refused: the server chose an extension we did not offer")
    return rest


class Proxy:
    """An HTTP proxy for the gateway socket: ``CONNECT host:port`` on our own socket, so
    :meth:`Connection.abort` reaches the tunnel at every stage, the proxy handshake included.

    Credentials come from the URL (``http://user:pass@host:port``) and are sent as Basic
    ``Proxy-Authorization``; :attr:`display` (for logs and errors) never contains them.
    """

    __slots__ = ("url", "host", "port", "display", "_auth")

    def __init__(self, url: str) -> None:
        if not isinstance(url, str):
            raise ConfigError(f"proxy must be a URL str like 'http://host:3128', not {type(url).__name__}")
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            shown = _without_credentials(url)
            raise ConfigError(f"proxy must be an http:// URL with a host, like 'http://host:3128'; got {shown!r}")
        try:
            port = parts.port or 80
        except ValueError:
            raise ConfigError(f"proxy URL has a bad port: {_without_credentials(url)!r}") from None
        self.url = url
        self.host = parts.hostname
        self.port = port
        self.display = f"http://{_host_header(self.host, port, 0)}"
        self._auth: Optional[str] = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode("utf-8")
            self._auth = "Basic " + base64.b64encode(pair).decode("ascii")

    def __repr__(self) -> str:
        return f"<Proxy {self.display}>"

    def tunnel(self, sock: socket.socket, host: str, port: int, timeout: float) -> None:
        """Ask the proxy for a tunnel to *host:port*; raise :class:`ProxyError` if refused."""
        target = _host_header(host, port, 0)
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: sync_gateway/{__version__}"]
        if self._auth:
            lines.append(f"Proxy-Authorization: {self._auth}")
        sock.settimeout(timeout)
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))
        try:
            status, _headers, rest = _read_head(sock, f"proxy {self.display}")
        except HandshakeError as exc:
            raise ProxyError(str(exc)) from None
        if status == 407:
            raise ProxyError(f"proxy {self.display} requires authentication (HTTP 407); put user:password in the proxy URL")
        if status != 200:
            raise ProxyError(f"proxy {self.display} refused the tunnel to {target}: HTTP {status}")
        if rest:
            raise ProxyError(f"proxy {self.display} sent data before the tunnel was used")


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return parts._replace(netloc=netloc).geturl()


def _describe_error(exc: BaseException, opened: bool) -> str:
    if isinstance(exc, websocket.WebSocketTimeoutException) or isinstance(exc, socket.timeout):
        return "read timeout" if opened else "connect timeout"
    if isinstance(exc, websocket.WebSocketConnectionClosedException):
        # before "opened": the peer closed during the HTTP upgrade (or the proxy's CONNECT)
        return "connection lost" if opened else "connection lost during the handshake"
    if isinstance(exc, (HandshakeError, ProxyError)):
        return str(exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc}"
    return f"{type(exc).__name__}: {exc}" if opened else f"connect failed: {type(exc).__name__}: {exc}"
