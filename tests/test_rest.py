"""RestClient against a real HTTP server on 127.0.0.1 with scripted responses."""
import json
import logging
import re
import socket
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, NamedTuple, Optional

import pytest
import requests

from sync_gateway import rest as rest_module
from sync_gateway._version import __version__
from sync_gateway.errors import AuthenticationError, ConfigError, GatewayError, GatewayUnreachable, HTTPError
from sync_gateway.ratelimit import MemoryIdentifyGate
from sync_gateway.rest import RestClient

pytestmark = pytest.mark.timeout(30)

TOKEN = "MTA5ODc2NTQzMjEwOTg3NjU0.GxYzAb.Zq3vK8mN2pL5rT7wY9uE1iO4aS6dF0gH2jK4lM"
BASE_PATH = "/api/v10"


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    """Every thread a test starts (workers, the HTTP server and its handlers) is gone after it."""
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before]
    for thread in leftover:
        thread.join(2.0)
    assert [t.name for t in leftover if t.is_alive()] == []


class Reply(NamedTuple):
    status: int = 200
    body: Any = None  # JSON-able, or bytes sent as they are, or None for no body
    headers: Dict[str, str] = {}
    hang: bool = False  # never answer (until the test ends): a read timeout


class Seen(NamedTuple):
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    at: float


class Script:
    """Per-path queues of replies; the last reply of a queue repeats. Records every request."""

    def __init__(self) -> None:
        self.replies: Dict[str, List[Reply]] = {}
        self.seen: List[Seen] = []
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.release = threading.Event()
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}{BASE_PATH}"

    def on(self, path: str, *replies: Reply) -> None:
        with self.lock:
            self.replies[BASE_PATH + path] = list(replies)

    def next_reply(self, path: str) -> Reply:
        with self.lock:
            queue = self.replies.get(path)
            if not queue:
                return Reply(404, {"message": "404: Not Found", "code": 0})
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def record(self, seen: Seen) -> None:
        with self.arrived:
            self.seen.append(seen)
            self.arrived.notify_all()

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.seen) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"server saw {len(self.seen)} requests, expected {count}"
                self.arrived.wait(left)

    def paths(self) -> List[str]:
        with self.lock:
            return [s.path[len(BASE_PATH):] for s in self.seen]


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # keep the test output quiet
            pass

        def _handle(self) -> None:
            at = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            script.record(Seen(self.command, self.path, dict(self.headers.items()), body, at))
            reply = script.next_reply(path)
            if reply.hang:
                script.release.wait(20.0)
                return
            if reply.body is None:
                payload = b""
            elif isinstance(reply.body, bytes):
                payload = reply.body
            else:
                payload = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            if reply.body is not None and not isinstance(reply.body, bytes):
                self.send_header("Content-Type", "application/json")
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler


class QuietServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every request thread: none outlives a test

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a hung handler writing to a socket the client gave up on


@pytest.fixture
def server():
    script = Script()
    httpd = QuietServer(("127.0.0.1", 0), make_handler(script))
    script.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield script
    finally:
        script.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5.0)
        assert not thread.is_alive()


@pytest.fixture
def make_client(server):
    clients: List[RestClient] = []

    def make(**kwargs: Any) -> RestClient:
        options = dict(timeout=2.0, retry_base=0.01, retry_max=0.05)
        options.update(kwargs)
        client = RestClient(TOKEN, server.base, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog, monkeypatch):
    """Every record of every test, at DEBUG, with the redacting filter taken off our logger:
    the token must not be put into a log call in the first place."""
    monkeypatch.setattr(logging.getLogger("sync_gateway.rest"), "filters", [])
    caplog.set_level(logging.DEBUG, logger="sync_gateway")
    yield
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        assert TOKEN not in text, record


