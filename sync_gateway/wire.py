"""The gateway's wire facts, without I/O: opcodes, limits, the close-code policy table
(PROTOCOL.md §7) as data, gateway URLs and the payload builders.

Part of the sans-I/O protocol layer (DESIGN.md); :mod:`sync_gateway.protocol` re-exports every
name. Imports nothing of ours but :mod:`sync_gateway.errors`.
"""
import enum
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import ConfigError, FatalGatewayError

API_VERSION = 10
MAX_PAYLOAD_BYTES = 4096
SEND_LIMIT = 120
SEND_PERIOD = 60.0


class Op(enum.IntEnum):
    """Gateway opcodes (PROTOCOL.md §3)."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE_UPDATE = 3
    VOICE_STATE_UPDATE = 4
    RESUME = 6
    RECONNECT = 7
    REQUEST_GUILD_MEMBERS = 8
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    REQUEST_SOUNDBOARD_SOUNDS = 31
    REQUEST_CHANNEL_INFO = 43


#: Opcodes the supervisor owns; a user ``send()`` of one of these would break the session.
SUPERVISOR_OPS = frozenset({Op.HEARTBEAT, Op.IDENTIFY, Op.RESUME})
#: Opcodes that only ever travel server -> client.
RECEIVE_ONLY_OPS = frozenset({Op.DISPATCH, Op.RECONNECT, Op.INVALID_SESSION, Op.HELLO, Op.HEARTBEAT_ACK})


# --------------------------------------------------------------------------------------------
# Close codes (PROTOCOL.md §7) as data, not if-chains.


class Recovery(enum.Enum):
    RESUME = "resume"  # reconnect and RESUME the session
    IDENTIFY = "identify"  # the session is gone: drop it, wait, IDENTIFY anew
    FATAL = "fatal"  # stop; retrying cannot help


@dataclass(frozen=True)
class CloseCode:
    code: int
    name: str
    meaning: str
    reconnect: bool  # Discord's own "reconnect" column
    recovery: Recovery


CLOSE_CODES: Mapping[int, CloseCode] = {
    c.code: c
    for c in (
        CloseCode(4000, "Unknown error", "unknown server-side problem", True, Recovery.RESUME),
        CloseCode(4001, "Unknown opcode", "invalid opcode or payload for an opcode", True, Recovery.RESUME),
        CloseCode(4002, "Decode error", "invalid payload (bad JSON, or over 4096 bytes)", True, Recovery.RESUME),
        CloseCode(4003, "Not authenticated", "payload before IDENTIFY, or session invalidated", True, Recovery.IDENTIFY),
        CloseCode(4004, "Authentication failed", "the token is invalid", False, Recovery.FATAL),
        CloseCode(4005, "Already authenticated", "more than one IDENTIFY", True, Recovery.RESUME),
        CloseCode(4007, "Invalid seq", "bad seq in RESUME", True, Recovery.IDENTIFY),
        CloseCode(4008, "Rate limited", "more than 120 frames in 60 s", True, Recovery.RESUME),
        CloseCode(4009, "Session timed out", "the session expired", True, Recovery.IDENTIFY),
        CloseCode(4010, "Invalid shard", "bad shard in IDENTIFY", False, Recovery.FATAL),
        CloseCode(4011, "Sharding required", "too many guilds for one session; shard the bot", False, Recovery.FATAL),
        CloseCode(4012, "Invalid API version", "bad gateway version", False, Recovery.FATAL),
        CloseCode(4013, "Invalid intent(s)", "an intent bit Discord does not know", False, Recovery.FATAL),
        CloseCode(
            4014,
            "Disallowed intent(s)",
            "a privileged intent that is not enabled in the Developer Portal",
            False,
            Recovery.FATAL,
        ),
    )
}

FATAL_CLOSE_CODES = frozenset(c for c, info in CLOSE_CODES.items() if info.recovery is Recovery.FATAL)
SESSION_KILLING_CLOSE_CODES = frozenset(c for c, info in CLOSE_CODES.items() if info.recovery is Recovery.IDENTIFY)


def close_recovery(code: Optional[int]) -> Recovery:
    """What to do after the server closed with *code* (None: TCP dropped with no close frame).

    Codes outside Discord's table (1000/1001 from the server, 1006, 1011, 1012, ...) are treated
    as transient: reconnect and try to resume; an op 9 will tell us if the session is gone.
    """
    info = CLOSE_CODES.get(code) if code is not None else None
    return info.recovery if info else Recovery.RESUME


def describe_close(code: Optional[int], reason: str = "") -> str:
    if code is None:
        text = "connection lost without a close frame"
    else:
        info = CLOSE_CODES.get(code)
        text = f"close {code} ({info.name}: {info.meaning})" if info else f"close {code}"
    return f"{text}: {reason}" if reason else text


def fatal_error(code: int, reason: str = "", intents: Optional[int] = None) -> FatalGatewayError:
    """The exception for a fatal close code, with advice a person can act on."""
    info = CLOSE_CODES.get(code)
    message = f"Discord closed the gateway with {code}"
    if info:
        message += f" ({info.name}): {info.meaning}"
    if reason:
        message += f" [{reason}]"
    if code == 4014:
        from .intents import Intents

        asked = Intents(intents or 0).privileged_names()
        named = ", ".join(asked) if asked else "a privileged intent"
        message += (
            f". The client asked for {named}; switch it on in the Discord Developer Portal "
            "(your application -> Bot -> Privileged Gateway Intents), or leave it out of intents"
        )
    elif code == 4004:
        message += ". Check that it is the bot token, not the client secret, or make a new one (Developer Portal -> Bot -> Reset Token)"
    elif code == 4011:
        message += ". Use ShardedClient or pass shard=(id, count)"
    elif code == 4013:
        message += ". Use sync_gateway.Intents values only"
    return FatalGatewayError(code, message, reason)


# --------------------------------------------------------------------------------------------
# URLs


def gateway_query_url(url: str, compress: Optional[str], encoding: str = "json") -> str:
    """Append ``v``, ``encoding`` and ``compress`` to a gateway URL (PROTOCOL.md §1).

    Existing values for those keys are replaced; any other query parameters are kept.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ConfigError(f"gateway URL must start with ws:// or wss://, got {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise ConfigError("gateway URL has no host")
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("v", "encoding", "compress")]
    query += [("v", str(API_VERSION)), ("encoding", encoding)]
    if compress:
        query.append(("compress", compress))
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlencode(query), ""))


