#!/usr/bin/env python
"""Speed, side by side: the bare websocket-client floor, GatewayClient (json / orjson) and discord.py.

    python tools/bench.py [--quick] [--json] [--events N] [--runs R]

What it measures, in one run:

* **Decode limit** (rows "(L)"): the same frames, built by the same encoder, zlib-inflated (raw
  inflate after the stream's header, without the adler32 that zlib-stream never checks, as the
  client does) and JSON-decoded from memory in one thread (``json.loads`` and ``orjson.loads``):
  no socket, no framing, no threads. Every row's "x limit" is its events/s over the limit row of its JSON
  library (the floor and discord.py against json's): how much of a client's time is not decoding.
  These rows do the same work every run, so when their runs spread by more than 15 %, a note says
  the machine's speed was not steady during the run (and every ratio is uncertain by as much).
* **Throughput**: N (default 50,000; ``--quick`` 5,000) ~750-byte MESSAGE_CREATE dispatches over
  loopback, zlib-stream and uncompressed, for (a) the floor — websocket-client ``recv_data`` +
  one ``zlib.decompressobj`` (buffer until ``00 00 ff ff``) + ``json.loads``, with
  ``skip_utf8_validation=True``, doing HELLO/IDENTIFY itself; (b) ``GatewayClient`` with a no-op
  ``"*"`` handler, with ``sync_gateway.codec.loads`` set to ``json.loads`` and (when importable) to
  ``orjson.loads``; (c) discord.py when ``discord`` is importable (``on_message`` handler; its REST
  base and gateway URL are pointed at the bench server; zstd is hidden from it so it speaks
  zlib-stream like the others). Runs alternate (every runner once per round, the order rotating),
  median of ``--runs`` rounds (default 3; ``--quick`` 1). Per row: events/s from the first to the
  last event at the handler, CPU seconds (process time from connect to the last event), peak RSS,
  OS threads at the end, and the events/s ratio to (a) and to (c).
* **4 shards in one process** (ShardedClient, each socket carrying the whole stream, one counter per
  shard so no handler lock is measured) against one shard, and the same 4 shards in **two
  processes** (2 + 2, started together, counted from the first event either sees to the last),
  in rounds: each round runs the three back to back, and each "x one shard" is the median of the
  rounds' ratios.
* **Latency** server-send -> handler, p50/p99, at 1,000 events/s: a FakeGateway in this process puts
  ``time.perf_counter()`` into each event just before ``dispatch()`` (so the fake's own JSON and zlib
  work is inside the number).
* **Idle CPU** of a connected client over 30 s (``--quick``: 5 s).
* **Idle shards**: RSS and OS threads each added connected idle shard costs (1 shard, then 7 more;
  ``--quick``: 3), in one process against a FakeGateway.
* **RSS growth** over 1,000,000 events (``--quick``: 100,000) after a warm-up of 10 %.
* **Recovery**: op 7 -> RESUMED, and a frozen socket (``FreezingProxy``) + ``reconnect(fresh=True)``
  -> READY, with the default ``LifecycleConfig`` (so the second is bounded below by
  ``drain_timeout``, 5 s: the frozen peer never answers our close frame).

Each throughput/idle/RSS measurement runs in a fresh child process (``--_worker``), so CPU, peak RSS
and thread counts are that runner's alone. The event stream comes from a raw loopback server in
another child process (``--_serve``) that sends frames pre-encoded (and pre-compressed with one
zlib context, exactly as Discord's zlib-stream) before the run: FakeGateway.dispatch_many encodes
and compresses every event in Python under a lock and is slower than the clients, so it would be the
bottleneck. The bench measures that too and prints it. The RSS run is too long to pre-encode; its
server generates frames on the fly (its encode rate is printed: it must stay above the client's).

Runs from a fresh clone after ``pip install -e '.[test]'``; ``tests/test_bench.py`` checks the
``--json`` shape with tiny numbers. Linux gives the full picture (``/proc`` for threads and current
RSS); elsewhere some columns fall back to what ``resource``/``threading`` can tell.
"""
import argparse
import base64
import gc
import hashlib
import json
import os
import platform
import random
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

try:
    import sync_gateway  # noqa: F401
except ImportError:  # run from a checkout that was not installed: use the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.bench-token.not-a-real-one"
COMPRESSIONS = ("zlib-stream", None)
HEARTBEAT_MS = 600_000  # the raw server never ACKs: no heartbeat may fall due during a run
IDLE_HEARTBEAT_MS = 41_250  # Discord's usual interval, for the idle measurement
BOT_USER = {
    "id": "100000000000000001",
    "username": "bench-bot",
    "discriminator": "0",
    "global_name": None,
    "avatar": None,
    "bot": True,
    "verified": True,
    "mfa_enabled": False,
    "flags": 0,
    "public_flags": 0,
}
APPLICATION = {
    "id": "100000000000000001",
    "name": "bench-app",
    "description": "",
    "icon": None,
    "bot_public": True,
    "bot_require_code_grant": False,
    "owner": BOT_USER,
    "verify_key": "0" * 64,
    "flags": 0,
}

RUNNER_LABELS = {
    "limit-json": "(L) decode limit, json",
    "limit-orjson": "(L) decode limit, orjson",
    "floor": "(a) websocket-client floor",
    "sg-json": "(b) GatewayClient, json",
    "sg-orjson": "(b) GatewayClient, orjson",
    "discord.py": "(c) discord.py",
}

# ---------------------------------------------------------------------------------------------
# the event stream

_WORDS = (
    "the gateway keeps one session alive for weeks through stale sockets half open tcp hello stalls "
    "invalid sessions and restarts without ever opening a second socket or replaying a poisoned "
    "session burning identify quota leaking thread heartbeat resume shard intents guild channel "
    "message reaction presence member voice ready reconnect zlib frame latency dispatcher handler"
).split()


