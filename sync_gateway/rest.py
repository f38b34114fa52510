"""The little REST the gateway needs: ``GET /gateway/bot`` (URL, shards, session-start budget),
``GET /gateway`` and ``GET /users/@me`` (the token probe). PROTOCOL.md §13.

Blocking, on ``requests``. It keeps Discord's HTTP rate limits locally (bucket headers, 429s, the
global limit) and retries what is worth retrying (5xx, connection errors, timeouts) with tenacity.
Every wait is interruptible by :meth:`RestClient.close`.

The token goes only into the ``Authorization`` header of requests to ``api_base``: redirects are not
followed, and it is never put in a log line, repr or exception message (invariant 7).
"""
import json as _json
import threading
import time
from typing import Any, Dict, Mapping, Optional, Tuple
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from ._log import get_logger, redact, register_secret
from ._version import __version__
from .errors import AuthenticationError, ConfigError, GatewayError, GatewayUnreachable, HTTPError

__all__ = ["RestClient", "DEFAULT_API_BASE", "DEFAULT_USER_AGENT"]

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
    return token


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


class RestClient:
    """A small blocking Discord REST client.

    ``timeout`` bounds each HTTP exchange (connect and read). ``max_retries`` is how many times a
    request is repeated after a 5xx, a connection error or a timeout (waiting ``retry_base`` ...
    ``retry_max`` seconds, exponential with jitter), and separately after a 429 (waiting what
    Discord says). A 429 or local rate limit asking for more than ``max_ratelimit_wait`` seconds
    raises ``HTTPError(429)`` instead of blocking that long. ``session`` lets the caller supply
    (and own: it is not closed here) a ``requests.Session``; ``user_agent`` replaces the whole
    User-Agent, which Discord wants to start with ``DiscordBot (url, version)``.

    Thread-safe: the rate-limit state is shared by every thread using the client.
    """

    def __init__(
        self,
        token: str,
        api_base: str = DEFAULT_API_BASE,
        *,
        timeout: float = 10.0,
        max_retries: int = 5,
        session: Optional[requests.Session] = None,
        user_agent: Optional[str] = None,
        retry_base: float = 0.5,
        retry_max: float = 8.0,
        max_ratelimit_wait: float = 60.0,
    ) -> None:
        token = _check_token(token)
        register_secret(token)
        self._api_base = _check_api_base(api_base)
        self._host = urlsplit(self._api_base).hostname or self._api_base
        for name, value in (("timeout", timeout), ("retry_max", retry_max), ("max_ratelimit_wait", max_ratelimit_wait)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a number > 0, got {value!r}")
        if isinstance(retry_base, bool) or not isinstance(retry_base, (int, float)) or not retry_base >= 0:
            raise ConfigError(f"retry_base must be a number >= 0, got {retry_base!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries must be an int >= 0, got {max_retries!r}")
        if user_agent is not None and (not isinstance(user_agent, str) or not user_agent.strip() or any(c in user_agent for c in "\r\n")):
            raise ConfigError("user_agent must be a non-empty one-line str")
        self._timeout = float(timeout)
        self._max_retries = max_retries
        self._retry_base = float(retry_base)
        self._retry_max = float(retry_max)
        self._max_ratelimit_wait = float(max_ratelimit_wait)
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._headers = {
            "Authorization": f"Bot {token}",
            "User-Agent": user_agent or DEFAULT_USER_AGENT,
            "Accept": "application/json",
        }
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._global_not_before = 0.0  # time.monotonic() before which no request may go out
        self._route_not_before: Dict[Tuple[str, str], float] = {}  # (METHOD, path) -> same

    # -- public ------------------------------------------------------------------------------

    @property
    def api_base(self) -> str:
        return self._api_base

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
        """
        self._closed.set()
        if self._owns_session:
            self._session.close()

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

    def request(self, method: str, path: str, *, json: Any = None, params: Optional[Mapping[str, Any]] = None) -> Any:
        """Send one API request, keeping rate limits and retrying transient failures.

        Returns the decoded JSON body, or None for 204/an empty body. Raises
        :class:`AuthenticationError` on 401 (never retried), :class:`HTTPError` on other errors
        (4xx at once, 5xx and 429 once the retries run out), :class:`GatewayUnreachable` when the
        host cannot be reached after the retries, and :class:`GatewayError` if the client is (or
        gets) closed.
        """
        if self._closed.is_set():
            raise GatewayError("the REST client is closed")
        method = method.upper()
        if not path.startswith("/"):
            path = "/" + path
        route = (method, path.split("?", 1)[0])
        rate_limited = [0]  # 429s seen by this request, across its transient retries

        retrying = Retrying(
            stop=stop_after_attempt(self._max_retries + 1),
            # retry_base * 2**n capped at retry_max, plus up to retry_base of jitter (tenacity 8.2+ API).
            wait=wait_exponential(multiplier=self._retry_base, max=self._retry_max) + wait_random(0, self._retry_base),
            retry=retry_if_exception_type(_Transient),
            sleep=self._sleep,
            before_sleep=self._log_retry(method, path),
            reraise=True,
        )
        try:
            return retrying(self._attempt, method, path, route, json, params, rate_limited)
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

    def _wait_for_limits(self, route: Tuple[str, str], method: str, path: str) -> None:
        """Hold the request until the global and per-route "not before" times have passed."""
        while True:
            with self._lock:
                not_before = max(self._global_not_before, self._route_not_before.get(route, 0.0))
            wait = not_before - time.monotonic()
            if wait <= 0:
                return
            if wait > self._max_ratelimit_wait:
                raise HTTPError(429, f"{method} {path}: rate limited for another {wait:.1f} s (over max_ratelimit_wait)")
            log.debug("%s %s waits %.0f ms for a rate limit", method, path, wait * 1000)
            if self._closed.wait(wait):
                raise GatewayError("the REST client was closed while waiting for a rate limit")

    def _attempt(
        self,
        method: str,
        path: str,
        route: Tuple[str, str],
        json: Any,
        params: Optional[Mapping[str, Any]],
        rate_limited: list,
    ) -> Any:
        """One try as tenacity sees it; 429s are waited out and repeated inside it."""
        url = self._api_base + path
        while True:
            self._wait_for_limits(route, method, path)
            started = time.monotonic()
            try:
                response = self._session.request(
                    method,
                    url,
                    headers=self._headers,
                    json=json,
                    params=params,
                    timeout=self._timeout,
                    allow_redirects=False,  # the Authorization header must not follow a redirect
                )
            except requests.exceptions.SSLError as exc:
                log.debug("%s %s: TLS error after %.0f ms", method, path, (time.monotonic() - started) * 1000)
                raise GatewayUnreachable(self._clean(f"cannot reach {self._host}: TLS verification failed: {exc}")) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                log.debug("%s %s: %s after %.0f ms", method, path, type(exc).__name__, (time.monotonic() - started) * 1000)
                raise _Transient(GatewayUnreachable(self._clean(f"cannot reach {self._host}: {exc}")), exc) from exc
            except requests.RequestException as exc:
                raise GatewayError(self._clean(f"{method} {path} failed: {exc}")) from exc
            elapsed_ms = (time.monotonic() - started) * 1000
            try:
                status = response.status_code
                log.debug("%s %s -> %d in %.0f ms", method, path, status, elapsed_ms)
                self._note_bucket(route, response.headers)
                if status == 429:
                    self._note_429(route, method, path, response, rate_limited)
                    continue
                return self._decode(method, path, response)
            finally:
                response.close()

    def _note_bucket(self, route: Tuple[str, str], headers: Mapping[str, str]) -> None:
        """``X-RateLimit-Remaining: 0``: the route's next request waits ``Reset-After``."""
        if headers.get("X-RateLimit-Remaining", "").strip() != "0":
            return
        reset_after = _header_float(headers, "X-RateLimit-Reset-After")
        if reset_after is None:
            return
        now = time.monotonic()
        with self._lock:
            # Forget routes whose limit has passed, so the table stays small.
            for key in [k for k, t in self._route_not_before.items() if t <= now]:
                del self._route_not_before[key]
            self._route_not_before[route] = max(self._route_not_before.get(route, 0.0), now + reset_after)

    def _note_429(self, route: Tuple[str, str], method: str, path: str, response: requests.Response, rate_limited: list) -> None:
        body = self._json_body(response)
        retry_after: Optional[float] = None
        if isinstance(body.get("retry_after"), (int, float)) and not isinstance(body.get("retry_after"), bool):
            retry_after = max(0.0, float(body["retry_after"]))
        if retry_after is None:
            retry_after = _header_float(response.headers, "Retry-After")
        if retry_after is None:
            retry_after = 1.0
        is_global = response.headers.get("X-RateLimit-Global", "").strip().lower() == "true" or body.get("global") is True
        scope = "global" if is_global else response.headers.get("X-RateLimit-Scope", "route")
        not_before = time.monotonic() + retry_after
        with self._lock:
            if is_global:
                self._global_not_before = max(self._global_not_before, not_before)
            else:
                self._route_not_before[route] = max(self._route_not_before.get(route, 0.0), not_before)
        rate_limited[0] += 1
        message = self._clean(str(body.get("message") or "You are being rate limited."))
        if rate_limited[0] > self._max_retries or retry_after > self._max_ratelimit_wait:
            raise HTTPError(429, f"{method} {path} -> 429 ({scope}): {message} retry after {retry_after:.2f} s", body.get("code"))
        log.info("%s %s rate limited (%s); retrying in %.2f s", method, path, scope, retry_after)

    @staticmethod
    def _json_body(response: requests.Response) -> Dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    def _decode(self, method: str, path: str, response: requests.Response) -> Any:
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
        if status == 401:
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
        return redact(text, [self._headers["Authorization"][len("Bot "):]])
