#!/usr/bin/env python
"""The reply path under load: RestClient against FakeRest, which enforces Discord's limits.

    python tools/bench_rest.py [--quick] [--json]

Each row sends messages as fast as the limits allow and reports the elapsed time (first request
to last answer, as the fake saw them) next to the ideal: the least time the fake's limits allow
for that load. A bucket window opens at its first request and holds ``N`` requests for ``S``
seconds, so ``n`` requests to one bucket need ``ceil(n / N)`` windows and at least
``(ceil(n / N) - 1) * S`` seconds; the same for the global limit. "over" is elapsed / ideal - 1
(no over-waiting: small; a 429 would mean the limits were not kept).

The fake runs in its own process (``python -m sync_gateway.testing.fake_rest``), so it does not
share the client's GIL; the Redis row runs two client processes sharing a ``RedisRateLimiter``
on a private redis-server (skipped when ``redis-server`` is not on PATH).
"""
import argparse
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import sync_gateway as sg  # noqa: E402

TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.bench-token.not-a-real-one"


@contextlib.contextmanager
def fake_rest(limits: Dict[str, str], global_limit: str) -> Iterator[str]:
    argv = [sys.executable, "-m", "sync_gateway.testing.fake_rest", "--global-limit", global_limit]
    for name, value in limits.items():
        argv += ["--limit", f"{name}={value}"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        line = proc.stdout.readline()
        if not line.startswith("api_base: "):
            raise RuntimeError(f"fake_rest did not start: {line!r}")
        yield line.split(" ", 1)[1].strip()
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        proc.stdout.close()


@contextlib.contextmanager
def redis_server() -> Iterator[Optional[str]]:
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            import redis

            client = redis.Redis(port=port, socket_timeout=0.5)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    threading.Event().wait(0.05)
            client.close()
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def stats(api_base: str) -> Dict[str, Any]:
    return requests.get(api_base + "/_fake/stats", timeout=10).json()


def send_all(rest: sg.RestClient, sends: int, threads: int, channels: int, first_channel: int = 1) -> int:
    errors = [0]
    lock = threading.Lock()

    def worker(index: int) -> None:
        for n in range(index, sends, threads):
            try:
                rest.send_message(first_channel + n % channels, f"bench {n}")
            except sg.GatewayError:
                with lock:
                    errors[0] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return errors[0]


def ideal(sends: int, channels: int, bucket: str, global_limit: str, exempt: bool = False) -> float:
    n, per = bucket.split("/")
    per_channel = math.ceil(sends / channels)
    t_bucket = (math.ceil(per_channel / int(n)) - 1) * float(per)
    gn, gper = global_limit.split("/")
    t_global = 0.0 if exempt else (math.ceil(sends / int(gn)) - 1) * float(gper)
    return max(t_bucket, t_global)


CHILD = r"""
import sys, threading, os
sys.path.insert(0, sys.argv[1])
import sync_gateway as sg
api_base, redis_url, prefix, sends, threads, channels, glimit = sys.argv[2:9]
limiter = sg.RedisRateLimiter(redis_url, key_prefix=prefix)
rest = sg.RestClient(os.environ["BENCH_TOKEN"], api_base, limiter, global_limit=int(glimit))
print("READY", flush=True)
sys.stdin.readline()
sends, threads, channels = int(sends), int(threads), int(channels)
def worker(i):
    for n in range(i, sends, threads):
        rest.send_message(1 + n % channels, "bench")
ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
[t.start() for t in ts]; [t.join() for t in ts]
print("DONE", flush=True)
"""


def row_threads(name: str, sends: int, threads: int, channels: int, bucket: str, global_limit: str) -> Dict[str, Any]:
    with fake_rest({"message-create": bucket}, global_limit) as api_base:
        rest = sg.RestClient(TOKEN, api_base, sg.MemoryRateLimiter(), global_limit=int(global_limit.split("/")[0]))
        started = time.monotonic()
        errors = send_all(rest, sends, threads, channels)
        wall = time.monotonic() - started
        rest.close()
        st = stats(api_base)
    return _row(name, sends, f"{threads} threads", channels, bucket, global_limit, st, wall, errors)


def row_redis(name: str, sends: int, threads: int, channels: int, bucket: str, global_limit: str) -> Optional[Dict[str, Any]]:
    with redis_server() as url:
        if url is None:
            return None
        with fake_rest({"message-create": bucket}, global_limit) as api_base:
            env = dict(os.environ, BENCH_TOKEN=TOKEN)
            prefix = f"bench{uuid.uuid4().hex[:8]}"
            procs = [
                subprocess.Popen(
                    [sys.executable, "-c", CHILD, REPO, api_base, url, prefix, str(sends // 2), str(threads), str(channels), global_limit.split("/")[0]],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                )
                for _ in range(2)
            ]
            for p in procs:
                assert p.stdout.readline().strip() == "READY"
            started = time.monotonic()
            for p in procs:
                p.stdin.write("go\n")
                p.stdin.flush()
            done = [p.stdout.readline().strip() for p in procs]
            wall = time.monotonic() - started
            for p in procs:
                p.stdin.close()
                p.wait(30)
                p.stdout.close()
            st = stats(api_base)
    errors = sum(1 for d in done if d != "DONE")
    return _row(name, sends, f"2 procs x {threads} threads", channels, bucket, global_limit, st, wall, errors)


def _row(name, sends, who, channels, bucket, global_limit, st, wall, errors) -> Dict[str, Any]:
    best = ideal(sends, channels, bucket, global_limit)
    elapsed = st["first_to_last"]
    full = sum(st["windows"].values())
    return {
        "scenario": name,
        "sends": sends,
        "senders": who,
        "channels": channels,
        "bucket": bucket,
        "global": global_limit,
        "elapsed_s": round(elapsed, 3),
        "wall_s": round(wall, 3),
        "ideal_s": round(best, 3),
        "over_ideal": round(elapsed / best - 1, 4) if best else None,
        "sends_per_s": round(sends / elapsed, 1) if elapsed else None,
        "responses_429": st["by_status"].get("429", 0),
        "windows": full,
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller loads (a few seconds per row)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    rows: List[Optional[Dict[str, Any]]] = [
        row_threads("buckets 5/0.25s", n, 16, 4, "5/0.25", "10000/1"),
        row_threads("buckets 10/0.1s", n, 16, 4, "10/0.1", "10000/1"),
        row_threads("global 50/s", max(120, n // 5), 16, max(120, n // 5), "5/5", "50/1"),
        row_redis("redis, buckets 5/0.25s", n, 8, 4, "5/0.25", "10000/1"),
    ]
    done = [r for r in rows if r is not None]
    if args.json:
        print(json.dumps(done, indent=2))
        return 0
    cols = ["scenario", "sends", "senders", "channels", "elapsed_s", "ideal_s", "over_ideal", "sends_per_s", "responses_429", "errors"]
    table = [[str(r[c]) if c != "over_ideal" else (f"{r[c] * 100:+.1f}%" if r[c] is not None else "-") for c in cols] for r in done]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    if len(done) < len(rows):
        print("(redis row skipped: redis-server not on PATH)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