def with_query_of(url: str, template: str) -> str:
    """*url* with the query of *template*: a resume URL must carry the same ``v``/``encoding``/
    ``compress`` as the first connection (PROTOCOL.md §1)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", urlsplit(template).query, ""))


def url_host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def host_is_trusted(url: str, trusted: Sequence[str]) -> bool:
    """True if *url*'s host equals an entry of *trusted* or, for ``*.example.com`` entries, is below it."""
    host = url_host(url)
    if not host:
        return False
    for pattern in trusted:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and host != pattern[2:]:
                return True
        elif host == pattern:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Payload builders


def heartbeat(seq: Optional[int]) -> Dict[str, Any]:
    return {"op": Op.HEARTBEAT.value, "d": seq}


def identify(
    token: str,
    intents: int,
    *,
    properties: Optional[Mapping[str, str]] = None,
    shard: Optional[Tuple[int, int]] = None,
    presence: Optional[Mapping[str, Any]] = None,
    large_threshold: Optional[int] = None,
) -> Dict[str, Any]:
    d: Dict[str, Any] = {
        "token": token,
        "intents": int(intents),
        "properties": dict(properties) if properties else default_properties(),
    }
    if shard is not None:
        d["shard"] = [int(shard[0]), int(shard[1])]
    if presence is not None:
        d["presence"] = dict(presence)
    if large_threshold is not None:
        d["large_threshold"] = int(large_threshold)
    return {"op": Op.IDENTIFY.value, "d": d}


