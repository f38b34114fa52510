"""examples/reply_bot.py against FakeGateway + FakeRest: "!ping" and /ping both get "pong"."""
import os

import pytest

from support import FAST, TOKEN, Recorder, load_file
from sync_gateway import MemoryIdentifyGate
from sync_gateway.testing import FakeGateway
from sync_gateway.testing.fake_rest import FakeRest

pytestmark = pytest.mark.timeout(60)

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "reply_bot.py")


def load_example():
    return load_file("reply_bot", EXAMPLE)


def test_reply_bot_answers_ping_and_the_slash_command():
    bot = load_example()
    with FakeGateway(token=TOKEN) as gateway, FakeRest(token=TOKEN) as rest:
        client = bot.make_bot(
            TOKEN, gateway_url=gateway.url, api_base=rest.api_base, config=FAST,
            identify_gate=MemoryIdentifyGate(interval=0.0, margin=0.0),
        )
        recorder = Recorder(client)
        try:
            client.start()
            recorder.wait_kind("ready")
            author = {"id": "900000000000000001", "username": "someone"}
            gateway.dispatch("MESSAGE_CREATE", {"id": "1", "channel_id": "5", "content": "hello", "author": author})
            gateway.dispatch("MESSAGE_CREATE", {"id": "2", "channel_id": "5", "content": "!ping", "author": dict(author, bot=True)})
            gateway.dispatch("MESSAGE_CREATE", {"id": "3", "channel_id": "5", "content": "!ping", "author": author})
            # (start() also read the session-start limit from api_base: GET /gateway/bot)
            def replies(reqs):
                return [r for r in reqs if r.method != "GET"]

            rest.wait_for(lambda reqs: len(replies(reqs)) >= 1, timeout=10)
            (reply,) = rest.messages(5)
            assert reply["content"] == "pong"
            assert replies(rest.requests)[0].json["message_reference"] == {"message_id": "3"}
            interaction = rest.create_interaction("ping")
            gateway.dispatch("INTERACTION_CREATE", interaction)
            rest.wait_for(lambda reqs: len(replies(reqs)) >= 2, timeout=3)
            answer = rest.interaction_response(interaction["id"])
            assert answer["data"] == {"content": "pong"} and answer["after"] < 3.0
            assert rest.count(status=429) == 0 and len(replies(rest.requests)) == 2
        finally:
            client.close(timeout=5.0)
            client.rest.close()
