"""FakeRest: Discord's REST API on 127.0.0.1, enforcing Discord's rate limits, so a test can
prove "no 429" instead of assuming it.

It serves the routes a bot's reply path uses (messages: create, edit, delete, get; interaction
callbacks; interaction follow-ups through the webhook route; ``/gateway``, ``/gateway/bot``,
``/users/@me``) and enforces what PROTOCOL.md §13 says Discord does:

* per-route **buckets**, each with its ``X-RateLimit-Bucket`` hash; several routes may share one
  (message create and edit do here), and a bucket is counted separately per **major parameter**
  (``channel_id``, ``guild_id``, ``webhook_id`` + ``webhook_token``; an interaction callback per
  interaction). A window opens at the first request after the last one closed and allows
  ``limit`` requests in ``per`` seconds; every answer carries the ``X-RateLimit-*`` headers.
* a **global** limit per bot token (interaction and webhook-token routes exempt);
* **429**s with ``X-RateLimit-Scope`` (``user``, ``global``; ``shared`` by :meth:`inject_429`),
  ``Retry-After`` and the JSON body ``{message, retry_after, global}``;
* the **invalid-request** count (401, 403, 429 except scope ``shared``) over 10 minutes; at
  ``invalid_request_limit`` the fake "bans" the client: every later request gets 403;
* the **3-second window** of interaction callbacks (:meth:`create_interaction` registers one).

Every request is recorded (:attr:`requests`, :meth:`wait_for`, :meth:`count`). The server is
``http.server.ThreadingHTTPServer`` (HTTP/1.1 keep-alive) on its own port; nothing here imports
the client. ``python -m sync_gateway.testing.fake_rest`` runs one until Ctrl-C.
"""
import email.parser
import email.policy
import hashlib
import itertools
import json
import math
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Deque, Dict, List, Mapping, NamedTuple, Optional, Set, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeRest", "RecordedRequest", "DEFAULT_LIMITS", "ROUTES"]

PREFIX = "/api/v10"

#: (method, route template, bucket name). Bucket names map to limits and to a bucket hash.
ROUTES: Tuple[Tuple[str, str, Optional[str]], ...] = (
    ("GET", "/gateway", None),
    ("GET", "/gateway/bot", "gateway"),
    ("GET", "/users/@me", "users-me"),
    ("POST", "/channels/{channel_id}/messages", "message-create"),
    ("PATCH", "/channels/{channel_id}/messages/{message_id}", "message-create"),  # one bucket, two routes
    ("GET", "/channels/{channel_id}/messages/{message_id}", "message-get"),
    ("DELETE", "/channels/{channel_id}/messages/{message_id}", "message-delete"),
    ("POST", "/interactions/{interaction_id}/{interaction_token}/callback", "interaction-callback"),
    ("POST", "/webhooks/{webhook_id}/{webhook_token}", "webhook"),
    ("GET", "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}", "webhook"),
    ("PATCH", "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}", "webhook"),
    ("DELETE", "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}", "webhook"),
)

#: bucket name -> (requests, per seconds). Tests usually pass smaller, faster ones.
DEFAULT_LIMITS: Dict[str, Tuple[int, float]] = {
    "gateway": (50, 1.0),
    "users-me": (50, 1.0),
    "message-create": (5, 5.0),
    "message-get": (50, 1.0),
    "message-delete": (5, 1.0),
    "interaction-callback": (5, 1.0),
    "webhook": (5, 2.0),
}

_MAJOR = ("channel_id", "guild_id", "webhook_id", "webhook_token", "interaction_id", "interaction_token")
_UNAUTHENTICATED_PREFIXES = ("/interactions/", "/webhooks/")
APPLICATION_ID = "100000000000000001"
DEFAULT_USER: Dict[str, Any] = {"id": "100000000000000001", "username": "fake-bot", "discriminator": "0", "bot": True}
INVALID_WINDOW = 600.0


