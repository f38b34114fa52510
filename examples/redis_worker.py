"""A worker process reading the events ``examples/redis_gateway.py`` writes to a Redis stream. Run
as many as you like: each entry goes to one worker of the group, and is acknowledged only after
the handler returned (at-least-once: make handlers idempotent; ``(event.session_id, event.seq)``
is a unique key). Ctrl-C or SIGTERM stops it::

    REDIS_URL=redis://localhost:6379/0 python examples/redis_worker.py worker-1
"""
import os
import signal
import sys
import threading

import sync_gateway as sg

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")  # the Redis every process shares
name = sys.argv[1] if len(sys.argv) > 1 else "worker-1"  # keep it across restarts: pending entries come back

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())


def handle(event):  # event: sg.StreamDispatch (the Dispatch fields, plus entry_id)
    if event.name == "MESSAGE_CREATE":
        print(f"{name}: {event.data['content']} (seq {event.seq}, entry {event.entry_id})")


print(f"{name}: reading mybot:events")
handled = sg.consume(REDIS_URL, stream="mybot:events", group="workers", consumer=name, handler=handle, stop=stop)
print(f"{name}: stopped after {handled} event(s)")
