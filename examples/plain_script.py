"""Print every message the bot sees: the smallest complete program. Ctrl-C stops it.

Against Discord: ``DISCORD_TOKEN=... python examples/plain_script.py`` (to see message text the bot
needs the MESSAGE_CONTENT intent switched on in the Developer Portal).

Against the fake gateway, with no token and no network::

    sync-gateway fake-gateway --rate 1     # prints gateway_url: ws://127.0.0.1:PORT/
    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ python examples/plain_script.py
"""
import os

import sync_gateway as sg

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


try:
    client.run_forever()  # blocks; handlers run on the client's own thread meanwhile
except KeyboardInterrupt:  # Ctrl-C: run_forever() closed the connection (code 1000) first
    pass
