"""A StreamWorker in a process of its own, for the RedisStreamSink tests.

    python worker_child.py --redis URL --stream S --group G --consumer C
                           [--die-at SEQ] [--claim-idle-ms MS]

Prints (flushed) ``GOT <seq> <name>`` when the handler runs (before the entry is acknowledged).
With ``--die-at SEQ`` it SIGKILLs itself inside the handler of that seq, so that entry is never
acknowledged. Closing stdin stops it; it then prints ``ACKED <n>``.
"""
import argparse
import logging
import os
import signal
import sys
import threading

from sync_gateway.sinks import StreamWorker


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--die-at", type=int, default=None)
    parser.add_argument("--claim-idle-ms", type=int, default=60_000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="LOG %(levelname)s %(name)s %(message)s")

    def handle(event):
        out(f"GOT {event.seq} {event.name}")
        if args.die_at is not None and event.seq == args.die_at:
            os.kill(os.getpid(), signal.SIGKILL)

    stop = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    worker = StreamWorker(
        args.redis,
        handler=handle,
        stream=args.stream,
        group=args.group,
        consumer=args.consumer,
        block_ms=200,
        claim_idle_ms=args.claim_idle_ms,
    )
    out("STARTED")
    acked = worker.run(stop)
    worker.close()
    out(f"ACKED {acked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
