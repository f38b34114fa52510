"""A loopback imitation of Discord's gateway (and the few REST routes a gateway library calls).

Why it is built this way: a fake gateway has to misbehave on purpose — never answer a close frame,
keep talking after the client's close frame, split one zlib payload over several messages, send
garbage, or vanish without a close frame. websockets' high-level ``sync.server`` answers close frames
by itself from its reader thread and owns the socket, so it cannot do that. Each connection therefore
runs on one thread of ours: websockets' sans-I/O :class:`~websockets.server.ServerProtocol` performs
the HTTP part (upgrade handshake, or a plain HTTP answer for the REST routes on the same port), and
after the 101 we read and write RFC 6455 frames on the socket ourselves (frames serialised with
:class:`websockets.frames.Frame`). Every write goes through one lock per connection, so the test
thread and the connection thread may send concurrently.

``FakeGateway(tls=True)`` serves ``wss://`` (and its REST routes over ``https://``) with a certificate
for 127.0.0.1 signed by a throwaway CA (:meth:`FakeGateway.client_ssl_context` trusts it). TLS runs
through :class:`ssl.MemoryBIO` on the plain socket, not :class:`ssl.SSLSocket`: the connection thread
keeps select()ing the real descriptor (an SSLSocket may hold decrypted bytes select() cannot see),
stop() and drop() act on the one real socket at every stage, handshake included, and every write can
be cut into TLS records of the size a test asks for (``trickle=``: the client's TLS layer then hands
its reader the plaintext in exactly those pieces).

Threads: one accept thread (``fake_gateway-accept-PORT``) and one thread per TCP connection
(``fake_gateway-conn-PORT-N``), all daemons; :meth:`FakeGateway.stop` closes every socket and joins
them (bounded).

Public contract (used by the client's integration tests): :class:`FakeGateway`,
:class:`ServerConnection`, :class:`FakeSession`. Everything prefixed ``_`` may change.
"""
from __future__ import annotations

import collections
import email.utils
import http
import json
import logging
import random
import select
import selectors
import socket
import ssl
import struct
import threading
import time
import uuid
import zlib
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, Generator, List, Optional, Set, Tuple, Union
from urllib.parse import parse_qsl, urlsplit

from websockets.datastructures import Headers
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from ._certs import certificates
from .proxy import FreezingProxy, Trickle

__all__ = ["FakeGateway", "FakeSession", "ServerConnection"]

logger = logging.getLogger(__name__)


if TYPE_CHECKING:  # subscriptable at run time only from Python 3.11
    _LoggerAdapter = logging.LoggerAdapter[logging.Logger]
else:
    _LoggerAdapter = logging.LoggerAdapter