def assert_clean(exc: BaseException) -> None:
    """The token is in no exception of the chain: str, repr, args, formatted traceback."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text += str(current) + repr(current) + repr(current.args)
        current = current.__cause__ or current.__context__
    assert TOKEN not in text
    assert TOKEN[:20] not in text


def raises(exc_type, call, *args, **kwargs):
    with pytest.raises(exc_type) as info:
        call(*args, **kwargs)
    assert_clean(info.value)
    return info.value


GATEWAY_BOT = {
    "url": "wss://gateway.discord.gg",
    "shards": 2,
    "session_start_limit": {"total": 1000, "remaining": 997, "reset_after": 14_400_000, "max_concurrency": 1},
}


# ---------------------------------------------------------------------------- happy paths


def test_headers_sent(server, client):
    server.on("/gateway/bot", Reply(200, GATEWAY_BOT))
    client.get_gateway_bot()
    (seen,) = server.seen
    assert seen.method == "GET"
    assert seen.path == "/api/v10/gateway/bot"
    assert seen.headers["Authorization"] == f"Bot {TOKEN}"
    assert re.fullmatch(
        r"DiscordBot \(https://github\.com/sync-gateway/sync-gateway, " + re.escape(__version__) + r"\) sync_gateway",
        seen.headers["User-Agent"],
    )
    assert seen.headers["Accept"] == "application/json"


def test_custom_user_agent(server, make_client):
    client = make_client(user_agent="DiscordBot (https://example.org, 9.9) mybot")
    server.on("/gateway", Reply(200, {"url": "wss://gateway.discord.gg"}))
    client.get_gateway()
    assert server.seen[0].headers["User-Agent"] == "DiscordBot (https://example.org, 9.9) mybot"


def test_get_gateway_bot_parsing_feeds_the_identify_gate(server, client):
    server.on("/gateway/bot", Reply(200, GATEWAY_BOT))
    data = client.get_gateway_bot()
    assert data["url"] == "wss://gateway.discord.gg"
    assert data["shards"] == 2
    assert data["session_start_limit"]["reset_after"] == 14_400_000
    gate = MemoryIdentifyGate()
    gate.update_session_start_limit(data["session_start_limit"])
    info = gate.session_start_info()
    assert info["remaining"] == 997
    assert 14_390 < info["resets_in"] <= 14_400


def test_get_gateway_bot_rejects_a_body_without_url(server, client):
    server.on("/gateway/bot", Reply(200, {"shards": 1}))
    raises(GatewayError, client.get_gateway_bot)


def test_get_gateway_and_current_user(server, client):
    server.on("/gateway", Reply(200, {"url": "wss://gateway.discord.gg"}))
    server.on("/users/@me", Reply(200, {"id": "1", "username": "bot", "bot": True}))
    assert client.get_gateway() == {"url": "wss://gateway.discord.gg"}
    assert client.get_current_user()["username"] == "bot"
    assert server.paths() == ["/gateway", "/users/@me"]


def test_json_body_and_params(server, client):
    server.on("/channels/1/messages", Reply(200, {"id": "2"}))
    assert client.request("post", "/channels/1/messages", json={"content": "hi"}, params={"x": 1}) == {"id": "2"}
    seen = server.seen[0]
    assert seen.method == "POST"
    assert seen.path == "/api/v10/channels/1/messages?x=1"
    assert seen.headers["Content-Type"] == "application/json"
    assert json.loads(seen.body) == {"content": "hi"}


def test_204_returns_none(server, client):
    server.on("/channels/1/typing", Reply(204))
    assert client.request("POST", "/channels/1/typing") is None


def test_a_200_that_is_not_json_is_an_error(server, client):
    server.on("/gateway", Reply(200, b"<html>captive portal</html>"))
    error = raises(HTTPError, client.get_gateway)
    assert error.status == 200


def test_requests_are_logged_at_debug_without_headers(server, client, caplog):
    server.on("/gateway/bot", Reply(200, GATEWAY_BOT))
    client.get_gateway_bot()
    messages = [r.getMessage() for r in caplog.records if r.name == "sync_gateway.rest"]
    assert any(re.fullmatch(r"GET /gateway/bot -> 200 in \d+ ms", m) for m in messages), messages
    assert not any("Authorization" in m or "Bot " in m for m in messages)


# ---------------------------------------------------------------------------- rate limits


def test_429_waits_retry_after_then_succeeds(server, client):
    server.on(
        "/gateway/bot",
        Reply(429, {"message": "You are being rate limited.", "retry_after": 0.3, "global": False}, {"Retry-After": "1"}),
        Reply(200, GATEWAY_BOT),
    )
    assert client.get_gateway_bot()["shards"] == 2
    first, second = server.seen
    gap = second.at - first.at
    assert 0.29 <= gap < 3.0  # the body's fractional retry_after wins over the header


def test_429_retry_after_header_when_the_body_is_not_json(server, client):
    server.on("/gateway", Reply(429, b"slow down", {"Retry-After": "0.2"}), Reply(200, {"url": "wss://g"}))
    assert client.get_gateway() == {"url": "wss://g"}
    first, second = server.seen
    assert 0.19 <= second.at - first.at < 3.0


@pytest.mark.parametrize(
    "reply",
    [
        Reply(429, {"message": "global", "retry_after": 0.4, "global": True}),
        Reply(429, {"message": "global", "retry_after": 0.4}, {"X-RateLimit-Global": "true"}),
    ],
    ids=["body", "header"],
)
def test_global_429_holds_every_route(server, make_client, reply):
    client = make_client(max_retries=0)  # give up on the 429 at once, but remember it
    server.on("/a", reply)
    server.on("/b", Reply(200, {"ok": True}))
    error = raises(HTTPError, client.request, "GET", "/a")
    assert error.status == 429
    assert "global" in str(error)
    assert client.request("GET", "/b") == {"ok": True}
    first, second = server.seen
    assert 0.39 <= second.at - first.at < 3.0


class EventOnMessage(logging.Handler):
    def __init__(self, needle: str, event: threading.Event) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.event.set()


def test_global_429_seen_by_one_thread_holds_another(server, client):
    server.on("/a", Reply(429, {"message": "global", "retry_after": 0.5, "global": True}), Reply(200, {"a": 1}))
    server.on("/b", Reply(200, {"b": 1}))
    results = []
    # The INFO line is logged once the client has recorded the global limit: then send /b.
    limited = threading.Event()
    handler = EventOnMessage("rate limited (global)", limited)
    logger = logging.getLogger("sync_gateway.rest")
    logger.addHandler(handler)
    try:
        thread = threading.Thread(target=lambda: results.append(client.request("GET", "/a")), daemon=True)
        thread.start()
        assert limited.wait(5.0)
    finally:
        logger.removeHandler(handler)
    assert client.request("GET", "/b") == {"b": 1}
    thread.join(5.0)
    assert not thread.is_alive()
    assert results == [{"a": 1}]
    a_first = server.seen[0].at
    assert all(s.at - a_first >= 0.49 for s in server.seen[1:])


def test_route_429_does_not_hold_other_routes(server, make_client):
    client = make_client(max_retries=0, max_ratelimit_wait=1.0)
    server.on("/a", Reply(429, {"message": "slow", "retry_after": 5.0, "global": False}))
    server.on("/b", Reply(200, {"ok": True}))
    raises(HTTPError, client.request, "GET", "/a")
    assert client.request("GET", "/b") == {"ok": True}
    # /a is still limited for ~5 s, more than max_ratelimit_wait: refused locally, nothing sent.
    error = raises(HTTPError, client.request, "GET", "/a")
    assert error.status == 429
    assert server.paths() == ["/a", "/b"]


def test_bucket_headers_hold_the_next_request_to_that_route(server, client):
    exhausted = {"X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "0.3"}
    server.on("/a", Reply(200, {"n": 1}, exhausted))
    client.request("GET", "/a")
    client.request("GET", "/a")
    first, second = server.seen
    assert 0.29 <= second.at - first.at < 3.0


def test_bucket_headers_are_per_route(server, make_client):
    client = make_client(max_ratelimit_wait=1.0)
    exhausted = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": "5"}
    server.on("/a", Reply(200, {"n": 1}, exhausted))
    server.on("/b", Reply(200, {"n": 2}, {"X-RateLimit-Remaining": "4", "X-RateLimit-Reset-After": "5"}))
    client.request("GET", "/a")
    client.request("GET", "/b")
    client.request("GET", "/b")
    raises(HTTPError, client.request, "GET", "/a")
    assert server.paths() == ["/a", "/b", "/b"]


def test_429_retries_are_bounded(server, make_client):
    client = make_client(max_retries=2)
    server.on("/a", Reply(429, {"message": "slow", "retry_after": 0.01}))
    error = raises(HTTPError, client.request, "GET", "/a")
    assert error.status == 429
    assert len(server.seen) == 3


# ---------------------------------------------------------------------------- retries and errors


def test_5xx_is_retried_then_succeeds(server, client):
    server.on("/gateway/bot", Reply(502, b"bad gateway"), Reply(503, {"message": "busy"}), Reply(200, GATEWAY_BOT))
    assert client.get_gateway_bot()["url"] == "wss://gateway.discord.gg"
    assert len(server.seen) == 3


def test_5xx_exhausted_raises_http_error(server, make_client):
    client = make_client(max_retries=2)
    server.on("/gateway/bot", Reply(503, {"message": "Service Unavailable", "code": 0}))
    error = raises(HTTPError, client.get_gateway_bot)
    assert not isinstance(error, AuthenticationError)
    assert error.status == 503
    assert "Service Unavailable" in str(error)
    assert len(server.seen) == 3


def test_401_raises_authentication_error_after_one_request(server, client):
    server.on("/users/@me", Reply(401, {"message": "401: Unauthorized", "code": 0}))
    error = raises(AuthenticationError, client.get_current_user)
    assert isinstance(error, HTTPError)
    assert error.status == 401
    assert "Reset Token" in str(error)
    assert len(server.seen) == 1


@pytest.mark.parametrize("status,code,message", [(403, 50001, "Missing Access"), (404, 10003, "Unknown Channel"), (400, 50035, "Invalid Form Body")])
def test_other_4xx_raise_http_error_without_retry(server, client, status, code, message):
    server.on("/channels/1", Reply(status, {"message": message, "code": code}))
    error = raises(HTTPError, client.request, "GET", "/channels/1")
    assert (error.status, error.code) == (status, code)
    assert message in str(error)
    assert len(server.seen) == 1


def test_a_server_echoing_the_token_does_not_leak_it(server, client):
    server.on("/x", Reply(400, {"message": f"bad header Bot {TOKEN}", "code": 1}))
    error = raises(HTTPError, client.request, "GET", "/x")
    assert "<redacted>" in str(error)


def test_redirects_are_not_followed(server, client):
    server.on("/gateway", Reply(302, None, {"Location": "http://127.0.0.2:9/steal"}))
    error = raises(HTTPError, client.get_gateway)
    assert error.status == 302
    assert len(server.seen) == 1


def free_port() -> int:
    """A port that was just bound and closed: nothing listens there."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_connection_refused_raises_gateway_unreachable():
    client = RestClient(TOKEN, f"http://127.0.0.1:{free_port()}/api/v10", timeout=2.0, max_retries=2, retry_base=0.01, retry_max=0.05)
    try:
        error = raises(GatewayUnreachable, client.get_gateway_bot)
    finally:
        client.close()
    assert str(error).startswith("cannot reach 127.0.0.1")
    assert isinstance(error.__cause__, requests.ConnectionError)


