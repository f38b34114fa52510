"""Tests of ``examples/reply_bot.py`` against a FakeGateway and a FakeRest that enforces Discord's
rate limits, with the pytest plugin's fixtures (``pip install 'sync-gateway[testing]'``)::

    pytest examples/test_reply_bot.py
"""
from reply_bot import make_bot
from sync_gateway import MemoryIdentifyGate


def test_ping_gets_pong_and_nothing_is_rate_limited(fake_gateway, fake_rest):
    bot = make_bot("any-token", gateway_url=fake_gateway.url, api_base=fake_rest.api_base,
                   identify_gate=MemoryIdentifyGate(interval=0, margin=0))
    try:
        bot.start()
        assert bot.wait_until_ready(5)
        author = {"id": "900000000000000001", "username": "ann"}
        for n in range(20):  # twenty "!ping" in one channel: more than its bucket allows at once
            fake_gateway.dispatch("MESSAGE_CREATE", {"id": str(n), "channel_id": "5", "content": "!ping",
                                                     "author": author})
        fake_rest.wait_for(lambda requests: len(fake_rest.messages(5)) == 20, timeout=20)
        assert {m["content"] for m in fake_rest.messages(5)} == {"pong"}
        assert fake_rest.count(status=429) == 0  # the limits were kept before sending
    finally:
        bot.close()
        bot.rest.close()


def test_the_slash_command_is_answered_within_3_seconds(fake_gateway, fake_rest):
    bot = make_bot("any-token", gateway_url=fake_gateway.url, api_base=fake_rest.api_base,
                   identify_gate=MemoryIdentifyGate(interval=0, margin=0))
    try:
        bot.start()
        assert bot.wait_until_ready(5)
        interaction = fake_rest.create_interaction("ping")
        fake_gateway.dispatch("INTERACTION_CREATE", interaction)
        fake_rest.wait_for(lambda requests: fake_rest.interaction_response(interaction["id"]), timeout=3)
        answer = fake_rest.interaction_response(interaction["id"])
        assert answer["data"] == {"content": "pong"} and answer["after"] < 3.0
    finally:
        bot.close()
        bot.rest.close()
