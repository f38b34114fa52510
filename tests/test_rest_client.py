"""The public RestClient against FakeRest (a real HTTP server on 127.0.0.1 that enforces Discord's
rate limits): helpers, headers, files, 429 scopes, the invalid-request budget, interactions from a
FakeGateway, and many threads and two processes sending without a single 429.

Speed is shown by tools/bench_rest.py, never asserted here."""
import io
import logging
import threading
import time
import uuid
from urllib.parse import quote

import pytest

import sync_gateway as sg
from procs.harness import REDIS_SERVER, Child, children, redis_server
from support import TOKEN
from sync_gateway.testing.fake_rest import FakeRest

pytestmark = pytest.mark.timeout(90)

CREATE = "/channels/{channel_id}/messages"


@pytest.fixture
def make_fake():
    made = []

    def make(**kwargs):
        kwargs.setdefault("token", TOKEN)
        fake = FakeRest(**kwargs).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        fake.stop()


@pytest.fixture
def fake(make_fake):
    return make_fake()


@pytest.fixture
def make_rest():
    made = []

    def make(fake, **kwargs):
        limiter = kwargs.pop("limiter", None) or sg.MemoryRateLimiter()  # each test its own limits
        kwargs.setdefault("timeout", 5.0)
        kwargs.setdefault("retry_base", 0.01)
        kwargs.setdefault("retry_max", 0.05)
        rest = sg.RestClient(kwargs.pop("token", TOKEN), fake.api_base, limiter, **kwargs)
        made.append(rest)
        return rest

    yield make
    for rest in made:
        rest.close()


# ---------------------------------------------------------------------------------------------
# helpers and what goes on the wire


def test_send_edit_delete_and_the_shared_bucket(fake, make_rest):
    rest = make_rest(fake)
    msg = rest.send_message(11, "hello", embeds=[{"title": "t"}])
    assert msg["content"] == "hello" and msg["channel_id"] == "11" and msg["embeds"] == [{"title": "t"}]
    edited = rest.edit_message(11, msg["id"], content="edited")
    assert edited["content"] == "edited" and edited["edited_timestamp"]
    assert rest.delete_message(11, msg["id"]) is None
    assert fake.messages(11) == []
    with pytest.raises(sg.HTTPError) as info:
        rest.delete_message(11, msg["id"])
    assert info.value.status == 404 and info.value.code == 10008
    st = rest.status()
    create_hash = FakeRest.bucket_hash("message-create")
    assert st.routes["POST /channels/{channel_id}/messages"] == create_hash
    assert st.routes["PATCH /channels/{channel_id}/messages/{message_id}"] == create_hash  # two routes, one bucket
    assert st.buckets[f"{create_hash}|channel_id=11"]["limit"] == 5
    assert st.invalid_requests == 0 and st.global_wait == 0.0 and not st.unauthorized
    assert [r.headers.get("Authorization") for r in fake.requests] == [f"Bot {TOKEN}"] * 4


def test_request_with_a_template_params_and_reason(fake, make_rest):
    rest = make_rest(fake)
    rest.request("POST", CREATE, channel_id=5, json={"content": "x"}, params={"nonce": "1"})
    msg = fake.messages(5)[0]
    reason = "Spam: ünï code / 100%\nsecond line"
    rest.request("DELETE", "/channels/{channel_id}/messages/{message_id}", channel_id=5, message_id=msg["id"], reason=reason)
    post, delete = fake.requests
    assert post.path == "/api/v10/channels/5/messages?nonce=1" and post.json == {"content": "x"}
    assert delete.headers["X-Audit-Log-Reason"] == quote(reason, safe=" ")
    assert "\n" not in delete.headers["X-Audit-Log-Reason"]


def test_files_go_as_multipart_with_payload_json(fake, make_rest):
    rest = make_rest(fake)
    msg = rest.send_message(
        7, "see attached", files=[("a.txt", b"hello"), ("b.bin", io.BytesIO(b"\x00\x01\x02"), "application/octet-stream")]
    )
    assert [a["filename"] for a in msg["attachments"]] == ["a.txt", "b.bin"]
    (seen,) = fake.requests
    assert seen.headers["Content-Type"].startswith("multipart/form-data")
    assert seen.json == {"content": "see attached"}
    assert seen.files == [("files[0]", "a.txt", b"hello"), ("files[1]", "b.bin", b"\x00\x01\x02")]


