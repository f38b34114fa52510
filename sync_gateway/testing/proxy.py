"""A loopback TCP proxy that can freeze connections, to imitate a network path that silently dies.

Why: a "zombie" socket — open on both ends but carrying nothing — is the failure a gateway client
must survive without ever running two live sockets. A frozen proxied connection is exactly that:
both TCP sockets stay open, but bytes in either direction are read and thrown away. The proxy keeps
reading even while frozen, so it notices at once (same select() round) when either side closes or
resets, and then closes the other side; ``live`` therefore drops as soon as the client hard-closes a
frozen socket.

One ``selectors`` thread (``fake_gateway-proxy-PORT``, daemon) does all I/O. Commands from the test
thread (freeze, drop) are queued, the thread is woken through a socket pair, and the caller waits
until the command was applied, so the effect is in place when the method returns.
"""
from __future__ import annotations

import collections
import logging
import selectors
import socket
import struct
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

__all__ = ["FreezingProxy"]

logger = logging.getLogger(__name__)

_CONNECT_TIMEOUT = 2.0
_FLUSH_TIMEOUT = 0.5
_COMMAND_TIMEOUT = 5.0


class _Pair:
    """One proxied connection: the accepted client socket and our socket to the target."""

    def __init__(self, index: int, client: socket.socket, upstream: socket.socket, frozen: bool) -> None:
        self.index = index
        self.client = client
        self.upstream = upstream
        self.frozen = frozen
        self.closed = False
        # bytes waiting to be written to each socket
        self.pending: Dict[socket.socket, bytearray] = {client: bytearray(), upstream: bytearray()}

    def other(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client


class FreezingProxy:
    """TCP proxy from ``host:port`` to ``target_host:target_port`` with freeze and drop switches.

    A connection is *live* from accept until either side closes or resets; then both sides are
    closed. The listening socket is bound in the constructor, so :attr:`url` is known before
    :meth:`start`.
    """

    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0) -> None:
        self.target_host = target_host
        self.target_port = target_port
        #: True: connections accepted from now on start frozen
        self.freeze_new = False
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
        self._commands: Deque[Tuple[Callable[[], None], threading.Event]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._sel: Optional[selectors.BaseSelector] = None

    # ------------------------------------------------------------------ public API

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/"

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
                events = sel.select()
                listener_ready = self._handle(events)
                self._run_commands()
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
            if not pair.frozen:
                self._flush_blocking(pair, pair.other(sock))
            self._close_pair(pair, rst=False)
            return
        if pair.frozen:
            return  # read and thrown away
        dest = pair.other(sock)
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
        for sock in (pair.client, pair.upstream):
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
            try:
                upstream = socket.create_connection((self.target_host, self.target_port), timeout=_CONNECT_TIMEOUT)
            except OSError as exc:
                logger.debug("proxy: cannot reach target: %s", exc)
                with self._cond:
                    self._total += 1
                    self._cond.notify_all()
                client.close()
                continue
            for s in (client, upstream):
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                self._total += 1
                pair = _Pair(self._total, client, upstream, self.freeze_new)
                self._pairs.append(pair)
                self._live += 1
                self._max_live = max(self._max_live, self._live)
                self._cond.notify_all()
            assert self._sel is not None
            self._sel.register(client, selectors.EVENT_READ, pair)
            self._sel.register(upstream, selectors.EVENT_READ, pair)
            logger.debug("proxy #%d: accepted%s", pair.index, " (frozen)" if pair.frozen else "")

    def _close_pair(self, pair: _Pair, rst: bool) -> None:
        if pair.closed:
            return
        pair.closed = True
        for sock in (pair.client, pair.upstream):
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
