"""Discord's HTTP rate limits, kept before a request is sent (PROTOCOL.md §13, "HTTP rate limits").

Discord limits REST calls per *bucket*: several routes may share one (they answer with the same
``X-RateLimit-Bucket`` hash), and a bucket is counted separately for each value of the route's
*major parameters* (``channel_id``, ``guild_id``, ``webhook_id`` + ``webhook_token``). On top of
that sit a global limit (50 requests/s per bot; interaction and webhook-token routes are exempt)
and an invalid-request budget (10,000 responses 401/403/429 per 10 minutes, past which Cloudflare
bans the IP for an hour).

The rules here, shared by :class:`MemoryRateLimiter` (one process) and :class:`RedisRateLimiter`
(every process of a bot; the same rules as one Lua script per decision):

* A request **takes a slot before it is sent** (:meth:`RateLimiter.acquire`) and gives it back
  with what the response said (:meth:`RateLimiter.release`). Sixteen threads can therefore never
  all pass a bucket that has one request left.
* A bucket never seen (no headers yet for this route and these major parameters) lets **one**
  request through to learn it; the others wait for its answer. When another major parameter's
  answer teaches the route's hash meanwhile, the bucket moves under the hash with that request
  still counted in it.
* A window's end comes from the responses (``X-RateLimit-Reset-After`` counted from when the
  answer arrives, so the local window always ends at or after Discord's; the earliest such end
  wins). When it ends, the next window grants ``limit`` minus the requests still on the wire and
  those answered from Discord's next window (an answer whose end lies more than half a window
  later): they count there. Only answers to requests of the current local window move it; a late
  answer from an older window changes nothing.
* The global limit is a sliding log over ``global_period`` (1 s plus a margin for the time
  between a grant and the request reaching Discord) of when each request was granted and, once
  its answer is back, of when it was answered: Discord counts a request when it arrives, which
  may be well after the grant on a loaded machine, but never after the answer. (With grant times
  alone, two requests delayed unequally on their way let a 51st request into Discord's second.)
* A 429 with scope ``global`` holds every route for ``retry_after``; ``user`` and ``shared`` hold
  the bucket. Every 401, 403 and 429 (except scope ``shared``) is counted in a 10-minute sliding
  window, and :meth:`acquire` refuses once the count reaches the caller's ``refuse_at``.

A limiter is keyed by *scope* (the RestClient passes the bot id, plus the API host when it is not
Discord's), so one limiter may serve several bots. Nothing here does HTTP; tests drive it directly.
"""
import abc
import hashlib
import math
import string
import threading
import time
import uuid
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, NamedTuple, Optional, Tuple
from urllib.parse import quote

from ._log import get_logger
from .errors import ConfigError

__all__ = [
    "RateLimiter",
    "MemoryRateLimiter",
    "RedisRateLimiter",
    "Route",
    "compile_route",
    "Ticket",
    "Grant",
    "Observation",
    "MAJOR_PARAMETERS",
    "INVALID_WINDOW",
]

log = get_logger(__name__)

#: Route parameters that keep their value in the bucket key (Discord's "major parameters"). An
#: interaction callback is keyed by its interaction: each one is its own resource, and its answer
#: must never wait behind another interaction's.
MAJOR_PARAMETERS = ("channel_id", "guild_id", "webhook_id", "webhook_token", "interaction_id", "interaction_token")

#: Route parameters that are secrets (they grant access without the bot token).
SECRET_PARAMETERS = ("webhook_token", "interaction_token")

#: Seconds over which Discord counts invalid requests (401, 403, 429 except scope ``shared``).
INVALID_WINDOW = 600.0

#: How long a slot stays taken when its request never reports back (a crashed process): the
#: RestClient passes its request timeout plus this.
LEASE_MARGIN = 5.0

_FORMATTER = string.Formatter()


# ---------------------------------------------------------------------------------------------
# routes


class Route(NamedTuple):
    """A request's place in the rate limits: ``key`` is the method and template (``"POST
    /channels/{channel_id}/messages"``), ``major`` the major parameters' values, ``path`` the URL
    path to send. ``authorized``: send the bot's Authorization header (not to webhook-token and
    interaction routes). ``use_global``: counts against the global limit."""

    method: str
    path: str
    key: str
    major: str
    authorized: bool
    use_global: bool
    display: str  # ``path`` with webhook and interaction tokens masked, for logs and errors


