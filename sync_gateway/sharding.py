"""ShardedClient: several shards of one bot in one process, behind the GatewayClient API.

Each shard is a :class:`~sync_gateway.client.GatewayClient` with its own threads — a supervisor,
a dispatcher and one reader per live socket, so **3 threads per shard** (``close()`` adds one
short-lived ``sync_gateway-close-sN`` thread per shard while it closes them in parallel). The
shards share:

* one handler :class:`~sync_gateway.dispatch.Registry` (``on``/``off``/``on_lifecycle`` once for all;
  each event's ``shard_id`` says where it came from; handlers of different shards run on different
  dispatcher threads, so a handler may run concurrently with itself);
* one :class:`~sync_gateway.ratelimit.IdentifyGate` (default: the process's gate of this bot;
  pass a File/Redis gate when other processes run other shards of the bot);
* one :class:`~sync_gateway.stores.SessionStore` (a key per shard);
* one ``GET /gateway/bot``, made in :meth:`ShardedClient.start`: the URL, the recommended shard
  count (``shard_count="auto"``), ``max_concurrency`` and the daily session-start budget.

IDENTIFYs go out by buckets in order (PROTOCOL.md §11): shards ``0..mc-1`` first, then
``mc..2mc-1``, and so on: within a bucket (``shard_id % max_concurrency``) a shard's first
IDENTIFY waits for the shard before it, and the shared gate spaces them 5 s apart. The order holds
among the shards of one ShardedClient; across processes only the 5 s spacing does.
"""
import threading
import time
import types
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union
from urllib.parse import urlsplit

from ._log import get_logger, register_secret
from .client import DEFAULT_API_BASE, GatewayClient, _check_token, _process_gate, limit_source
from .dispatch import HandlerMethods, Registry
from .errors import AuthenticationError, ConfigError, GatewayError
from .intents import Intents
from .protocol import LifecycleConfig, Status
from .ratelimit import IdentifyGate, Permit, bot_id_from_token
from .stores import SessionStore, session_key

__all__ = ["ShardedClient", "ShardedStatus", "shard_for_guild"]

log = get_logger(__name__)



def shard_for_guild(guild_id: Union[int, str], shard_count: int) -> int:
    """The shard that receives a guild's events: ``(guild_id >> 22) % shard_count`` (§11)."""
    if isinstance(guild_id, bool) or not isinstance(guild_id, (int, str)):
        raise TypeError(f"guild_id must be an int or a numeric str, got {type(guild_id).__name__}")
    try:
        gid = int(guild_id)
    except ValueError:
        raise ValueError(f"guild_id must be a snowflake (digits), got {guild_id!r}") from None
    if gid < 0:
        raise ValueError("guild_id must be >= 0")
    if isinstance(shard_count, bool) or not isinstance(shard_count, int) or shard_count < 1:
        raise ValueError("shard_count must be an int >= 1")
    return (gid >> 22) % shard_count


@dataclass(frozen=True)
class ShardedStatus:
    """A snapshot of every shard. ``shards`` maps shard_id to that shard's :class:`Status`
    (read-only). ``state``: ``"idle"`` (not started), ``"ready"`` (every shard ready),
    ``"failed"`` (a shard failed), ``"closed"`` (every shard closed), else ``"connecting"``.
    ``latency`` is the worst shard's (None until a shard has one); ``identify_wait`` names the
    first shard whose IDENTIFY is held back, and why."""

    state: str
    shard_count: Optional[int]
    shards: Mapping[int, Status]
    ready: int
    identifies: int
    resumes: int
    reconnects: int
    orphaned_readers: int
    latency: Optional[float]
    identify_wait: Optional[str] = None


