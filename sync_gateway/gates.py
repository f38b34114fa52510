"""IDENTIFY gates shared between processes (PROTOCOL.md §8, §11).

:class:`~sync_gateway.ratelimit.MemoryIdentifyGate` keeps the limits for the shards of one
process. When a bot's shards run in several processes (or hosts), they must share the gate, or
two of them IDENTIFY the same bucket within 5 s (op 9) and the daily session-start budget is
spent without anyone counting (past it, Discord resets the bot token):

* :class:`FileIdentifyGate`: processes of one host; a JSON file under an ``flock``.
* :class:`RedisIdentifyGate`: processes on any number of hosts; per-bucket Redis keys with an
  expiry and a shared ledger of session starts, each decision one Lua script (atomic).

One gate (one file, one ``key_prefix``) belongs to **one bot**: the gate never sees the token, so
two bots sharing a gate would only slow each other down, and share one (wrong) daily ledger.

Both are :class:`~sync_gateway.ratelimit.IdentifyGate` s, so ``GatewayClient(identify_gate=...)``
and ``ShardedClient(identify_gate=...)`` take them. A gate whose storage fails never raises into
the client: it refuses with ``Permit(wait, "identify gate unavailable: ...")`` (and one WARNING),
so nothing is IDENTIFYed without the limits being checked, and the client asks again later.
"""
import contextlib
import math
import os  # noqa: F401  (annotations)
import threading
import time
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from ._log import get_logger
from .errors import ConfigError, GatewayError
from .ratelimit import DAY, GateState, IdentifyGate, Permit, SessionLedger, StoredIdentifyGate, format_duration
from .stores import (
    _atomic_write_json,
    _check_key_prefix,
    _check_path,
    _flocked,
    _read_json,
    _redis_errors,
    _redis_from_url,
    _safe_url,
)

__all__ = ["FileIdentifyGate", "RedisIdentifyGate", "UNAVAILABLE_RETRY"]

log = get_logger(__name__)

#: Seconds a client waits before asking a gate again whose storage failed (file or Redis error).
UNAVAILABLE_RETRY = 2.0

#: Two observations of ``session_start_limit`` whose reset times are this close (seconds) describe
#: the same daily period: the ledger then keeps the smaller ``remaining``, so grants another
#: process made but Discord has not counted yet are not given back.
SAME_PERIOD = 120.0


def _parse_limit(limit: Mapping[str, Any]) -> Tuple[int, int, float, int]:
    try:
        total = int(limit["total"])
        remaining = int(limit["remaining"])
        reset_after_ms = float(limit["reset_after"])
        max_concurrency = int(limit.get("max_concurrency", 1))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not a session_start_limit object (need total, remaining, reset_after): {exc!r}") from None
    if math.isnan(reset_after_ms):
        raise ValueError("session_start_limit.reset_after is not a number")
    return total, remaining, max(0.0, reset_after_ms), max(1, max_concurrency)