class _QuietAdapter(_LoggerAdapter):
    """websockets' sans-I/O layer logs every connection at INFO; for a test double that is DEBUG."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        super().log(logging.DEBUG if level <= logging.INFO else level, msg, *args, **kwargs)


_ws_logger = _QuietAdapter(logging.getLogger(__name__ + ".websockets"), {})

DEFAULT_USER: Dict[str, Any] = {
    "id": "100000000000000001",
    "username": "fake-bot",
    "discriminator": "0",
    "bot": True,
}
APPLICATION_ID = "100000000000000001"

#: Discord's limits the fake enforces on what the client sends.
MAX_PAYLOAD_BYTES = 4096
RATE_LIMIT_COUNT = 120
RATE_LIMIT_WINDOW = 60.0

#: Client opcodes Discord knows; anything else after authentication is closed with 4001.
_KNOWN_CLIENT_OPS = frozenset({1, 2, 3, 4, 6, 8, 31, 43})

#: Seconds the server waits for the client's answer to a server close frame before dropping TCP.
SERVER_CLOSE_TIMEOUT = 2.0
#: Seconds the server waits for the client's EOF after it half-closed TCP at the end of a close handshake.
_DRAIN_TIMEOUT = 1.0
#: Longest select() slice of a connection thread; bounds how late timers and stop() are noticed.
_POLL = 0.05
#: Send timeout on connection sockets, so a client that stops reading cannot block a writer forever.
_SEND_TIMEOUT = 5.0
_HANDSHAKE_TIMEOUT = 5.0
_MAX_REQUEST_HEAD = 65536
_MAX_CLIENT_MESSAGE = 1 << 20
_JOIN_BUDGET = 5.0


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _close_payload(code: Optional[int], reason: str) -> bytes:
    """Body of a close frame; any 16-bit code is allowed on purpose (tests use odd ones)."""
    if code is None:
        return b""
    return (struct.pack("!H", code) + reason.encode("utf-8"))[:125]


class _WantRead(socket.timeout):
    """A read got part of a TLS record only: no plaintext yet (callers treat it as a read timeout)."""


class _TLSSocket:
    """The server side of TLS over a plain socket, through memory BIOs (see the module docstring).

    Offers the few socket methods the fake uses. Locks: ``_ssl`` guards the SSLObject (OpenSSL objects
    must not be used by two threads at once); ``_send`` keeps ciphertext leaving in the order it was
    made, and is always taken before ``_ssl``.
    """

    def __init__(
        self, raw: socket.socket, context: ssl.SSLContext, records: Optional[Tuple[int, int]], rng: random.Random
    ) -> None:
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=True)
        self._ssl = threading.Lock()
        self._send = threading.Lock()
        self._records = records
        self._rng = rng

    def handshake(self, deadline: float, stopping: threading.Event) -> bool:
        """Run the TLS handshake; False if the client went away, stop() was called or time ran out.
        Raises :class:`ssl.SSLError` if the client refused it (e.g. it does not trust the certificate)."""
        while True:
            with self._send:
                with self._ssl:
                    try:
                        self._obj.do_handshake()
                        done = True
                    except ssl.SSLWantReadError:
                        done = False
                    out = self._out.read()
                if out:
                    self.raw.sendall(out)
            if done:
                return True
            while True:
                if stopping.is_set() or time.monotonic() > deadline:
                    return False
                if select.select([self.raw], [], [], _POLL)[0]:
                    break
            data = self.raw.recv(65536)
            if not data:
                return False
            with self._ssl:
                self._in.write(data)

    def recv(self, n: int) -> bytes:
        """All plaintext that can be decrypted after at most one read of the socket (may exceed ``n``).

        b"" at EOF (TCP or the client's close_notify); :class:`_WantRead` if only part of a record came.
        """
        data = self._decrypt()
        if data is None:
            return b""
        if data:
            return data
        raw = self.raw.recv(65536)
        if not raw:
            return b""
        with self._ssl:
            self._in.write(raw)
        data = self._decrypt()
        if data is None:
            return b""
        if not data:
            raise _WantRead("partial TLS record")
        return data

    def _decrypt(self) -> Optional[bytes]:
        """Decrypted bytes available now (b"" if none), or None after the client's close_notify."""
        parts: List[bytes] = []
        eof = False
        with self._ssl:
            while True:
                try:
                    part = self._obj.read(65536)
                except ssl.SSLWantReadError:
                    break
                except ssl.SSLZeroReturnError:
                    eof = True
                    break
                if not part:
                    eof = True
                    break
                parts.append(part)
            pending_out = self._out.pending
        if pending_out:
            self._flush_out()
        if eof and not parts:
            return None
        return b"".join(parts)

    def _flush_out(self) -> None:
        with self._send:
            with self._ssl:
                out = self._out.read()
            if out:
                self.raw.sendall(out)

    def sendall(self, data: bytes) -> None:
        with self._send:
            with self._ssl:
                if self._records is None:
                    self._obj.write(data)
                else:
                    view = memoryview(data)
                    while view:
                        n = self._rng.randint(*self._records)
                        self._obj.write(view[:n])
                        view = view[n:]
                out = self._out.read()
            self.raw.sendall(out)

    def shutdown(self, how: int) -> None:
        if how == socket.SHUT_WR:
            try:  # a TLS close_notify before the FIN, as a well-behaved server sends it
                with self._send:
                    with self._ssl:
                        try:
                            self._obj.unwrap()
                        except ssl.SSLError:
                            pass
                        out = self._out.read()
                    if out:
                        self.raw.sendall(out)
            except OSError:
                pass
        self.raw.shutdown(how)

    def fileno(self) -> int:
        return self.raw.fileno()

    def settimeout(self, value: Optional[float]) -> None:
        self.raw.settimeout(value)

    def setsockopt(self, *args: Any) -> None:
        self.raw.setsockopt(*args)

    def close(self) -> None:
        self.raw.close()


class FakeSession:
    """One gateway session: its id, event log and who serves it.

    ``events`` holds ``(seq, t, d)`` for every dispatch of the session in seq order, READY and RESUMED
    included; ``seq`` is the last seq assigned. ``connection`` is the :class:`ServerConnection` that
    currently serves the session (the one that last got READY/RESUMED for it), even if it has closed
    since — then new events are recorded as missed and replayed on RESUME.
    """

    def __init__(self, session_id: str, connection: "ServerConnection") -> None:
        self.session_id = session_id
        self.seq = 0
        self.events: List[Tuple[int, str, Any]] = []
        self.invalidated = False
        self.connection: "ServerConnection" = connection

    def _append(self, t: str, d: Any) -> int:
        self.seq += 1
        self.events.append((self.seq, t, d))
        return self.seq

    def __repr__(self) -> str:
        return (
            f"FakeSession({self.session_id!r}, seq={self.seq}, events={len(self.events)}, "
            f"invalidated={self.invalidated}, connection={self.connection.index})"
        )


class ServerConnection:
    """The server side of one accepted websocket connection, for inspection and scripting.

    Recording attributes are filled by the connection thread; the ``send*``/``close``/``drop``
    methods may be called from any thread. Frames reach the wire while the TCP connection is open and
    the server has not sent its own close frame — in particular *after* the client's close frame
    while its answer is held back by :attr:`FakeGateway.close_reply_delay`. Sending on a connection
    that can no longer carry frames is a no-op (logged at DEBUG); the ``send*`` methods return
    whether the bytes were written.
    """

    def __init__(self, gateway: "FakeGateway", sock: socket.socket, index: int, path: str) -> None:
        self.gateway = gateway
        self.index = index
        self.path = path
        self.query: Dict[str, str] = dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))
        compress = self.query.get("compress")
        self.compress: Optional[str] = compress if compress in ("zlib-stream", "zstd-stream") else None
        self.received: List[Tuple[float, Dict[str, Any]]] = []
        self.heartbeats: List[Tuple[float, Any]] = []
        self.identify: Optional[Dict[str, Any]] = None
        self.resume: Optional[Dict[str, Any]] = None
        self.session_id: Optional[str] = None
        self.ready = threading.Event()
        self.closed = threading.Event()
        #: set when the client's close frame arrived (client_close_code is then set)
        self.close_received = threading.Event()
        self.client_close_code: Optional[int] = None
        #: reason text of the client's close frame, if any
        self.client_close_reason: Optional[str] = None
        #: code of the close frame the server sent (scripted or a protocol error), or None
        self.server_close_code: Optional[int] = None
        self.connected_at = time.monotonic()

        self._sock = sock
        self._write_lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._cond = threading.Condition()
        self._tcp_open = True
        self._close_sent_at: Optional[float] = None
        self._close_rcvd = False
        self._reply_pending = False
        self._reply_at: Optional[float] = None
        self._wr_shut = False
        self._authenticated = False  # an IDENTIFY or RESUME was accepted for processing
        self._recv_times: Deque[float] = collections.deque()
        self._compressor: Any = None
        if self.compress == "zlib-stream":
            self._compressor = zlib.compressobj()
        elif self.compress == "zstd-stream":
            import zstandard  # lazy: only needed when a client asks for it

            self._compressor = zstandard.ZstdCompressor().compressobj()
            self._zstd_flush = zstandard.COMPRESSOBJ_FLUSH_BLOCK

    def __repr__(self) -> str:
        state = "closed" if self.closed.is_set() else "open"
        return f"<ServerConnection #{self.index} {state} compress={self.compress} session={self.session_id}>"

    # ------------------------------------------------------------------ inspection

    def wait_for(
        self,
        op: Optional[int] = None,
        predicate: Optional[Callable[[Dict[str, Any]], bool]] = None,
        timeout: float = 5.0,
        start: int = 0,
    ) -> Dict[str, Any]:
        """Return the first received payload at index >= ``start`` matching ``op`` and ``predicate``.

        Waits up to ``timeout`` seconds. Raises :class:`TimeoutError` on timeout, and at once if the
        connection is gone and nothing matched (no more payloads can arrive).
        """
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.received):
                    payload = self.received[index][1]
                    index += 1
                    if op is not None and payload.get("op") != op:
                        continue
                    if predicate is not None and not predicate(payload):
                        continue
                    return payload
                if self.closed.is_set():
                    raise TimeoutError(
                        f"connection #{self.index} closed before a payload with op={op} matched"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no payload with op={op} matched on connection #{self.index} in {timeout}s")
                self._cond.wait(remaining)

    # ------------------------------------------------------------------ sending

    def send(self, payload: Dict[str, Any]) -> bool:
        """JSON-encode ``payload``, compress it per :attr:`compress`, and send it."""
        return self._send_encoded([_dumps(payload)])

    def send_op(self, op: int, d: Any = None) -> bool:
        """Send ``{"op": op, "d": d, "s": null, "t": null}``, e.g. ``send_op(7)`` (reconnect)."""
        return self.send({"op": op, "d": d, "s": None, "t": None})

    def invalid_session(self, resumable: bool) -> bool:
        """Send op 9 with ``d = resumable``."""
        return self.send_op(9, bool(resumable))

    def encode(self, payload: Dict[str, Any]) -> bytes:
        """The wire bytes :meth:`send` would write for ``payload`` (frames, compressed per
        :attr:`compress`), without writing them. With compression the stream state advances: the
        bytes must then be sent with :meth:`send_bytes`, in order, before anything else is sent."""
        with self._write_lock:
            return self._encode_payload(_dumps(payload))

    def send_text(self, text: Union[str, bytes]) -> bool:
        """Send one payload given as its JSON text, exactly as given (valid JSON or not), framed
        and compressed like every payload of this connection: a corrupt payload in an intact
        compressed stream."""
        return self._send_encoded([text.encode("utf-8") if isinstance(text, str) else bytes(text)])

    def send_bytes(self, data: bytes) -> bool:
        """Write ``data`` to the connection as it is: no framing, no compression (one TLS record over
        ``wss://`` unless the gateway cuts records). With :meth:`encode` a test controls exactly where
        the bytes of its frames are cut and when the rest follows."""
        with self._write_lock:
            return self._write(bytes(data))

    def send_raw(self, data: Union[str, bytes]) -> bool:
        """Send one text (str) or binary (bytes) frame exactly as given, bypassing compression."""
        if isinstance(data, str):
            frame = Frame(Opcode.TEXT, data.encode("utf-8"))
        else:
            frame = Frame(Opcode.BINARY, bytes(data))
        with self._write_lock:
            return self._write(frame.serialize(mask=False, extensions=[]))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a server close frame; TCP is closed when the client answers, or after 2 s.

        If the client's own close frame is waiting for its answer, this frame is that answer and the
        TCP connection is closed now.
        """
        with self._write_lock:
            if not self._tcp_open or self._close_sent_at is not None:
                return
            frame = Frame(Opcode.CLOSE, _close_payload(code, reason))
            if not self._write(frame.serialize(mask=False, extensions=[])):
                return
            self._close_sent_at = time.monotonic()
            self.server_close_code = code
            logger.debug("connection #%d: server close %s %r", self.index, code, reason)
            if self._close_rcvd:
                self._reply_pending = False
                self._half_close()

    def drop(self) -> None:
        """Abort the TCP connection at once: no close frame, RST (SO_LINGER 0)."""
        logger.debug("connection #%d: dropped", self.index)
        self._abort(rst=True)

    # ------------------------------------------------------------------ internals: writing

    def _encode_payload(self, data: bytes) -> bytes:
        """Frames for one payload; must run under the write lock (the compressor is stateful)."""
        if self._compressor is None:
            return Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])
        if self.compress == "zlib-stream":
            blob = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
            parts = max(1, int(self.gateway.split_frames or 1))
            size = -(-len(blob) // parts)
            chunks = [blob[i : i + size] for i in range(0, len(blob), size)]
            return b"".join(Frame(Opcode.BINARY, c).serialize(mask=False, extensions=[]) for c in chunks)
        blob = self._compressor.compress(data) + self._compressor.flush(self._zstd_flush)
        return Frame(Opcode.BINARY, blob).serialize(mask=False, extensions=[])

    def _send_encoded(self, payloads: List[bytes]) -> bool:
        with self._write_lock:
            if not self._can_send():
                logger.debug("connection #%d: cannot send any more; %d payload(s) not sent", self.index, len(payloads))
                return False
            return self._write(b"".join(self._encode_payload(p) for p in payloads))

    def _can_send(self) -> bool:
        return self._tcp_open and self._close_sent_at is None and not self._wr_shut

    def _write(self, data: bytes) -> bool:
        with self._write_lock:
            if not self._can_send():
                logger.debug("connection #%d: write of %d bytes skipped (closing)", self.index, len(data))
                return False
            try:
                self._sock.sendall(data)
                return True
            except OSError as exc:
                logger.debug("connection #%d: write failed: %s", self.index, exc)
                self._abort(rst=False)
                return False

    # ------------------------------------------------------------------ internals: teardown

    def _half_close(self) -> None:
        """End of a close handshake: the server closes TCP first (FIN), then waits for the client's EOF."""
        with self._write_lock:
            if not self._tcp_open or self._wr_shut:
                return
            self._wr_shut = True
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                self._abort(rst=False)

    def _abort(self, rst: bool) -> None:
        """Close TCP now (FIN, or RST if ``rst``). Does not take the write lock, so drop() and stop()
        are never held up by a writer blocked on a client that stopped reading."""
        with self._state_lock:
            if not self._tcp_open:
                do_close = False
            else:
                self._tcp_open = False
                do_close = True
        if do_close:
            try:
                if rst:
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    # SHUT_RD sends nothing but wakes the connection thread's select().
                    self._sock.shutdown(socket.SHUT_RD)
                else:
                    self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                self._sock.close()
            except OSError:
                pass
        self._mark_closed()

    def _mark_closed(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        with self._cond:
            self._cond.notify_all()
        self.gateway._notify()


class FakeGateway:
    """A real websocket server on loopback that imitates Discord's gateway, with fault injection.

    The listening socket is bound in the constructor, so :attr:`url` is known before :meth:`start`.
    Behaviour switches are plain attributes that the test thread may change at any time; each is read
    when the event it governs happens. See the package docs for the full contract.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        heartbeat_interval: int = 45000,
        token: Optional[str] = None,
        resume_gateway_url: Optional[str] = None,
        user: Optional[Dict[str, Any]] = None,
        tls: bool = False,
        ssl_context: Optional[ssl.SSLContext] = None,
        trickle: Optional[Trickle] = None,
    ) -> None:
        """``tls=True``: serve ``wss://`` and ``https://`` with the test certificate (see
        :meth:`client_ssl_context`); ``ssl_context``: serve TLS with this server context instead.
        ``trickle``: clients reach the gateway through a :class:`~sync_gateway.testing.Trickle`
        proxy (:attr:`url`, :attr:`api_base` and READY's ``resume_gateway_url`` name it), and over TLS
        every write is cut into TLS records of ``trickle.records`` plaintext bytes."""
        self.heartbeat_interval = heartbeat_interval
        self.token = token
        self.resume_gateway_url = resume_gateway_url
        self.user: Dict[str, Any] = dict(user) if user is not None else dict(DEFAULT_USER)

        self.send_hello = True
        self.answer_identify = True
        self.answer_resume = True
        self.ack_heartbeats = True
        self.close_reply_delay: Optional[float] = 0.0
        self.split_frames = 1
        self.identify_close_code: Optional[int] = None
        #: True: an HTTP upgrade request is read but not answered while this stays true (the client
        #: waits in the websocket handshake; over TLS, after the TLS handshake completed)
        self.stall_upgrade = False

        self._certs = None
        if ssl_context is None and tls:
            self._certs = certificates()
            ssl_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_context.load_cert_chain(self._certs.cert_file, self._certs.key_file)
            if hasattr(ssl_context, "num_tickets"):
                ssl_context.num_tickets = 0  # no session tickets: nothing is written after the handshake
        self._ssl_context = ssl_context
        self.trickle = trickle

        self._listener = socket.create_server((host, port))
        #: where the listening socket is (behind the trickle proxy, if any: see :attr:`url`)
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]
        self._front: Optional[FreezingProxy] = None
        if trickle is not None:
            self._front = FreezingProxy(self.host, self.port, host, trickle=trickle, scheme=self._scheme("ws"))
        self.gateway_bot: Dict[str, Any] = {
            "url": self.url,
            "shards": 1,
            "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 14400000, "max_concurrency": 1},
        }

        self._lock = threading.RLock()
        # Own lock, never taken together with _lock: closing sockets notify it while holding a write lock.
        self._conn_cond = threading.Condition()
        self._connections: List[ServerConnection] = []
        self._sessions: Dict[str, FakeSession] = {}
        self._rest_requests: List[Tuple[str, str, Dict[str, str]]] = []
        self._sockets: Set[socket.socket] = set()  # every accepted TCP socket not yet closed (HTTP or websocket)
        self._threads: List[threading.Thread] = []
        self._stopping = threading.Event()
        self._started = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._accepted = 0
        self._held_requests = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def tls(self) -> bool:
        """Whether the gateway serves ``wss://``."""
        return self._ssl_context is not None

    def _scheme(self, plain: str) -> str:
        return plain + "s" if self._ssl_context is not None else plain

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/`` (``wss://`` with TLS; the trickle proxy's port with ``trickle=``);
        clients append ``?v=10&encoding=json[&compress=...]``."""
        host, port = (self._front.host, self._front.port) if self._front is not None else (self.host, self.port)
        return f"{self._scheme('ws')}://{host}:{port}/"

    @property
    def api_base(self) -> str:
        """``http://HOST:PORT/api/v10`` (``https://`` with TLS), the REST routes of the same port."""
        host, port = (self._front.host, self._front.port) if self._front is not None else (self.host, self.port)
        return f"{self._scheme('http')}://{host}:{port}/api/v10"

    @property
    def front_port(self) -> int:
        """The port clients connect to: the trickle proxy's with ``trickle=``, else ``port`` (the
        listening socket's)."""
        return self._front.port if self._front is not None else self.port

    @property
    def ca_file(self) -> str:
        """Path of the PEM file of the CA that signed the test certificate (``tls=True`` only), e.g.
        for ``requests``' ``verify=`` or ``REQUESTS_CA_BUNDLE``."""
        if self._certs is None:
            raise RuntimeError("ca_file: this gateway does not serve the test certificate (tls=True)")
        return self._certs.ca_file

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the test certificate only, verifying it as a client of
        Discord would (certificate chain and host name 127.0.0.1 or localhost)."""
        return ssl.create_default_context(cafile=self.ca_file)

    def start(self) -> "FakeGateway":
        """Start accepting connections. Returns self."""
        with self._lock:
            if self._started:
                raise RuntimeError("FakeGateway already started")
            if self._stopping.is_set():
                raise RuntimeError("FakeGateway cannot be restarted after stop()")
            self._started = True
        if self._front is not None:
            self._front.start()
        self._spawn(self._accept_loop, f"fake_gateway-accept-{self.port}")
        logger.debug("fake gateway listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Close the listener and every socket (no close frames), then join every thread (bounded, ~5 s)."""
        if self._stopping.is_set():
            self._join()
            return
        self._stopping.set()
        if self._front is not None:
            self._front.stop()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if not self._started:
            self._listener.close()
        with self._lock:
            connections = list(self._connections)
            sockets = list(self._sockets)
        for conn in connections:
            conn._abort(rst=False)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._join()
        for s in (self._wake_r, self._wake_w):
            s.close()
        logger.debug("fake gateway on port %d stopped", self.port)

    def _join(self) -> None:
        # Loop: the accept thread may still be spawning a connection thread when we first look.
        deadline = time.monotonic() + _JOIN_BUDGET
        while True:
            with self._lock:
                threads = [t for t in self._threads if t.is_alive() and t is not threading.current_thread()]
            if not threads:
                return
            if time.monotonic() >= deadline:
                logger.warning("threads did not exit in time: %s", ", ".join(t.name for t in threads))
                return
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "FakeGateway":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _spawn(self, target: Callable[..., None], name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _notify(self) -> None:
        with self._conn_cond:
            self._conn_cond.notify_all()

    # ------------------------------------------------------------------ public inspection

    @property
    def connections(self) -> List[ServerConnection]:
        """Every accepted websocket connection, in accept order (a copy of the list)."""
        with self._lock:
            return list(self._connections)

    @property
    def sessions(self) -> Dict[str, FakeSession]:
        """session_id -> :class:`FakeSession` (a copy of the dict; the sessions are live)."""
        with self._lock:
            return dict(self._sessions)

    @property
    def rest_requests(self) -> List[Tuple[str, str, Dict[str, str]]]:
        """``(method, path, headers)`` of every plain HTTP request, in arrival order."""
        with self._lock:
            return list(self._rest_requests)

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> ServerConnection:
        """Block until at least ``n`` websocket connections were accepted; return ``connections[n-1]``."""
        deadline = time.monotonic() + timeout
        with self._conn_cond:
            while len(self._connections) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(self._connections)} connection(s) accepted, wanted {n}, in {timeout}s")
                self._conn_cond.wait(remaining)
            return self._connections[n - 1]

    def live_connections(self) -> int:
        """Number of websocket connections whose TCP connection is still open."""
        with self._lock:
            return sum(1 for c in self._connections if not c.closed.is_set())

    # ------------------------------------------------------------------ sessions and dispatching

    def invalidate_session(self, session_id: str) -> None:
        """Make a later RESUME of ``session_id`` get op 9 ``d=false``. KeyError if unknown."""
        with self._lock:
            self._sessions[session_id].invalidated = True

    def dispatch(self, t: str, d: Any, connection: Optional[ServerConnection] = None) -> int:
        """Append an event to a session's log, send it if possible, and return its seq.

        Without ``connection`` the session is the live one (that of the most recent connection that
        got READY/RESUMED) and the frame goes to the connection serving it, if that is still open.
        With ``connection`` the event joins that connection's session and the frame goes on that very
        connection (if it can still carry frames), whether or not it still serves the session — tests
        use this to make a stale socket talk. Either way the event is logged, so a RESUME replays it if
        it was missed. Raises RuntimeError if there is no session.
        """
        return self.dispatch_many(t, [d], connection)[0]

    def dispatch_many(self, t: str, ds: List[Any], connection: Optional[ServerConnection] = None) -> List[int]:
        """:meth:`dispatch` for many events of one type, written in one go."""
        with self._lock:
            session, target = self._route(connection)
            seqs: List[int] = []
            encoded: List[bytes] = []
            for d in ds:
                seq = session._append(t, d)
                seqs.append(seq)
                encoded.append(_dumps({"t": t, "s": seq, "op": 0, "d": d}))
            if target.ready.is_set():
                target._send_encoded(encoded)
            return seqs

    def encode_dispatch(self, t: str, d: Any, connection: Optional[ServerConnection] = None) -> Tuple[int, bytes]:
        """``(seq, wire bytes)`` of a dispatch, logged like :meth:`dispatch` but not sent.

        The caller sends the bytes with :meth:`ServerConnection.send_bytes` on the connection serving
        the session (``connection``, or :meth:`connection_for` the live session) — cut wherever it
        likes — and, with compression, before anything else is sent on it. A RESUME replays the event
        like any other."""
        with self._lock:
            session, target = self._route(connection)
            seq = session._append(t, d)
            return seq, target.encode({"t": t, "s": seq, "op": 0, "d": d})

    def connection_for(self, connection: Optional[ServerConnection] = None) -> ServerConnection:
        """The connection :meth:`dispatch` would write to (the one serving the live session)."""
        with self._lock:
            return self._route(connection)[1]

    @property
    def held_requests(self) -> int:
        """HTTP requests held so far by :attr:`stall_upgrade`."""
        with self._lock:
            return self._held_requests

    def _route(self, connection: Optional[ServerConnection]) -> Tuple[FakeSession, ServerConnection]:
        if connection is not None:
            if connection.session_id is None:
                raise RuntimeError(f"connection #{connection.index} has no session (no READY/RESUMED sent on it)")
            return self._sessions[connection.session_id], connection
        for conn in reversed(self._connections):
            if conn.ready.is_set() and conn.session_id is not None:
                session = self._sessions[conn.session_id]
                return session, session.connection
        raise RuntimeError("no session to dispatch to: no connection ever got READY or RESUMED")

    # ------------------------------------------------------------------ accepting

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for key, _ in sel.select():
                    if key.fileobj is not self._listener or self._stopping.is_set():
                        continue
                    try:
                        sock, _addr = self._listener.accept()
                    except OSError:
                        continue
                    with self._lock:
                        if self._stopping.is_set():
                            sock.close()
                            continue
                        self._sockets.add(sock)
                        self._accepted += 1
                        n = self._accepted
                    self._spawn(self._serve_socket, f"fake_gateway-conn-{self.port}-{n}", sock, n)
        except Exception:
            if not self._stopping.is_set():
                logger.exception("fake gateway accept loop failed")
        finally:
            sel.close()
            self._listener.close()

    def _serve_socket(self, raw: socket.socket, n: int) -> None:
        conn: Optional[ServerConnection] = None
        sock: Any = raw
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(_SEND_TIMEOUT)
            if self._ssl_context is not None:
                trickle = self.trickle
                sock = _TLSSocket(
                    raw,
                    self._ssl_context,
                    trickle.records if trickle is not None else None,
                    random.Random(f"{trickle.seed if trickle is not None else 0}:records:{n}"),
                )
                try:
                    if not sock.handshake(time.monotonic() + _HANDSHAKE_TIMEOUT, self._stopping):
                        logger.debug("TCP connection %d: no TLS handshake", n)
                        return
                except ssl.SSLError as exc:
                    logger.debug("TCP connection %d: TLS handshake failed: %s", n, exc)
                    return
            head, rest = self._read_request_head(sock)
            if head is None:
                return
            if self.stall_upgrade and not self._hold_request(sock):
                return
            protocol = ServerProtocol(logger=_ws_logger)
            # Its debug trace prints every request header, Authorization included: never the token.
            protocol.debug = False
            protocol.receive_data(head)
            events = protocol.events_received()
            if not events or not isinstance(events[0], Request):
                self._flush_protocol(sock, protocol)
                return
            request = events[0]
            if urlsplit(request.path).path.startswith("/api"):
                protocol.send_response(self._rest(request))
                self._flush_protocol(sock, protocol)
                return
            response = protocol.accept(request)
            if response.status_code != 101:
                protocol.send_response(response)
                self._flush_protocol(sock, protocol)
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                conn = ServerConnection(self, sock, len(self._connections), request.path)
                self._connections.append(conn)
            self._notify()
            logger.debug("connection #%d accepted: %s", conn.index, request.path)
            protocol.send_response(response)
            with conn._write_lock:
                for data in protocol.data_to_send():
                    if data:
                        sock.sendall(data)
            if self.send_hello:
                conn.send_op(10, {"heartbeat_interval": self.heartbeat_interval})
            _ConnectionRunner(self, conn, rest).run()
        except Exception:
            if not self._stopping.is_set():
                logger.exception("fake gateway connection handler failed")
        finally:
            if conn is not None:
                conn._abort(rst=False)
            else:
                try:
                    raw.close()
                except OSError:
                    pass
            with self._lock:
                self._sockets.discard(raw)

    def _hold_request(self, sock: Any) -> bool:
        """:attr:`stall_upgrade`: wait while it holds; False if the client went away or stop() came."""
        logger.debug("holding an HTTP request (stall_upgrade)")
        with self._lock:
            self._held_requests += 1
        while self.stall_upgrade:
            if self._stopping.is_set():
                return False
            try:
                if not _select_read(sock, _POLL)[0]:
                    continue
                if not sock.recv(65536):
                    return False  # the client closed; what else it sends is not looked at
            except socket.timeout:
                continue
            except (OSError, ValueError):
                return False
        return True

    def _read_request_head(self, sock: socket.socket) -> Tuple[Optional[bytes], bytes]:
        buf = b""
        deadline = time.monotonic() + _HANDSHAKE_TIMEOUT
        while b"\r\n\r\n" not in buf:
            if self._stopping.is_set() or time.monotonic() > deadline or len(buf) > _MAX_REQUEST_HEAD:
                return None, b""
            sock.settimeout(_POLL * 5)
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return None, b""
            finally:
                sock.settimeout(_SEND_TIMEOUT)
            if not chunk:
                return None, b""
            buf += chunk
        end = buf.index(b"\r\n\r\n") + 4
        return buf[:end], buf[end:]

    @staticmethod
    def _flush_protocol(sock: socket.socket, protocol: ServerProtocol) -> None:
        for data in protocol.data_to_send():
            if data:
                sock.sendall(data)
            else:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

    # ------------------------------------------------------------------ REST

    def _rest(self, request: Request) -> Response:
        path = urlsplit(request.path).path.rstrip("/")
        headers = {k: v for k, v in request.headers.raw_items()}
        # websockets < 16 (the last for Python 3.9) parses GET only and has no Request.method
        method = getattr(request, "method", "GET")
        with self._lock:
            self._rest_requests.append((method, request.path, headers))
        logger.debug("REST %s %s", method, request.path)
        prefix = "/api/v10"
        routes: Dict[str, Callable[[], Any]] = {
            prefix + "/gateway": lambda: {"url": self.url},
            prefix + "/gateway/bot": lambda: self.gateway_bot,
            prefix + "/users/@me": lambda: self.user,
            prefix + "/oauth2/applications/@me": lambda: {
                "id": APPLICATION_ID,
                "name": "fake-app",
                "flags": 0,
                "bot": self.user,
            },
        }
        if path not in routes:
            return self._json_response(404, {"message": "404: Not Found", "code": 0})
        if self.token is not None:
            auth = request.headers.get("Authorization")
            # Like Discord, GET /gateway needs no auth, but a wrong token is refused everywhere.
            if not (auth is None and path == prefix + "/gateway") and auth != f"Bot {self.token}":
                return self._json_response(401, {"message": "401: Unauthorized", "code": 0})
        if method != "GET":
            return self._json_response(405, {"message": "405: Method Not Allowed", "code": 0})
        with self._lock:
            body = routes[path]()
        return self._json_response(200, body)

    @staticmethod
    def _json_response(status: int, body: Any) -> Response:
        data = _dumps(body)
        status_obj = http.HTTPStatus(status)
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Connection", "close"),
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
            ]
        )
        return Response(status_obj.value, status_obj.phrase, headers, data)

    # ------------------------------------------------------------------ gateway protocol

    def _handle_payload(self, conn: ServerConnection, payload: Dict[str, Any]) -> None:
        """Apply one client payload (already recorded and size/rate/JSON checked)."""
        op = payload.get("op")
        d = payload.get("d")
        if not isinstance(op, int) or isinstance(op, bool):
            conn.close(4001, "Unknown opcode.")
            return
        if op == 1:
            conn.heartbeats.append((time.monotonic(), d))
            if self.ack_heartbeats:
                conn.send({"op": 11})
            return
        if op == 2:
            self._on_identify(conn, d)
            return
        if op == 6:
            self._on_resume(conn, d)
            return
        if not conn._authenticated:
            conn.close(4003, "Not authenticated.")
            return
        if op not in _KNOWN_CLIENT_OPS:
            conn.close(4001, "Unknown opcode.")
        # ops 3/4/8/31/43 are recorded only

    def _on_identify(self, conn: ServerConnection, d: Any) -> None:
        if conn.identify is None:
            conn.identify = d
        if conn._authenticated:
            conn.close(4005, "Already authenticated.")
            return
        conn._authenticated = True
        with self._lock:
            limit = self.gateway_bot.get("session_start_limit")
            if isinstance(limit, dict) and isinstance(limit.get("remaining"), int):
                limit["remaining"] = max(0, limit["remaining"] - 1)
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("token"), str)
            or not isinstance(d.get("properties"), dict)
            or not isinstance(d.get("intents"), int)
        ):
            conn.close(4001, "Invalid payload for Identify.")
            return
        if self.token is not None and d["token"] != self.token:
            conn.close(4004, "Authentication failed.")
            return
        close_code = self.identify_close_code
        if close_code is not None:
            conn.close(close_code, "Closed by identify_close_code.")
            return
        if not self.answer_identify:
            return
        with self._lock:
            session = FakeSession(uuid.uuid4().hex, conn)
            self._sessions[session.session_id] = session
            ready: Dict[str, Any] = {
                "v": 10,
                "user": self.user,
                "guilds": [],
                "session_id": session.session_id,
                "resume_gateway_url": self.resume_gateway_url or self.url,
                "shard": d.get("shard"),
                "application": {"id": APPLICATION_ID, "flags": 0},
            }
            seq = session._append("READY", ready)
            conn.session_id = session.session_id
            conn.send({"t": "READY", "s": seq, "op": 0, "d": ready})
            conn.ready.set()
        logger.debug("connection #%d: READY session %s", conn.index, session.session_id)

    def _on_resume(self, conn: ServerConnection, d: Any) -> None:
        if conn.resume is None:
            conn.resume = d
        if conn._authenticated:
            conn.close(4005, "Already authenticated.")
            return
        conn._authenticated = True
        if not isinstance(d, dict) or not isinstance(d.get("token"), str) or not isinstance(d.get("session_id"), str):
            conn.close(4001, "Invalid payload for Resume.")
            return
        seq = d.get("seq")
        if seq is None:
            seq = 0
        if not isinstance(seq, int) or isinstance(seq, bool):
            conn.close(4001, "Invalid payload for Resume.")
            return
        if self.token is not None and d["token"] != self.token:
            conn.close(4004, "Authentication failed.")
            return
        with self._lock:
            session = self._sessions.get(d["session_id"])
            if session is None or session.invalidated:
                # The client may IDENTIFY on this same connection afterwards (lenient, like Discord's
                # documented flow of reconnecting is also fine).
                conn._authenticated = False
                conn.invalid_session(False)
                return
            if seq > session.seq:
                conn.close(4007, "Invalid seq.")
                return
            if not self.answer_resume:
                return
            session.connection = conn
            conn.session_id = session.session_id
            replay = [
                _dumps({"t": t, "s": s, "op": 0, "d": ev})
                for (s, t, ev) in session.events
                if s > seq and t not in ("READY", "RESUMED")
            ]
            resumed_seq = session._append("RESUMED", {})
            replay.append(_dumps({"t": "RESUMED", "s": resumed_seq, "op": 0, "d": {}}))
            conn._send_encoded(replay)
            conn.ready.set()
        logger.debug(
            "connection #%d: RESUMED session %s from seq %d (%d replayed)",
            conn.index,
            session.session_id,
            seq,
            len(replay) - 1,
        )

    def _on_client_close(self, conn: ServerConnection, code: int) -> None:
        """A client-initiated close frame: 1000/1001 ends the session served on this connection."""
        if code in (1000, 1001) and conn.session_id is not None:
            with self._lock:
                session = self._sessions.get(conn.session_id)
                if session is not None and session.connection is conn:
                    session.invalidated = True
                    logger.debug("session %s invalidated by client close %d", session.session_id, code)


