"""The reply path: a blocking Discord REST client that never gets the bot rate-limited.
PROTOCOL.md §13.

:class:`RestClient` sends any API request (``request(method, route_template, **params)``) and has
the few helpers a bot needs (send/edit/delete a message, answer an interaction, follow up). The
gateway uses it too: ``GET /gateway/bot`` (URL, shards, session-start budget) and ``GET
/users/@me`` (the token probe).

Blocking, on ``requests``. Every request takes a slot in the rate limits *before* it is sent
(``ratelimit_rest.py``: buckets learned from headers and keyed by major parameters, the global
limit, 429 scopes, the invalid-request budget), in one process or, with a ``RedisRateLimiter``,
across processes. Transient failures (5xx, connection errors, timeouts) are retried with
tenacity. Every wait is interruptible by :meth:`RestClient.close`.

The token goes only into the ``Authorization`` header of requests to ``api_base``: redirects are not
followed, and it is never put in a log line, repr or exception message (invariant 7).
"""
import base64
import hashlib
import json as _json
import mimetypes
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import quote, urlsplit

import requests
import requests.adapters
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from ._log import get_logger, redact, register_secret
from ._version import __version__
from .errors import AuthenticationError, ConfigError, GatewayError, GatewayUnreachable, HTTPError, TooManyInvalidRequests
from .ratelimit_rest import LEASE_MARGIN, MemoryRateLimiter, Observation, RateLimiter, Route, Ticket, compile_route

__all__ = ["RestClient", "RestStatus", "DEFAULT_API_BASE", "DEFAULT_USER_AGENT"]

log = get_logger(__name__)

DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_USER_AGENT = f"DiscordBot (https://github.com/sync-gateway/sync-gateway, {__version__}) sync_gateway"

_AUTH_HINT = (
    "Discord rejected the bot token (401 Unauthorized). Check that it is the bot token, not the "
    "client secret, or make a new one: Developer Portal -> your application -> Bot -> Reset Token."
)


class _Transient(Exception):
    """A failure worth retrying; ``final`` is what the caller sees once the retries run out."""

    def __init__(self, final: GatewayError, cause: Optional[BaseException] = None) -> None:
        super().__init__(str(final))
        self.final = final
        self.cause = cause


def _check_token(token: Any) -> str:
    # Messages here must never contain the token, not even a part of it.
    if not isinstance(token, str):
        raise ConfigError(f"token must be a str, not {type(token).__name__}")
    token = token.strip()
    if not token:
        raise ConfigError("token is empty: pass the bot token from the Developer Portal (Bot -> Token)")
    if token.lower().startswith(("bot ", "bearer ")):
        raise ConfigError("pass the token without the 'Bot ' prefix; the client adds it")
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in token):
        raise ConfigError("token contains whitespace or control characters; copy it again from the Developer Portal")
    return str(token)


def _check_api_base(api_base: Any) -> str:
    if not isinstance(api_base, str):
        raise ConfigError(f"api_base must be a str, not {type(api_base).__name__}")
    parts = urlsplit(api_base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"api_base must be an http(s) URL such as {DEFAULT_API_BASE!r}, got {api_base!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError("api_base must not contain credentials, a query or a fragment")
    return api_base.rstrip("/")


def _header_float(headers: Mapping[str, str], name: str) -> Optional[float]:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 else None


def _bot_scope(token: str, api_base: str) -> str:
    """The limiter scope: the bot's user id (the token's first part), plus the API host when it is
    not Discord's (a test server's limits are not Discord's). Never the token itself."""
    first = token.split(".", 1)[0]
    try:
        decoded = base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)).decode("ascii")
    except (ValueError, UnicodeDecodeError):
        decoded = ""
    bot = decoded if decoded.isdigit() else "t" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
    if api_base != DEFAULT_API_BASE:
        parts = urlsplit(api_base)
        bot += f"@{parts.hostname}:{parts.port or ''}"
    return bot


_default_limiter: Optional[MemoryRateLimiter] = None
_default_lock = threading.Lock()


def _process_limiter() -> MemoryRateLimiter:
    """RestClients without a limiter share one per process: the limits are per bot, not per client."""
    global _default_limiter
    with _default_lock:
        if _default_limiter is None:
            _default_limiter = MemoryRateLimiter()
        return _default_limiter