class _StartOrder(IdentifyGate):
    """Wraps the shared gate for one ShardedClient: a shard's first IDENTIFY waits until the shard
    before it in its bucket has been granted one (or will not IDENTIFY: it resumes a stored
    session, or it stopped). Everything else is the inner gate's."""

    def __init__(self, inner: IdentifyGate, before: Mapping[int, int], gone: Callable[[int], bool]) -> None:
        self.inner = inner
        self.interval = inner.interval
        self._spacing = max(0.05, float(getattr(inner, "interval", 5.0)) + float(getattr(inner, "margin", 0.0)))
        self._before = dict(before)
        self._gone = gone
        self._granted: Set[int] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<start order over {self.inner!r}>"

    def for_bot(self, bot_id: str) -> IdentifyGate:
        return self  # built over a gate already bound to the bot

    def try_acquire(self, shard_id: int, max_concurrency: int = 1) -> Permit:
        with self._lock:
            first = self._before.get(shard_id)
            waiting = first is not None and first not in self._granted
        if waiting and not self._gone(first):  # type: ignore[arg-type]
            # The shard before it has not IDENTIFYed yet, so this one cannot go within the next
            # interval anyway: asking again then is never too late.
            return Permit(self._spacing, f"identify bucket {shard_id % max_concurrency}: shard {first} goes first")
        permit = self.inner.try_acquire(shard_id, max_concurrency)
        if permit.granted:
            with self._lock:
                self._granted.add(shard_id)
        return permit

    def update_session_start_limit(self, limit: Mapping[str, Any]) -> None:
        self.inner.update_session_start_limit(limit)

    def session_start_info(self) -> Dict[str, Any]:
        return self.inner.session_start_info()


def _check_shard_count(value: Any) -> Union[int, str]:
    if value == "auto" and isinstance(value, str):
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"shard_count must be 'auto' or an int >= 1, got {value!r}")
    return value


def _check_shard_ids(shard_ids: Any, shard_count: int) -> Tuple[int, ...]:
    if shard_ids is None:
        return tuple(range(shard_count))
    if isinstance(shard_ids, (str, bytes)) or not isinstance(shard_ids, Iterable):
        raise ConfigError("shard_ids must be a list of ints, like [0, 1, 2]")
    ids = list(shard_ids)
    if not ids:
        raise ConfigError("shard_ids must not be empty")
    for sid in ids:
        if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid < shard_count:
            raise ConfigError(f"shard_ids must be ints from 0 to shard_count - 1 ({shard_count - 1}); got {sid!r}")
    if len(set(ids)) != len(ids):
        raise ConfigError("shard_ids has duplicates")
    return tuple(sorted(ids))


