"""Tests of ``examples/bot.py``'s handlers against a real FakeGateway, using the fixtures of the
pytest plugin that ships in the ``testing`` extra (``pip install 'sync-gateway[testing]'``)::

    pytest examples/test_bot.py

``fake_gateway`` is a started FakeGateway on 127.0.0.1; ``gateway_client`` a GatewayClient
connected to it and ready; ``make_gateway_client(start=False)`` one you start yourself. Each test
gets its own, with no IDENTIFY wait between them, and every client is closed afterwards.
"""
import threading

from bot import Bot


def wait_for_handlers(fake_gateway, client):
    """Dispatch a marker event and wait until the client's handlers got it: every event
    dispatched before it has been handled too (handlers run in order, one at a time)."""
    done = threading.Event()
    client.on("MARKER", lambda event: done.set())
    fake_gateway.dispatch("MARKER", {})
    assert done.wait(5)


def test_keeps_the_guild_list(fake_gateway, gateway_client):
    bot = Bot()
    bot.register(gateway_client)
    fake_gateway.dispatch("GUILD_CREATE", {"id": "1", "name": "Cats"})
    fake_gateway.dispatch("GUILD_CREATE", {"id": "2", "name": "Dogs"})
    fake_gateway.dispatch("GUILD_DELETE", {"id": "1"})
    wait_for_handlers(fake_gateway, gateway_client)
    assert bot.guilds == {"2": "Dogs"}


def test_status_command_updates_the_presence(fake_gateway, gateway_client):
    bot = Bot()
    bot.register(gateway_client)
    fake_gateway.dispatch("MESSAGE_CREATE", {"content": "!status  out for lunch ", "channel_id": "5"})
    presence = fake_gateway.connections[-1].wait_for(op=3, timeout=5)  # what the bot sent
    assert presence["d"]["activities"] == [{"name": "Custom Status", "type": 4, "state": "out for lunch"}]


def test_a_lost_session_clears_the_guilds(fake_gateway, make_gateway_client):
    client = make_gateway_client(start=False)  # register first, then start: handlers see READY too
    bot = Bot()
    bot.register(client)
    client.start()
    assert client.wait_until_ready(5)
    fake_gateway.dispatch("GUILD_CREATE", {"id": "1", "name": "Cats"})
    wait_for_handlers(fake_gateway, client)
    assert bot.guilds == {"1": "Cats"}

    first = fake_gateway.connections[-1]
    first.invalid_session(False)  # op 9, not resumable: the client IDENTIFYs a new session
    second = fake_gateway.wait_for_connections(2)
    second.ready.wait(5)
    assert second.identify is not None
    wait_for_handlers(fake_gateway, client)
    assert bot.guilds == {}