class _ConnectionRunner:
    """The read loop of one websocket connection, run on its connection thread."""

    def __init__(self, gateway: FakeGateway, conn: ServerConnection, initial: bytes) -> None:
        self.gw = gateway
        self.conn = conn
        self.reader = StreamReader()
        self.parser = self._parse()
        next(self.parser)
        self.frames: List[Frame] = []
        self.message_opcode: Optional[Opcode] = None
        self.message_parts: List[bytes] = []
        self.drain_until: Optional[float] = None
        self._echo = b""
        if initial:
            self._feed(initial)

    def _parse(self) -> Generator[None, None, None]:
        while True:
            frame = yield from Frame.parse(
                self.reader.read_exact, mask=True, max_size=_MAX_CLIENT_MESSAGE, extensions=[]
            )
            self.frames.append(frame)

    def _feed(self, data: bytes) -> None:
        self.reader.feed_data(data)
        try:
            next(self.parser)
        except (ProtocolError, PayloadTooBig) as exc:
            logger.debug("connection #%d: bad frame: %s", self.conn.index, exc)
            self.frames, frames = [], self.frames
            for frame in frames:
                self._on_frame(frame)
            self.conn.close(1009 if isinstance(exc, PayloadTooBig) else 1002, "")
            self.conn._abort(rst=False)
            return
        self.frames, frames = [], self.frames
        for frame in frames:
            self._on_frame(frame)

    def run(self) -> None:
        conn = self.conn
        sock = conn._sock
        while conn._tcp_open and not self.gw._stopping.is_set():
            now = time.monotonic()
            # Timers: answering a held client close, giving up on the client's close answer, draining.
            if conn._reply_pending and conn._reply_at is not None and now >= conn._reply_at:
                self._answer_client_close()
                continue
            if conn._close_sent_at is not None and not conn._wr_shut and now - conn._close_sent_at >= SERVER_CLOSE_TIMEOUT:
                logger.debug("connection #%d: no close answer in %ss; dropping TCP", conn.index, SERVER_CLOSE_TIMEOUT)
                conn._abort(rst=False)
                break
            if conn._wr_shut:
                if self.drain_until is None:
                    self.drain_until = now + _DRAIN_TIMEOUT
                elif now >= self.drain_until:
                    conn._abort(rst=False)
                    break
            try:
                readable, _, _ = _select_read(sock, _POLL)
            except (OSError, ValueError):
                break
            if not readable:
                continue
            try:
                data = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            if not data:
                logger.debug("connection #%d: EOF from client", conn.index)
                break
            if conn._close_rcvd:
                continue  # after the client's close frame, further data is discarded (RFC 6455 1.4)
            self._feed(data)
        conn._abort(rst=False)

    def _on_frame(self, frame: Frame) -> None:
        conn = self.conn
        if conn._close_rcvd:
            return
        if frame.opcode == Opcode.PING:
            if conn._close_sent_at is None:
                with conn._write_lock:
                    conn._write(Frame(Opcode.PONG, frame.data).serialize(mask=False, extensions=[]))
            return
        if frame.opcode == Opcode.PONG:
            return
        if frame.opcode == Opcode.CLOSE:
            self._on_close_frame(bytes(frame.data))
            return
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.message_opcode = frame.opcode
            self.message_parts = [bytes(frame.data)]
        elif self.message_opcode is not None:
            self.message_parts.append(bytes(frame.data))
        else:
            conn.close(1002, "unexpected continuation frame")
            return
        if frame.fin:
            data = b"".join(self.message_parts)
            self.message_opcode = None
            self.message_parts = []
            self._on_message(data)

    def _on_close_frame(self, data: bytes) -> None:
        conn = self.conn
        if len(data) >= 2:
            code = struct.unpack("!H", data[:2])[0]
            reason = data[2:].decode("utf-8", "replace")
        else:
            code, reason = 1005, ""
        conn._close_rcvd = True
        if conn.client_close_code is None:
            conn.client_close_code = code
            conn.client_close_reason = reason
        conn.close_received.set()
        logger.debug("connection #%d: client close frame %d %r", conn.index, code, reason)
        with conn._cond:
            conn._cond.notify_all()
        if conn._close_sent_at is not None:
            conn._half_close()  # the answer to our close frame: closing handshake done
            return
        self.gw._on_client_close(conn, code)
        delay = self.gw.close_reply_delay
        conn._reply_pending = True
        conn._reply_at = None if delay is None else time.monotonic() + max(0.0, float(delay))
        self._echo = data

    def _answer_client_close(self) -> None:
        conn = self.conn
        with conn._write_lock:
            if not conn._reply_pending:
                return
            conn._reply_pending = False
            if conn._write(Frame(Opcode.CLOSE, self._echo).serialize(mask=False, extensions=[])):
                conn._close_sent_at = time.monotonic()
                conn._half_close()

    def _on_message(self, data: bytes) -> None:
        """Record one client message; act on it unless the server already sent its close frame."""
        conn = self.conn
        now = time.monotonic()
        try:
            text = data.decode("utf-8")
            payload = json.loads(text)
            valid = isinstance(payload, dict)
        except (UnicodeDecodeError, ValueError):
            payload, valid = None, False
        if not valid:
            payload = {"_invalid": data.decode("utf-8", "replace")}
        with conn._cond:
            conn.received.append((now, payload))
            conn._cond.notify_all()
        if conn._close_sent_at is not None:
            return  # recorded, but after the server's close frame nothing is acted on
        times = conn._recv_times
        times.append(now)
        while times and now - times[0] >= RATE_LIMIT_WINDOW:
            times.popleft()
        if len(times) > RATE_LIMIT_COUNT:
            conn.close(4008, "Rate limited.")
            return
        if len(data) > MAX_PAYLOAD_BYTES:
            conn.close(4002, "Payload too large.")
            return
        if not valid:
            conn.close(4002, "Error while decoding payload.")
            return
        self.gw._handle_payload(conn, payload)


def _select_read(sock: socket.socket, timeout: float) -> Tuple[List[Any], List[Any], List[Any]]:
    return select.select([sock], [], [], timeout)