#: Added to the global limit's 1-second window: the time a granted request may take to reach
#: Discord (a descheduled thread, a slow network), so a burst never lands in one of Discord's seconds.
GLOBAL_MARGIN = 0.05

#: ``respond()`` logs a WARNING when the answer leaves later than this after INTERACTION_CREATE
#: arrived: Discord drops answers after 3 s, and the request still has to travel.
INTERACTION_WARN_AFTER = 2.5

FileSpec = Union[Tuple[str, Any], Tuple[str, Any, str]]


@dataclass(frozen=True)
class RestStatus:
    """A snapshot of :meth:`RestClient.status`.

    ``invalid_requests``: responses 401/403/429 (except 429 scope ``shared``) in the last 10
    minutes, of ``invalid_request_limit``; requests are refused from ``refuse_at`` on.
    ``buckets``: ``{bucket id: {"limit", "remaining", "resets_in" (s or None)}}`` for the buckets
    learned; ``routes``: ``{route key: bucket hash}``; ``global_wait``: seconds every route must
    still wait after a global 429. ``unauthorized``: a 401 was seen; nothing more is sent with the token.
    """

    invalid_requests: int
    invalid_request_limit: int
    refuse_at: int
    buckets: Dict[str, Dict[str, Any]]
    routes: Dict[str, str]
    global_wait: float
    unauthorized: bool


def _interaction_of(interaction: Any) -> Tuple[Mapping[str, Any], Optional[float]]:
    """The INTERACTION_CREATE data and when it arrived (``time.monotonic()``), from a Dispatch
    (or anything with ``.data``) or the data dict itself (arrival unknown)."""
    data: Any = interaction
    received_at: Any = None
    if not isinstance(interaction, Mapping):
        data = getattr(interaction, "data", None)
        received_at = getattr(interaction, "received_at", None)
    if not isinstance(data, Mapping) or not data.get("id") or not data.get("token"):
        raise TypeError("interaction must be the INTERACTION_CREATE Dispatch or its data (a dict with 'id' and 'token')")
    return data, received_at if isinstance(received_at, (int, float)) else None