class _OutageWarning:
    """One WARNING when the gate's storage starts failing, one INFO when it works again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._failing = False
        self._lock = threading.Lock()

    def failed(self, exc: BaseException) -> Permit:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            log.warning(
                "%s unavailable (%s: %s); IDENTIFY is held back until it answers again", self.what, type(exc).__name__, exc
            )
        return Permit(UNAVAILABLE_RETRY, f"identify gate unavailable: {type(exc).__name__}")

    def ok(self) -> None:
        if self._failing:
            with self._lock:
                was, self._failing = self._failing, False
            if was:
                log.info("%s answers again", self.what)


# --------------------------------------------------------------------------------------------
# File


class FileIdentifyGate(StoredIdentifyGate):
    """An IDENTIFY gate in a JSON file, shared by every process of one host that names the same
    *path* (and by the threads of each).

    Each decision holds an ``flock`` on ``path + ".lock"`` while it reads the
    :class:`~sync_gateway.ratelimit.GateState`, applies the rules and replaces the file atomically
    (temporary file + ``os.replace``). The kernel drops the lock of a process that dies, even by
    SIGKILL. The clock is ``time.time()``, the one clock every process of the host shares.

    POSIX only (``fcntl.flock``): on Windows, or for processes on several hosts, use
    :class:`RedisIdentifyGate`. Do not put the file on NFS (``flock`` is not reliable there).
    """

    def __init__(
        self,
        path: "os.PathLike[str] | str",
        *,
        interval: float = 5.0,
        margin: float = 0.25,
        daily_floor: int = 0,
    ) -> None:
        super().__init__(interval=interval, margin=margin, daily_floor=daily_floor, clock=time.time)
        self.path = _check_path(path, "FileIdentifyGate")
        self._lock_path = self.path + ".lock"
        self._thread_lock = threading.Lock()
        self._outage = _OutageWarning(f"FileIdentifyGate {self.path}")

    def __repr__(self) -> str:
        return f"<FileIdentifyGate {self.path!r} interval={self.interval:g}s margin={self.margin:g}s>"

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[GateState]:
        with _flocked(self._lock_path, self._thread_lock):
            whole: Dict[str, Any] = _read_json(self.path, "FileIdentifyGate") or {}
            # A view bound to a bot keeps its state under "bots"; an unbound gate at the top level.
            found = whole.get("bots")
            bots: Dict[str, Any] = found if isinstance(found, dict) else {}
            raw = bots.get(self.bot) if self.bot else {k: v for k, v in whole.items() if k != "bots"} or None
            try:
                state = GateState.from_dict(raw) if raw else GateState()
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                log.warning("FileIdentifyGate: %s holds no gate state (%s); starting from an empty state", self.path, exc)
                state, raw = GateState(), None
            yield state
            new = state.to_dict()
            if new != raw:
                if self.bot:
                    whole["bots"] = dict(bots, **{self.bot: new})
                else:
                    whole = dict(new, bots=bots) if bots else new
                _atomic_write_json(self.path, whole)

    def try_acquire(self, shard_id: int, max_concurrency: int = 1) -> Permit:
        try:
            permit = super().try_acquire(shard_id, max_concurrency)
        except OSError as exc:
            return self._outage.failed(exc)
        self._outage.ok()
        return permit

    def update_session_start_limit(self, limit: Mapping[str, Any]) -> None:
        """Record ``session_start_limit``; within the same daily period the smaller ``remaining``
        wins (another process's grants may not have reached Discord yet)."""
        total, remaining, reset_after_ms, max_concurrency = _parse_limit(limit)
        with self._transaction() as state:
            now = self._clock()
            reset_at = now + reset_after_ms / 1000.0
            old = state.ledger
            if old is not None:
                old.roll(now)
                if old.total == total and abs(old.reset_at - reset_at) < SAME_PERIOD:
                    remaining = min(remaining, old.remaining)
            state.ledger = SessionLedger(
                total=total, remaining=remaining, reset_at=reset_at, max_concurrency=max_concurrency, observed_at=now
            )

    def session_start_info(self) -> Dict[str, Any]:
        try:
            return super().session_start_info()
        except OSError as exc:
            log.debug("FileIdentifyGate: session_start_info failed: %s", exc)
            return {}


# --------------------------------------------------------------------------------------------
# Redis

# KEYS: bucket, ledger. ARGV: spacing_ms, daily_floor, day_ms.
# Returns {verdict, wait_ms, remaining, total, reset_at_ms}; verdict 0 = daily floor reached,
# 1 = bucket busy, 2 = granted. remaining/total/reset_at are -1 when the ledger is unknown.
# The server's clock (TIME) is the one clock all hosts share.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local spacing = tonumber(ARGV[1])
local floor = tonumber(ARGV[2])
local day = tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[2], 'total', 'remaining', 'reset_at')
local known = v[1] and v[2] and v[3]
local total, remaining, reset_at = -1, -1, -1
if known then
  total = tonumber(v[1]); remaining = tonumber(v[2]); reset_at = tonumber(v[3])
  if now >= reset_at then
    reset_at = reset_at + (math.floor((now - reset_at) / day) + 1) * day
    remaining = total
    redis.call('HSET', KEYS[2], 'remaining', string.format('%d', remaining), 'reset_at', string.format('%d', reset_at))
  end
  if remaining <= floor then
    return {0, math.max(reset_at - now, 1), remaining, total, reset_at}
  end
