"""A loopback TCP proxy that can freeze connections, to imitate a network path that silently dies.

Why: a "zombie" socket — open on both ends but carrying nothing — is the failure a gateway client
must survive without ever running two live sockets. A frozen proxied connection is exactly that:
both TCP sockets stay open, but bytes in either direction are read and thrown away. The proxy keeps
reading even while frozen, so it notices at once (same select() round) when either side closes or
resets, and then closes the other side; ``live`` therefore drops as soon as the client hard-closes a
frozen socket.

Two more ways a real network path differs from loopback, for the production path in the tests:

* :class:`Trickle` (``FreezingProxy(..., trickle=Trickle(seed=1))``): the server's bytes reach the
  client in small pieces with pauses, and the last bytes of every burst are held back a while — what
  TLS records and real networks deliver. A reader that waits for bytes that have not arrived before it
  hands over a frame that is complete shows up as a delay of the hold; a reader that mis-parses a
  frame split anywhere shows up as garbage. The piece sizes and pauses come from a
  ``random.Random`` seeded with ``(seed, connection number)``, so a run is reproducible byte-for-byte
  as far as the proxy decides (how the OS coalesces what it sends is not ours to decide).
* :attr:`FreezingProxy.stall_new`: connections accepted get no upstream at all; whatever the client
  sends is read and thrown away and nothing ever comes back. For ``wss://`` that is a server that
  accepted TCP and stalls the TLS handshake (the ClientHello is never answered).

One ``selectors`` thread (``fake_gateway-proxy-PORT``, daemon) does all I/O. Commands from the test
thread (freeze, drop) are queued, the thread is woken through a socket pair, and the caller waits
until the command was applied, so the effect is in place when the method returns.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import random
import selectors
import socket
import struct
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

__all__ = ["FreezingProxy", "Trickle"]

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 2.0
_FLUSH_TIMEOUT = 0.5
_COMMAND_TIMEOUT = 5.0


@dataclasses.dataclass(frozen=True)
class Trickle:
    """How the server->client direction is delivered in pieces (see the module docstring).

    Every piece is ``chunk`` bytes (inclusive range, drawn per piece) and is followed by a pause drawn
    from ``pause`` seconds. When a burst (the bytes queued since the queue was last empty) is down to
    its last ``hold_bytes`` bytes, those wait ``hold`` seconds (drawn per burst) before they go.
    ``records`` is read by :class:`~sync_gateway.testing.FakeGateway` only: over ``wss://`` it writes
    each message as TLS records of that many plaintext bytes, so the client's TLS layer hands the
    reader the plaintext in those pieces (the proxy alone cannot split plaintext it cannot see).
    """

    seed: int = 0
    chunk: Tuple[int, int] = (1, 7)
    pause: Tuple[float, float] = (0.0, 0.002)
    hold_bytes: int = 3
    hold: Tuple[float, float] = (0.05, 0.2)
    records: Tuple[int, int] = (1, 7)

    def __post_init__(self) -> None:
        for name in ("chunk", "records"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"Trickle.{name} must be (lo, hi) with 1 <= lo <= hi")
        for name in ("pause", "hold"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"Trickle.{name} must be (lo, hi) seconds with 0 <= lo <= hi")
        if self.hold_bytes < 0:
            raise ValueError("Trickle.hold_bytes must be >= 0")

    def rng(self, index: int) -> random.Random:
        """The random source for connection number ``index`` (reproducible per seed and index)."""
        return random.Random(f"{self.seed}:{index}")


class _Pair:
    """One proxied connection: the accepted client socket and our socket to the target (None when
    the connection is stalled: nothing is forwarded either way)."""

    def __init__(
        self,
        index: int,
        client: socket.socket,
        upstream: Optional[socket.socket],
        frozen: bool,
        trickle: Optional[Trickle],
    ) -> None:
        self.index = index
        self.client = client
        self.upstream = upstream
        self.frozen = frozen
        self.closed = False
        # bytes waiting to be written to each socket
        self.pending: Dict[socket.socket, bytearray] = {client: bytearray()}
        if upstream is not None:
            self.pending[upstream] = bytearray()
        # trickle state (server->client): bytes not yet cut into pieces, when the next piece is due,
        # whether the current burst was held already, whether the server has closed its side
        self.trickle = trickle
        self.rng = trickle.rng(index) if trickle is not None else None
        self.queue = bytearray()
        self.due: Optional[float] = None
        self.held = False
        self.upstream_eof = False

    @property
    def sockets(self) -> Tuple[socket.socket, ...]:
        return (self.client,) if self.upstream is None else (self.client, self.upstream)

    def other(self, sock: socket.socket) -> Optional[socket.socket]:
        return self.upstream if sock is self.client else self.client


class FreezingProxy:
    """TCP proxy from ``host:port`` to ``target_host:target_port`` with freeze and drop switches.

    A connection is *live* from accept until either side closes or resets; then both sides are
    closed. The listening socket is bound in the constructor, so :attr:`url` is known before
    :meth:`start`.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        trickle: Optional[Trickle] = None,
        scheme: str = "ws",
    ) -> None:
        if scheme not in ("ws", "wss", "http", "https"):
            raise ValueError(f"scheme must be ws, wss, http or https, not {scheme!r}")
        self.target_host = target_host
        self.target_port = target_port
        #: how server->client bytes are delivered; None: at once, as they come
        self.trickle = trickle
        #: scheme of :attr:`url`: ``wss`` in front of a TLS server (the proxy itself only sees TCP)
        self.scheme = scheme
        #: True: connections accepted from now on start frozen
        self.freeze_new = False
        #: True: connections accepted from now on are never connected to the target: the client's
        #: bytes are read and thrown away and nothing ever comes back (a stalled TLS handshake for
        #: ``wss://``); they stay live until the client closes them or :meth:`drop`/:meth:`stop`
        self.stall_new = False
        self._listener = socket.create_server((host, port))
        self._listener.setblocking(False)
        self.host: str = self._listener.getsockname()[0]
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pairs: List[_Pair] = []
        self._live = 0
        self._max_live = 0
        self._total = 0
        self._from_clients = 0
        self._commands: Deque[Tuple[Callable[[], None], threading.Event]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sel: Optional[selectors.BaseSelector] = None

    # ------------------------------------------------------------------ public API

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/"

    @property
    def live(self) -> int:
        """Connections open on both sides right now."""
        with self._lock:
            return self._live

    @property
    def max_live(self) -> int:
        """Most connections ever live at once (since construction or :meth:`reset_stats`)."""
        with self._lock:
            return self._max_live

    @property
    def total(self) -> int:
        """Connections accepted so far (never reset)."""
        with self._lock:
            return self._total

    @property
    def bytes_from_clients(self) -> int:
        """Bytes received from clients so far, forwarded or not (e.g. a ClientHello a stalled
        connection swallowed: proof that the client is in its TLS handshake)."""
        with self._lock:
            return self._from_clients

    def reset_stats(self) -> None:
        """Set :attr:`max_live` back to the current :attr:`live` count."""
        with self._lock:
            self._max_live = self._live

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> None:
        """Block until :attr:`total` >= ``n``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._total < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"proxy accepted {self._total} connection(s), wanted {n}, in {timeout}s")
                self._cond.wait(remaining)

    def start(self) -> "FreezingProxy":
        if self._thread is not None:
            raise RuntimeError("FreezingProxy already started")
        self._thread = threading.Thread(target=self._run, name=f"fake_gateway-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every socket and join the proxy thread (bounded)."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(_COMMAND_TIMEOUT)
            if self._thread.is_alive():
                logger.warning("proxy thread did not exit in time")
        else:
            self._listener.close()
        for s in (self._wake_r, self._wake_w):
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> "FreezingProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def freeze(self) -> None:
        """Stop forwarding on every live connection, both directions; sockets stay open.

        Data already buffered and data arriving later are discarded. When this returns, no further
        byte of those connections is forwarded.
        """

        def apply() -> None:
            for pair in self._pairs:
                pair.frozen = True
                pair.queue.clear()
                for buf in pair.pending.values():
                    buf.clear()
                self._update_interest(pair)
            logger.debug("proxy froze %d connection(s)", len(self._pairs))

        self._command(apply)

    def drop(self) -> None:
        """Abort every live connection on both sides (RST, no websocket close frame)."""

        def apply() -> None:
            for pair in list(self._pairs):
                self._close_pair(pair, rst=True)

        self._command(apply)

    # ------------------------------------------------------------------ thread plumbing

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _command(self, fn: Callable[[], None]) -> None:
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        with self._lock:
            self._commands.append((fn, done))
        self._wake()
        if not done.wait(_COMMAND_TIMEOUT):
            raise TimeoutError("proxy thread did not apply the command")

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        self._sel = sel
        sel.register(self._listener, selectors.EVENT_READ, None)
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        try:
            while not self._stopping.is_set():
                events = sel.select(self._next_timeout())
                listener_ready = self._handle(events)
                self._run_commands()
                self._pump()
                if listener_ready and not self._stopping.is_set():
                    # Close events first: a client that hard-closed its old socket and connected a new
                    # one must never be counted twice. Re-poll the sockets at once before accepting.
                    self._handle(sel.select(0), accept=False)
                    self._accept()
        except Exception:
            logger.exception("proxy thread failed")
        finally:
            for pair in list(self._pairs):
                self._close_pair(pair, rst=False)
            self._run_commands()
            sel.close()
            self._listener.close()
            with self._lock:
                for _fn, done in self._commands:
                    done.set()
                self._commands.clear()

    def _next_timeout(self) -> Optional[float]:
        """Seconds until the next trickled piece is due (None: nothing scheduled)."""
        dues = [p.due for p in self._pairs if p.due is not None]
        if not dues:
            return None
        return max(0.0, min(dues) - time.monotonic())

    def _pump(self) -> None:
        """Send every trickled piece that is due; close pairs whose server side ended and drained."""
        now = time.monotonic()
        for pair in list(self._pairs):
            if pair.closed or pair.due is None or pair.due > now:
                continue
            if pair.pending[pair.client]:
                pair.due = now + 0.001  # the last piece is not out yet (client slow): look again soon
                continue
            self._send_piece(pair, now)

    def _send_piece(self, pair: _Pair, now: float) -> None:
        trickle, rng, queue = pair.trickle, pair.rng, pair.queue
        assert trickle is not None and rng is not None
        if pair.frozen:
            queue.clear()
        if not queue:
            pair.due = None
            pair.held = False
            if pair.upstream_eof:
                self._close_pair(pair, rst=False)
            return
        n = rng.randint(*trickle.chunk)
        if trickle.hold_bytes and not pair.held and len(queue) - n < trickle.hold_bytes:
            # the burst's last bytes: send up to them, then hold them back a while
            n = len(queue) - trickle.hold_bytes
            if n <= 0:
                pair.held = True
                pair.due = now + rng.uniform(*trickle.hold)
                return
        piece = bytes(queue[:n])
        del queue[:n]
        pair.pending[pair.client] += piece
        self._flush(pair, pair.client)
        if pair.closed:
            return
        if not queue and not pair.upstream_eof:
            pair.due = None
            pair.held = False
            return
        pair.due = now + rng.uniform(*trickle.pause)

    def _run_commands(self) -> None:
        while True:
            with self._lock:
                if not self._commands:
                    return
                fn, done = self._commands.popleft()
            try:
                fn()
            finally:
                done.set()

    def _handle(self, events: List[Tuple[selectors.SelectorKey, int]], accept: bool = True) -> bool:
        """Process socket events; returns whether the listener is readable."""
        listener_ready = False
        for key, mask in events:
            sock = key.fileobj
            if sock is self._listener:
                listener_ready = True
                continue
            if sock is self._wake_r:
                try:
                    while self._wake_r.recv(4096):
                        pass
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    pass
                continue
            pair: _Pair = key.data
            if pair.closed:
                continue
            if mask & selectors.EVENT_READ:
                self._on_readable(pair, sock)  # type: ignore[arg-type]
            if not pair.closed and mask & selectors.EVENT_WRITE:
                self._flush(pair, sock)  # type: ignore[arg-type]
        return listener_ready and accept

    def _on_readable(self, pair: _Pair, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            logger.debug("proxy #%d: %s side error: %s", pair.index, self._side(pair, sock), exc)
            self._close_pair(pair, rst=True)
            return
        if not data:
            logger.debug("proxy #%d: EOF from %s side", pair.index, self._side(pair, sock))
            if pair.trickle is not None and sock is pair.upstream and not pair.frozen and pair.queue:
                # the server is done, but what it sent still trickles out before we close
                pair.upstream_eof = True
                if self._sel is not None:
                    try:
                        self._sel.unregister(sock)
                    except (KeyError, ValueError):
                        pass
                return
            dest = pair.other(sock)
            if not pair.frozen and dest is not None:
                self._flush_blocking(pair, dest)
            self._close_pair(pair, rst=False)
            return
        if sock is pair.client:
            with self._lock:
                self._from_clients += len(data)
        dest = pair.other(sock)
        if pair.frozen or dest is None:
            return  # read and thrown away
        if pair.trickle is not None and dest is pair.client:
            pair.queue += data
            if pair.due is None:
                pair.due = time.monotonic()
            return
        pair.pending[dest] += data
        self._flush(pair, dest)

    def _flush(self, pair: _Pair, sock: socket.socket) -> None:
        buf = pair.pending[sock]
        if pair.frozen:
            buf.clear()
        while buf:
            try:
                n = sock.send(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                logger.debug("proxy #%d: send to %s side failed: %s", pair.index, self._side(pair, sock), exc)
                self._close_pair(pair, rst=True)
                return
            del buf[:n]
        self._update_interest(pair)

    def _flush_blocking(self, pair: _Pair, sock: socket.socket) -> None:
        """Best effort: deliver what is buffered before closing (e.g. a close frame followed by FIN)."""
        buf = pair.pending[sock]
        if not buf:
            return
        try:
            sock.settimeout(_FLUSH_TIMEOUT)
            sock.sendall(bytes(buf))
        except OSError:
            pass
        buf.clear()

    def _update_interest(self, pair: _Pair) -> None:
        """Read both sockets always (that is how a close is noticed, frozen or not); write interest
        only while bytes wait. No back-pressure: test traffic is small."""
        if pair.closed or self._sel is None:
            return
        for sock in pair.sockets:
            if sock is pair.upstream and pair.upstream_eof:
                continue
            events = selectors.EVENT_READ
            if pair.pending[sock]:
                events |= selectors.EVENT_WRITE
            try:
                self._sel.modify(sock, events, pair)
            except (KeyError, ValueError, OSError):
                pass

    def _accept(self) -> None:
        while True:
            try:
                client, _addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            upstream: Optional[socket.socket] = None
            stalled = self.stall_new
            if not stalled:
                try:
                    upstream = socket.create_connection(
                        (self.target_host, self.target_port), timeout=_CONNECT_TIMEOUT
                    )
                except OSError as exc:
                    logger.debug("proxy: cannot reach target: %s", exc)
                    with self._cond:
                        self._total += 1
                        self._cond.notify_all()
                    client.close()
                    continue
            with self._cond:
                self._total += 1
                pair = _Pair(self._total, client, upstream, self.freeze_new, self.trickle)
                self._pairs.append(pair)
                self._live += 1
                self._max_live = max(self._max_live, self._live)
                self._cond.notify_all()
            for s in pair.sockets:
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert self._sel is not None
            for s in pair.sockets:
                self._sel.register(s, selectors.EVENT_READ, pair)
            logger.debug(
                "proxy #%d: accepted%s", pair.index, " (stalled)" if stalled else " (frozen)" if pair.frozen else ""
            )

    def _close_pair(self, pair: _Pair, rst: bool) -> None:
        if pair.closed:
            return
        pair.closed = True
        pair.due = None
        for sock in pair.sockets:
            if self._sel is not None:
                try:
                    self._sel.unregister(sock)
                except (KeyError, ValueError):
                    pass
            try:
                if rst:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            except OSError:
                pass
        with self._cond:
            if pair in self._pairs:
                self._pairs.remove(pair)
            self._live -= 1
            self._cond.notify_all()
        logger.debug("proxy #%d: closed (%s)", pair.index, "reset" if rst else "close")

    @staticmethod
    def _side(pair: _Pair, sock: socket.socket) -> str:
        return "client" if sock is pair.client else "target"
