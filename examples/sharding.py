"""Several shards of one bot in one process (ShardedClient): 3 threads per shard, one handler API.

``shard_count="auto"`` takes Discord's recommendation from ``GET /gateway/bot``; shards IDENTIFY in
bucket order, one per bucket per 5 s. Against the fake gateway (it recommends 1 shard; set
``SHARD_COUNT=2`` to run two)::

    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ \\
    SYNC_GATEWAY_API_BASE=http://127.0.0.1:PORT/api/v10 python examples/sharding.py --seconds 10
"""
import argparse
import logging
import os
import time

import sync_gateway as sg

parser = argparse.ArgumentParser(description="several shards in one process")
parser.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
args = parser.parse_args()

shard_count = os.environ.get("SHARD_COUNT", "auto")
client = sg.ShardedClient(
    os.environ["DISCORD_TOKEN"],
    intents=sg.Intents.DEFAULT,
    shard_count=int(shard_count) if shard_count.isdigit() else "auto",
    gateway_url=os.environ.get("SYNC_GATEWAY_URL"),
    api_base=os.environ.get("SYNC_GATEWAY_API_BASE", "https://discord.com/api/v10"),
)
# Handlers of different shards run on different threads: log (one whole line per record) rather than print.
logging.basicConfig(level=logging.INFO, format="%(threadName)s %(message)s")
log = logging.getLogger("mybot")
client.on("READY", lambda event: log.info("shard %d: ready", event.shard_id))
client.on("GUILD_CREATE", lambda event: log.info("shard %d: guild %s", event.shard_id, event.data["name"]))

if args.seconds is None:
    client.run_forever()  # Ctrl-C closes every shard
else:
    with client:
        client.start()
        client.wait_until_ready(timeout=60)  # every shard READY
        log.info("%s: %d shard(s), guild 123 is on shard %d", client.status().state, client.shard_count, client.shard_for_guild(123))
        time.sleep(args.seconds)