def make_messages(count: int = 499, seed: int = 7) -> List[Dict[str, Any]]:
    """*count* different guild MESSAGE_CREATE ``d`` objects shaped like Discord's (~750 bytes as a
    whole dispatch payload, content 5-70 characters)."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        words = []
        target = rng.randint(5, 70)
        while sum(len(w) + 1 for w in words) < target:
            words.append(rng.choice(_WORDS))
        author_id = str(400000000000000000 + rng.randint(0, 50))
        out.append(
            {
                "type": 0,
                "tts": False,
                "timestamp": f"2024-05-01T12:{n % 60:02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999999):06d}+00:00",
                "pinned": False,
                "nonce": str(1230000000000000000 + rng.randint(0, 10**15)),
                "mentions": [],
                "mention_roles": [],
                "mention_everyone": False,
                "member": {
                    "roles": [str(500000000000000000 + rng.randint(0, 9))],
                    "premium_since": None,
                    "pending": False,
                    "nick": None,
                    "mute": False,
                    "joined_at": "2023-01-01T00:00:00.000000+00:00",
                    "flags": 0,
                    "deaf": False,
                },
                "id": str(1200000000000000000 + n * 4096 + rng.randint(0, 4095)),
                "flags": 0,
                "embeds": [],
                "edited_timestamp": None,
                "content": " ".join(words),
                "components": [],
                "channel_id": str(200000000000000000 + rng.randint(0, 3)),
                "author": {
                    "username": f"user{author_id[-2:]}",
                    "public_flags": 0,
                    "id": author_id,
                    "global_name": f"User {author_id[-2:]}",
                    "discriminator": "0",
                    "avatar": hashlib.md5(author_id.encode()).hexdigest() if n % 2 else None,
                },
                "attachments": [],
                "guild_id": "300000000000000003",
            }
        )
    return out


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class FrameEncoder:
    """Server frames for one socket: one zlib context for the socket's life (zlib-stream), one
    websocket message per payload, Z_SYNC_FLUSH after each, as Discord does."""

    def __init__(self, compress: Optional[str]) -> None:
        self.compress = compress
        self._z = zlib.compressobj() if compress == "zlib-stream" else None
        self.raw_bytes = 0

    def frame(self, payload: bytes) -> bytes:
        self.raw_bytes += len(payload)
        if self._z is not None:
            data = self._z.compress(payload) + self._z.flush(zlib.Z_SYNC_FLUSH)
            opcode = 0x82
        else:
            data = payload
            opcode = 0x81
        n = len(data)
        if n < 126:
            head = bytes((opcode, n))
        elif n < 65536:
            head = struct.pack("!BBH", opcode, 126, n)
        else:
            head = struct.pack("!BBQ", opcode, 127, n)
        return head + data


class EventSource:
    """Dispatch payload bytes for seq 2, 3, ... cycling through the prepared messages."""

    def __init__(self) -> None:
        self._parts = [_dumps(d) for d in make_messages()]
        self.mean_payload_bytes = statistics.mean(
            len(b'{"t":"MESSAGE_CREATE","s":100000,"op":0,"d":') + len(p) + 1 for p in self._parts
        )

    def payload(self, seq: int) -> bytes:
        return b'{"t":"MESSAGE_CREATE","s":%d,"op":0,"d":%s}' % (seq, self._parts[seq % len(self._parts)])


def hello_payload() -> bytes:
    return _dumps({"t": None, "s": None, "op": 10, "d": {"heartbeat_interval": HEARTBEAT_MS}})


def ready_payload(url: str) -> bytes:
    return _dumps(
        {  # Discord's order on the wire: t, s, op, d
            "t": "READY",
            "s": 1,
            "op": 0,
            "d": {
                "v": 10,
                "user": BOT_USER,
                "guilds": [],
                "session_id": "bench-session",
                "resume_gateway_url": url,
                "shard": [0, 1],
                "application": {"id": APPLICATION["id"], "flags": 0},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": [],
                "user_settings": {},
            },
        }
    )


# ---------------------------------------------------------------------------------------------
# the raw server (runs in its own process: python tools/bench.py --_serve N)


class _ClientFrames:
    """Parses the masked frames a client sends (enough for IDENTIFY, heartbeats and close)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> List[Tuple[int, bytes]]:
        self.buf += data
        out = []
        while True:
            b = self.buf
            if len(b) < 2:
                return out
            opcode = b[0] & 0x0F
            masked = b[1] & 0x80
            n = b[1] & 0x7F
            pos = 2
            if n == 126:
                if len(b) < 4:
                    return out
                n = struct.unpack("!H", bytes(b[2:4]))[0]
                pos = 4
            elif n == 127:
                if len(b) < 10:
                    return out
                n = struct.unpack("!Q", bytes(b[2:10]))[0]
                pos = 10
            key = b""
            if masked:
                if len(b) < pos + 4:
                    return out
                key = bytes(b[pos : pos + 4])
                pos += 4
            if len(b) < pos + n:
                return out
            payload = bytes(b[pos : pos + n])
            del b[: pos + n]
            if masked:
                payload = bytes(c ^ key[i % 4] for i, c in enumerate(payload))
            out.append((opcode, payload))


