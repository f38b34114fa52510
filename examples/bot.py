"""A small bot whose handlers are tested by ``examples/test_bot.py`` (with the pytest plugin).

It keeps the names of the guilds it is in, and answers ``!status TEXT`` by setting its own status
line (a presence update, op 3: the gateway's one way of talking back; replies in a channel go
through the REST API). Run it::

    DISCORD_TOKEN=... python examples/bot.py                 # against Discord
    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ python examples/bot.py
"""
import os
import threading
from typing import Dict

import sync_gateway as sg


class Bot:
    """The bot's state and handlers; ``register(client)`` wires them to a client."""

    def __init__(self) -> None:
        self.guilds: Dict[str, str] = {}  # guild id -> name
        self.lock = threading.Lock()  # handlers run on the client's thread, readers on others

    def register(self, client: sg.GatewayClient) -> None:
        self.client = client
        client.on("GUILD_CREATE", self.on_guild_create)
        client.on("GUILD_DELETE", self.on_guild_delete)
        client.on("MESSAGE_CREATE", self.on_message)
        client.on_lifecycle(self.on_lifecycle)

    def on_guild_create(self, event: sg.Dispatch) -> None:
        with self.lock:
            self.guilds[event.data["id"]] = event.data["name"]

    def on_guild_delete(self, event: sg.Dispatch) -> None:
        with self.lock:
            self.guilds.pop(event.data["id"], None)

    def on_message(self, event: sg.Dispatch) -> None:
        content = event.data.get("content", "")
        if content.startswith("!status "):
            text = content[len("!status "):].strip()[:128]
            self.client.update_presence(activities=[{"name": "Custom Status", "type": 4, "state": text}])

    def on_lifecycle(self, event: sg.LifecycleEvent) -> None:
        if event.kind == "session_lost":  # a new session replays GUILD_CREATE for every guild
            with self.lock:
                self.guilds.clear()


if __name__ == "__main__":
    bot = Bot()
    client = sg.GatewayClient(
        os.environ["DISCORD_TOKEN"],
        intents=sg.Intents.DEFAULT | sg.Intents.MESSAGE_CONTENT,
        gateway_url=os.environ.get("SYNC_GATEWAY_URL"),
    )
    bot.register(client)
    client.on("READY", lambda event: print("ready"))
    client.on("GUILD_CREATE", lambda event: print("guilds:", sorted(bot.guilds.values())))
    try:
        client.run_forever()
    except KeyboardInterrupt:  # Ctrl-C: closed with code 1000
        pass
