"""Session stores: where a shard's resumable session is kept so a restarted process RESUMEs
instead of IDENTIFYing (which costs a daily session start and drops the events a RESUME replays).

A store maps a key (one per bot and shard, see :func:`session_key`) to a :class:`SessionRecord`.
The client saves the record as events are *handled* (so a process killed mid-stream resumes from
the last event its handlers finished: at-least-once), drops it when the session is closed for good
or lost, and on start RESUMEs from a record younger than the store's ``max_age``.
"""
import abc
import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Type
from urllib.parse import urlsplit

from ._log import get_logger
from .errors import ConfigError

try:  # POSIX only; the file-backed stores and gates refuse to be built without it
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "SessionRecord",
    "SessionStore",
    "MemorySessionStore",
    "FileSessionStore",
    "RedisSessionStore",
    "session_key",
]

log = get_logger(__name__)


def session_key(token: str, shard_id: int, shard_count: int) -> str:
    """A store key for one shard of one bot; the token is hashed, never stored."""
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()[:16]
    return f"{digest}:{shard_id}:{shard_count}"


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    seq: Optional[int]
    resume_url: Optional[str]
    shard: Optional[List[int]]
    saved_at: float  # time.time(): it must mean the same thing in another process or host

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SessionRecord":
        shard = data.get("shard")
        return cls(
            session_id=str(data["session_id"]),
            seq=None if data.get("seq") is None else int(data["seq"]),
            resume_url=data.get("resume_url") or None,
            shard=list(shard) if shard is not None else None,
            saved_at=float(data["saved_at"]),
        )


class SessionStore(abc.ABC):
    """Keeps :class:`SessionRecord` s. Implementations must be safe from several threads."""

    #: Seconds a saved session is worth a RESUME. Discord keeps a disconnected session for a few
    #: minutes; an older one would only earn an op 9 and then an IDENTIFY anyway.
    max_age: float = 180.0

    @abc.abstractmethod
    def load(self, key: str) -> Optional[SessionRecord]: ...

    @abc.abstractmethod
    def save(self, key: str, record: SessionRecord) -> None: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def load_fresh(self, key: str, now: Optional[float] = None) -> Optional[SessionRecord]:
        """The record for *key* if it is young enough to RESUME, else None."""
        record = self.load(key)
        if record is None:
            return None
        age = (time.time() if now is None else now) - record.saved_at
        return record if 0 <= age <= self.max_age else None


class MemorySessionStore(SessionStore):
    """In-process store: lets a new client object in the same process resume (tests, reloads)."""

    def __init__(self, *, max_age: float = 180.0) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._records: Dict[str, SessionRecord] = {}

    def load(self, key: str) -> Optional[SessionRecord]:
        with self._lock:
            return self._records.get(key)

    def save(self, key: str, record: SessionRecord) -> None:
        with self._lock:
            self._records[key] = record

    def delete(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)


# --------------------------------------------------------------------------------------------
# Helpers shared with gates.py and sinks.py: locked JSON files and lazily imported Redis.


def _check_path(path: Any, what: str) -> str:
    try:
        path = os.fspath(path)
    except TypeError:
        raise ConfigError(f"{what}: path must be a str or os.PathLike, got {type(path).__name__}") from None
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{what}: path must be a non-empty str path")
    if fcntl is None:  # pragma: no cover - Windows
        raise ConfigError(f"{what} needs fcntl.flock (POSIX: Linux, macOS, BSD); on Windows use the Redis variant")
    absolute: str = os.path.abspath(path)
    directory = os.path.dirname(absolute)
    if not os.path.isdir(directory):
        raise ConfigError(f"{what}: directory {directory!r} does not exist")
    return absolute


#: Seconds a file lock is waited for at most. These locks guard a few-millisecond read-modify-
#: write, and the IDENTIFY gate's runs on the supervisor thread, which sends heartbeats: a lock
#: held longer by another process (stopped, frozen, on a stalled disk) is an outage, not a wait.
LOCK_TIMEOUT = 0.25