def _literal_template(path: str) -> Tuple[str, Dict[str, str]]:
    """Turn a literal path into a template and its parameters, so ``"/channels/1/messages"``
    is limited like ``"/channels/{channel_id}/messages"`` with ``channel_id="1"``."""
    segments = path.split("/")
    params: Dict[str, str] = {}
    out: List[str] = []
    i = 0
    while i < len(segments):
        seg = segments[i]
        out.append(seg)
        nxt = segments[i + 1] if i + 1 < len(segments) else None
        if seg in ("channels", "guilds") and nxt is not None and nxt.isdigit():
            name = "channel_id" if seg == "channels" else "guild_id"
            params[name] = nxt
            out.append("{" + name + "}")
            i += 2
            continue
        if seg == "webhooks" and nxt is not None and nxt.isdigit():
            params["webhook_id"] = nxt
            out.append("{webhook_id}")
            i += 2
            token = segments[i] if i < len(segments) else None
            if token and token not in ("messages", "github", "slack"):
                params["webhook_token"] = token
                out.append("{webhook_token}")
                i += 1
            continue
        if seg == "interactions" and nxt is not None and nxt.isdigit() and i + 2 < len(segments):
            params["interaction_id"] = nxt
            params["interaction_token"] = segments[i + 2]
            out += ["{interaction_id}", "{interaction_token}"]
            i += 3
            continue
        if seg.isdigit() and i > 0:
            out[-1] = "{id}"  # a minor id (message, user, role): folded
        i += 1
    return "/".join(out), params


def compile_route(method: str, route: str, params: Mapping[str, Any]) -> Route:
    """Fill a route template and compute its rate-limit key.

    ``route`` is a template (``"/channels/{channel_id}/messages/{message_id}"``) filled from
    ``params`` (each value URL-quoted), or a literal path, which is parsed the same way. Major
    parameters keep their values in the key; the others are folded. Raises ``TypeError`` for a
    missing or unexpected parameter (a typo in ``request(..., chanel_id=1)`` must not pass).
    """
    if not isinstance(method, str) or not method.strip():
        raise TypeError("method must be an HTTP method name like 'GET' or 'POST'")
    method = method.strip().upper()
    if not isinstance(route, str):
        raise TypeError(f"route must be a str like '/channels/{{channel_id}}/messages', not {type(route).__name__}")
    if not route.startswith("/"):
        route = "/" + route
    if "{" not in route:
        if params:
            raise TypeError(f"route {route!r} has no {{placeholders}} but got {', '.join(sorted(params))}")
        path = route  # a literal path is sent exactly as given
        template, values = _literal_template(route.partition("?")[0])
    else:
        template, values = route, {}
        names = {name for _, name, _, _ in _FORMATTER.parse(route) if name is not None}
        missing = sorted(n for n in names if n not in params)
        if missing:
            raise TypeError(f"route {route!r} needs {', '.join(n + '=' for n in missing)}")
        extra = sorted(n for n in params if n not in names)
        if extra:
            raise TypeError(f"route {route!r} takes no parameter {', '.join(extra)}")
        for name in names:
            value = params[name]
            if value is None or (isinstance(value, str) and not value):
                raise TypeError(f"route parameter {name} is empty")
            values[name] = str(value)
        path = template.format(**{name: quote(value, safe="@") for name, value in values.items()})
    # Webhook and interaction tokens are secrets: hashed in the key (it may go to Redis), masked in logs.
    major = "&".join(
        f"{name}={_digest(values[name]) if name in SECRET_PARAMETERS else values[name]}"
        for name in MAJOR_PARAMETERS
        if name in values
    )
    display = path
    for name in SECRET_PARAMETERS:
        if name in values:
            display = display.replace(quote(values[name], safe="@"), "{" + name + "}")
    webhook_token = template.startswith("/webhooks/{webhook_id}/{webhook_token}")
    interaction = template.startswith("/interactions/")
    return Route(
        method=method,
        path=path,
        key=f"{method} {template}",
        major=major,
        authorized=not (webhook_token or interaction),
        use_global=not (webhook_token or interaction),
        display=display,
    )


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# the limiter interface


class Ticket(NamedTuple):
    """A slot taken by :meth:`RateLimiter.acquire`; give it back with :meth:`RateLimiter.release`."""

    bucket: str  # the bucket id it was taken from ("<hash>|<major>", or "?<route key>|<major>" while unknown)
    gen: int  # the bucket's local window when taken
    id: str
    fallback: bool = False  # taken from a RedisRateLimiter's local fallback during an outage


class Grant(NamedTuple):
    """The answer of :meth:`RateLimiter.acquire`: a ticket, or ``None`` and how long to wait.

    ``reason`` says what holds the request: ``"bucket"`` (its window is used up), ``"unknown"``
    (another request is learning the bucket), ``"global"``, or ``"invalid"`` (the invalid-request
    budget is at ``refuse_at``: the caller must fail, not wait). ``invalid`` is the count of
    invalid requests in the last 10 minutes.
    """

    ticket: Optional[Ticket]
    wait: float
    reason: str
    invalid: int


class Observation(NamedTuple):
    """What a response said about the limits (None: the header was absent or unreadable)."""

    status: int
    bucket: Optional[str] = None  # X-RateLimit-Bucket
    limit: Optional[int] = None
    remaining: Optional[int] = None
    reset_after: Optional[float] = None  # seconds
    retry_after: Optional[float] = None  # on a 429
    scope: Optional[str] = None  # on a 429: "user", "global" or "shared"
    #: X-RateLimit-Reset: when the window this request was counted in ends, in the server's epoch
    #: seconds. Every answer of one window carries the same value, however long it took to arrive.
    reset: Optional[float] = None

    @property
    def invalid(self) -> bool:
        """Counts against the invalid-request budget."""
        return self.status in (401, 403) or (self.status == 429 and self.scope != "shared")