end
if spacing > 0 then
  local ok = redis.call('SET', KEYS[1], string.format('%d', now), 'NX', 'PX', spacing)
  if not ok then
    local ttl = redis.call('PTTL', KEYS[1])
    if ttl > 0 then
      return {1, ttl, remaining, total, reset_at}
    end
    redis.call('SET', KEYS[1], string.format('%d', now), 'PX', spacing)
  end
end
if known then
  remaining = redis.call('HINCRBY', KEYS[2], 'remaining', -1)
end
return {2, 0, remaining, total, reset_at}
"""

# KEYS: ledger. ARGV: total, remaining, reset_after_ms, max_concurrency, same_period_ms, day_ms.
_UPDATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local total = tonumber(ARGV[1])
local remaining = tonumber(ARGV[2])
local reset_at = now + tonumber(ARGV[3])
local day = tonumber(ARGV[6])
local v = redis.call('HMGET', KEYS[1], 'total', 'remaining', 'reset_at')
if v[1] and v[2] and v[3] then
  local old_total, old_remaining, old_reset = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
  if now >= old_reset then
    old_reset = old_reset + (math.floor((now - old_reset) / day) + 1) * day
    old_remaining = old_total
  end
  if old_total == total and math.abs(old_reset - reset_at) < tonumber(ARGV[5]) then
    remaining = math.min(remaining, old_remaining)
  end
end
redis.call('HSET', KEYS[1], 'total', string.format('%d', total), 'remaining', string.format('%d', remaining),
  'reset_at', string.format('%d', reset_at), 'max_concurrency', ARGV[4], 'observed_at', string.format('%d', now))
return remaining
"""

# KEYS: ledger. ARGV: day_ms. Returns {} or {total, remaining, resets_in_ms, max_concurrency}.
_INFO = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'total', 'remaining', 'reset_at', 'max_concurrency')
if not (v[1] and v[2] and v[3]) then return {} end
local total, remaining, reset_at = tonumber(v[1]), tonumber(v[2]), tonumber(v[3])
if now >= reset_at then
  reset_at = reset_at + (math.floor((now - reset_at) / tonumber(ARGV[1])) + 1) * tonumber(ARGV[1])
  remaining = total
