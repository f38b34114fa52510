"""A bot that answers: "!ping" in a channel gets "pong", and the /ping slash command gets "pong".

    DISCORD_TOKEN=... python examples/reply_bot.py

Against the fakes instead of Discord (two terminals; no token needed)::

    sync-gateway fake-gateway                              # prints gateway_url: ws://...
    python -m sync_gateway.testing.fake_rest               # prints api_base: http://...
    DISCORD_TOKEN=fake GATEWAY_URL=ws://... API_BASE=http://... python examples/reply_bot.py

The reply path is ``client.rest``: a RestClient with the client's token that keeps every Discord
rate limit before it sends. Handlers run on one dispatcher thread, so a reply that waits for a rate
limit delays the next event, never a heartbeat; an interaction must be answered within 3 s.
"""
import os
from typing import Any

import sync_gateway as sg


def make_bot(token: str, **options: Any) -> sg.GatewayClient:
    """The bot: a GatewayClient with two handlers. ``options`` go to GatewayClient."""
    client = sg.GatewayClient(token, intents=sg.Intents.DEFAULT | sg.Intents.MESSAGE_CONTENT, **options)

    @client.on("MESSAGE_CREATE")
    def on_message(event: sg.Dispatch) -> None:
        message = event.data
        if message.get("author", {}).get("bot"):
            return  # never answer bots (ourselves included)
        if message.get("content", "").strip() == "!ping":
            client.rest.send_message(message["channel_id"], "pong", message_reference={"message_id": message["id"]})

    @client.on("INTERACTION_CREATE")
    def on_interaction(event: sg.Dispatch) -> None:
        if event.data.get("data", {}).get("name") == "ping":
            client.rest.respond(event, {"content": "pong"})  # within 3 s of the event, or Discord drops it

    return client


def main() -> None:
    options = {}
    if os.environ.get("GATEWAY_URL"):
        options["gateway_url"] = os.environ["GATEWAY_URL"]
    if os.environ.get("API_BASE"):
        options["api_base"] = os.environ["API_BASE"]
    make_bot(os.environ["DISCORD_TOKEN"], **options).run_forever()  # Ctrl-C closes cleanly


if __name__ == "__main__":
    main()