class RateLimiter(abc.ABC):
    """Where REST rate-limit state lives. Implementations must make :meth:`acquire` and
    :meth:`release` atomic per scope, and must not block for long (a wait is the caller's)."""

    @abc.abstractmethod
    def acquire(
        self,
        scope: str,
        route: Route,
        *,
        global_limit: int,
        global_period: float,
        lease: float,
        refuse_at: int,
    ) -> Grant:
        """Take a slot for one request of ``route`` now, or say how long to wait."""

    @abc.abstractmethod
    def release(self, scope: str, route: Route, ticket: Ticket, observation: Optional[Observation]) -> int:
        """Give the slot back with what the response said (None: no response, e.g. a connection
        error). Returns the invalid requests counted in the last 10 minutes."""

    @abc.abstractmethod
    def wait(self, timeout: float, cancel: Optional[threading.Event] = None) -> None:
        """Block up to ``timeout`` s, or less once the state may have changed (a release in this
        process, :meth:`wake`). Returns at once if ``cancel`` is set; a :meth:`wake` after setting
        it is never lost."""

    @abc.abstractmethod
    def wake(self) -> None:
        """Wake every :meth:`wait` in this process (a client is closing)."""

    @abc.abstractmethod
    def status(self, scope: str) -> Dict[str, Any]:
        """``{"invalid_requests": int, "buckets": {bucket id: {limit, remaining, resets_in}},
        "routes": {route key: bucket hash}, "global_wait": seconds}``."""

    def close(self) -> None:
        """Release what the limiter holds (connections). The default has nothing to release."""


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------
# in memory


class _Bucket:
    __slots__ = ("limit", "remaining", "reset_at", "gen", "inflight", "touched", "per", "carry", "wreset")

    def __init__(self, now: float) -> None:
        self.limit = -1  # -1: not known yet; 0: the route sends no limit headers (unlimited)
        self.remaining = 0
        self.reset_at = -1.0  # -1: the current window's end is not known yet
        self.gen = 0
        self.inflight: Dict[str, float] = {}  # ticket id -> lease expiry
        self.touched = now
        self.per = 0.0  # the longest Reset-After seen: about the window's length
        self.carry = 0  # answered requests that landed in Discord's next window
        self.wreset = -1.0  # X-RateLimit-Reset of the current window's answers (-1: none seen)


class _Scope:
    __slots__ = ("routes", "buckets", "global_log", "global_granted", "global_block", "invalid", "swept")

    def __init__(self) -> None:
        self.routes: Dict[str, str] = {}
        self.buckets: Dict[str, _Bucket] = {}
        self.global_log: Deque[float] = deque()  # grant times, moved to the answer's time on release
        self.global_granted: Dict[str, float] = {}  # ticket id -> its entry in global_log
        self.global_block = 0.0
        self.invalid: Deque[float] = deque()
        self.swept = 0.0


#: A bucket untouched this long, with nothing in flight and its window over, is forgotten.
_IDLE = 600.0


