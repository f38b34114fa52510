"""FreezingProxy in front of FakeGateway: forwarding, freezing (both sockets open, nothing passes),
prompt close detection while frozen, the live/max_live counters the client's tests rely on, drop()."""
import json
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
import websocket

from sync_gateway.testing import FakeGateway, FreezingProxy

pytestmark = pytest.mark.timeout(30)

PROPS = {"os": "linux", "browser": "test", "device": "test"}


@pytest.fixture(autouse=True)
def no_thread_leak() -> Iterator[None]:
    yield
    alive = [t for t in threading.enumerate() if t.name.startswith("fake_gateway-")]
    assert not alive, f"threads left alive: {alive}"


@pytest.fixture
def rig() -> Iterator[Tuple[FakeGateway, FreezingProxy]]:
    with FakeGateway() as gw, FreezingProxy(gw.host, gw.port) as proxy:
        yield gw, proxy


def connect(proxy: FreezingProxy, timeout: float = 5.0) -> websocket.WebSocket:
    return websocket.create_connection(proxy.url + "?v=10&encoding=json", timeout=timeout)


def recv_json(ws: websocket.WebSocket) -> Dict[str, Any]:
    return json.loads(ws.recv())


def wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> float:
    """Poll ``cond`` (a counter read, no event to wait on); return the seconds it took."""
    started = time.monotonic()
    pause = threading.Event()
    while not cond():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not met in time")
        pause.wait(0.002)
    return time.monotonic() - started


def hard_close(ws: websocket.WebSocket, rst: bool) -> None:
    """Close the client's socket without a websocket close frame (FIN, or RST with SO_LINGER 0)."""
    if rst:
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.sock.close()


def test_forwards_both_ways(rig: Tuple[FakeGateway, FreezingProxy]) -> None:
    gw, proxy = rig
    assert proxy.url == f"ws://127.0.0.1:{proxy.port}/"
    ws = connect(proxy)
    proxy.wait_for_connections(1)
    assert proxy.live == 1 and proxy.total == 1 and proxy.max_live == 1
    assert recv_json(ws)["op"] == 10
    ws.send(json.dumps({"op": 2, "d": {"token": "t", "intents": 1, "properties": PROPS}}))
    assert recv_json(ws)["t"] == "READY"
    big = {"blob": "x" * 200_000}  # larger than socket buffers: exercises partial sends
    gw.dispatch("BIG", big)
    assert recv_json(ws)["d"] == big
    ws.close(status=4000)
    conn = gw.connections[0]
    assert conn.closed.wait(2) and conn.client_close_code == 4000
    wait_until(lambda: proxy.live == 0)


def test_freeze_stops_both_directions_but_keeps_sockets_open(rig: Tuple[FakeGateway, FreezingProxy]) -> None:
    gw, proxy = rig
    ws = connect(proxy)
    conn = gw.wait_for_connections(1)
    assert recv_json(ws)["op"] == 10
    proxy.freeze()
    conn.send_op(1)  # server -> client: must not arrive
    conn.send_raw(b"\x00" * 100_000)
    ws.send(json.dumps({"op": 1, "d": None}))  # client -> server: must not arrive
    ws.settimeout(0.3)
    with pytest.raises(websocket.WebSocketTimeoutException):
        ws.recv()
    with pytest.raises(TimeoutError):
        conn.wait_for(op=1, timeout=0.2)
    assert conn.received == []
    assert proxy.live == 1 and not conn.closed.is_set() and gw.live_connections() == 1
    ws.shutdown()
    wait_until(lambda: proxy.live == 0)
    assert conn.closed.wait(2)


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
def test_client_close_of_frozen_connection_is_noticed_at_once(
    rig: Tuple[FakeGateway, FreezingProxy], rst: bool
) -> None:
    gw, proxy = rig
    ws = connect(proxy)
    conn = gw.wait_for_connections(1)
    recv_json(ws)
    proxy.freeze()
    hard_close(ws, rst)
    took = wait_until(lambda: proxy.live == 0, timeout=1.0)
    assert took < 0.05, f"frozen close noticed after {took:.3f}s"
    assert conn.closed.wait(2)  # the proxy closed the gateway side too


def test_forced_reconnect_never_carries_two_live_connections(rig: Tuple[FakeGateway, FreezingProxy]) -> None:
    """The client's scenario: hard-close a frozen socket, open a new one at once — many times."""
    gw, proxy = rig
    ws = connect(proxy)
    recv_json(ws)
    proxy.reset_stats()
    for i in range(30):
        proxy.freeze()
        hard_close(ws, rst=i % 2 == 0)
        ws = connect(proxy)
        assert recv_json(ws)["op"] == 10
    assert proxy.max_live == 1
    assert proxy.total == 31
    gw.wait_for_connections(31)
    ws.close(status=4000)
    wait_until(lambda: proxy.live == 0)
    proxy.reset_stats()
    assert proxy.max_live == 0


