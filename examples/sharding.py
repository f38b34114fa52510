"""Several shards of one bot in one process (ShardedClient): 3 threads per shard, one handler API.
Ctrl-C stops every shard.

``shard_count="auto"`` takes Discord's recommendation from ``GET /gateway/bot``; shards IDENTIFY in
bucket order (``shard_id % max_concurrency``), one per bucket per 5 s. Against the fake gateway,
which recommends 1 shard (``SHARD_COUNT=2`` runs two)::

    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ \\
        SYNC_GATEWAY_API_BASE=http://127.0.0.1:PORT/api/v10 python examples/sharding.py
"""
import logging
import os

import sync_gateway as sg

# Handlers of different shards run on different threads: log (one whole line per record), not print.
logging.basicConfig(level=logging.INFO, format="%(threadName)s %(message)s")
log = logging.getLogger("mybot")

shard_count = os.environ.get("SHARD_COUNT", "auto")
client = sg.ShardedClient(
    os.environ["DISCORD_TOKEN"],
    intents=sg.Intents.DEFAULT,
    shard_count=int(shard_count) if shard_count.isdigit() else "auto",
    gateway_url=os.environ.get("SYNC_GATEWAY_URL"),
    api_base=os.environ.get("SYNC_GATEWAY_API_BASE", "https://discord.com/api/v10"),
)
client.on("READY", lambda event: log.info("shard %d of %d: ready", event.shard_id, client.shard_count))
client.on("GUILD_CREATE", lambda event: log.info(
    "shard %d: guild %s (shard_for_guild says %d)",
    event.shard_id, event.data["name"], client.shard_for_guild(event.data["id"]),
))

try:
    client.run_forever()  # Ctrl-C closes every shard (code 1000) and re-raises
except KeyboardInterrupt:
    pass