class RawServer:
    """A minimal gateway: HELLO, wait for IDENTIFY, READY, then every event in one go.

    Paths: ``/cached/N/`` sends N events pre-encoded before the run (built once per compression and
    reused: each socket starts a fresh zlib context, and so did the encoder); ``/stream/N/`` encodes
    on the fly. ``/<kind>/<N>/api/v10/...`` serves the REST routes discord.py calls.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.source = EventSource()
        self._cache: Dict[Tuple[Optional[str], int, str], Tuple[bytes, bytes, bytes]] = {}
        self._lock = threading.Lock()

    def url(self, kind: str, n: int) -> str:
        return f"ws://127.0.0.1:{self.port}/{kind}/{n}/"

    def cached(self, compress: Optional[str], n: int) -> Tuple[bytes, bytes, bytes]:
        url = self.url("cached", n)
        key = (compress, n, url)
        with self._lock:
            if key not in self._cache:
                enc = FrameEncoder(compress)
                hello = enc.frame(hello_payload())
                ready = enc.frame(ready_payload(url))
                events = b"".join(enc.frame(self.source.payload(seq)) for seq in range(2, n + 2))
                self._cache[key] = (hello, ready, events)
            return self._cache[key]

    def encode_rate(self, compress: Optional[str], n: int = 20000) -> float:
        enc = FrameEncoder(compress)
        payload = self.source.payload
        started = time.perf_counter()
        for seq in range(2, n + 2):
            enc.frame(payload(seq))
        return n / (time.perf_counter() - started)

    def serve_forever(self) -> None:
        while True:
            sock, _ = self.listener.accept()
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                buf += chunk
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            _method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            path, _, query = target.partition("?")
            parts = [p for p in path.split("/") if p]
            kind, n = parts[0], int(parts[1])
            if len(parts) > 2 and parts[2] == "api":
                self._rest(sock, kind, n, "/" + "/".join(parts[4:]))
                return
            accept = base64.b64encode(
                hashlib.sha1((headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
            ).decode()
            sock.sendall(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
                ).encode()
            )
            compress = "zlib-stream" if "compress=zlib-stream" in query else None
            self._gateway(sock, kind, n, compress, rest)
        except (OSError, ValueError, KeyError, IndexError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _rest(self, sock: socket.socket, kind: str, n: int, route: str) -> None:
        url = self.url(kind, n)
        bodies = {
            "/users/@me": BOT_USER,
            "/oauth2/applications/@me": APPLICATION,
            "/gateway": {"url": url},
            "/gateway/bot": {
                "url": url,
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 14400000, "max_concurrency": 1},
            },
        }
        body = bodies.get(route)
        status = "200 OK" if body is not None else "404 Not Found"
        data = _dumps(body if body is not None else {"message": "404: Not Found", "code": 0})
        sock.sendall(
            (
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                "Connection: close\r\n\r\n"
            ).encode()
            + data
        )
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2.0)
            while sock.recv(65536):
                pass
        except OSError:
            pass

    def _gateway(self, sock: socket.socket, kind: str, n: int, compress: Optional[str], rest: bytes) -> None:
        frames = _ClientFrames()
        if kind == "cached":
            hello, ready, events = self.cached(compress, n)
            enc = None
        else:
            enc = FrameEncoder(compress)
            hello, ready, events = enc.frame(hello_payload()), enc.frame(ready_payload(self.url(kind, n))), b""
        sock.sendall(hello)
        pending = frames.feed(rest)
        identified = False
        while not identified:
            for opcode, payload in pending:
                if opcode == 0x8:
                    self._close(sock, payload)
                    return
                if opcode in (0x1, 0x2) and json.loads(payload).get("op") == 2:
                    identified = True
            if not identified:
                data = sock.recv(65536)
                if not data:
                    return
                pending = frames.feed(data)
        sock.sendall(ready)
        if enc is None:
            view = memoryview(events)
            for i in range(0, len(view), 1 << 20):
                sock.sendall(view[i : i + (1 << 20)])
        else:
            payload = self.source.payload
            seq = 2
            last = n + 1
            while seq <= last:
                upto = min(last, seq + 255)
                sock.sendall(b"".join([enc.frame(payload(s)) for s in range(seq, upto + 1)]))
                seq = upto + 1
        while True:  # until the client closes: answer its close frame, ignore heartbeats
            data = sock.recv(65536)
            if not data:
                return
            for opcode, payload in frames.feed(data):
                if opcode == 0x8:
                    self._close(sock, payload)
                    return

    @staticmethod
    def _close(sock: socket.socket, payload: bytes) -> None:
        try:
            sock.sendall(bytes((0x88, len(payload[:125]))) + payload[:125])
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(2.0)
            while sock.recv(65536):
                pass
        except OSError:
            pass


def serve_main(n: int) -> None:
    server = RawServer()
    for compress in COMPRESSIONS:
        server.cached(compress, n)
    rate = server.encode_rate("zlib-stream")
    print(json.dumps({"port": server.port, "stream_encode_per_s": rate, "payload_bytes": server.source.mean_payload_bytes}), flush=True)

    def watch_parent() -> None:  # the parent holds our stdin: when it goes, so do we
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True).start()
    server.serve_forever()


# ---------------------------------------------------------------------------------------------
# measurements inside a worker process


def os_threads() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return threading.active_count()


def peak_rss_mb() -> float:
    try:
        import resource
    except ImportError:  # Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, AttributeError):
        return peak_rss_mb()


def context_switches() -> int:
    try:
        import resource
    except ImportError:
        return 0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_nvcsw + ru.ru_nivcsw


class Counter:
    """Counts MESSAGE_CREATE at the handler; notes first/last times and optional checkpoints."""

    def __init__(self, n: int, checkpoints: Optional[Dict[int, Callable[[], None]]] = None) -> None:
        self.n = n
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = threading.Event()
        self.checkpoints = checkpoints or {}

    def hit(self) -> None:
        self.count += 1
        c = self.count
        if c == 1:
            self.first = time.perf_counter()
        if c in self.checkpoints:
            self.checkpoints[c]()
        if c >= self.n:
            self.last = time.perf_counter()
            self.done.set()

    def result(self, cpu0: float) -> Dict[str, Any]:
        cpu = time.process_time() - cpu0
        span = self.last - self.first
        return {
            "events": self.count,
            "first_to_last_s": span,
            "events_per_s": (self.n - 1) / span if span > 0 else float("nan"),
            "cpu_s": cpu,
            "peak_rss_mb": peak_rss_mb(),
            "threads": os_threads(),
        }


def _deadline(n: int) -> float:
    return 60.0 + n / 1000.0


def run_floor(url: str, compress: Optional[str], n: int) -> Dict[str, Any]:
    import websocket

    from sync_gateway.protocol import gateway_query_url

    counter = Counter(n)
    cpu0 = time.process_time()
    ws = websocket.create_connection(
        gateway_query_url(url, compress), skip_utf8_validation=True, suppress_origin=True, timeout=_deadline(n)
    )
    inflate = zlib.decompressobj() if compress else None
    buf = bytearray()
    loads = json.loads
    recv_data = ws.recv_data
    identified = False
    try:
        while not counter.done.is_set():
            opcode, data = recv_data()
            if inflate is not None:
                if opcode != 0x2:
                    continue
                if len(data) < 4 or data[-4:] != b"\x00\x00\xff\xff":
                    buf += data
                    continue
                if buf:
                    buf += data
                    data = bytes(buf)
                    buf.clear()
                payload = loads(inflate.decompress(data))
            else:
                payload = loads(data)
            op = payload.get("op")
            if op == 0:
                if payload.get("t") == "MESSAGE_CREATE":
                    counter.hit()
            elif op == 10 and not identified:
                identified = True
                ws.send(
                    json.dumps(
                        {"op": 2, "d": {"token": TOKEN, "intents": 513, "properties": {"os": "linux", "browser": "floor", "device": "floor"}}}
                    )
                )
        result = counter.result(cpu0)
    finally:
        ws.close(timeout=3)
    return result


def run_decode_limit(compress: Optional[str], n: int, loads_name: str) -> Dict[str, Any]:
    """The decode limit: the very frames the server sends (built here by the same encoder, one zlib
    context), inflated and decoded from memory in one thread, with no socket, framing or threads.
    No client can beat it: each client's ratio to it says how much of its time is not decoding."""
    if loads_name == "orjson":
        import orjson

        loads: Callable[[Any], Any] = orjson.loads
    else:
        loads = json.loads
    source = EventSource()
    enc = FrameEncoder(compress)
    bodies: List[bytes] = []
    for seq in range(2, n + 2):
        payload = source.payload(seq)
        if enc._z is not None:
            bodies.append(enc._z.compress(payload) + enc._z.flush(zlib.Z_SYNC_FLUSH))
        else:
            bodies.append(payload)
    counter = Counter(n)
    hit = counter.hit
    gc.collect()
    cpu0 = time.process_time()
    if compress is not None:
        # A raw inflate after the stream's 2-byte zlib header, as the client does: zlib-stream never
        # ends, so the adler32 zlib would compute over every byte is never checked.
        bodies[0] = bodies[0][2:]
        inflate = zlib.decompressobj(-zlib.MAX_WBITS).decompress
        for body in bodies:
            if loads(inflate(body)).get("t") == "MESSAGE_CREATE":
                hit()
    else:
        for body in bodies:
            if loads(body).get("t") == "MESSAGE_CREATE":
                hit()
    return counter.result(cpu0)


