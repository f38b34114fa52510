"""A process that sends messages through RestClient, for the cross-process limiter tests.

argv: API_BASE REDIS_URL|- KEY_PREFIX SENDS THREADS CHANNELS. Token from SG_TEST_TOKEN.
Prints READY, waits for a line on stdin (the start signal, so both processes start together),
sends, prints ``DONE <ok> <errors> <seconds>`` and exits.
"""
import os
import sys
import threading
import time

import sync_gateway as sg


def main() -> int:
    api_base, redis_url, prefix, sends, threads, channels = sys.argv[1:7]
    sends, threads, channels = int(sends), int(threads), int(channels)
    limiter = sg.RedisRateLimiter(redis_url, key_prefix=prefix) if redis_url != "-" else sg.MemoryRateLimiter()
    rest = sg.RestClient(os.environ["SG_TEST_TOKEN"], api_base, limiter, global_limit=1000, max_retries=10)
    print("READY", flush=True)
    sys.stdin.readline()
    counts = {"ok": 0, "errors": 0}
    lock = threading.Lock()
    started = time.monotonic()

    def worker(index: int) -> None:
        for n in range(index, sends, threads):
            try:
                rest.send_message(1 + n % channels, f"p{os.getpid()}-{n}")
                key = "ok"
            except sg.GatewayError as exc:
                print(f"ERROR {exc}", flush=True)
                key = "errors"
            with lock:
                counts[key] += 1

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    print(f"DONE {counts['ok']} {counts['errors']} {time.monotonic() - started:.3f}", flush=True)
    rest.close()
    limiter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