class RecordedRequest(NamedTuple):
    """One request as the fake saw it. ``route`` is the template matched (None: unknown route);
    ``json`` the JSON body (or ``payload_json`` of a multipart body); ``files`` the multipart file
    parts as ``(field, filename, bytes)``; ``at`` is ``time.monotonic()`` on arrival."""

    method: str
    path: str
    route: Optional[str]
    params: Dict[str, str]
    headers: Dict[str, str]
    json: Any
    files: List[Tuple[str, str, bytes]]
    status: int
    scope: Optional[str]  # of a 429
    at: float


class _Window:
    __slots__ = ("count", "end")

    def __init__(self) -> None:
        self.count = 0
        self.end = 0.0


def _match(template: str, path: str) -> Optional[Dict[str, str]]:
    t = template.strip("/").split("/")
    p = path.strip("/").split("/")
    if len(t) != len(p):
        return None
    params: Dict[str, str] = {}
    for a, b in zip(t, p):
        if a.startswith("{") and a.endswith("}"):
            if not b:
                return None
            params[a[1:-1]] = unquote(b)
        elif a != b:
            return None
    return params


class FakeRest:
    """Discord's REST API on loopback, with its rate limits enforced (see the module docstring).

    ``token``: the only bot token accepted (``None``: any ``Bot ...`` header). ``limits``
    overrides :data:`DEFAULT_LIMITS` per bucket name. ``global_limit`` is ``(requests,
    per seconds)`` per token. ``gateway_url`` is what ``/gateway`` and ``/gateway/bot`` answer.
    Behaviour switches are plain attributes a test may change at any time.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: Optional[str] = None,
        limits: Optional[Mapping[str, Tuple[int, float]]] = None,
        global_limit: Tuple[int, float] = (50, 1.0),
        invalid_request_limit: int = 10_000,
        interaction_timeout: float = 3.0,
        gateway_url: str = "ws://127.0.0.1:9/",
        user: Optional[Mapping[str, Any]] = None,
        application_id: str = APPLICATION_ID,
    ) -> None:
        self.token = token
        self.limits: Dict[str, Tuple[int, float]] = dict(DEFAULT_LIMITS)
        if limits:
            self.limits.update(limits)
        self.global_limit = global_limit
        self.invalid_request_limit = invalid_request_limit
        self.interaction_timeout = interaction_timeout
        self.gateway_url = gateway_url
        self.user: Dict[str, Any] = dict(user) if user is not None else dict(DEFAULT_USER)
        self.application_id = application_id
        self.forbidden_channels: Set[str] = set()  # requests about these channels get 403 Missing Access

        self._lock = threading.Condition()
        self._requests: List[RecordedRequest] = []
        self._windows: Dict[Tuple[str, str], _Window] = {}
        self._window_log: List[Tuple[str, str, float]] = []  # (bucket hash, major, window start)
        self._global: Dict[str, _Window] = {}
        self._invalid: Deque[float] = deque()
        self._injected: List[Dict[str, Any]] = []
        self._messages: Dict[str, Dict[str, Dict[str, Any]]] = {}
        self._interactions: Dict[str, Dict[str, Any]] = {}
        self._ids = itertools.count(1_200_000_000_000_000_000)
        self.banned = False

        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._httpd = _Server((host, port), Handler)
        self.host: str = str(self._httpd.server_address[0])
        self.port: int = int(self._httpd.server_address[1])
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}{PREFIX}"

    def start(self) -> "FakeRest":
        if self._thread is not None:
            raise RuntimeError("FakeRest already started")
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake_rest-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut every open connection, join every thread. Idempotent."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5.0)
            self._thread = None
        self._httpd.cut_connections()
        self._httpd.server_close()

    def __enter__(self) -> "FakeRest":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ what tests look at

    @staticmethod
    def bucket_hash(name: str) -> str:
        """The ``X-RateLimit-Bucket`` the fake sends for a bucket name (stable across runs)."""
        return hashlib.sha1(name.encode()).hexdigest()[:16]

    @property
    def requests(self) -> List[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def count(self, status: Optional[int] = None, route: Optional[str] = None) -> int:
        with self._lock:
            return sum(1 for r in self._requests if (status is None or r.status == status) and (route is None or r.route == route))

    @property
    def invalid_requests(self) -> int:
        """401/403/429 (except scope ``shared``) answered in the last 10 minutes."""
        with self._lock:
            self._prune_invalid(time.monotonic())
            return len(self._invalid)

    def windows(self) -> List[Tuple[str, str, float]]:
        """Every bucket window opened: ``(bucket hash, major parameters, start)``, in order."""
        with self._lock:
            return list(self._window_log)

    def messages(self, channel_id: Any) -> List[Dict[str, Any]]:
        with self._lock:
            return list(self._messages.get(str(channel_id), {}).values())

    def wait_for(self, predicate: Callable[[List[RecordedRequest]], bool], timeout: float = 5.0) -> List[RecordedRequest]:
        """Wait until ``predicate(requests)`` holds; AssertionError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not predicate(self._requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"FakeRest: condition not met in {timeout} s; {len(self._requests)} requests seen")
                self._lock.wait(left)
            return list(self._requests)

    def inject_429(self, scope: str = "user", retry_after: float = 0.2, count: int = 1, route: Optional[str] = None) -> None:
        """Answer the next ``count`` requests (of ``route``, a template, if given) with a 429 of
        ``scope`` (``user``, ``global`` or ``shared``) whatever the limits say."""
        if scope not in ("user", "global", "shared"):
            raise ValueError("scope must be 'user', 'global' or 'shared'")
        with self._lock:
            self._injected.append({"scope": scope, "retry_after": retry_after, "count": count, "route": route})

    def create_interaction(
        self,
        name: str = "ping",
        *,
        channel_id: Any = "300000000000000001",
        guild_id: Optional[Any] = "200000000000000001",
        type: int = 2,
        options: Optional[List[Dict[str, Any]]] = None,
    ) -> Dict[str, Any]:
        """Register an interaction created now and return its INTERACTION_CREATE data (dispatch
        it with ``FakeGateway.dispatch("INTERACTION_CREATE", data)``). Its callback is accepted
        for ``interaction_timeout`` s, once; follow-ups through its webhook for 15 minutes."""
        with self._lock:
            iid = str(next(self._ids))
            token = "aW50ZXJhY3Rpb246" + hashlib.sha256(iid.encode()).hexdigest()
            data: Dict[str, Any] = {
                "id": iid,
                "application_id": self.application_id,
                "type": type,
                "token": token,
                "version": 1,
                "channel_id": str(channel_id),
                "data": {"id": str(next(self._ids)), "name": name, "type": 1, "options": list(options or [])},
                "user" if guild_id is None else "member": {"user": {"id": "400000000000000001", "username": "someone"}}
                if guild_id is not None
                else {"id": "400000000000000001", "username": "someone"},
            }
            if guild_id is not None:
                data["guild_id"] = str(guild_id)
            self._interactions[iid] = {"token": token, "created": time.monotonic(), "responded": None, "data": data}
            return data

    def interaction_response(self, interaction_id: str) -> Optional[Dict[str, Any]]:
        """``{"type", "data", "after"}`` of the callback accepted for an interaction (``after``:
        seconds from creation), or None."""
        with self._lock:
            entry = self._interactions.get(str(interaction_id))
            return dict(entry["responded"]) if entry and entry["responded"] else None

    # ------------------------------------------------------------------ serving

    def _prune_invalid(self, now: float) -> None:
        while self._invalid and self._invalid[0] <= now - INVALID_WINDOW:
            self._invalid.popleft()

    def stats(self) -> Dict[str, Any]:
        """Counts for a bench or a test in another process (also ``GET /api/v10/_fake/stats``):
        requests, by status, invalid requests, and the bucket windows opened per bucket key."""
        with self._lock:
            by_status: Dict[str, int] = {}
            for r in self._requests:
                by_status[str(r.status)] = by_status.get(str(r.status), 0) + 1
            windows: Dict[str, int] = {}
            for bhash, major, _ in self._window_log:
                windows[f"{bhash}|{major}"] = windows.get(f"{bhash}|{major}", 0) + 1
            first = self._requests[0].at if self._requests else None
            last = self._requests[-1].at if self._requests else None
            self._prune_invalid(time.monotonic())
            return {
                "requests": len(self._requests),
                "by_status": by_status,
                "invalid_requests": len(self._invalid),
                "windows": windows,
                "first_to_last": (last - first) if first is not None and last is not None else 0.0,
            }

    def reset_stats(self) -> None:
        """Forget the recorded requests and window log (limits and windows in progress stay)."""
        with self._lock:
            self._requests.clear()
            self._window_log.clear()

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Tuple[int, Dict[str, str], Any]:
        """Decide one request: ``(status, extra headers, JSON body or None)``. Records it."""
        now = time.monotonic()
        split = urlsplit(target)
        path = split.path
        if path == PREFIX + "/_fake/stats":  # not Discord's: the fake's own counters, not recorded
            if method == "DELETE":
                self.reset_stats()
                return 204, {}, None
            return 200, {}, self.stats()
        payload, files = _parse_body(headers, body)
        with self._lock:
            status, out_headers, out_body, route, params, scope = self._decide(method, path, split.query, headers, payload, files, now)
            if status in (401, 403) or (status == 429 and scope != "shared"):
                self._invalid.append(now)
                self._prune_invalid(now)
                if len(self._invalid) >= self.invalid_request_limit:
                    self.banned = True
            self._requests.append(
                RecordedRequest(method, target, route, params, dict(headers), payload, files, status, scope, now)
            )
            self._lock.notify_all()
        return status, out_headers, out_body

    def _decide(
        self, method: str, path: str, query: str, headers: Mapping[str, str], payload: Any, files: List[Tuple[str, str, bytes]], now: float
    ) -> Tuple[int, Dict[str, str], Any, Optional[str], Dict[str, str], Optional[str]]:
        if self.banned:
            return 403, {}, {"message": "You are being blocked from accessing our API temporarily due to exceeding our rate limits frequently.", "code": 0}, None, {}, None
        if not path.startswith(PREFIX + "/"):
            return 404, {}, {"message": "404: Not Found", "code": 0}, None, {}, None
        rel = path[len(PREFIX):].rstrip("/")
        matched: Optional[Tuple[str, str, Optional[str]]] = None
        params: Dict[str, str] = {}
        path_known = False
        for m, template, bucket in ROUTES:
            got = _match(template, rel)
            if got is None:
                continue
            path_known = True
            if m == method:
                matched, params = (m, template, bucket), got
                break
        if matched is None:
            if path_known:
                return 405, {}, {"message": "405: Method Not Allowed", "code": 0}, None, {}, None
            return 404, {}, {"message": "404: Not Found", "code": 0}, None, {}, None
        _, template, bucket = matched
        auth = headers.get("Authorization")
        needs_auth = not template.startswith(_UNAUTHENTICATED_PREFIXES) and template != "/gateway"
        if needs_auth:
            ok = auth == f"Bot {self.token}" if self.token is not None else bool(auth and auth.startswith("Bot ") and len(auth) > 4)
            if not ok:
                return 401, {}, {"message": "401: Unauthorized", "code": 0}, template, params, None
        rl_headers: Dict[str, str] = {}
        # injected 429s first: they stand for limits the fake does not model (shared resources)
        for inj in self._injected:
            if inj["count"] > 0 and (inj["route"] is None or inj["route"] == template):
                inj["count"] -= 1
                self._injected = [i for i in self._injected if i["count"] > 0]
                return self._too_many(inj["scope"], float(inj["retry_after"]), {}) + (template, params, inj["scope"])
        if needs_auth and template != "/gateway":
            limit, per = self.global_limit
            g = self._global.setdefault(auth or "", _Window())
            if now >= g.end:
                g.count, g.end = 0, now + per
            if g.count >= limit:
                return self._too_many("global", g.end - now, {}) + (template, params, "global")
            g.count += 1
        if bucket is not None:
            limit, per = self.limits[bucket]
            bhash = self.bucket_hash(bucket)
            major = "&".join(f"{k}={params[k]}" for k in _MAJOR if k in params)
            w = self._windows.setdefault((bhash, major), _Window())
            if now >= w.end:
                w.count, w.end = 0, now + per
                self._window_log.append((bhash, major, now))
            reset_after = w.end - now
            if w.count >= limit:
                rl_headers = _rl_headers(limit, 0, reset_after, bhash)
                return self._too_many("user", reset_after, rl_headers) + (template, params, "user")
            w.count += 1
            rl_headers = _rl_headers(limit, limit - w.count, reset_after, bhash)
        status, body = self._serve(method, template, params, parse_qs(query), payload, files, now)
        return status, rl_headers, body, template, params, None

    @staticmethod
    def _too_many(scope: str, retry_after: float, headers: Dict[str, str]) -> Tuple[int, Dict[str, str], Any]:
        retry_after = max(retry_after, 0.001)
        out = dict(headers)
        out["Retry-After"] = str(int(math.ceil(retry_after)))
        out["X-RateLimit-Scope"] = scope
        if scope == "global":
            out["X-RateLimit-Global"] = "true"
        body = {"message": "You are being rate limited.", "retry_after": round(retry_after, 3), "global": scope == "global"}
        return 429, out, body

    def _message(self, channel_id: str, payload: Any, files: List[Tuple[str, str, bytes]], webhook: Optional[str] = None) -> Dict[str, Any]:
        fields = payload if isinstance(payload, dict) else {}
        mid = str(next(self._ids))
        message = {
            "id": mid,
            "channel_id": channel_id,
            "author": dict(self.user) if webhook is None else {"id": webhook, "username": "webhook", "bot": True},
            "content": fields.get("content", ""),
            "embeds": fields.get("embeds", []),
            "attachments": [{"id": str(i), "filename": name, "size": len(data)} for i, (_, name, data) in enumerate(files)],
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "edited_timestamp": None,
        }
        if webhook is not None:
            message["webhook_id"] = webhook
        self._messages.setdefault(channel_id, {})[mid] = message
        return message

    def _serve(
        self, method: str, template: str, params: Dict[str, str], query: Dict[str, List[str]], payload: Any, files: List[Tuple[str, str, bytes]], now: float
    ) -> Tuple[int, Any]:
        channel = params.get("channel_id")
        if channel is not None and channel in self.forbidden_channels:
            return 403, {"message": "Missing Access", "code": 50001}
        if template == "/gateway":
            return 200, {"url": self.gateway_url}
        if template == "/gateway/bot":
            return 200, {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 14_400_000, "max_concurrency": 1},
            }
        if template == "/users/@me":
            return 200, dict(self.user)
        if template == "/channels/{channel_id}/messages":
            fields = payload if isinstance(payload, dict) else {}
            if not (fields.get("content") or fields.get("embeds") or files or fields.get("components") or fields.get("sticker_ids")):
                return 400, {"message": "Cannot send an empty message", "code": 50006}
            return 200, self._message(channel or "", payload, files)
        if template == "/channels/{channel_id}/messages/{message_id}":
            stored = self._messages.get(channel or "", {})
            message = stored.get(params["message_id"])
            if message is None:
                return 404, {"message": "Unknown Message", "code": 10008}
            if method == "GET":
                return 200, message
            if method == "DELETE":
                del stored[params["message_id"]]
                return 204, None
            if isinstance(payload, dict):
                message.update({k: v for k, v in payload.items() if k in ("content", "embeds", "components", "flags")})
            message["edited_timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
            return 200, message
        if template.startswith("/interactions/"):
            entry = self._interactions.get(params["interaction_id"])
            if entry is None or entry["token"] != params["interaction_token"]:
                return 404, {"message": "Unknown interaction", "code": 10062}
            after = now - entry["created"]
            if entry["responded"] is not None:
                return 400, {"message": "Interaction has already been acknowledged.", "code": 40060}
            if after > self.interaction_timeout:
                return 404, {"message": "Unknown interaction", "code": 10062}
            body = payload if isinstance(payload, dict) else {}
            entry["responded"] = {"type": body.get("type"), "data": body.get("data"), "after": after}
            if body.get("type") == 4 and isinstance(body.get("data"), dict):
                self._message(entry["data"]["channel_id"], body["data"], files, webhook=self.application_id)
            return 204, None
        if template.startswith("/webhooks/"):
            entry = next(
                (e for e in self._interactions.values() if e["token"] == params["webhook_token"] and e["responded"] is not None),
                None,
            )
            if params["webhook_id"] != self.application_id or entry is None or now - entry["created"] > 900:
                return 404, {"message": "Unknown Webhook", "code": 10015}
            channel_id = entry["data"]["channel_id"]
            if template == "/webhooks/{webhook_id}/{webhook_token}":
                return 200, self._message(channel_id, payload, files, webhook=self.application_id)
            stored = self._messages.get(channel_id, {})
            message = stored.get(params["message_id"])
            if message is None:
                return 404, {"message": "Unknown Message", "code": 10008}
            if method == "GET":
                return 200, message
            if method == "DELETE":
                del stored[params["message_id"]]
                return 204, None
            if isinstance(payload, dict):
                message.update({k: v for k, v in payload.items() if k in ("content", "embeds", "components")})
            return 200, message
        return 404, {"message": "404: Not Found", "code": 0}


def _rl_headers(limit: int, remaining: int, reset_after: float, bucket: str) -> Dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(max(0, remaining)),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
        "X-RateLimit-Bucket": bucket,
    }