def _sg_client(url: str, compress: Optional[str], loads_name: Optional[str]):
    from sync_gateway import GatewayClient, MemoryIdentifyGate, codec

    if loads_name == "json":
        codec.loads = json.loads
    elif loads_name == "orjson":
        import orjson

        codec.loads = orjson.loads
    return GatewayClient(
        TOKEN, gateway_url=url, compress=compress, identify_gate=MemoryIdentifyGate(interval=0.0, margin=0.0)
    )


def run_sync_gateway(url: str, compress: Optional[str], n: int, loads_name: str) -> Dict[str, Any]:
    counter = Counter(n)
    client = _sg_client(url, compress, loads_name)
    hit = counter.hit

    def handler(event: Any) -> None:  # the no-op "*" handler, plus a counter
        if event.name == "MESSAGE_CREATE":
            hit()

    client.on("*", handler)
    cpu0 = time.process_time()
    client.start()
    try:
        if not counter.done.wait(_deadline(n)):
            raise SystemExit(f"only {counter.count} of {n} events arrived; status {client.status()}")
        result = counter.result(cpu0)
    finally:
        client.close()
    return result


def run_sharded(url: str, compress: Optional[str], n: int, shards: int = 4, shard_ids: Optional[List[int]] = None) -> Dict[str, Any]:
    """ShardedClient with *shards* shards (or *shard_ids* of them) in this process, each on its
    own socket of the same stream (the server sends every socket the n events): events/s over
    this process's shards and threads. ``first_at``/``last_at`` are ``time.perf_counter()``
    readings (the system-wide monotonic clock), so the parent can join several processes."""
    from sync_gateway import MemoryIdentifyGate, ShardedClient, codec

    codec.loads = json.loads
    ids = list(range(shards)) if shard_ids is None else shard_ids
    # One counter per shard, each hit by its shard's dispatcher thread alone: a shared counter
    # needs a lock, and four threads taking turns on one lock under the GIL measured the lock.
    counters = {i: Counter(n) for i in ids}
    client = ShardedClient(
        TOKEN,
        gateway_url=url,
        shard_count=shards,
        shard_ids=ids,
        max_concurrency=shards,
        compress=compress,
        identify_gate=MemoryIdentifyGate(interval=0.0, margin=0.0),
    )
    hits = {i: c.hit for i, c in counters.items()}

    def handler(event: Any) -> None:  # shards call it from their own dispatcher threads
        if event.name == "MESSAGE_CREATE":
            hits[event.shard_id]()

    client.on("*", handler)
    cpu0 = time.process_time()
    client.start()
    total = n * len(ids)
    try:
        deadline = time.monotonic() + _deadline(total)
        for c in counters.values():
            if not c.done.wait(max(0.0, deadline - time.monotonic())):
                raise SystemExit(f"only {sum(c.count for c in counters.values())} of {total} events arrived")
        threads = sum(1 for t in threading.enumerate() if t.name.startswith("sync_gateway-"))
        result = counters[ids[0]].result(cpu0)
    finally:
        client.close()
    first = min(c.first for c in counters.values())
    last = max(c.last for c in counters.values())
    result.update(
        events=total,
        first_to_last_s=last - first,
        events_per_s=(total - 1) / (last - first),
        first_at=first,
        last_at=last,
        shards=len(ids),
        sync_gateway_threads=threads,
        threads_per_shard=threads / len(ids),
    )
    return result


def run_discord_py(url: str, compress: Optional[str], n: int) -> Dict[str, Any]:
    import asyncio

    sys.modules.setdefault("zstandard", None)  # type: ignore[arg-type]  # zlib-stream, like the others
    import discord
    import discord.gateway
    import discord.http
    import yarl

    api = url.rstrip("/") + "/api/v10"
    discord.http.Route.BASE = "http" + api[2:]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(url)
    if compress is None:
        original = discord.gateway.DiscordWebSocket.from_client.__func__

        async def from_client(cls: Any, client: Any, **kwargs: Any) -> Any:
            kwargs["compress"] = False
            return await original(cls, client, **kwargs)

        discord.gateway.DiscordWebSocket.from_client = classmethod(from_client)  # type: ignore[assignment]
    counter = Counter(n)
    cpu0 = time.process_time()
    out: Dict[str, Any] = {}

    async def main() -> None:
        client = discord.Client(intents=discord.Intents.default())

        @client.event
        async def on_message(message: Any) -> None:
            counter.hit()
            if counter.done.is_set() and not out:
                out.update(counter.result(cpu0))
                await client.close()

        async with client:
            await asyncio.wait_for(client.start(TOKEN), _deadline(n))

    asyncio.run(main())
    if not out:
        raise SystemExit(f"discord.py stopped after {counter.count} of {n} events")
    return out


def run_idle(url: str, seconds: float) -> Dict[str, Any]:
    client = _sg_client(url, "zlib-stream", None)
    client.start()
    try:
        if not client.wait_until_ready(30):
            raise SystemExit("the idle client never got READY")
        cpu0 = time.process_time()
        cs0 = context_switches()
        time.sleep(seconds)  # the measurement: a connected client doing nothing
        cpu = time.process_time() - cpu0
        cs = context_switches() - cs0
        threads = os_threads()
    finally:
        client.close()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "cpu_percent": 100.0 * cpu / seconds,
        "context_switches_per_s": cs / seconds,
        "threads": threads,
    }


def run_idle_shards(url: str, added: int) -> Dict[str, Any]:
    """What one more idle shard costs in a process: RSS and OS threads with one connected shard,
    then with *added* more (a second ShardedClient on the same FakeGateway), per added shard."""
    from sync_gateway import MemoryIdentifyGate, ShardedClient

    count = added + 1

    def sharded(ids: List[int]) -> Any:
        return ShardedClient(
            TOKEN, gateway_url=url, shard_count=count, shard_ids=ids, max_concurrency=count,
            identify_gate=MemoryIdentifyGate(interval=0.0, margin=0.0),
        )

    def sample() -> Tuple[float, int]:
        gc.collect()
        return current_rss_mb(), os_threads()

    first = sharded([0])
    more = sharded(list(range(1, count)))
    try:
        first.start()
        if not first.wait_until_ready(60):
            raise SystemExit("idle shards: shard 0 never got READY")
        rss1, threads1 = sample()
        more.start()
        if not more.wait_until_ready(60):
            raise SystemExit("idle shards: the added shards never got READY")
        rss2, threads2 = sample()
    finally:
        more.close()
        first.close()
    return {
        "added_shards": added,
        "rss_one_shard_mb": rss1,
        "rss_all_mb": rss2,
        "rss_per_added_shard_mb": (rss2 - rss1) / added,
        "threads_one_shard": threads1,
        "threads_all": threads2,
        "threads_per_added_shard": (threads2 - threads1) / added,
    }