def default_properties() -> Dict[str, str]:
    import platform

    return {"os": platform.system().lower() or "unknown", "browser": "sync_gateway", "device": "sync_gateway"}


def resume(token: str, session_id: str, seq: Optional[int]) -> Dict[str, Any]:
    return {"op": Op.RESUME.value, "d": {"token": token, "session_id": session_id, "seq": seq}}


PRESENCE_STATUSES = ("online", "dnd", "idle", "invisible", "offline")
ACTIVITY_FIELDS = ("name", "state", "type", "url")


def presence(
    status: str = "online",
    activities: Sequence[Mapping[str, Any]] = (),
    afk: bool = False,
    since: Optional[int] = None,
) -> Dict[str, Any]:
    """The ``d`` of op 3 (also IDENTIFY's ``presence``). Validates what Discord would reject."""
    if status not in PRESENCE_STATUSES:
        raise ConfigError(f"presence status must be one of {', '.join(PRESENCE_STATUSES)}; got {status!r}")
    if isinstance(activities, (str, bytes)) or not isinstance(activities, (list, tuple)):
        raise TypeError("activities must be a list or tuple of dicts")
    acts = []
    for a in activities:
        if not isinstance(a, Mapping):
            raise TypeError(f"each activity must be a dict, got {type(a).__name__}")
        if "name" not in a or "type" not in a:
            raise ConfigError("an activity needs 'name' and 'type' (0 playing, 1 streaming, 2 listening, 3 watching, 4 custom, 5 competing)")
        extra = set(a) - set(ACTIVITY_FIELDS)
        if extra:
            raise ConfigError(f"bots may only set {', '.join(ACTIVITY_FIELDS)} on an activity; got {', '.join(sorted(extra))}")
        acts.append(dict(a))
    if not isinstance(afk, bool):
        raise TypeError("afk must be a bool")
    if since is not None and not isinstance(since, int):
        raise TypeError("since must be a Unix time in milliseconds (int) or None")
    return {"since": since, "activities": acts, "status": status, "afk": afk}


def presence_update(**kwargs: Any) -> Dict[str, Any]:
    return {"op": Op.PRESENCE_UPDATE.value, "d": presence(**kwargs)}


def _snowflake(value: Any, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{what} must be a snowflake (int or str of digits), got {type(value).__name__}")
    text = str(value)
    if not text.isdigit():
        raise ConfigError(f"{what} must be a snowflake of digits, got {text!r}")
    return text


def request_guild_members(
    guild_id: Union[int, str],
    query: str = "",
    limit: int = 0,
    user_ids: Optional[Union[int, str, Sequence[Union[int, str]]]] = None,
    presences: bool = False,
    nonce: Optional[str] = None,
) -> Dict[str, Any]:
    """Op 8 (PROTOCOL.md §9): one guild, ``query`` or ``user_ids``, nonce ≤ 32 bytes."""
    d: Dict[str, Any] = {"guild_id": _snowflake(guild_id, "guild_id")}
    if user_ids is not None:
        ids = [user_ids] if isinstance(user_ids, (int, str)) else list(user_ids)
        if not ids or len(ids) > 100:
            raise ConfigError("user_ids must name between 1 and 100 users")
        d["user_ids"] = [_snowflake(u, "user_ids entry") for u in ids]
    else:
        if not isinstance(query, str):
            raise TypeError("query must be a str")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ConfigError("limit must be an int >= 0 (0 with query='' asks for every member)")
        d["query"] = query
        d["limit"] = limit
    if not isinstance(presences, bool):
        raise TypeError("presences must be a bool")
    d["presences"] = presences
    if nonce is not None:
        if not isinstance(nonce, str) or len(nonce.encode("utf-8")) > 32:
            raise ConfigError("nonce must be a str of at most 32 bytes (Discord silently ignores a longer one)")
        d["nonce"] = nonce
    return {"op": Op.REQUEST_GUILD_MEMBERS.value, "d": d}
