"""The gateway side of a Redis stream fan-out: every event goes to a stream that worker processes
(``examples/redis_worker.py``) read. Needs the ``redis`` extra and Redis >= 6.2. Ctrl-C or SIGTERM
stops it::

    REDIS_URL=redis://localhost:6379/0 DISCORD_TOKEN=... python examples/redis_gateway.py

Against the fake gateway add ``SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/``.
"""
import os
import signal

import sync_gateway as sg

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")  # the Redis every process shares

sink = sg.RedisStreamSink(REDIS_URL, stream="mybot:events", maxlen=100_000)
client = sg.GatewayClient(
    os.environ["DISCORD_TOKEN"],
    intents=sg.Intents.DEFAULT | sg.Intents.MESSAGE_CONTENT,
    gateway_url=os.environ.get("SYNC_GATEWAY_URL"),
)
client.on("*", sink)  # every event, written (XADD) on the client's dispatcher thread
client.on("READY", lambda event: print("gateway: ready"))
signal.signal(signal.SIGTERM, lambda *_: client.close())

try:
    client.run_forever()
except KeyboardInterrupt:
    pass
sink.close()
print(f"gateway: closed after writing {sink.sent} event(s)")