class ShardedClient(HandlerMethods):
    """Several shards of one bot in one process, with the :class:`GatewayClient` API.

    >>> client = ShardedClient(token, intents=Intents.DEFAULT)        # shard_count="auto"
    >>> @client.on("MESSAGE_CREATE")
    ... def on_message(event): handle(event.shard_id, event.data["content"])
    >>> client.run_forever()

    ``shard_count="auto"`` takes Discord's recommendation from ``GET /gateway/bot`` (made once, in
    :meth:`start`); ``shard_ids`` picks the shards this process runs (default: all), so a large bot
    can split its shards over processes that share a File/Redis ``identify_gate``.
    ``max_concurrency=None`` takes it from ``/gateway/bot`` (1 without a REST call). The constructor
    checks arguments and does nothing else.
    """

    def __init__(
        self,
        token: str,
        intents: Union[Intents, int] = Intents.DEFAULT,
        *,
        shard_count: Union[int, str] = "auto",
        shard_ids: Optional[Sequence[int]] = None,
        max_concurrency: Optional[int] = None,
        gateway_url: Optional[str] = None,
        api_base: Optional[str] = None,
        compress: Optional[str] = "zlib-stream",
        config: Optional[LifecycleConfig] = None,
        identify_gate: Optional[IdentifyGate] = None,
        session_store: Optional[SessionStore] = None,
        presence: Optional[Mapping[str, Any]] = None,
        large_threshold: Optional[int] = None,
        properties: Optional[Mapping[str, str]] = None,
        trusted_hosts: Optional[Sequence[str]] = None,
        ssl_context: Optional[Any] = None,
        proxy: Optional[str] = None,
        trust_env: bool = False,
        **_private: Any,
    ) -> None:
        self._token = _check_token(token)
        register_secret(self._token)
        self._shard_count_arg = _check_shard_count(shard_count)
        if self._shard_count_arg == "auto":
            if shard_ids is not None:
                raise ConfigError("shard_ids needs an explicit shard_count (ids only mean something for one count)")
            self._shard_ids: Optional[Tuple[int, ...]] = None
        else:
            self._shard_ids = _check_shard_ids(shard_ids, int(self._shard_count_arg))
        if max_concurrency is not None and (
            isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1
        ):
            raise ConfigError(f"max_concurrency must be None or an int >= 1, got {max_concurrency!r}")
        self._max_concurrency_arg = max_concurrency
        if identify_gate is not None and not isinstance(identify_gate, IdentifyGate):
            raise ConfigError("identify_gate must be an IdentifyGate (e.g. sync_gateway.FileIdentifyGate(path))")
        if session_store is not None and not isinstance(session_store, SessionStore):
            raise ConfigError("session_store must be a SessionStore (e.g. sync_gateway.FileSessionStore(path))")
        unknown = set(_private) - {"_connection_factory", "_rng"}
        if unknown:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
        self._gate_arg = identify_gate
        self._store = session_store
        self._gateway_url = gateway_url
        self._api_base_given = api_base is not None
        self._api_base = api_base if api_base is not None else DEFAULT_API_BASE
        # Everything a shard's GatewayClient takes; building a throwaway client now checks it all
        # (intents, URLs, compress, config, presence...) before any I/O, as the constructor must.
        self._shard_kwargs: Dict[str, Any] = dict(
            intents=intents,
            api_base=api_base,
            compress=compress,
            config=config,
            session_store=session_store,
            presence=presence,
            large_threshold=large_threshold,
            properties=properties,
            trusted_hosts=trusted_hosts,
            ssl_context=ssl_context,
            proxy=proxy,
            trust_env=trust_env,
            **_private,
        )
        probe = GatewayClient(self._token, gateway_url=gateway_url, **self._shard_kwargs)
        self._template = probe  # never started: it checked the options, and lends its REST client
        self.intents = probe.intents
        self.config = probe.config
        self._registry = Registry()
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._started = False
        self._closed = False
        self._clients: Dict[int, GatewayClient] = {}
        self._shard_count: Optional[int] = None if self._shard_count_arg == "auto" else int(self._shard_count_arg)
        self._max_concurrency: Optional[int] = None
        self._start_order: Optional[_StartOrder] = None
        #: the ``GET /gateway/bot`` answer, when start() asked for it
        self.gateway_info: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"<ShardedClient shards={list(self._shard_ids) if self._shard_ids else 'auto'} of {self._shard_count} state={self.status().state}>"

    def __enter__(self) -> "ShardedClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ inspection of the plan

    @property
    def shard_count(self) -> Optional[int]:
        """The total shard count (None before start() when it is "auto")."""
        return self._shard_count

    @property
    def shard_ids(self) -> Optional[Tuple[int, ...]]:
        """The shards this client runs, ascending (None before start() when the count is "auto")."""
        return self._shard_ids

    @property
    def max_concurrency(self) -> Optional[int]:
        """IDENTIFY buckets per 5 s (known after start())."""
        return self._max_concurrency

    @property
    def clients(self) -> Mapping[int, GatewayClient]:
        """shard_id -> its GatewayClient (after start()), read-only."""
        return types.MappingProxyType(dict(self._clients))

    def shard_for_guild(self, guild_id: Union[int, str]) -> int:
        """``(guild_id >> 22) % shard_count``: the shard that receives this guild's events."""
        if self._shard_count is None:
            raise RuntimeError("shard_count is 'auto' and not known before start()")
        return shard_for_guild(guild_id, self._shard_count)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Discover (one ``GET /gateway/bot`` unless ``gateway_url``, ``shard_count`` and
        ``max_concurrency`` are all given), then start every shard in shard order and return.
        Raises what discovery raises, or ConfigError when ``shard_ids`` do not fit the count."""
        with self._lock:
            if self._started:
                raise RuntimeError("this ShardedClient was already started; create a new one to connect again")
            if self._closed:
                raise RuntimeError("this ShardedClient was closed; create a new one")
            self._started = True
        started: List[GatewayClient] = []
        try:
            url, count, mc, limit = self._discover()
            ids = self._shard_ids if self._shard_ids is not None else _check_shard_ids(None, count)
            gate = (self._gate_arg or _process_gate(self._token, url)).for_bot(bot_id_from_token(self._token))
            if limit is not None:
                gate.update_session_start_limit(limit)
            order = _StartOrder(gate, self._first_identifies(ids, count, mc), self._shard_gone)
            clients = {
                sid: GatewayClient(
                    self._token,
                    gateway_url=url,
                    shard=(sid, count),
                    identify_gate=order,
                    _registry=self._registry,
                    _max_concurrency=mc,
                    _limit_known=True,
                    **self._shard_kwargs,
                )
                for sid in ids
            }
            with self._lock:
                self._shard_count, self._shard_ids, self._max_concurrency = count, ids, mc
                self._clients = clients
                self._start_order = order
            log.info("starting %d shard(s) %s of %d (max_concurrency %d)", len(ids), _ranges(ids), count, mc)
            for sid in ids:
                with self._lock:
                    if self._closed:
                        break
                try:
                    clients[sid].start()
                except RuntimeError:
                    if self._closed:  # close() from another thread won the race: stop starting
                        break
                    raise
                started.append(clients[sid])
        except BaseException:
            for client in started:
                client.close(timeout=2.0)
            with self._lock:
                self._clients = {}
                self._started = False
            raise

    def _discover(self) -> Tuple[str, int, int, Optional[Dict[str, Any]]]:
        """(gateway url, shard count, max_concurrency, session_start_limit or None)."""
        count_arg, mc_arg = self._shard_count_arg, self._max_concurrency_arg
        if self._gateway_url is not None and count_arg != "auto":
            limit = self._read_session_limit()
            found = limit.get("max_concurrency") if limit else None
            mc = mc_arg or (found if isinstance(found, int) and not isinstance(found, bool) and found >= 1 else 1)
            return self._gateway_url, int(count_arg), mc, limit
        from .rest import RestClient

        with RestClient(self._token, self._api_base, max_retries=3, retry_base=0.25, retry_max=2.0) as rest:
            info = rest.get_gateway_bot()
        self.gateway_info = dict(info)
        url = self._gateway_url or info["url"]
        if count_arg == "auto":
            shards = info.get("shards")
            if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
                raise GatewayError(f"GET /gateway/bot recommended no usable shard count ({shards!r})")
            count = shards
        else:
            count = int(count_arg)
        limit = info.get("session_start_limit")
        limit = dict(limit) if isinstance(limit, Mapping) else None
        found = limit.get("max_concurrency") if limit else None
        mc = mc_arg or (found if isinstance(found, int) and not isinstance(found, bool) and found >= 1 else 1)
        return url, count, mc, limit

    def _read_session_limit(self) -> Optional[Dict[str, Any]]:
        """The daily session-start limit, also when ``gateway_url`` and the count were given (see
        ``GatewayClient``: from ``api_base`` if given, from Discord unless the gateway is loopback)."""
        base = limit_source(self._gateway_url, self._api_base if self._api_base_given else None)
        if base is None:
            return None
        from .client import LIMIT_LOOKUP_TIMEOUT
        from .rest import RestClient

        try:
            with RestClient(self._token, base, timeout=LIMIT_LOOKUP_TIMEOUT, max_retries=0) as rest:
                info = rest.get_gateway_bot()
        except AuthenticationError:
            raise
        except GatewayError as exc:
            log.warning("could not read the daily session-start limit from %s (%s); connecting without it",
                        urlsplit(base).hostname, exc)
            return None
        self.gateway_info = dict(info)
        limit = info.get("session_start_limit")
        return dict(limit) if isinstance(limit, Mapping) else None

    def _first_identifies(self, ids: Sequence[int], count: int, mc: int) -> Dict[int, int]:
        """shard -> the shard whose first IDENTIFY comes just before it in its bucket. Shards that
        will RESUME a stored session do not IDENTIFY first and take no place in the order."""
        last: Dict[int, int] = {}
        before: Dict[int, int] = {}
        for sid in ids:
            if self._store is not None:
                try:
                    if self._store.load_fresh(session_key(self._token, sid, count)) is not None:
                        continue
                except Exception as exc:  # the client's own load will report it
                    log.debug("shard %d: session store load failed: %s", sid, exc)
            bucket = sid % mc
            if bucket in last:
                before[sid] = last[bucket]
            last[bucket] = sid
        return before

    def _shard_gone(self, shard_id: int) -> bool:
        client = self._clients.get(shard_id)
        if client is None:
            return True
        state = client.status().state
        return state in ("closing", "closed", "failed") or (state in ("resuming", "ready") and client.status().identifies == 0)

    def wait_until_ready(self, timeout: Optional[float] = None) -> bool:
        """Block until every shard is READY/RESUMED (True), or *timeout* passes / a shard stops (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        clients = list(self._clients.values())
        if not clients:
            return False
        for client in clients:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not client.wait_until_ready(remaining):
                return False
        return True

    def run_forever(self) -> None:
        """Start if needed and block until the client is closed or a shard stops.

        When a shard stops on its own (a fatal close such as 4004/4014, or ``max_attempts`` used
        up), every other shard is closed and that shard's error is raised. Ctrl-C closes every
        shard (code 1000) and re-raises KeyboardInterrupt.
        """
        if not self._started:
            self.start()
        try:
            failed = None
            while failed is None and not self._closed:
                for sid, client in sorted(self._clients.items()):
                    if client.stopped():
                        failed = client
                        break
                else:
                    self._wake.wait(0.2)  # short slices: KeyboardInterrupt arrives promptly
        except KeyboardInterrupt:
            self.close()
            raise
        error = None
        if failed is not None:
            # the first fatal error: of every shard stopped by now, the lowest with an error
            for sid, client in sorted(self._clients.items()):
                error = client.stop_error()
                if error is not None:
                    break
            if error is not None:
                log.error("shard %d stopped (%s); closing the other shards", failed.shard_id, error)
        self.close()
        if error is not None:
            raise error

    def close(self, timeout: float = 10.0, keep_session: bool = False) -> None:
        """Close every shard in parallel and join their threads, within *timeout* seconds in all.

        ``keep_session=True`` closes with 4000 and keeps each shard's session in the
        ``session_store``, so the next start RESUMEs them. Idempotent; safe from any thread,
        including a handler (that shard's dispatcher thread is not joined).
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigError("timeout must be a number of seconds >= 0")
        if not isinstance(keep_session, bool):
            raise TypeError("keep_session must be a bool")
        with self._lock:
            self._closed = True
            clients = list(self._clients.values())
        self._wake.set()
        if not clients:
            return
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        inline: List[GatewayClient] = []
        helpers: List[threading.Thread] = []
        for client in clients:
            if client.runs_on(current):
                inline.append(client)  # called from this shard's own thread: close it here, last
                continue
            t = threading.Thread(
                target=_close_quietly,
                args=(client, timeout, keep_session),
                name=f"sync_gateway-close-s{client.shard_id}",
                daemon=True,
            )
            t.start()
            helpers.append(t)
        for t in helpers:
            t.join(max(0.0, deadline - time.monotonic()))
        for client in inline:
            client.close(max(0.0, deadline - time.monotonic()), keep_session=keep_session)
        if any(t.is_alive() for t in helpers):
            log.warning("close() timed out after %.1fs; shards left to finish as daemons", timeout)

    def reconnect(self, fresh: bool = False, shard_id: Optional[int] = None) -> None:
        """Ask one shard (or every shard, with ``shard_id=None``) to reconnect; see
        :meth:`GatewayClient.reconnect`. Returns at once."""
        for client in self._targets(shard_id):
            client.reconnect(fresh=fresh)

    def _targets(self, shard_id: Optional[int]) -> List[GatewayClient]:
        if not self._clients:
            raise RuntimeError("the client is not started")
        if shard_id is None:
            return [c for _, c in sorted(self._clients.items())]
        client = self._clients.get(shard_id) if isinstance(shard_id, int) and not isinstance(shard_id, bool) else None
        if client is None:
            raise ValueError(f"shard {shard_id!r} is not one of this client's shards {list(self._clients)}")
        return [client]

    # ------------------------------------------------------------------ sending

    def send(self, op: int, d: Any, *, timeout: Optional[float] = None, shard_id: Optional[int] = None) -> None:
        """Send a gateway command on every shard (or on *shard_id*), in shard order; *timeout*
        bounds the whole call. Raises like :meth:`GatewayClient.send`; on a timeout the shards
        before the one that timed out have sent it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for client in self._targets(shard_id):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            client.send(op, d, timeout=remaining)

    def update_presence(
        self,
        status: str = "online",
        activities: Sequence[Mapping[str, Any]] = (),
        afk: bool = False,
        since: Optional[int] = None,
        *,
        timeout: Optional[float] = None,
    ) -> None:
        """Op 3 on every shard; also the presence of later IDENTIFYs."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for client in self._targets(None):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            client.update_presence(status, activities, afk, since, timeout=remaining)

    def request_guild_members(
        self,
        guild_id: Union[int, str],
        query: str = "",
        limit: int = 0,
        user_ids: Optional[Union[int, str, Sequence[Union[int, str]]]] = None,
        presences: bool = False,
        nonce: Optional[str] = None,
        *,
        timeout: Optional[float] = None,
    ) -> None:
        """Op 8 on the guild's shard (``shard_for_guild``); ValueError if this client does not run it."""
        sid = self.shard_for_guild(guild_id)
        client = self._clients.get(sid)
        if client is None:
            raise ValueError(f"guild {guild_id} is on shard {sid}, which this client does not run")
        client.request_guild_members(guild_id, query, limit, user_ids, presences, nonce, timeout=timeout)

    # ------------------------------------------------------------------ inspection

    def status(self) -> ShardedStatus:
        clients = sorted(self._clients.items())
        shards = {sid: c.status() for sid, c in clients}
        states = [s.state for s in shards.values()]
        if not shards:
            state = "closed" if self._closed else "idle"
        elif "failed" in states:
            state = "failed"
        elif all(s == "ready" for s in states):
            state = "ready"
        elif all(s == "closed" for s in states):
            state = "closed"
        else:
            state = "connecting"
        latencies = [s.latency for s in shards.values() if s.latency is not None]
        waiting = [f"shard {sid}: {s.identify_wait}" for sid, s in shards.items() if s.identify_wait]
        return ShardedStatus(
            state=state,
            shard_count=self._shard_count,
            shards=types.MappingProxyType(shards),
            ready=states.count("ready"),
            identifies=sum(s.identifies for s in shards.values()),
            resumes=sum(s.resumes for s in shards.values()),
            reconnects=sum(s.reconnects for s in shards.values()),
            orphaned_readers=sum(s.orphaned_readers for s in shards.values()),
            latency=max(latencies) if latencies else None,
            identify_wait=waiting[0] if waiting else None,
        )

    @property
    def latency(self) -> Optional[float]:
        return self.status().latency

    @property
    def rest(self) -> "RestClient":
        """A :class:`~sync_gateway.RestClient` with this client's token, ``api_base`` and proxy, made
        on first use (no network until a request). Its rate limits are the process's, shared with
        every other RestClient of the bot. It stays usable after ``close()`` (it has no threads)."""
        return self._template.rest

    def threads(self) -> "list[threading.Thread]":
        """Every thread of every shard that is still alive."""
        out: List[threading.Thread] = []
        for client in self._clients.values():
            out += client.threads()
        return out


def _close_quietly(client: GatewayClient, timeout: float, keep_session: bool) -> None:
    try:
        client.close(timeout, keep_session=keep_session)
    except Exception:  # a bug of ours; the other shards must still close
        log.exception("shard %d: close failed", client.shard_id)


def _ranges(ids: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (for one log line)."""
    out: List[str] = []
    start = prev = None
    for sid in ids:
        if start is None:
            start = prev = sid
        elif sid == prev + 1:  # type: ignore[operator]
            prev = sid
        else:
            out.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = sid
    if start is not None:
        out.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(out)


from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:  # the type of the ``rest`` property; at run time it is imported on first use
    from .rest import RestClient  # noqa: F401