def run_rss(url: str, warmup: int, n: int) -> Dict[str, Any]:
    client = _sg_client(url, "zlib-stream", None)
    marks: Dict[str, Any] = {}

    def mark(name: str) -> Callable[[], None]:
        def take() -> None:
            gc.collect()
            marks[name] = {
                "rss_mb": current_rss_mb(),
                "at": time.perf_counter(),
                "backlog": client._dispatcher.backlog() if client._dispatcher else 0,
            }

        return take

    counter = Counter(warmup + n, {warmup: mark("warm"), warmup + n: mark("end")})
    hit = counter.hit
    client.on("*", lambda e: e.name == "MESSAGE_CREATE" and hit())
    cpu0 = time.process_time()
    client.start()
    try:
        if not counter.done.wait(_deadline(warmup + n) * 2):
            raise SystemExit(f"only {counter.count} of {warmup + n} events arrived")
        cpu = time.process_time() - cpu0
    finally:
        client.close()
    warm, end = marks["warm"], marks["end"]
    return {
        "events": n,
        "warmup_events": warmup,
        "rss_after_warmup_mb": warm["rss_mb"],
        "rss_end_mb": end["rss_mb"],
        "growth_mb": end["rss_mb"] - warm["rss_mb"],
        "backlog_at_warmup": warm["backlog"],
        "peak_rss_mb": peak_rss_mb(),
        "events_per_s": n / (end["at"] - warm["at"]),
        "cpu_s": cpu,
    }


def worker_main(argv: List[str]) -> None:
    p = argparse.ArgumentParser(prog="bench.py --_worker")
    p.add_argument("runner")
    p.add_argument("--url", required=True)
    p.add_argument("--compress", default="none")
    p.add_argument("--events", type=int, default=0)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0.0)
    p.add_argument("--shard-ids", default="", help="sharded: this process's shards of 4, like 0,1")
    a = p.parse_args(argv)
    compress = None if a.compress == "none" else a.compress
    if a.runner.startswith("limit-"):
        result = run_decode_limit(compress, a.events, a.runner[len("limit-"):])
    elif a.runner == "floor":
        result = run_floor(a.url, compress, a.events)
    elif a.runner == "sg-json":
        result = run_sync_gateway(a.url, compress, a.events, "json")
    elif a.runner == "sg-orjson":
        result = run_sync_gateway(a.url, compress, a.events, "orjson")
    elif a.runner == "discord.py":
        result = run_discord_py(a.url, compress, a.events)
    elif a.runner == "sharded":
        ids = [int(x) for x in a.shard_ids.split(",")] if a.shard_ids else None
        result = run_sharded(a.url, compress, a.events, shard_ids=ids)
    elif a.runner == "idle":
        result = run_idle(a.url, a.seconds)
    elif a.runner == "idle-shards":
        result = run_idle_shards(a.url, a.events)
    elif a.runner == "rss":
        result = run_rss(a.url, a.warmup, a.events)
    else:
        raise SystemExit(f"unknown runner {a.runner}")
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# the parent: orchestration


def _child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class WorkerFailed(RuntimeError):
    pass


def _finish_worker(proc: "subprocess.Popen[str]", timeout: float, what: str, notes: List[str]) -> Dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise WorkerFailed(f"{what}: timed out after {timeout:.0f}s; stderr: {err[-1500:]}") from None
    if proc.returncode != 0 or not out.strip():
        raise WorkerFailed(f"{what}: exit {proc.returncode}; stderr: {err[-1500:]}")
    for line in err.splitlines():
        if line.strip() and len(notes) < 30:
            note = f"{what}: stderr: {line.strip()[:300]}"
            if note not in notes:
                notes.append(note)
    return json.loads(out.strip().splitlines()[-1])


def _start_worker(runner: str, url: str, **kw: Any) -> "subprocess.Popen[str]":
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", runner, "--url", url]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    return subprocess.Popen(cmd, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_worker(runner: str, url: str, timeout: float, notes: List[str], **kw: Any) -> Dict[str, Any]:
    return _finish_worker(_start_worker(runner, url, **kw), timeout, f"{runner} {kw.get('compress', '')}".strip(), notes)


def _discord_available() -> Tuple[bool, str]:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['zstandard'] = None; import discord; print(discord.__version__)"],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["import failed"])[-1]
        return False, f"discord.py is not importable ({last[:120]})"
    return True, probe.stdout.strip()


def _orjson_available() -> bool:
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    return True


