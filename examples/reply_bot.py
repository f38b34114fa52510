"""A bot that answers: "!ping" in a channel gets "pong", and the /ping slash command gets "pong".

    DISCORD_TOKEN=... python examples/reply_bot.py

Against the fakes instead of Discord (no token, no network)::

    sync-gateway fake-gateway     # prints gateway_url: ws://... and rest_api_base: http://...
    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://... SYNC_GATEWAY_API_BASE=http://... python examples/reply_bot.py

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
    bot = make_bot(
        os.environ["DISCORD_TOKEN"],
        gateway_url=os.environ.get("SYNC_GATEWAY_URL"),  # unset: ask Discord (GET /gateway/bot)
        api_base=os.environ.get("SYNC_GATEWAY_API_BASE"),  # unset: Discord's API
    )
    try:
        bot.run_forever()
    except KeyboardInterrupt:  # Ctrl-C: run_forever() closed the connection (code 1000) first
        pass


if __name__ == "__main__":
    main()