class MemoryRateLimiter(RateLimiter):
    """The rate limits of the RestClients of one process (the default). Thread-safe.

    ``clock`` is ``time.monotonic`` unless a test gives its own.
    """

    def __init__(self, *, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition()
        self._scopes: Dict[str, _Scope] = {}

    def __repr__(self) -> str:
        return f"<MemoryRateLimiter scopes={len(self._scopes)}>"

    def _scope(self, scope: str, now: float) -> _Scope:
        s = self._scopes.get(scope)
        if s is None:
            s = self._scopes[scope] = _Scope()
        if now - s.swept > 60.0:
            s.swept = now
            for bid in [b for b, st in s.buckets.items() if not st.inflight and now - st.touched > _IDLE and st.reset_at < now]:
                del s.buckets[bid]
        return s

    @staticmethod
    def _bucket_id(s: _Scope, route: Route, *, unknown: bool = False) -> str:
        """The id of *route*'s bucket: under its hash once known, else (or with *unknown*) the
        id it had while the hash was not known."""
        known = None if unknown else s.routes.get(route.key)
        return (known if known is not None else "?" + route.key) + "|" + route.major

    def acquire(
        self,
        scope: str,
        route: Route,
        *,
        global_limit: int,
        global_period: float,
        lease: float,
        refuse_at: int,
    ) -> Grant:
        with self._cond:
            now = self._clock()
            s = self._scope(scope, now)
            invalid = s.invalid
            while invalid and invalid[0] <= now - INVALID_WINDOW:
                invalid.popleft()
            if refuse_at > 0 and len(invalid) >= refuse_at:
                return Grant(None, invalid[0] + INVALID_WINDOW - now, "invalid", len(invalid))
            global_wait = 0.0
            if route.use_global:
                global_wait = max(0.0, s.global_block - now)
                log_ = s.global_log
                while log_ and log_[0] <= now - global_period:
                    log_.popleft()
                if len(s.global_granted) > 2 * global_limit + 100:  # tickets never released
                    s.global_granted = {t: at for t, at in s.global_granted.items() if at > now - global_period}
                if len(log_) >= global_limit:
                    global_wait = max(global_wait, log_[len(log_) - global_limit] + global_period - now)
            bid = self._bucket_id(s, route)
            b = s.buckets.get(bid)
            if b is None and not bid.startswith("?"):
                # The route's hash was learned (from another major's answer) while this major's
                # first request was still out: its bucket, and that request, move to the hash.
                b = s.buckets.pop(self._bucket_id(s, route, unknown=True), None)
                if b is not None:
                    s.buckets[bid] = b
            if b is None:
                b = s.buckets[bid] = _Bucket(now)
            b.touched = now
            for tid in [t for t, until in b.inflight.items() if until <= now]:
                del b.inflight[tid]
            bucket_wait, reason = 0.0, "bucket"
            if b.limit < 0:
                if b.reset_at > now:
                    bucket_wait = b.reset_at - now  # a 429 before the limit was known
                elif b.inflight:
                    bucket_wait, reason = min(b.inflight.values()) - now, "unknown"
            elif b.limit > 0:
                if 0 <= b.reset_at <= now:
                    b.gen += 1
                    b.remaining = max(0, b.limit - len(b.inflight) - b.carry)
                    b.reset_at = -1.0
                    b.carry = 0
                    b.wreset = -1.0
                if b.remaining <= 0:
                    if b.reset_at >= 0:
                        bucket_wait = b.reset_at - now
                    elif b.inflight:  # the window's end comes with its first answer
                        bucket_wait, reason = min(b.inflight.values()) - now, "unknown"
                    # else: nothing on the wire will tell us; one request goes to learn it
            if bucket_wait > 0 or global_wait > 0:
                if global_wait > bucket_wait:
                    return Grant(None, global_wait, "global", len(invalid))
                return Grant(None, bucket_wait, reason, len(invalid))
            if b.limit > 0 and b.remaining > 0:
                b.remaining -= 1
            tid = uuid.uuid4().hex
            b.inflight[tid] = now + lease
            if route.use_global:
                s.global_log.append(now)
                s.global_granted[tid] = now
            return Grant(Ticket(bid, b.gen, tid), 0.0, "", len(invalid))

    def release(self, scope: str, route: Route, ticket: Ticket, observation: Optional[Observation]) -> int:
        with self._cond:
            now = self._clock()
            s = self._scope(scope, now)
            try:
                granted = s.global_granted.pop(ticket.id, None)
                if granted is not None:
                    try:
                        s.global_log.remove(granted)  # (any entry of that time will do)
                    except ValueError:
                        pass  # it left the log already
                    else:
                        s.global_log.append(now)  # the log stays in order: now is the latest time
                self._release(s, route, ticket, observation, now)
                if observation is not None and observation.invalid:
                    s.invalid.append(now)
                while s.invalid and s.invalid[0] <= now - INVALID_WINDOW:
                    s.invalid.popleft()
                return len(s.invalid)
            finally:
                self._cond.notify_all()

    @staticmethod
    def _release(s: _Scope, route: Route, ticket: Ticket, obs: Optional[Observation], now: float) -> None:
        bid = ticket.bucket
        if bid not in s.buckets and bid.startswith("?"):
            bid = MemoryRateLimiter._bucket_id(s, route)  # its bucket moved to the hash meanwhile
        b = s.buckets.get(bid)
        if b is not None:
            b.inflight.pop(ticket.id, None)
        if obs is None:
            return
        if obs.status == 429 and obs.retry_after is not None and obs.scope == "global":
            s.global_block = max(s.global_block, now + obs.retry_after)
        target = b
        foreign = False
        if obs.bucket:
            if s.routes.get(route.key) != obs.bucket:
                s.routes[route.key] = obs.bucket
            hashed = obs.bucket + "|" + route.major
            if hashed != bid:
                existing = s.buckets.get(hashed)
                if existing is None and b is not None:
                    s.buckets[hashed] = b  # the route's first bucket of this hash: it moves
                    del s.buckets[bid]
                else:
                    if b is not None and not b.inflight:
                        del s.buckets[bid]
                    target, foreign = existing, True
        if target is None:
            return
        target.touched = now
        hl, hr, ra, rs = obs.limit, obs.remaining, obs.reset_after, obs.reset
        if hl is None and hr is not None:
            hl = hr + 1  # no limit header: at least what is left plus this request
        if target.limit <= 0:
            if hr is not None and ra is not None and hl is not None:
                target.limit = max(1, hl)
                # Requests still on the wire may not be in ``hr`` yet: count them as used.
                target.remaining = max(0, min(hr, target.limit) - len(target.inflight))
                target.reset_at = now + ra
                target.per = max(target.per, ra)
                if rs is not None:
                    target.wreset = rs
            elif target.limit < 0 and 200 <= obs.status < 300 and hr is None:
                target.limit = 0  # the route sends no limits: only the global limit applies
        elif foreign:
            target.remaining = max(0, target.remaining - 1)  # another route's request used this bucket
        elif ticket.gen == target.gen:
            if hl is not None and hl > 0:
                target.limit = hl
            if ra is not None:
                target.per = max(target.per, ra)
            # Did it reach Discord after its window ended? Then it counts in the next one. The
            # absolute reset (X-RateLimit-Reset) says so whatever the answers' delays: one window's
            # answers all carry the same. Without it: ``now + ra`` more than half a window past
            # the window's end as measured, which carries the delay of the window's earliest
            # answer and misjudges when that answer was itself half a window late.
            if rs is not None and target.wreset >= 0:
                later = rs > target.wreset + target.per / 2
            else:
                later = ra is not None and target.reset_at >= 0 and now + ra > target.reset_at + target.per / 2
            if later:
                target.carry += 1
            else:
                if rs is not None:
                    target.wreset = rs if target.wreset < 0 else min(target.wreset, rs)
                if hr is not None:
                    target.remaining = max(0, min(target.remaining, hr))
                if ra is not None:
                    # Every answer's ``now + ra`` is at or after Discord's reset (the answer took
                    # time to arrive); the earliest is the closest.
                    target.reset_at = now + ra if target.reset_at < 0 else min(target.reset_at, now + ra)
        if obs.status == 429 and obs.retry_after is not None and obs.scope != "global":
            if target.limit <= 0:
                target.limit = hl if hl is not None and hl > 0 else 1
            target.remaining = 0
            target.reset_at = max(target.reset_at, now + obs.retry_after)

    def wait(self, timeout: float, cancel: Optional[threading.Event] = None) -> None:
        if timeout <= 0:
            return
        with self._cond:
            if cancel is None or not cancel.is_set():
                self._cond.wait(timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def status(self, scope: str) -> Dict[str, Any]:
        with self._cond:
            now = self._clock()
            s = self._scope(scope, now)
            while s.invalid and s.invalid[0] <= now - INVALID_WINDOW:
                s.invalid.popleft()
            buckets = {}
            for bid, b in s.buckets.items():
                out = _bucket_status(b.limit, b.remaining, b.reset_at, len(b.inflight), now, 1.0)
                if out is not None:
                    buckets[bid] = out
            return {
                "invalid_requests": len(s.invalid),
                "buckets": buckets,
                "routes": dict(s.routes),
                "global_wait": max(0.0, s.global_block - now),
            }


# ---------------------------------------------------------------------------------------------
# Redis

# Keys, under ARGV prefix P: P:routes (hash route key -> bucket hash), P:b:<id> (hash limit,
# remaining, reset_at, gen, per, carry, and wreset with wgen, the gen it belongs to), P:i:<id>
# (zset ticket -> lease expiry), P:global (zset ticket -> grant time, then answer time),
# P:gblock (string, expires when the global 429 ends), P:invalid (zset). Times are the Redis
# server's clock in ms, so hosts need not agree on the time. The logic is MemoryRateLimiter's,
# line for line; tests/test_rest_limiter.py runs one suite against both.
_LUA_COMMON = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local P = ARGV[1]
local KEEP = 600000
local function num(v, d) if v then return tonumber(v) end return d end
local function prune_invalid()
  redis.call('ZREMRANGEBYSCORE', P .. ':invalid', '-inf', now - 600000)
  return redis.call('ZCARD', P .. ':invalid')
end
local function load(id)
  local v = redis.call('HMGET', P .. ':b:' .. id, 'limit', 'remaining', 'reset_at', 'gen', 'per', 'carry', 'wreset', 'wgen')
  local b = {limit = num(v[1], -1), remaining = num(v[2], 0), reset_at = num(v[3], -1), gen = num(v[4], 0),
    per = num(v[5], 0), carry = num(v[6], 0), wreset = -1}
  -- wreset counts only for the window it was seen in (an older script, mid-upgrade, never clears it)
  if num(v[8], -1) == b.gen then b.wreset = num(v[7], -1) end
  redis.call('ZREMRANGEBYSCORE', P .. ':i:' .. id, '-inf', now)
  b.inflight = redis.call('ZCARD', P .. ':i:' .. id)
  return b
end
local function save(id, b)
  local k = P .. ':b:' .. id
  redis.call('HSET', k, 'limit', tostring(b.limit), 'remaining', tostring(b.remaining),
    'reset_at', string.format('%.3f', b.reset_at), 'gen', tostring(b.gen),
    'per', string.format('%.3f', b.per), 'carry', tostring(b.carry),
    'wreset', string.format('%.3f', b.wreset), 'wgen', tostring(b.gen))
  redis.call('PEXPIRE', k, KEEP + math.max(0, math.ceil(b.reset_at - now)))
end
"""

_LUA_ACQUIRE = _LUA_COMMON + """
local route, major = ARGV[2], ARGV[3]
local use_global = ARGV[4] == '1'
local glimit, gperiod = tonumber(ARGV[5]), tonumber(ARGV[6])
local lease, refuse_at, tid = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9]
local invalid = prune_invalid()
if refuse_at > 0 and invalid >= refuse_at then
  local oldest = redis.call('ZRANGE', P .. ':invalid', 0, 0, 'WITHSCORES')
  return {0, string.format('%.3f', tonumber(oldest[2]) + 600000 - now), 'invalid', invalid}
end
local gwait = 0
if use_global then
  local ttl = redis.call('PTTL', P .. ':gblock')
  if ttl > 0 then gwait = ttl end
  redis.call('ZREMRANGEBYSCORE', P .. ':global', '-inf', now - gperiod)
  local n = redis.call('ZCARD', P .. ':global')
  if n >= glimit then
    local e = redis.call('ZRANGE', P .. ':global', n - glimit, n - glimit, 'WITHSCORES')
    gwait = math.max(gwait, tonumber(e[2]) + gperiod - now)
  end
end
local known = redis.call('HGET', P .. ':routes', route)
local id = (known or ('?' .. route)) .. '|' .. major
if known and redis.call('EXISTS', P .. ':b:' .. id) == 0 then
  -- the hash was learned while this major's first request was out: its bucket moves to the hash
  local unknown = '?' .. route .. '|' .. major
  if redis.call('EXISTS', P .. ':b:' .. unknown) == 1 then
    redis.call('RENAME', P .. ':b:' .. unknown, P .. ':b:' .. id)
    if redis.call('EXISTS', P .. ':i:' .. unknown) == 1 then
      redis.call('RENAME', P .. ':i:' .. unknown, P .. ':i:' .. id)
    end
  end
end
local b = load(id)
local bwait, reason = 0, 'bucket'
if b.limit < 0 then
  if b.reset_at > now then
    bwait = b.reset_at - now
  elseif b.inflight > 0 then
    local first = redis.call('ZRANGE', P .. ':i:' .. id, 0, 0, 'WITHSCORES')
    bwait, reason = tonumber(first[2]) - now, 'unknown'
  end
elseif b.limit > 0 then
  if b.reset_at >= 0 and b.reset_at <= now then
    b.gen = b.gen + 1
    b.remaining = math.max(0, b.limit - b.inflight - b.carry)
    b.reset_at = -1
    b.carry = 0
    b.wreset = -1
  end
  if b.remaining <= 0 then
    if b.reset_at >= 0 then
      bwait = b.reset_at - now
    elseif b.inflight > 0 then
      local first = redis.call('ZRANGE', P .. ':i:' .. id, 0, 0, 'WITHSCORES')
      bwait, reason = tonumber(first[2]) - now, 'unknown'
    end
  end
end
if bwait > 0 or gwait > 0 then
  save(id, b)
  if gwait > bwait then return {0, string.format('%.3f', gwait), 'global', invalid} end
  return {0, string.format('%.3f', bwait), reason, invalid}
end
if b.limit > 0 and b.remaining > 0 then b.remaining = b.remaining - 1 end
save(id, b)
redis.call('ZADD', P .. ':i:' .. id, now + lease, tid)
redis.call('PEXPIRE', P .. ':i:' .. id, KEEP + lease)
if use_global then
  redis.call('ZADD', P .. ':global', now, tid)
  redis.call('PEXPIRE', P .. ':global', math.ceil(gperiod) + 1000)
end
return {1, id, tostring(b.gen), invalid}
"""

_LUA_RELEASE = _LUA_COMMON + """
local route, major, bid, gen, tid = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local has_obs = ARGV[7] == '1'
local status = tonumber(ARGV[8])
local hash = ARGV[9]
local hl, hr, ra = tonumber(ARGV[10]), tonumber(ARGV[11]), tonumber(ARGV[12])
local retry_after, scope, invalid_hit = tonumber(ARGV[13]), ARGV[14], ARGV[15] == '1'
local rs = tonumber(ARGV[16])
if string.sub(bid, 1, 1) == '?' and redis.call('EXISTS', P .. ':b:' .. bid) == 0 then
  local known = redis.call('HGET', P .. ':routes', route)
  if known then bid = known .. '|' .. major end  -- its bucket moved to the hash meanwhile
end
local exists = redis.call('EXISTS', P .. ':b:' .. bid) == 1
redis.call('ZREM', P .. ':i:' .. bid, tid)
redis.call('ZADD', P .. ':global', 'XX', now, tid)  -- counted from its answer now, if still in the log
if has_obs then
  local target_id, foreign = bid, false
  if hash ~= '' then
    redis.call('HSET', P .. ':routes', route, hash)
    redis.call('PEXPIRE', P .. ':routes', 86400000)
    local hashed = hash .. '|' .. major
    if hashed ~= bid then
      local other = redis.call('EXISTS', P .. ':b:' .. hashed) == 1
      if not other and exists then
        redis.call('RENAME', P .. ':b:' .. bid, P .. ':b:' .. hashed)
        if redis.call('EXISTS', P .. ':i:' .. bid) == 1 then
          redis.call('RENAME', P .. ':i:' .. bid, P .. ':i:' .. hashed)
        end
        target_id = hashed
      else
        if exists and redis.call('ZCARD', P .. ':i:' .. bid) == 0 then
          redis.call('DEL', P .. ':b:' .. bid)
        end
        target_id, foreign, exists = hashed, true, other
      end
    end
  end
  if exists then
    local b = load(target_id)
    if hl == nil and hr ~= nil then hl = hr + 1 end
    if b.limit <= 0 then
      if hr ~= nil and ra ~= nil and hl ~= nil then
        b.limit = math.max(1, hl)
        b.remaining = math.max(0, math.min(hr, b.limit) - b.inflight)
        b.reset_at = now + ra
        b.per = math.max(b.per, ra)
        if rs ~= nil then b.wreset = rs end
      elseif b.limit < 0 and status >= 200 and status < 300 and hr == nil then
        b.limit = 0
      end
    elseif foreign then
      b.remaining = math.max(0, b.remaining - 1)
    elseif gen == b.gen then
      if hl ~= nil and hl > 0 then b.limit = hl end
      if ra ~= nil then b.per = math.max(b.per, ra) end
      local later
      if rs ~= nil and b.wreset >= 0 then
        later = rs > b.wreset + b.per / 2
      else
        later = ra ~= nil and b.reset_at >= 0 and now + ra > b.reset_at + b.per / 2
      end
      if later then
        b.carry = b.carry + 1
      else
        if rs ~= nil then
          if b.wreset < 0 then b.wreset = rs else b.wreset = math.min(b.wreset, rs) end
        end
        if hr ~= nil then b.remaining = math.max(0, math.min(b.remaining, hr)) end
        if ra ~= nil then
          if b.reset_at < 0 then b.reset_at = now + ra else b.reset_at = math.min(b.reset_at, now + ra) end
        end
      end
    end
    if status == 429 and retry_after ~= nil then
      if scope == 'global' then
        local until_ = math.ceil(retry_after)
        local ttl = redis.call('PTTL', P .. ':gblock')
        if until_ > ttl then redis.call('SET', P .. ':gblock', '1', 'PX', math.max(1, until_)) end
      else
        if b.limit <= 0 then
          if hl ~= nil and hl > 0 then b.limit = hl else b.limit = 1 end
        end
        b.remaining = 0
        b.reset_at = math.max(b.reset_at, now + retry_after)
      end
    end
    save(target_id, b)
  elseif status == 429 and retry_after ~= nil and scope == 'global' then
    local until_ = math.ceil(retry_after)
    local ttl = redis.call('PTTL', P .. ':gblock')
    if until_ > ttl then redis.call('SET', P .. ':gblock', '1', 'PX', math.max(1, until_)) end
  end
end
if invalid_hit then
  redis.call('ZADD', P .. ':invalid', now, tid)
  redis.call('PEXPIRE', P .. ':invalid', 600000)
end
return prune_invalid()
"""

_LUA_STATUS = _LUA_COMMON + """
local out = {}
local invalid = prune_invalid()
local ttl = redis.call('PTTL', P .. ':gblock')
local routes = redis.call('HGETALL', P .. ':routes')
local ids = {}
for i = 2, #routes, 2 do ids[routes[i]] = true end
local buckets = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', P .. ':b:*', 'COUNT', 200)
  cursor = r[1]
  for _, k in ipairs(r[2]) do
    local id = string.sub(k, string.len(P) + 4)
    local b = load(id)
    table.insert(buckets, id)
    table.insert(buckets, tostring(b.limit))
    table.insert(buckets, tostring(b.remaining))
    table.insert(buckets, string.format('%.3f', b.reset_at))
    table.insert(buckets, tostring(b.inflight))
  end
until cursor == '0'
return {invalid, math.max(ttl, 0), routes, buckets, string.format('%.3f', now)}
"""


def _opt(value: Optional[float]) -> str:
    return "" if value is None else repr(float(value))


class RedisRateLimiter(RateLimiter):
    """The rate limits of every process (on any host) of a bot, in Redis.

    Each decision is one Lua script (atomic); times come from the Redis server's clock. Keys live
    under ``{key_prefix}:rest:{scope}:`` (the scope is the bot id the RestClient passes), expire
    when idle, and never contain the token. Every call is bounded by ``socket_timeout``.

    When Redis fails, the limiter does not stop the bot: it logs one WARNING and keeps the limits
    in this process (a :class:`MemoryRateLimiter`) until Redis answers again (one INFO line). Other
    processes then count without it, so a few 429s are possible; they are handled. ``poll`` is how
    often a waiting request asks Redis again while another process learns a bucket (there is no
    cross-process wake-up). Needs the ``redis`` extra. Standalone Redis (not Cluster): the scripts
    build their keys from the prefix.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "sync_gateway",
        socket_timeout: float = 2.0,
        poll: float = 0.01,
    ) -> None:
        from .stores import _check_key_prefix, _redis_from_url, _safe_url

        self._redis = _redis_from_url(url, "RedisRateLimiter", socket_timeout=socket_timeout)
        self._url = _safe_url(url)
        self.key_prefix = _check_key_prefix(key_prefix)
        self.poll = _check_positive("poll", poll)
        self._acquire = self._redis.register_script(_LUA_ACQUIRE)
        self._release = self._redis.register_script(_LUA_RELEASE)
        self._status = self._redis.register_script(_LUA_STATUS)
        self._fallback = MemoryRateLimiter()
        self._failing = False
        self._lock = threading.Lock()
        self._cond = threading.Condition()

    def __repr__(self) -> str:
        return f"<RedisRateLimiter {self._url} prefix={self.key_prefix!r}>"

    def _prefix(self, scope: str) -> str:
        return f"{self.key_prefix}:rest:{scope}"

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            log.warning(
                "RedisRateLimiter %s unavailable (%s: %s); REST limits are kept in this process until it answers again",
                self._url, type(exc).__name__, exc,
            )

    def _ok(self) -> None:
        if self._failing:
            with self._lock:
                was, self._failing = self._failing, False
            if was:
                log.info("RedisRateLimiter %s answers again; REST limits are shared again", self._url)

    def acquire(
        self,
        scope: str,
        route: Route,
        *,
        global_limit: int,
        global_period: float,
        lease: float,
        refuse_at: int,
    ) -> Grant:
        from .stores import _redis_errors

        tid = uuid.uuid4().hex
        try:
            ok, a, b, invalid = self._acquire(
                args=[
                    self._prefix(scope), route.key, route.major, "1" if route.use_global else "0",
                    global_limit, repr(global_period * 1000.0), repr(lease * 1000.0), refuse_at, tid,
                ]
            )
        except _redis_errors() as exc:
            self._failed(exc)
            grant = self._fallback.acquire(
                scope, route, global_limit=global_limit, global_period=global_period, lease=lease, refuse_at=refuse_at
            )
            if grant.ticket is not None:
                grant = grant._replace(ticket=grant.ticket._replace(fallback=True))
            return grant
        self._ok()
        if int(ok) == 1:
            return Grant(Ticket(_text(a), int(_text(b)), tid), 0.0, "", int(invalid))
        reason = _text(b)
        wait = max(float(_text(a)) / 1000.0, 0.0)
        if reason == "unknown":
            wait = min(wait, self.poll)  # the answer may come to another process: ask again soon
        return Grant(None, wait, reason, int(invalid))

    def release(self, scope: str, route: Route, ticket: Ticket, observation: Optional[Observation]) -> int:
        from .stores import _redis_errors

        if ticket.fallback:
            return self._fallback.release(scope, route, ticket, observation)
        obs = observation
        try:
            count = self._release(
                args=[
                    self._prefix(scope), route.key, route.major, ticket.bucket, ticket.gen, ticket.id,
                    "1" if obs is not None else "0",
                    obs.status if obs is not None else 0,
                    (obs.bucket or "") if obs is not None else "",
                    "" if obs is None or obs.limit is None else obs.limit,
                    "" if obs is None or obs.remaining is None else obs.remaining,
                    _opt(None if obs is None or obs.reset_after is None else obs.reset_after * 1000.0),
                    _opt(None if obs is None or obs.retry_after is None else obs.retry_after * 1000.0),
                    (obs.scope or "") if obs is not None else "",
                    "1" if obs is not None and obs.invalid else "0",
                    _opt(None if obs is None or obs.reset is None else obs.reset * 1000.0),
                ]
            )
        except _redis_errors() as exc:
            self._failed(exc)
            return 0
        finally:
            with self._cond:
                self._cond.notify_all()
        self._ok()
        return int(count)

    def wait(self, timeout: float, cancel: Optional[threading.Event] = None) -> None:
        if timeout <= 0:
            return
        with self._cond:
            if cancel is None or not cancel.is_set():
                self._cond.wait(timeout)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()
        self._fallback.wake()

    def status(self, scope: str) -> Dict[str, Any]:
        from .stores import _redis_errors

        try:
            invalid, gblock, routes, buckets, now_ms = self._status(args=[self._prefix(scope)])
        except _redis_errors() as exc:
            self._failed(exc)
            return self._fallback.status(scope)
        now = float(_text(now_ms))
        route_map = {_text(routes[i]): _text(routes[i + 1]) for i in range(0, len(routes), 2)}
        out: Dict[str, Any] = {}
        for i in range(0, len(buckets), 5):
            bid, limit, remaining, reset_at, inflight = (_text(x) for x in buckets[i : i + 5])
            out_bucket = _bucket_status(int(limit), int(remaining), float(reset_at), int(inflight), now, 1000.0)
            if out_bucket is not None:
                out[bid] = out_bucket
        return {"invalid_requests": int(invalid), "buckets": out, "routes": route_map, "global_wait": int(gblock) / 1000.0}

    def close(self) -> None:
        self._redis.close()


def _bucket_status(limit: int, remaining: int, reset_at: float, inflight: int, now: float, unit: float) -> Optional[Dict[str, Any]]:
    """One bucket as :meth:`RateLimiter.status` shows it (None: not learned yet). ``unit``: clock units per second."""
    if limit < 0:
        return None
    if limit == 0:
        return {"limit": None, "remaining": None, "resets_in": None}
    if 0 <= reset_at <= now:
        return {"limit": limit, "remaining": max(0, limit - inflight), "resets_in": None}
    return {"limit": limit, "remaining": remaining, "resets_in": (reset_at - now) / unit if reset_at >= 0 else None}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