def test_max_live_counts_concurrent_connections(rig: Tuple[FakeGateway, FreezingProxy]) -> None:
    _gw, proxy = rig
    sockets: List[websocket.WebSocket] = [connect(proxy) for _ in range(3)]
    proxy.wait_for_connections(3)
    assert proxy.live == 3 and proxy.max_live == 3
    sockets[0].close(status=4000)
    wait_until(lambda: proxy.live == 2)
    assert proxy.max_live == 3
    proxy.reset_stats()
    assert proxy.max_live == 2
    for ws in sockets[1:]:
        ws.close(status=4000)
    wait_until(lambda: proxy.live == 0)


def test_freeze_new_connections_start_frozen(rig: Tuple[FakeGateway, FreezingProxy]) -> None:
    gw, proxy = rig
    proxy.freeze_new = True
    # The HTTP upgrade itself is swallowed, so talk raw TCP: nothing ever comes back.
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        proxy.wait_for_connections(1)
        s.sendall(b"GET /?v=10&encoding=json HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
        s.settimeout(0.3)
        with pytest.raises(socket.timeout):
            s.recv(100)
        assert proxy.live == 1 and gw.connections == []
    wait_until(lambda: proxy.live == 0)
    proxy.freeze_new = False
    ws = connect(proxy)
    assert recv_json(ws)["op"] == 10
    ws.close(status=4000)


def test_drop_resets_every_live_connection(rig: Tuple[FakeGateway, FreezingProxy]) -> None:
    gw, proxy = rig
    clients = [connect(proxy) for _ in range(2)]
    for ws in clients:
        recv_json(ws)
    gw.wait_for_connections(2)
    proxy.freeze()
    proxy.drop()
    assert proxy.live == 0
    for ws in clients:
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
            ws.recv()
        ws.shutdown()
    for conn in gw.connections:
        assert conn.closed.wait(2)
        assert conn.client_close_code is None
    assert proxy.max_live == 2 and proxy.total == 2


def test_wait_for_connections_timeout_and_unreachable_target() -> None:
    placeholder = socket.create_server(("127.0.0.1", 0))
    dead_port = placeholder.getsockname()[1]
    placeholder.close()
    with FreezingProxy("127.0.0.1", dead_port) as proxy:
        with pytest.raises(TimeoutError):
            proxy.wait_for_connections(1, timeout=0.1)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            proxy.wait_for_connections(1)
            assert s.recv(10) == b""  # closed: the target is unreachable
        assert proxy.live == 0 and proxy.total == 1


# --------------------------------------------------------------------------- trickle and stall modes


class _Blob:
    """A TCP server that sends ``data`` to its one connection at once, then closes it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, name="fake_gateway-test-blob", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(self.data)
        self.listener.close()


def read_all(sock: socket.socket) -> Tuple[bytes, List[Tuple[float, int]]]:
    data, log = b"", []
    while True:
        piece = sock.recv(65536)
        if not piece:
            return data, log
        data += piece
        log.append((time.monotonic(), len(data)))


def test_trickle_delivers_every_byte_in_pieces_and_holds_the_tail() -> None:
    from sync_gateway.testing import Trickle

    blob = bytes(range(256)) * 4
    server = _Blob(blob)
    trickle = Trickle(seed=7, chunk=(1, 7), pause=(0.0, 0.001), hold_bytes=3, hold=(0.15, 0.15))
    with FreezingProxy("127.0.0.1", server.port, trickle=trickle) as proxy:
        client = socket.create_connection((proxy.host, proxy.port), timeout=5)
        data, log = read_all(client)  # the server's close is passed on after the last byte
        client.close()
        assert data == blob
        assert len(log) > 20  # in pieces, not in one read
        tail_start = min(t for t, n in log if n > len(blob) - 3)
        before_tail = max(t for t, n in log if n <= len(blob) - 3)
        assert tail_start - before_tail >= 0.14  # the last 3 bytes were held back
        wait_until(lambda: proxy.live == 0)
    server.thread.join(5)


def test_trickle_pieces_are_reproducible_from_the_seed() -> None:
    from sync_gateway.testing import Trickle

    a, b = Trickle(seed=5).rng(1), Trickle(seed=5).rng(1)
    assert [a.randint(1, 7) for _ in range(50)] == [b.randint(1, 7) for _ in range(50)]
    assert Trickle(seed=5).rng(2).random() != Trickle(seed=5).rng(1).random()
    with pytest.raises(ValueError):
        Trickle(chunk=(0, 3))


def test_stall_new_swallows_the_client_bytes_and_never_connects_upstream() -> None:
    target = socket.create_server(("127.0.0.1", 0))
    target.setblocking(False)
    with FreezingProxy("127.0.0.1", target.getsockname()[1], scheme="wss") as proxy:
        assert proxy.url.startswith("wss://")
        proxy.stall_new = True
        client = socket.create_connection((proxy.host, proxy.port), timeout=5)
        hello = b"\x16\x03\x01 a ClientHello, say"
        client.sendall(hello)
        wait_until(lambda: proxy.bytes_from_clients == len(hello))
        assert proxy.live == 1
        client.settimeout(0.2)
        with pytest.raises(socket.timeout):
            client.recv(16)  # nothing ever comes back
        with pytest.raises(BlockingIOError):
            target.accept()  # no upstream connection was made
        client.close()
        wait_until(lambda: proxy.live == 0)
        assert proxy.max_live == 1
    target.close()
