"""Session stores: where a shard's resumable session is kept so a restarted process RESUMEs
instead of IDENTIFYing (which costs a daily session start and drops the events a RESUME replays).

A store maps a key (one per bot and shard, see :func:`session_key`) to a :class:`SessionRecord`.
The client saves the record as events are *handled* (so a process killed mid-stream resumes from
the last event its handlers finished: at-least-once), drops it when the session is closed for good
or lost, and on start RESUMEs from a record younger than the store's ``max_age``.
"""
import abc
import hashlib
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional

__all__ = ["SessionRecord", "SessionStore", "MemorySessionStore", "session_key"]


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