end
return {total, remaining, reset_at - now, tonumber(v[4] or '1')}
"""


class RedisIdentifyGate(IdentifyGate):
    """An IDENTIFY gate in Redis, shared by every process and host of one bot.

    Keys (``key_prefix`` defaults to ``"sync_gateway"``; give each bot its own):

    * ``{key_prefix}:identify:bucket:{n}``: set with ``NX`` and an expiry of ``interval +
      margin`` when bucket *n* (``shard_id % max_concurrency``) is granted. While it exists the
      bucket is busy, and its ``PTTL`` is exactly how long to wait: nobody polls.
    * ``{key_prefix}:identify:ledger``: a hash with Discord's ``session_start_limit`` (``total``,
      ``remaining``, ``reset_at`` in ms of the Redis server's clock), decremented by every grant.
      At or below ``daily_floor`` remaining, nothing is granted until the reset:
      ``Permit(wait=until reset, reason="session start limit: ...")`` and one WARNING per period.

    Every decision is one Lua script, so two processes can never both get a bucket or the last
    session start. Times come from the Redis server, so hosts' clocks need not agree. Needs the
    ``redis`` extra (``pip install 'sync-gateway[redis]'``).
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "sync_gateway",
        daily_floor: int = 0,
        interval: float = 5.0,
        margin: float = 0.25,
        socket_timeout: float = 0.5,
    ) -> None:
        for name, value in (("interval", interval), ("margin", margin)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if isinstance(daily_floor, bool) or not isinstance(daily_floor, int) or daily_floor < 0:
            raise ConfigError(f"daily_floor must be an int >= 0, got {daily_floor!r}")
        self._redis = _redis_from_url(url, "RedisIdentifyGate", socket_timeout=socket_timeout)
        self._url = _safe_url(url)
        self.key_prefix = _check_key_prefix(key_prefix)
        self.interval = float(interval)
        self.margin = float(margin)
        self.daily_floor = daily_floor
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._update = self._redis.register_script(_UPDATE)
        self._info = self._redis.register_script(_INFO)
        self._warned_for: Optional[int] = None  # reset_at (ms) of the period last warned about
        self._warn_lock = threading.Lock()
        self._outage = _OutageWarning(f"RedisIdentifyGate {self._url}")

    def __repr__(self) -> str:
        return f"<RedisIdentifyGate {self._url} prefix={self.key_prefix!r} interval={self.interval:g}s>"

    @property
    def ledger_key(self) -> str:
        return f"{self._prefix}:identify:ledger"

    def bucket_key(self, bucket: int) -> str:
        return f"{self._prefix}:identify:bucket:{bucket}"

    @property
    def _prefix(self) -> str:
        return f"{self.key_prefix}:{self.bot}" if self.bot else self.key_prefix

    def try_acquire(self, shard_id: int, max_concurrency: int = 1) -> Permit:
        for name, value, minimum in (("shard_id", shard_id, 0), ("max_concurrency", max_concurrency, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
        bucket = shard_id % max_concurrency
        spacing_ms = int(math.ceil((self.interval + self.margin) * 1000))  # 0: no spacing (tests)
        try:
            verdict, wait_ms, remaining, total, reset_at = self._acquire(
                keys=[self.bucket_key(bucket), self.ledger_key], args=[spacing_ms, self.daily_floor, int(DAY * 1000)]
            )
        except _redis_errors() as exc:
            return self._outage.failed(exc)
        self._outage.ok()
        if verdict == 2:
            return Permit(0.0, "")
        wait = max(int(wait_ms), 1) / 1000.0
        if verdict == 1:
            return Permit(wait, f"identify bucket {bucket} busy")
        floor = f" (floor {self.daily_floor})" if self.daily_floor else ""
        self._warn_budget(int(remaining), int(total), int(reset_at), wait)
        return Permit(wait, f"session start limit: {remaining} remaining{floor}, resets in {format_duration(wait)}")

    def _warn_budget(self, remaining: int, total: int, reset_at: int, wait: float) -> None:
        with self._warn_lock:
            if self._warned_for is not None and abs(self._warned_for - reset_at) < 60_000:
                return
            self._warned_for = reset_at
        log.warning(
            "IDENTIFY held back: %d of %d daily session starts remaining (floor %d); waiting %s for "
            "Discord's reset. Identifying past the limit gets the bot token reset.",
            remaining,
            total,
            self.daily_floor,
            format_duration(wait),
        )

    def update_session_start_limit(self, limit: Mapping[str, Any]) -> None:
        """Record ``session_start_limit`` (``reset_after`` in ms from now). Within the same daily
        period the smaller ``remaining`` wins: another process's grants may not have reached
        Discord yet. Raises :class:`GatewayError` when Redis cannot be reached (so ``start()``
        fails loudly instead of running with an unknown budget)."""
        total, remaining, reset_after_ms, max_concurrency = _parse_limit(limit)
        try:
            self._update(
                keys=[self.ledger_key],
                args=[total, remaining, int(reset_after_ms), max_concurrency, int(SAME_PERIOD * 1000), int(DAY * 1000)],
            )
        except _redis_errors() as exc:
            raise GatewayError(
                f"RedisIdentifyGate: cannot record the session start limit in Redis at {self._url} "
                f"({type(exc).__name__}: {exc})"
            ) from None

    def session_start_info(self) -> Dict[str, Any]:
        try:
            out = self._info(keys=[self.ledger_key], args=[int(DAY * 1000)])
        except _redis_errors() as exc:
            log.debug("RedisIdentifyGate: session_start_info failed: %s", exc)
            return {}
        if not out:
            return {}
        total, remaining, resets_in_ms, mc = (int(x) for x in out)
        return {"total": total, "remaining": remaining, "resets_in": max(0.0, resets_in_ms / 1000.0), "max_concurrency": mc}

    def close(self) -> None:
        """Close the connection pool (optional: it holds sockets, no threads)."""
        self._redis.close()