def test_files_are_sent_again_after_a_429(fake, make_rest):
    rest = make_rest(fake)
    fake.inject_429("user", retry_after=0.05)
    rest.send_message(7, "again", files=[("a.txt", io.BytesIO(b"once"))])
    first, second = fake.requests
    assert (first.status, second.status) == (429, 200)
    assert second.files == [("files[0]", "a.txt", b"once")]


# ---------------------------------------------------------------------------------------------
# rate limits: no 429


def run_threads(count, target):
    errors = []

    def wrap(i):
        try:
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(i,), name=f"sender-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(80)
    assert not [t for t in threads if t.is_alive()]
    assert errors == []


def test_1000_sends_from_16_threads_to_4_channels_get_no_429(make_fake, make_rest):
    fake = make_fake(limits={"message-create": (10, 0.1)}, global_limit=(5000, 1.0))
    rest = make_rest(fake, global_limit=5000)

    def sender(i):
        for n in range(i, 1000, 16):
            rest.send_message(1 + n % 4, f"m{n}")

    run_threads(16, sender)
    assert fake.count(status=429) == 0
    assert fake.count() == 1000 and fake.invalid_requests == 0
    assert [len(fake.messages(c)) for c in (1, 2, 3, 4)] == [250] * 4
    # No window was overfilled (the fake would have answered 429), and none was left for nothing:
    # every bucket window the fake opened saw at least one request, by construction of windows().
    assert len(fake.windows()) >= 4 * 25


def test_the_global_limit_is_kept_across_buckets(make_fake, make_rest):
    fake = make_fake(global_limit=(20, 1.0))
    rest = make_rest(fake, global_limit=20)

    def sender(i):
        for n in range(i, 45, 8):
            rest.send_message(100 + n, "g")  # 45 channels: every bucket has room, only the global limit holds

    run_threads(8, sender)
    assert fake.count(status=429) == 0 and fake.count() == 45


def test_without_limits_kept_the_fake_does_answer_429(make_fake):
    """The control for the tests above: the fake enforces, so "no 429" means something."""
    import requests

    fake = make_fake(limits={"message-create": (2, 5.0)})
    with requests.Session() as session:
        statuses = [
            session.post(f"{fake.api_base}/channels/1/messages", json={"content": "x"}, headers={"Authorization": f"Bot {TOKEN}"}).status_code
            for _ in range(3)
        ]
    assert statuses == [200, 200, 429]
    last = fake.requests[-1]
    assert last.scope == "user"


@pytest.mark.parametrize("scope,counted", [("shared", 0), ("user", 1), ("global", 1)])
def test_429_scopes_are_waited_out_and_counted(fake, make_rest, scope, counted):
    rest = make_rest(fake)
    fake.inject_429(scope, retry_after=0.2)
    assert rest.send_message(1, "x")["content"] == "x"
    first, second = fake.requests
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.19
    assert rest.status().invalid_requests == counted == fake.invalid_requests


def test_a_global_429_holds_other_routes_but_not_interactions(fake, make_rest):
    rest = make_rest(fake, max_retries=0)
    fake.inject_429("global", retry_after=0.5)
    with pytest.raises(sg.HTTPError) as info:
        rest.send_message(1, "x")
    assert info.value.status == 429 and "global" in str(info.value)
    assert rest.status().global_wait > 0.3
    interaction = fake.create_interaction()
    rest.respond(interaction, {"content": "fast"})  # exempt: not held
    assert fake.requests[-1].status == 204
    assert fake.requests[-1].at - fake.requests[0].at < 0.5
    rest.send_message(1, "y")  # held until the global 429 is over
    assert fake.requests[-1].at - fake.requests[0].at >= 0.49