def test_read_timeout_is_retried_then_unreachable(server, make_client):
    client = make_client(timeout=0.2, max_retries=1)
    server.on("/gateway/bot", Reply(hang=True))
    error = raises(GatewayUnreachable, client.get_gateway_bot)
    assert isinstance(error.__cause__, requests.Timeout)
    server.wait_for_requests(2)
    assert len(server.seen) == 2


def test_timeout_then_success(server, make_client):
    client = make_client(timeout=0.2, max_retries=2)
    server.on("/gateway", Reply(hang=True), Reply(200, {"url": "wss://g"}))
    assert client.get_gateway() == {"url": "wss://g"}


# ---------------------------------------------------------------------------- close


def test_close_interrupts_a_rate_limit_wait(server, client):
    server.on("/a", Reply(429, {"message": "slow", "retry_after": 30.0}))
    errors: List[BaseException] = []

    def worker():
        try:
            client.request("GET", "/a")
        except GatewayError as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    server.wait_for_requests(1)
    started = time.monotonic()
    client.close()
    thread.join(5.0)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5.0
    assert len(errors) == 1 and type(errors[0]) is GatewayError
    assert "closed" in str(errors[0])
    assert_clean(errors[0])


def test_close_interrupts_a_retry_backoff(server, make_client):
    client = make_client(retry_base=30.0, retry_max=30.0)
    server.on("/a", Reply(502, b"bad gateway"))
    errors: List[BaseException] = []

    def worker():
        try:
            client.request("GET", "/a")
        except GatewayError as exc:
            errors.append(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    server.wait_for_requests(1)
    client.close()
    thread.join(5.0)
    assert not thread.is_alive()
    assert len(errors) == 1 and "closed" in str(errors[0])


def test_request_after_close_and_context_manager(server):
    with RestClient(TOKEN, server.base) as client:
        assert not client.closed
    assert client.closed
    raises(GatewayError, client.get_gateway)
    client.close()  # idempotent
    assert server.seen == []


def test_a_supplied_session_is_used_and_not_closed(server):
    session = requests.Session()
    closed = []
    session.close = lambda: closed.append(True)  # type: ignore[method-assign]
    server.on("/gateway", Reply(200, {"url": "wss://g"}))
    with RestClient(TOKEN, server.base, session=session) as client:
        client.get_gateway()
    assert closed == []
    requests.Session.close(session)


# ---------------------------------------------------------------------------- config and secrecy


def test_repr_and_str_never_show_the_token(server, client):
    for text in (repr(client), str(client)):
        assert TOKEN not in text
        assert "127.0.0.1" in text


@pytest.mark.parametrize(
    "token",
    ["", "   ", None, 123, f"Bot {TOKEN}", f"{TOKEN[:20]}\n{TOKEN[20:]}", f"{TOKEN[:20]} {TOKEN[20:]}"],
    ids=["empty", "blank", "none", "int", "prefixed", "newline", "space"],
)
def test_bad_tokens_raise_config_error_without_the_token(token):
    error = raises(ConfigError, RestClient, token)
    assert TOKEN[:10] not in str(error)


def test_surrounding_whitespace_is_stripped(server):
    server.on("/gateway", Reply(200, {"url": "wss://g"}))
    with RestClient(f"  {TOKEN}\n", server.base) as client:
        client.get_gateway()
    assert server.seen[0].headers["Authorization"] == f"Bot {TOKEN}"


@pytest.mark.parametrize("api_base", ["discord.com/api/v10", "ftp://discord.com/api", "https://", 5, "https://user:pw@discord.com/api"])
def test_bad_api_base_raises_config_error(api_base):
    raises(ConfigError, RestClient, TOKEN, api_base)


@pytest.mark.parametrize(
    "kwargs",
    [dict(timeout=0), dict(max_retries=-1), dict(max_retries=1.5), dict(retry_base=-1), dict(retry_max=0), dict(user_agent="a\r\nX-Evil: 1")],
)
def test_bad_options_raise_config_error(kwargs):
    raises(ConfigError, RestClient, TOKEN, **kwargs)


def test_defaults():
    with RestClient(TOKEN) as client:
        assert client.api_base == "https://discord.com/api/v10"
    assert rest_module.DEFAULT_USER_AGENT.startswith("DiscordBot (https://github.com/sync-gateway/sync-gateway, ")