class RestClient:
    """A blocking Discord REST client that keeps the bot under every HTTP rate limit.

    >>> rest = RestClient(token)
    >>> msg = rest.send_message(channel_id, "hello")
    >>> rest.request("POST", "/channels/{channel_id}/messages", channel_id=cid, json={"content": "hi"})

    Rate limits (PROTOCOL.md §13) are kept *before* sending, in ``limiter``: by default one
    :class:`MemoryRateLimiter` per process (every RestClient of the process shares it); give a
    :class:`RedisRateLimiter` to share the limits between processes. ``global_limit`` is the bot's
    global limit in requests per second (Discord: 50; raise it only if Discord raised yours).
    ``invalid_request_limit`` is Discord's 10-minute budget of 401/403/429 responses: a WARNING
    at half of it, and from ``invalid_request_limit - max(1, limit // 100)`` on every request
    raises :class:`TooManyInvalidRequests` until the window moves on. After a 401 on a bot route,
    the client sends nothing more with the token (it was reset): :class:`AuthenticationError`.

    ``timeout`` bounds each HTTP exchange. ``max_retries`` is how many times a request is repeated
    after a 5xx, a connection error or a timeout (waiting ``retry_base`` ... ``retry_max``
    seconds, exponential with jitter), and separately after a 429. A wait for a rate limit longer
    than ``max_ratelimit_wait`` seconds raises ``HTTPError(429)`` instead. ``session`` lets the
    caller supply (and own) a ``requests.Session``; ``proxies`` is passed to requests
    (``{"https": "http://proxy:3128"}``); ``user_agent`` replaces the whole User-Agent.

    Thread-safe; every wait is interrupted by :meth:`close`.
    """

    def __init__(
        self,
        token: str,
        api_base: str = DEFAULT_API_BASE,
        limiter: Optional[RateLimiter] = None,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        session: Optional[requests.Session] = None,
        user_agent: Optional[str] = None,
        retry_base: float = 0.5,
        retry_max: float = 8.0,
        max_ratelimit_wait: float = 60.0,
        global_limit: int = 50,
        invalid_request_limit: int = 10_000,
        proxies: Optional[Mapping[str, str]] = None,
    ) -> None:
        token = _check_token(token)
        register_secret(token)
        self._api_base = _check_api_base(api_base)
        self._host = urlsplit(self._api_base).hostname or self._api_base
        if limiter is not None and not isinstance(limiter, RateLimiter):
            raise ConfigError("limiter must be a RateLimiter (sync_gateway.MemoryRateLimiter() or RedisRateLimiter(url))")
        for name, value in (("timeout", timeout), ("retry_max", retry_max), ("max_ratelimit_wait", max_ratelimit_wait)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        if isinstance(retry_base, bool) or not isinstance(retry_base, (int, float)) or not retry_base >= 0:
            raise ConfigError(f"retry_base must be a number >= 0, got {retry_base!r}")
        for name, value in (("max_retries", max_retries), ("global_limit", global_limit), ("invalid_request_limit", invalid_request_limit)):
            minimum = 0 if name == "max_retries" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
        if user_agent is not None and (not isinstance(user_agent, str) or not user_agent.strip() or any(c in user_agent for c in "\r\n")):
            raise ConfigError("user_agent must be a non-empty one-line str")
        if proxies is not None and not (isinstance(proxies, Mapping) and all(isinstance(v, str) for v in proxies.values())):
            raise ConfigError("proxies must be a dict like {'https': 'http://proxy:3128'}")
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._retry_base = float(retry_base)
        self._retry_max = float(retry_max)
        self._max_ratelimit_wait = float(max_ratelimit_wait)
        self._global_limit = global_limit
        self._invalid_limit = invalid_request_limit
        self._refuse_at = max(1, invalid_request_limit - max(1, invalid_request_limit // 100))
        self._proxies = dict(proxies) if proxies else None
        self._limiter: RateLimiter = limiter if limiter is not None else _process_limiter()
        self._scope = _bot_scope(token, self._api_base)
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=64)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session
        self._auth = f"Bot {token}"
        self._headers = {"User-Agent": user_agent or DEFAULT_USER_AGENT, "Accept": "application/json"}
        self._closed = threading.Event()
        self._unauthorized = False
        self._warned_invalid = False
        self._warn_lock = threading.Lock()

    # -- public ------------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        return self._api_base

    @property
    def limiter(self) -> RateLimiter:
        return self._limiter

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<RestClient {self._api_base} {state}>"

    def __enter__(self) -> "RestClient":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        """Interrupt every rate-limit or retry wait (they raise GatewayError) and close our session.

        Idempotent. A request already on the wire finishes or times out on its own (``timeout``).
        The limiter is not closed: it may be shared.
        """
        self._closed.set()
        self._limiter.wake()
        if self._owns_session:
            self._session.close()

    def status(self) -> RestStatus:
        """Invalid requests in the current 10-minute window, the buckets learned, the global wait."""
        st = self._limiter.status(self._scope)
        return RestStatus(
            invalid_requests=int(st["invalid_requests"]),
            invalid_request_limit=self._invalid_limit,
            refuse_at=self._refuse_at,
            buckets=dict(st["buckets"]),
            routes=dict(st["routes"]),
            global_wait=float(st["global_wait"]),
            unauthorized=self._unauthorized,
        )

    def get_gateway_bot(self) -> Dict[str, Any]:
        """``GET /gateway/bot``: ``{url, shards, session_start_limit: {total, remaining, reset_after (ms), max_concurrency}}``."""
        data = self.request("GET", "/gateway/bot")
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise GatewayError("GET /gateway/bot returned no gateway url")
        limit = data.get("session_start_limit")
        if limit is not None and not (isinstance(limit, dict) and {"total", "remaining", "reset_after"} <= limit.keys()):
            raise GatewayError("GET /gateway/bot returned a malformed session_start_limit")
        return data

    def get_gateway(self) -> Dict[str, Any]:
        """``GET /gateway``: ``{url}``. Needs no auth; the header does no harm."""
        data = self.request("GET", "/gateway")
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise GatewayError("GET /gateway returned no gateway url")
        return data

    def get_current_user(self) -> Dict[str, Any]:
        """``GET /users/@me``: the cheapest call that proves the token works (the probe)."""
        data = self.request("GET", "/users/@me")
        if not isinstance(data, dict):
            raise GatewayError("GET /users/@me returned no user object")
        return data

    # -- the helpers a bot needs ---------------------------------------------------------------

    def send_message(self, channel_id: Union[int, str], content: Optional[str] = None, **fields: Any) -> Dict[str, Any]:
        """``POST /channels/{channel_id}/messages``; returns the message. ``fields`` are Discord's
        (``embeds``, ``components``, ``message_reference``, ...); ``files=[(name, bytes)]`` attaches files."""
        files = fields.pop("files", None)
        if content is not None:
            fields["content"] = content
        message: Dict[str, Any] = self.request(
            "POST", "/channels/{channel_id}/messages", channel_id=channel_id, json=fields, files=files
        )
        return message

    def edit_message(self, channel_id: Union[int, str], message_id: Union[int, str], **fields: Any) -> Dict[str, Any]:
        """``PATCH /channels/{channel_id}/messages/{message_id}``; returns the edited message."""
        files = fields.pop("files", None)
        message: Dict[str, Any] = self.request(
            "PATCH", "/channels/{channel_id}/messages/{message_id}",
            channel_id=channel_id, message_id=message_id, json=fields, files=files,
        )
        return message

    def delete_message(self, channel_id: Union[int, str], message_id: Union[int, str], *, reason: Optional[str] = None) -> None:
        """``DELETE /channels/{channel_id}/messages/{message_id}`` (``reason`` goes to the audit log)."""
        self.request(
            "DELETE", "/channels/{channel_id}/messages/{message_id}",
            channel_id=channel_id, message_id=message_id, reason=reason,
        )

    def respond(self, interaction: Any, data: Optional[Mapping[str, Any]] = None, type: int = 4) -> Any:
        """Answer an interaction: ``POST /interactions/{id}/{token}/callback`` with ``{"type": type, "data": data}``.

        ``interaction`` is the INTERACTION_CREATE :class:`~sync_gateway.Dispatch` or its data.
        ``type`` 4 answers with a message (``data={"content": ...}``), 5 defers (answer later
        with :meth:`followup`; ``data`` may be None). Discord drops an answer that comes more
        than 3 s after the interaction was created: given the Dispatch, a WARNING is logged when
        the answer leaves more than 2.5 s after it arrived. Sent without the bot's Authorization
        header and outside the global limit.
        """
        d, received_at = _interaction_of(interaction)
        if isinstance(type, bool) or not isinstance(type, int):
            raise TypeError(f"type must be an int interaction callback type (4: message, 5: deferred), not {type!r}")
        if received_at is not None:
            age = time.monotonic() - received_at
            if age > INTERACTION_WARN_AFTER:
                log.warning(
                    "answering interaction %s %.1f s after its INTERACTION_CREATE arrived; Discord drops answers after "
                    "3 s. Answer sooner, or defer at once with rest.respond(interaction, None, type=5) and "
                    "rest.followup() later",
                    d["id"], age,
                )
        body: Dict[str, Any] = {"type": type}
        if data is not None:
            body["data"] = dict(data)
        return self.request(
            "POST", "/interactions/{interaction_id}/{interaction_token}/callback",
            interaction_id=d["id"], interaction_token=d["token"], json=body,
        )

    def followup(self, interaction: Any, **fields: Any) -> Any:
        """A follow-up message through the interaction's webhook (``POST /webhooks/{application_id}/{token}``),
        valid for 15 minutes after the interaction; returns the message. ``files=[(name, bytes)]`` attaches files."""
        d, _ = _interaction_of(interaction)
        if not d.get("application_id"):
            raise TypeError("the interaction data has no application_id")
        files = fields.pop("files", None)
        return self.request(
            "POST", "/webhooks/{webhook_id}/{webhook_token}",
            webhook_id=d["application_id"], webhook_token=d["token"], json=fields, files=files,
        )

    # -- the general call ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        route: str,
        *,
        json: Any = None,
        params: Optional[Mapping[str, Any]] = None,
        files: Optional[Sequence[FileSpec]] = None,
        reason: Optional[str] = None,
        **route_params: Any,
    ) -> Any:
        """Send one API request within the rate limits, retrying transient failures.

        ``route`` is a template filled from ``route_params``
        (``request("POST", "/channels/{channel_id}/messages", channel_id=cid, json={...})``); a
        literal path works too and is parsed for its major parameters. ``files`` is a list of
        ``(filename, bytes or binary file[, content type])``: sent as multipart with ``json`` in
        the ``payload_json`` part. ``reason`` goes URL-encoded into ``X-Audit-Log-Reason``.

        Returns the decoded JSON body, or None for 204/an empty body. Raises
        :class:`AuthenticationError` on 401 (never retried), :class:`HTTPError` on other errors
        (4xx at once, 5xx and 429 once the retries run out, or a rate-limit wait over
        ``max_ratelimit_wait``), :class:`TooManyInvalidRequests` near the invalid-request ban,
        :class:`GatewayUnreachable` when the host cannot be reached after the retries, and
        :class:`GatewayError` if the client is (or gets) closed.
        """
        if self._closed.is_set():
            raise GatewayError("the REST client is closed")
        r = compile_route(method, route, route_params)
        headers = dict(self._headers)
        if r.authorized:
            if self._unauthorized:
                raise AuthenticationError(401, "not sent: an earlier request with this token got 401. " + _AUTH_HINT)
            headers["Authorization"] = self._auth
        if reason is not None:
            if not isinstance(reason, str):
                raise TypeError("reason must be a str")
            headers["X-Audit-Log-Reason"] = quote(reason, safe=" ")
        body = _Body(json, files)
        rate_limited = [0]  # 429s seen by this request, across its transient retries

        retrying = Retrying(
            stop=stop_after_attempt(self._max_retries + 1),
            # retry_base * 2**n capped at retry_max, plus up to retry_base of jitter (tenacity 8.2+ API).
            wait=wait_exponential(multiplier=self._retry_base, max=self._retry_max) + wait_random(0, self._retry_base),
            retry=retry_if_exception_type(_Transient),
            sleep=self._sleep,
            before_sleep=self._log_retry(r.method, r.display),
            reraise=True,
        )
        try:
            return retrying(self._attempt, r, headers, body, params, rate_limited)
        except _Transient as exc:
            if exc.cause is not None:
                raise exc.final from exc.cause
            raise exc.final from None

    # -- internals ---------------------------------------------------------------------------

    def _sleep(self, seconds: float) -> None:
        """tenacity's sleep: a wait that close() cuts short."""
        if self._closed.wait(seconds):
            raise GatewayError("the REST client was closed while waiting to retry")

    def _log_retry(self, method: str, path: str) -> Any:
        total = self._max_retries + 1

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            delay = state.next_action.sleep if state.next_action is not None else 0.0
            log.info(
                "%s %s failed (%s); attempt %d of %d in %.1f s",
                method, path, exc, state.attempt_number + 1, total, delay,
            )

        return before_sleep

    def _take_slot(self, r: Route) -> Ticket:
        """Block (interruptibly) until the limiter grants this request a slot."""
        lease = self._timeout + LEASE_MARGIN
        while True:
            if self._closed.is_set():
                raise GatewayError("the REST client was closed while waiting for a rate limit")
            grant = self._limiter.acquire(
                self._scope, r,
                global_limit=self._global_limit, global_period=1.0 + GLOBAL_MARGIN, lease=lease, refuse_at=self._refuse_at,
            )
            self._check_invalid(grant.invalid)
            if grant.ticket is not None:
                return grant.ticket
            if grant.reason == "invalid":
                raise TooManyInvalidRequests(
                    f"{r.method} {r.display} not sent: {grant.invalid} invalid requests (401/403/429) in the last 10 "
                    f"minutes, {self._invalid_limit} get this IP banned by Cloudflare for about an hour. Fix what "
                    f"is failing (permissions, a bad token, ignored rate limits); the oldest leaves the window in "
                    f"{grant.wait:.0f} s",
                    grant.invalid, self._invalid_limit, self._refuse_at, grant.wait,
                )
            if grant.reason != "unknown" and grant.wait > self._max_ratelimit_wait:
                raise HTTPError(
                    429, f"{r.method} {r.display}: rate limited ({grant.reason}) for another {grant.wait:.1f} s "
                    f"(over max_ratelimit_wait)"
                )
            log.debug("%s %s waits %.0f ms (%s)", r.method, r.display, grant.wait * 1000, grant.reason)
            self._limiter.wait(grant.wait, self._closed)

    def _check_invalid(self, count: int) -> None:
        half = self._invalid_limit // 2
        with self._warn_lock:
            if count < half:
                self._warned_invalid = False
                return
            if self._warned_invalid:
                return
            self._warned_invalid = True
        log.warning(
            "%d invalid REST requests (401/403/429) in the last 10 minutes, half of Discord's %d; at %d requests "
            "are refused (TooManyInvalidRequests), at %d Cloudflare bans this IP for about an hour",
            count, self._invalid_limit, self._refuse_at, self._invalid_limit,
        )

    def _attempt(self, r: Route, headers: Dict[str, str], body: "_Body", params: Optional[Mapping[str, Any]], rate_limited: List[Any]) -> Any:
        """One try as tenacity sees it; 429s are waited out and repeated inside it."""
        url = self._api_base + r.path
        while True:
            ticket = self._take_slot(r)
            started = time.monotonic()
            try:
                response = self._session.request(
                    r.method,
                    url,
                    headers=headers,
                    params=params,
                    timeout=self._timeout,
                    allow_redirects=False,  # the Authorization header must not follow a redirect
                    proxies=self._proxies,
                    **body.kwargs(),
                )
            except BaseException as exc:
                self._limiter.release(self._scope, r, ticket, None)
                if isinstance(exc, requests.exceptions.SSLError):
                    log.debug("%s %s: TLS error after %.0f ms", r.method, r.display, (time.monotonic() - started) * 1000)
                    raise GatewayUnreachable(self._clean(f"cannot reach {self._host}: TLS verification failed: {exc}")) from exc
                if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
                    log.debug("%s %s: %s after %.0f ms", r.method, r.display, type(exc).__name__, (time.monotonic() - started) * 1000)
                    raise _Transient(GatewayUnreachable(self._clean(f"cannot reach {self._host}: {exc}")), exc) from exc
                if isinstance(exc, requests.RequestException):
                    raise GatewayError(self._clean(f"{r.method} {r.display} failed: {exc}")) from exc
                raise
            elapsed_ms = (time.monotonic() - started) * 1000
            try:
                status = response.status_code
                log.debug("%s %s -> %d in %.0f ms", r.method, r.display, status, elapsed_ms)
                body_json = self._json_body(response) if status == 429 else {}
                obs = _observe(response, body_json)
                count = self._limiter.release(self._scope, r, ticket, obs)
                self._check_invalid(count)
                if status == 401 and r.authorized:
                    self._unauthorized = True
                if status == 429:
                    self._note_429(r, obs, body_json, rate_limited)
                    continue
                return self._decode(r, response)
            finally:
                response.close()

    def _note_429(self, r: Route, obs: Observation, body: Mapping[str, Any], rate_limited: List[Any]) -> None:
        retry_after = obs.retry_after if obs.retry_after is not None else 1.0
        scope = obs.scope or "user"
        rate_limited[0] += 1
        message = self._clean(str(body.get("message") or "You are being rate limited."))
        if rate_limited[0] > self._max_retries or retry_after > self._max_ratelimit_wait:
            raise HTTPError(429, f"{r.method} {r.display} -> 429 ({scope}): {message} retry after {retry_after:.2f} s", body.get("code"))
        log.info("%s %s rate limited (%s); retrying in %.2f s", r.method, r.display, scope, retry_after)

    @staticmethod
    def _json_body(response: requests.Response) -> Dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _decode(self, r: Route, response: requests.Response) -> Any:
        method, path = r.method, r.display
        status = response.status_code
        if 200 <= status < 300:
            if status == 204 or not response.content:
                return None
            try:
                return response.json()
            except ValueError:
                raise HTTPError(status, f"{method} {path} -> {status}: the body is not JSON") from None
        body = self._json_body(response)
        code = body.get("code") if isinstance(body.get("code"), int) else None
        if status == 401 and r.authorized:
            raise AuthenticationError(401, _AUTH_HINT, code)
        message = str(body.get("message") or response.reason or "error")
        detail = f"{method} {path} -> {status}: {message}"
        if code is not None:
            detail += f" (code {code})"
        if body.get("errors"):
            detail += " " + _json.dumps(body["errors"], separators=(",", ":"))[:500]
        error = HTTPError(status, self._clean(detail), code)
        if status >= 500:
            raise _Transient(error)
        raise error

    def _clean(self, text: str) -> str:
        """Scrub the token from text we did not write ourselves (server bodies, library errors)."""
        return redact(text, [self._auth[len("Bot "):]])


def _header_int(headers: Mapping[str, str], name: str) -> Optional[int]:
    value = _header_float(headers, name)
    return int(value) if value is not None else None


def _observe(response: requests.Response, body: Mapping[str, Any]) -> Observation:
    """What a response says about the rate limits (PROTOCOL.md §13 headers; a 429's body)."""
    headers = response.headers
    status = response.status_code
    retry_after: Optional[float] = None
    scope: Optional[str] = None
    if status == 429:
        value = body.get("retry_after")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            retry_after = float(value)
        if retry_after is None:
            retry_after = _header_float(headers, "Retry-After")
        if retry_after is None:
            retry_after = 1.0
        scope = (headers.get("X-RateLimit-Scope") or "").strip().lower() or None
        if headers.get("X-RateLimit-Global", "").strip().lower() == "true" or body.get("global") is True:
            scope = "global"
    bucket = (headers.get("X-RateLimit-Bucket") or "").strip() or None
    return Observation(
        status=status,
        bucket=bucket,
        limit=_header_int(headers, "X-RateLimit-Limit"),
        remaining=_header_int(headers, "X-RateLimit-Remaining"),
        reset_after=_reset_after(headers),
        retry_after=retry_after,
        scope=scope,
        reset=_header_float(headers, "X-RateLimit-Reset"),
    )


#: Seconds added to ``X-RateLimit-Reset-After``: Discord rounds it to the millisecond, so taken as
#: it is, a window could end locally up to half a millisecond before Discord's; a few
#: milliseconds of margin cost nothing in windows of a second or more.
RESET_MARGIN = 0.003


def _reset_after(headers: Mapping[str, str]) -> Optional[float]:
    value = _header_float(headers, "X-RateLimit-Reset-After")
    return None if value is None else value + RESET_MARGIN


class _Body:
    """A request body that can be sent again (retries): JSON, or multipart with ``payload_json``."""

    def __init__(self, json: Any, files: Optional[Sequence[FileSpec]]) -> None:
        self.json = json
        self.parts: Optional[List[Tuple[str, Tuple[Optional[str], Any, str]]]] = None
        if files is None:
            return
        if isinstance(files, (str, bytes)) or not isinstance(files, Sequence):
            raise TypeError("files must be a list of (filename, bytes or binary file[, content type]) tuples")
        parts: List[Tuple[str, Tuple[Optional[str], Any, str]]] = []
        if json is not None:
            parts.append(("payload_json", (None, _json.dumps(json, separators=(",", ":")), "application/json")))
        for n, spec in enumerate(files):
            if not isinstance(spec, tuple) or len(spec) not in (2, 3) or not isinstance(spec[0], str):
                raise TypeError("each file must be (filename, bytes or binary file[, content type])")
            name, data = spec[0], spec[1]
            ctype = spec[2] if len(spec) == 3 else (mimetypes.guess_type(name)[0] or "application/octet-stream")
            if hasattr(data, "read"):
                data = data.read()  # read once: a retry sends the same bytes again
            if isinstance(data, str):
                data = data.encode("utf-8")
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"file {name!r}: data must be bytes, str or a binary file")
            parts.append((f"files[{n}]", (name, bytes(data), ctype)))
        self.parts = parts

    def kwargs(self) -> Dict[str, Any]:
        if self.parts is not None:
            return {"files": self.parts}
        return {"json": self.json}