@contextlib.contextmanager
def _flocked(lock_path: str, thread_lock: Optional[Any] = None, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold *thread_lock* (if given) and an exclusive ``flock`` on *lock_path* (created if missing),
    or raise ``TimeoutError`` (an ``OSError``) after *timeout* seconds. ``flock`` belongs to the
    open file description, so two threads of one process exclude each other as two processes do,
    and the kernel drops the lock when a holder dies (even by SIGKILL): no stale lock files.
    ``flock`` has no timeout of its own, so a non-blocking attempt is repeated at short intervals."""
    deadline = time.monotonic() + timeout
    if thread_lock is not None and not thread_lock.acquire(timeout=timeout):
        raise TimeoutError(f"{lock_path} is busy in this process for over {timeout:g}s")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            pause = threading.Event()
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TimeoutError(f"{lock_path} is locked by another process for over {timeout:g}s") from None
                    pause.wait(0.005)
            yield
        finally:
            os.close(fd)  # releases the lock
    finally:
        if thread_lock is not None:
            thread_lock.release()


def _read_json(path: str, what: str) -> Optional[Dict[str, Any]]:
    """The JSON object in *path*; None if the file is missing, empty or not a JSON object (the
    latter with a WARNING: the next write replaces it)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return None
    if not raw.strip():
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        log.warning("%s: %s is not valid JSON (%s); starting from an empty state", what, path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("%s: %s does not hold a JSON object; starting from an empty state", what, path)
        return None
    return data


def _atomic_write_json(path: str, data: Mapping[str, Any]) -> None:
    """Write *data* to a temporary file in the same directory and ``os.replace`` it over *path*, so
    a reader (or a process killed mid-write) sees the old file or the new one, never half of one.
    The file is created 0600: it names sessions of the bot."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, separators=(",", ":"), sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _check_key_prefix(key_prefix: Any) -> str:
    if not isinstance(key_prefix, str) or not key_prefix or any(c.isspace() for c in key_prefix):
        raise ConfigError("key_prefix must be a non-empty str without spaces, like 'sync_gateway' or 'mybot'")
    return key_prefix


def _check_max_age(max_age: Any) -> float:
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not max_age > 0:
        raise ConfigError(f"max_age must be a number of seconds > 0, got {max_age!r}")
    return float(max_age)


def _safe_url(url: str) -> str:
    """*url* without user and password, for reprs and log lines."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return f"{parts.scheme}://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"


def _redis_from_url(url: Any, what: str, *, socket_timeout: float = 2.0) -> Any:
    """A ``redis.Redis`` for *url* (``redis://``, ``rediss://`` or ``unix://``). Nothing connects
    until the first command. Redis is an optional extra, imported only here."""
    if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{what}: url must be a redis://, rediss:// or unix:// URL, like 'redis://localhost:6379/0'")
    if isinstance(socket_timeout, bool) or not isinstance(socket_timeout, (int, float)) or not socket_timeout > 0:
        raise ConfigError(f"{what}: socket_timeout must be a number of seconds > 0")
    try:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry
    except ImportError:
        raise ConfigError(
            f"{what} needs the redis package: pip install 'sync-gateway[redis]' "
            "(from a checkout: pip install -e '.[redis]')"
        ) from None
    try:
        # One quick retry (a pooled connection that died with a Redis restart), then fail: these
        # calls run on the supervisor or dispatcher thread, which must not hang on an outage.
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
        )
    except ValueError as exc:  # the message may quote the URL (and a password): not repeated here
        raise ConfigError(f"{what}: the url could not be parsed ({type(exc).__name__})") from None


def _redis_errors() -> Tuple[Type[BaseException], ...]:
    import redis

    return (redis.exceptions.RedisError, OSError)


# --------------------------------------------------------------------------------------------
# File and Redis stores


class FileSessionStore(SessionStore):
    """Every shard's session in one JSON file, shared safely by the threads and processes of one
    host.

    Reads need no lock (writes replace the file atomically); each write holds an ``flock`` on
    ``path + ".lock"`` while it reads, changes and replaces the file, so two processes never lose
    each other's records. Records older than ``max_age`` are pruned on write. The file holds
    session ids and resume URLs, never the token (keys hash it), and is created mode 0600.

    POSIX only (``fcntl``); on Windows use :class:`RedisSessionStore`.
    """

    def __init__(self, path: "os.PathLike[str] | str", *, max_age: float = 180.0) -> None:
        self.path = _check_path(path, "FileSessionStore")
        self.max_age = _check_max_age(max_age)
        self._lock_path = self.path + ".lock"
        self._thread_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<FileSessionStore {self.path!r} max_age={self.max_age:g}s>"

    def _records(self) -> Dict[str, Any]:
        data = _read_json(self.path, "FileSessionStore") or {}
        sessions = data.get("sessions")
        return dict(sessions) if isinstance(sessions, dict) else {}

    def load(self, key: str) -> Optional[SessionRecord]:
        raw = self._records().get(key)
        if not isinstance(raw, dict):
            return None
        try:
            return SessionRecord.from_dict(raw)
        except (KeyError, TypeError, ValueError):
            log.warning("FileSessionStore: the record for %s in %s is malformed; ignoring it", key, self.path)
            return None

    @contextlib.contextmanager
    def _update(self, key: str) -> Iterator[Dict[str, Any]]:
        """Lock, read, let the caller change *key*, prune the other stale records, replace."""
        with _flocked(self._lock_path, self._thread_lock):
            records = self._records()
            yield records
            now = time.time()
            for k in [k for k, v in records.items() if k != key and not _young(v, now, self.max_age)]:
                del records[k]
            _atomic_write_json(self.path, {"version": 1, "sessions": records})

    def save(self, key: str, record: SessionRecord) -> None:
        with self._update(key) as records:
            records[key] = record.to_dict()

    def delete(self, key: str) -> None:
        with self._update(key) as records:
            records.pop(key, None)


def _young(raw: Any, now: float, max_age: float) -> bool:
    try:
        return now - float(raw["saved_at"]) <= max_age
    except (KeyError, TypeError, ValueError):
        return False


class RedisSessionStore(SessionStore):
    """One Redis key per shard (``{key_prefix}:session:{session_key}``), written with an expiry of
    ``max_age`` so a stale session vanishes by itself. Shared by any number of processes and hosts.

    A Redis outage never takes the gateway down: a failed load is a WARNING and an IDENTIFY
    instead of a RESUME; a failed save is logged by the client (once) and retried with the next
    event. Needs the ``redis`` extra (``pip install 'sync-gateway[redis]'``).
    """

    def __init__(
        self, url: str, *, key_prefix: str = "sync_gateway", max_age: float = 180.0, socket_timeout: float = 2.0
    ) -> None:
        self._redis = _redis_from_url(url, "RedisSessionStore", socket_timeout=socket_timeout)
        self._url = _safe_url(url)
        self.key_prefix = _check_key_prefix(key_prefix)
        self.max_age = _check_max_age(max_age)

    def __repr__(self) -> str:
        return f"<RedisSessionStore {self._url} prefix={self.key_prefix!r} max_age={self.max_age:g}s>"

    def redis_key(self, key: str) -> str:
        return f"{self.key_prefix}:session:{key}"

    def load(self, key: str) -> Optional[SessionRecord]:
        try:
            raw = self._redis.get(self.redis_key(key))
        except _redis_errors() as exc:
            log.warning("RedisSessionStore: cannot load the session (%s: %s); identifying instead", type(exc).__name__, exc)
            return None
        if raw is None:
            return None
        try:
            return SessionRecord.from_dict(json.loads(raw))
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("RedisSessionStore: %s does not hold a session record; ignoring it", self.redis_key(key))
            return None

    def save(self, key: str, record: SessionRecord) -> None:
        data = json.dumps(record.to_dict(), separators=(",", ":"))
        self._redis.set(self.redis_key(key), data, px=max(1, int(self.max_age * 1000)))

    def delete(self, key: str) -> None:
        self._redis.delete(self.redis_key(key))

    def close(self) -> None:
        """Close the connection pool (optional: it holds sockets, no threads)."""
        self._redis.close()