def _parse_body(headers: Mapping[str, str], body: bytes) -> Tuple[Any, List[Tuple[str, str, bytes]]]:
    ctype = headers.get("Content-Type", "")
    if not body:
        return None, []
    if ctype.startswith("multipart/form-data"):
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body
        )
        payload: Any = None
        files: List[Tuple[str, str, bytes]] = []
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            raw = part.get_payload(decode=True)
            data = raw if isinstance(raw, bytes) else b""
            if name == "payload_json":
                payload = json.loads(data.decode("utf-8"))
            elif filename is not None:
                files.append((str(name), filename, data))
        return payload, files
    try:
        return json.loads(body.decode("utf-8")), []
    except ValueError:
        return None, []


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread (after cut_connections)
    block_on_close = True

    def __init__(self, address: Tuple[str, int], handler: Any) -> None:
        self._open: Set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away mid-answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive answers must not wait for a delayed ACK (40 ms)
    server_fake: FakeRest
    timeout = 30

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.server_fake.handle(self.command, self.path, dict(self.headers.items()), body)
        data = b"" if payload is None else json.dumps(payload).encode("utf-8")
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


def _limit(text: str) -> Tuple[int, float]:
    count, _, per = text.partition("/")
    return int(count), float(per)


def main(argv: Optional[List[str]] = None) -> None:  # pragma: no cover - a manual tool
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m sync_gateway.testing.fake_rest",
        description="Run a FakeRest (Discord's REST API on loopback, rate limits enforced) until Ctrl-C or stdin closes.",
    )
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--gateway-url", default="ws://127.0.0.1:9/", help="what /gateway and /gateway/bot answer")
    parser.add_argument("--token", default=None, help="the only token accepted (default: any); a test token")
    parser.add_argument(
        "--limit", action="append", default=[], metavar="BUCKET=N/SECONDS",
        help=f"a bucket's limit, e.g. message-create=5/0.25 (buckets: {', '.join(sorted(DEFAULT_LIMITS))})",
    )
    parser.add_argument("--global-limit", type=_limit, default=(50, 1.0), metavar="N/SECONDS", help="default 50/1")
    args = parser.parse_args(argv)
    limits = {}
    for item in args.limit:
        name, _, value = item.partition("=")
        limits[name] = _limit(value)
    import os
    import sys

    with FakeRest(port=args.port, gateway_url=args.gateway_url, token=args.token, limits=limits, global_limit=args.global_limit) as fake:
        sys.stdout.write(f"api_base: {fake.api_base}\n")  # the one line a parent process reads
        sys.stdout.flush()
        try:
            while os.read(sys.stdin.fileno(), 65536):  # until EOF (the parent closed it) or Ctrl-C
                pass
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