def test_invalid_requests_warn_at_half_and_are_refused_before_the_ban(make_fake, make_rest, caplog):
    fake = make_fake(invalid_request_limit=20, limits={"message-create": (100, 1.0)})
    fake.forbidden_channels.add("9")
    rest = make_rest(fake, invalid_request_limit=20)
    caplog.set_level(logging.WARNING, logger="sync_gateway")
    forbidden = 0
    with pytest.raises(sg.TooManyInvalidRequests) as info:
        for _ in range(30):
            try:
                rest.send_message(9, "x")
            except sg.HTTPError as exc:
                assert exc.status == 403 and exc.code == 50001
                forbidden += 1
    assert forbidden == 19 == info.value.count == info.value.refuse_at
    assert info.value.limit == 20 and 540 < info.value.retry_after <= 600
    assert "banned" in str(info.value)
    assert not fake.banned and fake.invalid_requests == 19
    warnings = [r.getMessage() for r in caplog.records if "invalid REST requests" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("10 invalid REST requests")
    with pytest.raises(sg.TooManyInvalidRequests):
        rest.send_message(1, "fine channel, still refused")
    assert fake.count() == 19
    assert rest.status().invalid_requests == 19


def test_a_401_stops_the_client_from_using_the_token_again(make_fake, make_rest):
    fake = make_fake(token="MTAwMDAwMDAwMDAwMDAwMDAx.another-token.xyz")
    rest = make_rest(fake)
    with pytest.raises(sg.AuthenticationError):
        rest.send_message(1, "x")
    with pytest.raises(sg.AuthenticationError, match="not sent"):
        rest.send_message(1, "x")
    assert fake.count() == 1
    assert rest.status().unauthorized and rest.status().invalid_requests == 1


class _Seen(logging.Handler):
    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


def test_close_interrupts_a_bucket_wait(make_fake, make_rest, caplog):
    caplog.set_level(logging.DEBUG, logger="sync_gateway")
    fake = make_fake(limits={"message-create": (1, 30.0)})
    rest = make_rest(fake)
    rest.send_message(1, "first")
    errors = []

    def second():
        try:
            rest.send_message(1, "second")
        except sg.GatewayError as exc:
            errors.append(exc)

    seen = _Seen("waits")  # the DEBUG line logged just before the wait
    logger = logging.getLogger("sync_gateway.rest")
    logger.addHandler(seen)
    try:
        thread = threading.Thread(target=second)
        thread.start()
        assert seen.event.wait(10)
    finally:
        logger.removeHandler(seen)
    started = time.monotonic()
    rest.close()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - started < 5
    assert len(errors) == 1 and "closed while waiting" in str(errors[0])
    assert fake.count() == 1


# ---------------------------------------------------------------------------------------------
# interactions


def test_respond_and_followup_go_without_the_bot_token(fake, make_rest, caplog):
    caplog.set_level(logging.DEBUG, logger="sync_gateway")
    rest = make_rest(fake)
    interaction = fake.create_interaction("ping")
    assert rest.respond(interaction, {"content": "pong"}) is None
    follow = rest.followup(interaction, content="and more")
    assert follow["content"] == "and more" and follow["webhook_id"] == fake.application_id
    callback, webhook = fake.requests
    assert callback.status == 204 and webhook.status == 200
    assert "Authorization" not in callback.headers and "Authorization" not in webhook.headers
    assert fake.interaction_response(interaction["id"])["data"] == {"content": "pong"}
    assert [m["content"] for m in fake.messages(interaction["channel_id"])] == ["pong", "and more"]
    with pytest.raises(sg.HTTPError) as info:
        rest.respond(interaction, {"content": "twice"})
    assert info.value.code == 40060
    assert interaction["token"] not in str(info.value)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "/interactions/" in logged and "{interaction_token}" in logged  # the secret is masked
    assert interaction["token"] not in logged and interaction["token"] not in repr(rest.status())


def test_deferred_response_then_followup(fake, make_rest):
    rest = make_rest(fake)
    interaction = fake.create_interaction("slow")
    rest.respond(interaction, None, type=5)
    assert fake.interaction_response(interaction["id"]) == {"type": 5, "data": None, "after": pytest.approx(0, abs=3)}
    assert rest.followup(interaction, content="done")["content"] == "done"


def test_respond_rejects_something_that_is_not_an_interaction(fake, make_rest):
    rest = make_rest(fake)
    with pytest.raises(TypeError):
        rest.respond({"content": "x"}, {"content": "y"})
    with pytest.raises(TypeError):
        rest.respond(sg.Dispatch("MESSAGE_CREATE", {"id": "1"}, 1), {"content": "y"})
    assert fake.requests == []


def test_a_late_answer_logs_a_warning(fake, make_rest, caplog):
    rest = make_rest(fake)
    caplog.set_level(logging.WARNING, logger="sync_gateway")
    on_time = sg.Dispatch("INTERACTION_CREATE", fake.create_interaction(), 3, received_at=time.monotonic())
    rest.respond(on_time, {"content": "quick"})
    assert not [r for r in caplog.records if "drops answers" in r.getMessage()]
    late = sg.Dispatch("INTERACTION_CREATE", fake.create_interaction(), 4, received_at=time.monotonic() - 2.7)
    rest.respond(late, {"content": "slow"})
    (warning,) = [r for r in caplog.records if "drops answers" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert late.data["id"] in warning.getMessage() and late.data["token"] not in warning.getMessage()


def test_an_interaction_from_the_gateway_is_answered_within_its_window(gateway, make_client, make_fake):
    fake = make_fake()
    client, recorder = make_client(api_base=fake.api_base)
    answered = threading.Event()

    @client.on("INTERACTION_CREATE")
    def on_interaction(event):
        assert event.received_at is not None
        client.rest.respond(event, {"content": "pong"})
        answered.set()

    client.start()
    recorder.wait_kind("ready")
    interaction = fake.create_interaction("ping")
    gateway.dispatch("INTERACTION_CREATE", interaction)
    fake.wait_for(lambda reqs: any(r.route and r.route.startswith("/interactions/") for r in reqs), timeout=3.0)
    response = fake.interaction_response(interaction["id"])
    assert response is not None and response["data"] == {"content": "pong"} and response["after"] < 3.0
    assert answered.wait(3.0)
    assert client.rest is client.rest


# ---------------------------------------------------------------------------------------------
# two processes


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not on PATH")
    pytest.importorskip("redis")
    with redis_server(str(tmp_path_factory.mktemp("redis-rest-client"))) as url:
        yield url


def run_two_processes(fake, redis_arg, sends, prefix):
    with children() as kids:
        for _ in range(2):
            kids.append(Child("rest_child.py", fake.api_base, redis_arg, prefix, str(sends), "8", "4", token=TOKEN))
        for kid in kids:
            kid.wait_line(lambda line: line == "READY", 20, "READY")
        for kid in kids:
            kid.proc.stdin.write(b"go\n")
            kid.proc.stdin.flush()
        done = [kid.wait_line(lambda line: line.startswith("DONE"), 60, "DONE") for kid in kids]
        for kid in kids:
            assert kid.stop() == 0, kid.output()
    return [line.split() for line in done]


def test_two_processes_sharing_the_redis_limiter_get_no_429(make_fake, redis_url):
    fake = make_fake(limits={"message-create": (5, 0.2)}, global_limit=(5000, 1.0))
    done = run_two_processes(fake, redis_url, 150, f"t{uuid.uuid4().hex[:8]}")
    assert [(d[1], d[2]) for d in done] == [("150", "0"), ("150", "0")]
    assert fake.count(status=429) == 0
    assert fake.count() == 300


def test_two_processes_with_their_own_limits_do_get_429s(make_fake):
    """The control: without the shared limiter the same load draws 429s from the fake."""
    fake = make_fake(limits={"message-create": (5, 0.2)}, global_limit=(5000, 1.0))
    done = run_two_processes(fake, "-", 100, "unused")
    assert [(d[1], d[2]) for d in done] == [("100", "0"), ("100", "0")]  # retried after each 429
    assert fake.count(status=429) > 0
