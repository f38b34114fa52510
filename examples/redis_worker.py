"""Hand events to worker processes through a Redis stream (the ``redis`` extra and Redis >= 6.2).

One gateway process writes every event to the stream; any number of worker processes read it as
one consumer group, each entry going to one worker, acknowledged only after the handler returned
(at-least-once: ``(event.session_id, event.seq)`` is a unique key for making handlers idempotent)::

    REDIS_URL=redis://localhost:6379/0 DISCORD_TOKEN=... python examples/redis_worker.py gateway
    REDIS_URL=redis://localhost:6379/0 python examples/redis_worker.py worker --name worker-1
    REDIS_URL=redis://localhost:6379/0 python examples/redis_worker.py worker --name worker-2

Against the fake gateway add ``SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/`` to the gateway's line.
Both roles stop on SIGTERM or Ctrl-C (or after ``--seconds``).
"""
import argparse
import os
import signal
import threading

import sync_gateway as sg

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")  # the Redis every process shares
STREAM = "mybot:events"

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())


def run_gateway(seconds):
    sink = sg.RedisStreamSink(REDIS_URL, stream=STREAM, maxlen=100_000)
    client = sg.GatewayClient(
        os.environ["DISCORD_TOKEN"],
        intents=sg.Intents.DEFAULT | sg.Intents.MESSAGE_CONTENT,
        gateway_url=os.environ.get("SYNC_GATEWAY_URL"),
    )
    client.on("*", sink)  # every event, written on the client's dispatcher thread
    client.on("READY", lambda event: print("gateway: ready"))
    client.start()
    stop.wait(seconds)
    client.close()
    sink.close()
    print(f"gateway: closed after writing {sink.sent} event(s)")


def handle(event):  # event: sg.StreamDispatch (a Dispatch's fields, plus entry_id)
    if event.name == "MESSAGE_CREATE":
        print(f"worker: {event.data['content']} (seq {event.seq}, entry {event.entry_id})")


def run_worker(name, seconds):
    if seconds is not None:
        timer = threading.Timer(seconds, stop.set)
        timer.daemon = True
        timer.start()
    print(f"worker {name}: reading {STREAM}")
    handled = sg.consume(REDIS_URL, stream=STREAM, group="workers", consumer=name, handler=handle, stop=stop)
    print(f"worker {name}: stopped after {handled} event(s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="a Redis stream between a gateway process and workers")
    parser.add_argument("role", choices=["gateway", "worker"])
    parser.add_argument("--name", default="worker-1", help="the worker's consumer name (keep it across restarts)")
    parser.add_argument("--seconds", type=float, help="stop after this long (default: until SIGTERM or Ctrl-C)")
    args = parser.parse_args()
    if args.role == "gateway":
        run_gateway(args.seconds)
    else:
        run_worker(args.name, args.seconds)
