"""Shards of one bot split over several processes or hosts, sharing the IDENTIFY limits (and the
daily session-start ledger, never going below ``daily_floor``) and keeping their sessions across
restarts, through Redis (the ``redis`` extra). One process per range of shards::

    SHARD_COUNT=16 SHARD_IDS=0-7  REDIS_URL=redis://redis:6379/0 DISCORD_TOKEN=... python examples/sharding_processes.py
    SHARD_COUNT=16 SHARD_IDS=8-15 REDIS_URL=redis://redis:6379/0 DISCORD_TOKEN=... python examples/sharding_processes.py

SIGTERM (a deploy) closes with ``keep_session=True``: the restarted process RESUMEs each shard and
Discord replays what it missed. Ctrl-C closes for good. On one host without Redis, use
``sg.FileIdentifyGate("/var/lib/mybot/gate.json")`` and ``sg.FileSessionStore("/var/lib/mybot/sessions.json")``.
"""
import logging
import os
import signal

import sync_gateway as sg

logging.basicConfig(level=logging.INFO, format="%(threadName)s %(message)s")
log = logging.getLogger("mybot")

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")  # the Redis every process shares
first, _, last = os.environ["SHARD_IDS"].partition("-")  # this process's shards: "0-7", or one: "3"

client = sg.ShardedClient(
    os.environ["DISCORD_TOKEN"],
    shard_count=int(os.environ["SHARD_COUNT"]),  # the same in every process
    shard_ids=range(int(first), int(last or first) + 1),
    gateway_url=os.environ.get("SYNC_GATEWAY_URL"),
    identify_gate=sg.RedisIdentifyGate(REDIS_URL, key_prefix="mybot", daily_floor=50),
    session_store=sg.RedisSessionStore(REDIS_URL, key_prefix="mybot"),
)
client.on_lifecycle(lambda event: event.kind in ("ready", "resumed") and log.info("shard %d: %s", event.shard_id, event.kind))
signal.signal(signal.SIGTERM, lambda *_: client.close(keep_session=True))

try:
    client.run_forever()
except KeyboardInterrupt:
    pass
