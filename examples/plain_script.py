"""Print every message the bot sees. The smallest complete program.

Against Discord: ``DISCORD_TOKEN=... python examples/plain_script.py`` (the bot needs the
MESSAGE_CONTENT intent switched on in the Developer Portal to see message text).

Against the fake gateway, no token needed::

    sync-gateway fake-gateway --rate 1           # prints gateway_url: ws://127.0.0.1:PORT/
    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ python examples/plain_script.py --seconds 10
"""
import argparse
import os
import time

import sync_gateway as sg

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--seconds", type=float, help="stop after this long (default: until Ctrl-C)")
args = parser.parse_args()

client = sg.GatewayClient(
    os.environ["DISCORD_TOKEN"],
    intents=sg.Intents.DEFAULT | sg.Intents.MESSAGE_CONTENT,
    gateway_url=os.environ.get("SYNC_GATEWAY_URL"),  # unset: ask Discord (GET /gateway/bot)
)


@client.on("READY")
def on_ready(event):  # event: sg.Dispatch(name, data, seq, shard_id, session_id)
    print("ready as", event.data["user"]["username"])


@client.on("MESSAGE_CREATE")
def on_message(event):
    print(event.data["author"]["username"], event.data["content"])


if args.seconds is None:
    client.run_forever()  # blocks; Ctrl-C closes (code 1000) and re-raises
else:
    with client:  # __exit__ always closes
        client.start()  # returns at once; handlers run on the client's own thread
        time.sleep(args.seconds)