def _median(xs: List[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def bench_throughput(server_port: int, n: int, runs: int, runners: List[str], notes: List[str], log: Callable[[str], None]) -> List[Dict[str, Any]]:
    url = f"ws://127.0.0.1:{server_port}/cached/{n}/"
    results: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for rnd in range(runs):
        order = runners[rnd % len(runners):] + runners[: rnd % len(runners)]
        for compress in COMPRESSIONS:
            for runner in order:
                mode = compress or "none"
                log(f"round {rnd + 1}/{runs}: {runner} {mode}")
                r = run_worker(runner, url, _deadline(n) + 60, notes, compress=mode, events=n)
                results.setdefault((runner, mode), []).append(r)
    rows = []
    for compress in COMPRESSIONS:
        mode = compress or "none"
        for runner in runners:
            rs = results[(runner, mode)]
            rate = _median([r["events_per_s"] for r in rs])
            cpu = _median([r["cpu_s"] for r in rs])
            rows.append(
                {
                    "runner": runner,
                    "label": RUNNER_LABELS[runner],
                    "compress": mode,
                    "events_per_s": rate,
                    "cpu_s": cpu,
                    "cpu_us_per_event": cpu / n * 1e6,
                    "peak_rss_mb": _median([r["peak_rss_mb"] for r in rs]),
                    "threads": max(r["threads"] for r in rs),
                    "runs_events_per_s": [r["events_per_s"] for r in rs],
                }
            )
    for row in rows:
        same = {r["runner"]: r for r in rows if r["compress"] == row["compress"]}
        row["vs_floor"] = row["events_per_s"] / same["floor"]["events_per_s"]
        limit = same.get("limit-orjson" if row["runner"].endswith("orjson") else "limit-json")
        row["vs_limit"] = row["events_per_s"] / limit["events_per_s"] if limit else None
        d = same.get("discord.py")
        row["vs_discord_py"] = row["events_per_s"] / d["events_per_s"] if d else None
    notes.extend(_unsteady_machine(rows))
    return rows


#: A decode-limit row whose fastest run beat its slowest by more than this says the machine's speed
#: was not steady during the run.
UNSTEADY_SPREAD = 0.15


def _unsteady_machine(rows: List[Dict[str, Any]]) -> List[str]:
    """A note per decode-limit row whose runs spread by more than UNSTEADY_SPREAD. Those rows do
    the same work in one thread every time, with no socket and no other thread of ours, so their
    spread is the machine's own (other load, or its virtual CPUs slowing each other), and every
    ratio of the run is uncertain by about as much."""
    notes: List[str] = []
    for row in rows:
        runs = [x for x in row["runs_events_per_s"] if x == x and x > 0]
        if not row["runner"].startswith("limit-") or len(runs) < 2:
            continue
        spread = max(runs) / min(runs) - 1
        if spread > UNSTEADY_SPREAD:
            notes.append(
                f"{row['label']} ({row['compress']}) did the same work at {min(runs):,.0f} to {max(runs):,.0f} "
                f"events/s ({spread:.0%} apart): the machine's speed was not steady in this run, so its ratios are "
                "uncertain by about as much"
            )
    return notes


def run_two_processes(url: str, n: int, notes: List[str]) -> Dict[str, Any]:
    """The same 4 shards split over two processes (shards 0-1 and 2-3, started together): events/s
    over both, from the first event either saw to the last."""
    groups = ("0,1", "2,3")
    procs = [_start_worker("sharded", url, compress="zlib-stream", events=n, **{"shard-ids": ids}) for ids in groups]
    try:
        parts = [
            _finish_worker(p, _deadline(2 * n) + 60, f"sharded (2 processes, shards {ids})", notes)
            for p, ids in zip(procs, groups)
        ]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    span = max(r["last_at"] for r in parts) - min(r["first_at"] for r in parts)
    events = sum(r["events"] for r in parts)
    return {"events": events, "events_per_s": (events - 1) / span, "cpu_s": sum(r["cpu_s"] for r in parts)}


def bench_sharded(server_port: int, n: int, runs: int, notes: List[str], log: Callable[[str], None]) -> Dict[str, Any]:
    """4 shards in one process, and in two processes, against one shard, in rounds: each round
    runs the three back to back (in turns first), and each ratio is the median of the rounds'
    ratios. Single runs vary by 15 % and more on a shared machine (see _unsteady_machine); a round
    shares most of whatever the machine was doing."""
    url = f"ws://127.0.0.1:{server_port}/cached/{n}/"
    kinds = ["sharded", "sg-json", "two-processes"]
    rounds = []
    for rnd in range(runs):
        order = kinds[rnd % len(kinds):] + kinds[: rnd % len(kinds)]
        got = {}
        for kind in order:
            log(f"round {rnd + 1}/{runs}: {kind} zlib-stream")
            if kind == "two-processes":
                got[kind] = run_two_processes(url, n, notes)
            else:
                got[kind] = run_worker(kind, url, _deadline(4 * n) + 60, notes, compress="zlib-stream", events=n)
        rounds.append(got)
    ratios = [r["sharded"]["events_per_s"] / r["sg-json"]["events_per_s"] for r in rounds]
    two = [r["two-processes"]["events_per_s"] / r["sg-json"]["events_per_s"] for r in rounds]
    middle = sorted(rounds, key=lambda r: r["sharded"]["events_per_s"])[len(rounds) // 2]
    result = dict(middle["sharded"])
    result.update(
        vs_one_shard=_median(ratios),
        round_ratios=ratios,
        one_shard_events_per_s=_median([r["sg-json"]["events_per_s"] for r in rounds]),
        two_processes_events_per_s=_median([r["two-processes"]["events_per_s"] for r in rounds]),
        two_processes_vs_one_shard=_median(two),
        runs=len(rounds),
    )
    return result


def bench_fake_gateway_feed(n: int, notes: List[str]) -> Dict[str, Any]:
    """The floor reading from FakeGateway.dispatch_many instead of the raw server: how fast can the
    fake feed a client? (It encodes and compresses each event in Python.)"""
    from sync_gateway.testing import FakeGateway

    messages = make_messages()
    with FakeGateway(heartbeat_interval=HEARTBEAT_MS) as gw:
        proc = _start_worker("floor", gw.url, compress="zlib-stream", events=n)
        try:
            conn = gw.wait_for_connections(1, timeout=60)
            if not conn.ready.wait(60):
                raise WorkerFailed("floor via FakeGateway: no READY")
            started = time.perf_counter()
            for i in range(0, n, 1000):
                gw.dispatch_many("MESSAGE_CREATE", [messages[j % len(messages)] for j in range(i, min(n, i + 1000))])
            server_s = time.perf_counter() - started
            result = _finish_worker(proc, _deadline(n) + 60, "floor via FakeGateway", notes)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return {"fake_gateway_dispatch_many_per_s": n / server_s, "floor_via_fake_gateway_per_s": result["events_per_s"]}


def bench_latency(seconds: float, rate: float = 1000.0) -> Dict[str, Any]:
    from sync_gateway import GatewayClient, MemoryIdentifyGate
    from sync_gateway.testing import FakeGateway

    total = max(50, int(seconds * rate))
    warm = min(200, total // 10)
    messages = make_messages()
    samples: List[float] = []
    all_in = threading.Event()

    def handler(event: Any) -> None:
        samples.append(time.perf_counter() - event.data["sent"])
        if len(samples) >= total:
            all_in.set()

    with FakeGateway(heartbeat_interval=IDLE_HEARTBEAT_MS) as gw:
        client = GatewayClient(TOKEN, gateway_url=gw.url, identify_gate=MemoryIdentifyGate(interval=0.0, margin=0.0))
        client.on("MESSAGE_CREATE", handler)
        try:
            client.start()
            if not client.wait_until_ready(30):
                raise WorkerFailed("latency: no READY")
            pause = threading.Event()  # never set: a precise wait
            t0 = time.perf_counter() + 0.05
            for i in range(total):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    pause.wait(delay)
                d = dict(messages[i % len(messages)])
                d["sent"] = time.perf_counter()
                gw.dispatch("MESSAGE_CREATE", d)
            achieved = total / (time.perf_counter() - t0)
            if not all_in.wait(30):
                raise WorkerFailed(f"latency: {len(samples)} of {total} events arrived")
        finally:
            client.close()
    ms = sorted(s * 1000 for s in samples[warm:])
    return {
        "rate_per_s": rate,
        "achieved_rate_per_s": achieved,
        "events": len(ms),
        "p50_ms": ms[len(ms) // 2],
        "p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
        "max_ms": ms[-1],
    }


def bench_idle(seconds: float, notes: List[str]) -> Dict[str, Any]:
    from sync_gateway.testing import FakeGateway

    with FakeGateway(heartbeat_interval=IDLE_HEARTBEAT_MS) as gw:
        return run_worker("idle", gw.url, seconds + 90, notes, seconds=seconds)


def bench_idle_shards(added: int, notes: List[str]) -> Dict[str, Any]:
    from sync_gateway.testing import FakeGateway

    with FakeGateway(heartbeat_interval=IDLE_HEARTBEAT_MS) as gw:
        return run_worker("idle-shards", gw.url, 180, notes, events=added)


def bench_rss(server_port: int, warmup: int, n: int, notes: List[str]) -> Dict[str, Any]:
    url = f"ws://127.0.0.1:{server_port}/stream/{warmup + n}/"
    return run_worker("rss", url, 2 * _deadline(warmup + n) + 60, notes, warmup=warmup, events=n)


def bench_recovery(op7_runs: int, frozen_runs: int) -> Dict[str, Any]:
    from sync_gateway import GatewayClient, MemoryIdentifyGate
    from sync_gateway.testing import FakeGateway, FreezingProxy

    cond = threading.Condition()
    seen: List[Tuple[str, float]] = []

    def on_lifecycle(event: Any) -> None:
        with cond:
            seen.append((event.kind, time.perf_counter()))
            cond.notify_all()

    def wait_kind(kind: str, after: int, timeout: float = 60.0) -> float:
        deadline = time.monotonic() + timeout
        with cond:
            while True:
                for k, at in seen[after:]:
                    if k == kind:
                        return at
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerFailed(f"recovery: no {kind} within {timeout}s; saw {[k for k, _ in seen[after:]]}")
                cond.wait(remaining)

    op7: List[float] = []
    frozen: List[float] = []
    with FakeGateway(heartbeat_interval=IDLE_HEARTBEAT_MS) as gw, FreezingProxy(gw.host, gw.port) as proxy:
        client = GatewayClient(
            TOKEN, gateway_url=proxy.url, identify_gate=MemoryIdentifyGate(interval=0.0, margin=0.0)
        )
        client.on_lifecycle(on_lifecycle)
        gw.resume_gateway_url = proxy.url  # RESUMEs must go through the proxy too
        config = client.config
        try:
            client.start()
            wait_kind("ready", 0)
            for _ in range(op7_runs):
                conn = gw.connections[-1]
                with cond:
                    mark = len(seen)
                started = time.perf_counter()
                conn.send_op(7)
                op7.append(wait_kind("resumed", mark) - started)
            for _ in range(frozen_runs):
                with cond:
                    mark = len(seen)
                proxy.freeze()
                started = time.perf_counter()
                client.reconnect(fresh=True)
                frozen.append(wait_kind("ready", mark, timeout=60 + config.drain_timeout) - started)
        finally:
            client.close()
    return {
        "op7_resumed_ms": {"p50": _median(op7) * 1000, "max": max(op7) * 1000, "runs": len(op7)},
        "frozen_fresh_ready_s": {"p50": _median(frozen), "max": max(frozen), "runs": len(frozen)},
        "drain_timeout_s": config.drain_timeout,
        "force_close_timeout_s": config.force_close_timeout,
    }


# ---------------------------------------------------------------------------------------------
# output


def _fmt_int(x: Optional[float]) -> str:
    return "-" if x is None or x != x else f"{x:,.0f}"


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "-" if x is None or x != x else f"{x:.{digits}f}"


def render(report: Dict[str, Any]) -> str:
    b = report["bench"]
    lines = [
        f"sync_gateway bench: {b['events']:,} MESSAGE_CREATE (~{b['payload_bytes']:.0f} B each) over loopback, "
        f"median of {b['runs']} run(s); Python {b['python']} on {b['platform']}, {b['cpus']} CPU(s)",
        f"stream: {report['server']['kind']}",
        "",
        f"{'throughput':<30} {'compress':<12} {'events/s':>9} {'(min-max)':>13} {'x limit':>8} {'x floor':>8} {'x d.py':>7} {'CPU s':>7} "
        f"{'CPU us/ev':>9} {'peak RSS MB':>11} {'threads':>7}",
    ]
    for r in report["throughput"]:
        runs = r["runs_events_per_s"]
        spread = f"{min(runs) / 1000:.1f}-{max(runs) / 1000:.1f}k" if len(runs) > 1 else ""
        lines.append(
            f"{r['label']:<30} {r['compress']:<12} {_fmt_int(r['events_per_s']):>9} {spread:>13} {_fmt(r.get('vs_limit')):>8} "
            f"{_fmt(r['vs_floor']):>8} "
            f"{_fmt(r['vs_discord_py']):>7} {_fmt(r['cpu_s']):>7} {_fmt(r['cpu_us_per_event'], 1):>9} "
            f"{_fmt(r['peak_rss_mb'], 1):>11} {r['threads']:>7}"
        )
    for name, reason in report["skipped"].items():
        lines.append(f"{RUNNER_LABELS.get(name, name):<30} skipped: {reason}")
    lat = report["latency"]
    idle = report["idle"]
    ish = report["idle_shards"]
    rss = report["rss_growth"]
    rec = report["recovery"]
    srv = report["server"]
    sh = report["sharded"]
    lines += [
        "",
        f"ShardedClient, {sh['shards']} shards in one process, zlib-stream, json: {sh['events_per_s']:,.0f} events/s over "
        f"all shards ({sh['events']:,} events), {sh['cpu_s']:.2f} CPU s, peak RSS {sh['peak_rss_mb']:.1f} MB, "
        f"{sh['sync_gateway_threads']} client threads = {sh['threads_per_shard']:g} per shard; "
        f"{_fmt(sh.get('vs_one_shard'))}x one shard's events/s (median of {sh['runs']} paired round(s), one shard "
        f"{sh['one_shard_events_per_s']:,.0f}; round ratios {', '.join(_fmt(x) for x in sh['round_ratios'])})",
        f"the same 4 shards in two processes (2 + 2): {sh['two_processes_events_per_s']:,.0f} events/s, "
        f"{_fmt(sh['two_processes_vs_one_shard'])}x one shard (one GIL per process)",
    ]
    lines += [
        "",
        f"latency server-send -> handler at {lat['rate_per_s']:,.0f} ev/s (achieved {lat['achieved_rate_per_s']:,.0f}, "
        f"{lat['events']:,} events, GatewayClient, zlib): p50 {lat['p50_ms']:.3f} ms, p99 {lat['p99_ms']:.3f} ms, "
        f"max {lat['max_ms']:.3f} ms",
        f"idle connected client over {idle['seconds']:g} s: {idle['cpu_s']:.3f} CPU s ({idle['cpu_percent']:.3f} %), "
        f"{idle['context_switches_per_s']:.1f} context switches/s, {idle['threads']} threads",
        f"each added idle shard (ShardedClient, {ish['added_shards']} added to 1, connected): "
        f"{ish['rss_per_added_shard_mb']:+.2f} MB RSS, {ish['threads_per_added_shard']:g} threads "
        f"({ish['rss_one_shard_mb']:.1f} -> {ish['rss_all_mb']:.1f} MB, {ish['threads_one_shard']} -> {ish['threads_all']} threads)",
        f"RSS growth over {rss['events']:,} events after {rss['warmup_events']:,} warm-up: {rss['growth_mb']:+.1f} MB "
        f"({rss['rss_after_warmup_mb']:.1f} -> {rss['rss_end_mb']:.1f} MB; peak {rss['peak_rss_mb']:.1f} MB; "
        f"{rss['events_per_s']:,.0f} ev/s; backlog at warm-up mark {rss['backlog_at_warmup']:,})",
        f"recovery op 7 -> RESUMED: p50 {rec['op7_resumed_ms']['p50']:.1f} ms, max {rec['op7_resumed_ms']['max']:.1f} ms "
        f"({rec['op7_resumed_ms']['runs']} runs)",
        f"recovery frozen socket + reconnect(fresh=True) -> READY: p50 {rec['frozen_fresh_ready_s']['p50']:.2f} s, "
        f"max {rec['frozen_fresh_ready_s']['max']:.2f} s ({rec['frozen_fresh_ready_s']['runs']} runs; default "
        f"drain_timeout {rec['drain_timeout_s']:g} s: the frozen peer never answers the close frame)",
        "",
        f"server: raw pre-encoded stream; its on-the-fly zlib encoder (RSS run) makes {srv['stream_encode_per_s']:,.0f} ev/s. "
        f"FakeGateway.dispatch_many feeds {_fmt_int(srv.get('fake_gateway_dispatch_many_per_s'))} ev/s "
        f"(the floor reading it: {_fmt_int(srv.get('floor_via_fake_gateway_per_s'))} ev/s)",
    ]
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main


def run(args: argparse.Namespace, log: Callable[[str], None]) -> Dict[str, Any]:
    quick = args.quick
    n = args.events or (5_000 if quick else 50_000)
    runs = args.runs or (1 if quick else 3)
    rss_events = args.rss_events or (100_000 if quick else 1_000_000)
    rss_warmup = max(1, rss_events // 10)
    idle_seconds = args.idle_seconds or (5.0 if quick else 30.0)
    latency_seconds = args.latency_seconds or (2.0 if quick else 10.0)
    notes: List[str] = []
    skipped: Dict[str, str] = {}

    runners = ["limit-json", "floor", "sg-json"]
    if _orjson_available():
        runners[1:1] = ["limit-orjson"]
        runners.append("sg-orjson")
    else:
        skipped["sg-orjson"] = "orjson is not installed (pip install 'sync-gateway[speed]')"
    if args.no_discord:
        skipped["discord.py"] = "--no-discord"
        discord_version = None
    else:
        ok, info = _discord_available()
        if ok:
            runners.append("discord.py")
            discord_version = info
        else:
            skipped["discord.py"] = info
            discord_version = None

    server = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--_serve", str(n)],
        env=_child_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        if not line:
            raise WorkerFailed("the bench server did not start")
        info_line = json.loads(line)
        port = info_line["port"]
        log(f"server on port {port}; throughput with {', '.join(runners)}")
        throughput = bench_throughput(port, n, runs, runners, notes, log)
        log("4 shards in one process")
        sharded = bench_sharded(port, n, runs, notes, log)
        log("FakeGateway as the feeder")
        feed = bench_fake_gateway_feed(n, notes)
        log(f"RSS over {rss_events:,} events")
        rss = bench_rss(port, rss_warmup, rss_events, notes)
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
    log("latency")
    latency = bench_latency(latency_seconds)
    log(f"idle CPU over {idle_seconds:g} s")
    idle = bench_idle(idle_seconds, notes)
    log("idle shards")
    idle_shards = bench_idle_shards(args.idle_shards or (3 if quick else 7), notes)
    log("recovery")
    recovery = bench_recovery(args.recovery_runs or (3 if quick else 5), args.frozen_runs or (1 if quick else 3))

    if rss["events_per_s"] > 0.8 * info_line["stream_encode_per_s"]:
        notes.append("the RSS run's on-the-fly server may have limited its event rate (not its memory)")
    if feed["fake_gateway_dispatch_many_per_s"] < max(r["events_per_s"] for r in throughput):
        notes.append(
            "FakeGateway.dispatch_many is slower than the fastest client here, so it would be the bottleneck: "
            "throughput uses the raw pre-encoded server"
        )
    return {
        "bench": {
            "events": n,
            "runs": runs,
            "quick": quick,
            "payload_bytes": info_line["payload_bytes"],
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "cpus": os.cpu_count() or 1,
            "orjson": _orjson_available(),
            "discord_py": discord_version,
        },
        "throughput": throughput,
        "sharded": sharded,
        "latency": latency,
        "idle": idle,
        "idle_shards": idle_shards,
        "rss_growth": rss,
        "recovery": recovery,
        "server": {
            "kind": "raw loopback server in a child process, frames pre-encoded (one zlib context per socket)",
            "stream_encode_per_s": info_line["stream_encode_per_s"],
            **feed,
        },
        "skipped": skipped,
        "notes": notes,
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_serve"]:
        serve_main(int(argv[1]))
        return 0
    if argv[:1] == ["--_worker"]:
        worker_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a short run: 5,000 events, 1 round, 100,000 for RSS, 5 s idle")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--events", type=int, default=0, help="events per throughput run (default 50,000; --quick 5,000)")
    p.add_argument("--runs", type=int, default=0, help="rounds of throughput runs (default 3; --quick 1)")
    p.add_argument("--rss-events", type=int, default=0, help="events of the RSS run (default 1,000,000; --quick 100,000)")
    p.add_argument("--idle-seconds", type=float, default=0.0, help="idle CPU window (default 30; --quick 5)")
    p.add_argument("--latency-seconds", type=float, default=0.0, help="latency run at 1,000 ev/s (default 10; --quick 2)")
    p.add_argument("--recovery-runs", type=int, default=0, help="op 7 recoveries (default 5; --quick 3)")
    p.add_argument("--frozen-runs", type=int, default=0, help="frozen-socket recoveries, ~6 s each (default 3; --quick 1)")
    p.add_argument("--idle-shards", type=int, default=0, help="idle shards added to one for the per-shard RSS (default 7; --quick 3)")
    p.add_argument("--no-discord", action="store_true", help="leave discord.py out even if it is installed")
    args = p.parse_args(argv)
    for name in ("events", "runs", "rss_events", "recovery_runs", "frozen_runs", "idle_shards"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.events and args.events < 2:
        p.error("--events must be at least 2")

    def log(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    try:
        report = run(args, log)
    except WorkerFailed as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
