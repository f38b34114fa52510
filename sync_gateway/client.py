"""GatewayClient: the public face of one shard. Wiring and argument checking; no lifecycle logic.

``start()`` returns at once, ``run_forever()`` blocks (UX.md rule 1). The constructor has no side
effects. Every public method is safe from any thread, including from inside a handler.
"""
import hashlib
import ipaddress
import os
import random
import ssl
import threading
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

from . import codec, protocol
from ._log import get_logger, register_secret
from .dispatch import Dispatcher, HandlerMethods, Registry
from .connection import Proxy
from .errors import AuthenticationError, ConfigError, GatewayError, PayloadTooLarge
from .intents import Intents
from .protocol import Dispatch, LifecycleConfig, LifecycleEvent, Op, ShardMachine, State, Status
from .ratelimit import IdentifyGate, MemoryIdentifyGate, bot_id_from_token
from .stores import SessionStore, session_key
from .supervisor import ConnectionFactory, Supervisor

log = get_logger(__name__)


DEFAULT_API_BASE = "https://discord.com/api/v10"

_shared_gates: Dict[str, MemoryIdentifyGate] = {}
_shared_gate_lock = threading.Lock()

#: Seconds ``start()`` may spend asking for the daily session-start limit when ``gateway_url`` was
#: given (a failure is said once and the client connects without it).
LIMIT_LOOKUP_TIMEOUT = 3.0
# close(timeout) with a session store keeps this share of its timeout (at most the second figure)
# for the final save when a handler outlives the rest.
FINAL_SAVE_SHARE = 0.2
FINAL_SAVE_SHARE_MAX = 1.0


def is_loopback_url(url: str) -> bool:
    """True for a URL on this machine (127.0.0.0/8, ::1, localhost): a test server, not Discord."""
    host = (urlsplit(url).hostname or "").strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _process_gate(token: str, gateway_url: Optional[str] = None) -> MemoryIdentifyGate:
    """Clients of one bot in one process share an IDENTIFY gate unless given one (the limit is per bot).

    Clients pointed at a loopback test server (a FakeGateway) share one per server instead: each
    test's brand-new fake is a gateway of its own, and its clients never wait for another's bucket.
    """
    key = hashlib.sha256(token.encode("utf-8")).hexdigest()
    if gateway_url is not None and is_loopback_url(gateway_url):
        parts = urlsplit(gateway_url)
        key += f"@{parts.hostname}:{parts.port}"
    with _shared_gate_lock:
        gate = _shared_gates.get(key)
        if gate is None:
            gate = _shared_gates[key] = MemoryIdentifyGate()
        return gate


def _check_token(token: Any) -> str:
    if not isinstance(token, str):
        raise ConfigError(f"token must be a str, got {type(token).__name__}")
    token = token.strip()
    if token.lower().startswith("bot "):
        token = token[4:].strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError("token must be a non-empty bot token without spaces (copy it from Developer Portal -> Bot)")
    return str(token)


class GatewayClient(HandlerMethods):
    """A Discord Gateway connection for one shard, on plain threads.

    >>> client = GatewayClient(token, intents=Intents.DEFAULT)
    >>> @client.on("MESSAGE_CREATE")
    ... def on_message(event): handle(event.data["content"])
    >>> client.run_forever()
    """

    def __init__(
        self,
        token: str,
        intents: Union[Intents, int] = Intents.DEFAULT,
        *,
        gateway_url: Optional[str] = None,
        api_base: Optional[str] = None,
        compress: Optional[str] = "zlib-stream",
        shard: Optional[Tuple[int, int]] = None,
        presence: Optional[Mapping[str, Any]] = None,
        large_threshold: Optional[int] = None,
        properties: Optional[Mapping[str, str]] = None,
        config: Optional[LifecycleConfig] = None,
        identify_gate: Optional[IdentifyGate] = None,
        session_store: Optional[SessionStore] = None,
        trusted_hosts: Optional[Sequence[str]] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        proxy: Optional[str] = None,
        trust_env: bool = False,
        _connection_factory: Optional[ConnectionFactory] = None,
        _rng: Optional[random.Random] = None,
        _registry: Optional[Registry] = None,
        _max_concurrency: Optional[int] = None,
        _limit_known: bool = False,
    ) -> None:
        self._token = _check_token(token)
        register_secret(self._token)
        if isinstance(intents, bool) or not isinstance(intents, int):
            raise ConfigError(f"intents must be sync_gateway.Intents or an int, got {type(intents).__name__}")
        if intents < 0 or intents & ~int(Intents.ALL):
            raise ConfigError(f"intents {int(intents)} has bits Discord does not define (valid mask {int(Intents.ALL)})")
        self.intents = Intents(int(intents))
        if gateway_url is not None:
            if not isinstance(gateway_url, str):
                raise ConfigError(f"gateway_url must be a str, got {type(gateway_url).__name__}")
            protocol.gateway_query_url(gateway_url, None)  # validates scheme and host
        self._api_base_given = api_base is not None
        if api_base is None:
            api_base = DEFAULT_API_BASE
        if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
            raise ConfigError("api_base must be an http(s) URL")
        self._gateway_url = gateway_url
        self._api_base = api_base.rstrip("/")
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise ConfigError(f"ssl_context must be an ssl.SSLContext, got {type(ssl_context).__name__}")
        if not isinstance(trust_env, bool):
            raise ConfigError("trust_env must be a bool")
        self._proxy = resolve_proxy(proxy, trust_env, gateway_url or "wss://gateway.discord.gg/")
        self._connection_options: Dict[str, Any] = {"ssl_context": ssl_context, "proxy": self._proxy}
        self._limit_known = _limit_known
        self._compress = codec.check_compress(compress)
        if shard is not None:
            if (
                not isinstance(shard, (tuple, list))
                or len(shard) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
                or not 0 <= shard[0] < shard[1]
            ):
                raise ConfigError("shard must be (shard_id, shard_count) with 0 <= shard_id < shard_count")
            shard = (int(shard[0]), int(shard[1]))
        self._shard = shard
        self.shard_id = shard[0] if shard else 0
        if presence is not None:
            if not isinstance(presence, Mapping):
                raise ConfigError("presence must be a dict like {'status': 'online', 'activities': [...]} ")
            presence = protocol.presence(**presence)
        self._presence = presence
        if large_threshold is not None and (
            isinstance(large_threshold, bool) or not isinstance(large_threshold, int) or not 50 <= large_threshold <= 250
        ):
            raise ConfigError("large_threshold must be an int from 50 to 250")
        self._large_threshold = large_threshold
        if properties is not None and (
            not isinstance(properties, Mapping) or not all(isinstance(v, str) for v in properties.values())
        ):
            raise ConfigError("properties must be a dict of str, like {'os': 'linux', 'browser': 'x', 'device': 'x'}")
        self._properties = dict(properties) if properties else None
        if config is None:
            config = LifecycleConfig()
        elif not isinstance(config, LifecycleConfig):
            raise ConfigError(f"config must be a sync_gateway.LifecycleConfig, got {type(config).__name__}")
        self.config = config
        if identify_gate is not None and not isinstance(identify_gate, IdentifyGate):
            raise ConfigError("identify_gate must be an IdentifyGate (e.g. sync_gateway.MemoryIdentifyGate())")
        self._gate = identify_gate
        if session_store is not None and not isinstance(session_store, SessionStore):
            raise ConfigError("session_store must be a SessionStore (e.g. sync_gateway.FileSessionStore(path))")
        self._store = session_store
        if trusted_hosts is not None and (
            isinstance(trusted_hosts, str) or not all(isinstance(h, str) and h for h in trusted_hosts)
        ):
            raise ConfigError("trusted_hosts must be a list of host names (entries like '*.discord.gg' allowed)")
        self._trusted_hosts = tuple(trusted_hosts) if trusted_hosts is not None else None
        self._connection_factory = _connection_factory
        self._rng = _rng

        self._registry = _registry if _registry is not None else Registry()
        self._lock = threading.RLock()
        self._started = False
        self._closed = False
        self._supervisor: Optional[Supervisor] = None
        self._dispatcher: Optional[Dispatcher] = None
        self._max_concurrency = _max_concurrency or 1
        self.gateway_info: Optional[Dict[str, Any]] = None
        self._starting: Optional[Any] = None  # the REST client of a discovery in progress
        self._bound_gate: Optional[IdentifyGate] = None
        # Invariant 8: IDENTIFY itself must fit in 4096 bytes (presence, properties and all).
        size = len(codec.encode(self._identify_payload()).encode("utf-8"))
        if size > protocol.MAX_PAYLOAD_BYTES:
            raise ConfigError(
                f"IDENTIFY would be {size} bytes, over Discord's {protocol.MAX_PAYLOAD_BYTES}: "
                "shorten presence (activities) or properties"
            )

    def __repr__(self) -> str:
        state = self._supervisor.status().state if self._supervisor else ("closed" if self._closed else "idle")
        return f"<GatewayClient shard={self.shard_id} intents={int(self.intents)} state={state}>"

    def __enter__(self) -> "GatewayClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background and return at once. Raises if already started.

        REST discovery (``GET /gateway/bot``, when no ``gateway_url`` was given) happens here, so a
        bad token or an unreachable API raises from ``start()`` with no thread left behind. A
        ``close()`` from another thread while this runs wins: nothing connects afterwards.
        """
        with self._lock:
            if self._started:
                raise RuntimeError("this GatewayClient was already started; create a new one to connect again")
            if self._closed:
                raise RuntimeError("this GatewayClient was closed; create a new one")
            self._started = True
        try:
            url = self._discover()
            bootstrap = protocol.gateway_query_url(url, self._compress)
            trusted = self._trusted_hosts or (protocol.url_host(bootstrap), "*.discord.gg")
            machine = ShardMachine(
                bootstrap,
                config=self.config,
                shard_id=self.shard_id,
                intents=int(self.intents),
                rng=self._rng,
                trusted_hosts=trusted,
            )
            dispatcher = Dispatcher(self._registry, name=f"sync_gateway-dispatch-s{self.shard_id}")
            supervisor = Supervisor(
                machine,
                dispatcher,
                identify=self._identify_payload,
                token=self._token,
                compress=self._compress,
                gate=self._identify_gate(),
                max_concurrency=self._max_concurrency,
                connection_factory=self._connection_factory,
                store=self._store,
                store_key=session_key(self._token, self.shard_id, self._shard[1] if self._shard else 1),
                shard=self._shard,
                connection_options=self._connection_options,
            )
            dispatcher.on_drained = supervisor.final_persist
            if self._store is not None:
                record = self._store.load_fresh(supervisor._store_key)
                if record is not None:
                    log.info("shard %d: resuming stored session %s (seq %s)", self.shard_id, record.session_id, record.seq)
                    supervisor.preload(record)
        except BaseException:
            with self._lock:
                self._started = False
                closed = self._closed
            if closed:  # close() during discovery: its interruption is not an error of start()
                log.debug("shard %d: closed during start(); not connecting", self.shard_id)
                return
            raise
        if self._registry.has("MESSAGE_CREATE") and not self.intents & Intents.MESSAGE_CONTENT:
            log.info(
                "a MESSAGE_CREATE handler is registered without Intents.MESSAGE_CONTENT: message content "
                "will be empty except in DMs and messages mentioning the bot"
            )
        with self._lock:
            # close() may have run while discovery was in flight: then nothing connects.
            if self._closed:
                log.debug("shard %d: closed during start(); not connecting", self.shard_id)
                return
            self._dispatcher = dispatcher
            self._supervisor = supervisor
            dispatcher.start()
            supervisor.start()

    def _identify_gate(self) -> IdentifyGate:
        if self._bound_gate is None:
            gate = self._gate or _process_gate(self._token, self._gateway_url)
            self._bound_gate = gate.for_bot(bot_id_from_token(self._token))
        return self._bound_gate

    def _rest(self, api_base: str, **kwargs: Any) -> Any:
        from .rest import RestClient

        return RestClient(self._token, api_base, proxies=self._rest_proxies(), **kwargs)

    def _rest_proxies(self) -> Optional[Dict[str, str]]:
        return {"http": self._proxy.url, "https": self._proxy.url} if self._proxy is not None else None

    def _ask_gateway_bot(self, api_base: str, **kwargs: Any) -> Mapping[str, Any]:
        """``GET /gateway/bot``, interruptible by a ``close()`` from another thread."""
        with self._rest(api_base, **kwargs) as rest:
            with self._lock:
                if self._closed:
                    raise GatewayError("closed during start()")
                self._starting = rest
            try:
                info: Mapping[str, Any] = rest.get_gateway_bot()
                return info
            finally:
                with self._lock:
                    self._starting = None

    def _discover(self) -> str:
        if self._gateway_url is not None:
            self._read_session_limit()
            return self._gateway_url
        info = self._ask_gateway_bot(self._api_base, max_retries=3, retry_base=0.25, retry_max=2.0)
        if not isinstance(info, Mapping) or not isinstance(info.get("url"), str):
            raise GatewayError("GET /gateway/bot answered without a gateway url")
        self._apply_gateway_info(info)
        return str(info["url"])

    def _apply_gateway_info(self, info: Mapping[str, Any]) -> None:
        self.gateway_info = dict(info)
        limit = info.get("session_start_limit")
        if isinstance(limit, Mapping):
            mc = limit.get("max_concurrency")
            if isinstance(mc, int) and mc >= 1:
                self._max_concurrency = mc
            self._identify_gate().update_session_start_limit(dict(limit))

    def _read_session_limit(self) -> None:
        """With ``gateway_url`` given, the daily session-start limit still decides whether an
        IDENTIFY may go (past it Discord resets the token): it is read from ``api_base`` when one
        was given, and from Discord when the gateway is not a loopback test server. A failure is
        said once and costs at most ``LIMIT_LOOKUP_TIMEOUT`` seconds."""
        base = limit_source(self._gateway_url, self._api_base if self._api_base_given else None, self._limit_known)
        if base is None:
            return
        try:
            info = self._ask_gateway_bot(base, timeout=LIMIT_LOOKUP_TIMEOUT, max_retries=0)
        except AuthenticationError:
            raise
        except GatewayError as exc:
            if self._closed:
                raise
            log.warning(
                "shard %d: could not read the daily session-start limit from %s (%s); connecting without it",
                self.shard_id, urlsplit(base).hostname, exc,
            )
            return
        if isinstance(info, Mapping):
            self._apply_gateway_info(info)

    def _identify_payload(self) -> Dict[str, Any]:
        return protocol.identify(
            self._token,
            int(self.intents),
            properties=self._properties,
            shard=self._shard,
            presence=self._presence,
            large_threshold=self._large_threshold,
        )

    def wait_until_ready(self, timeout: Optional[float] = None) -> bool:
        """Block until the session is READY/RESUMED (True), the client stops, or *timeout* (False)."""
        sup = self._supervisor
        if sup is None:
            return False
        deadline = None if timeout is None else time.monotonic() + timeout
        with sup.state_changed:
            while True:
                if sup.machine.phase.value == "ready":
                    return True
                if sup.stopped.is_set():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                sup.state_changed.wait(0.25 if remaining is None else min(remaining, 0.25))

    def run_forever(self) -> None:
        """Start if needed and block until the client is closed.

        Raises :class:`FatalGatewayError` after a fatal close (4004, 4010-4014), or
        :class:`GatewayError` when ``max_attempts`` ran out. Ctrl-C closes the client (code 1000)
        and re-raises KeyboardInterrupt.
        """
        if not self._started:
            self.start()
        sup = self._supervisor
        if sup is None:  # close() won a race with start()
            return
        try:
            while not sup.stopped.wait(0.2):  # short slices: KeyboardInterrupt arrives promptly
                pass
        except KeyboardInterrupt:
            self.close()
            raise
        self.close()
        if sup.error is not None:
            raise sup.error

    def close(self, timeout: float = 10.0, keep_session: bool = False) -> None:
        """Close with code 1000 and join every thread, within *timeout* seconds. Idempotent.

        ``keep_session=True`` closes with 4000 instead, so the session stays resumable for a few
        minutes, and saves it to the ``session_store``: the next start RESUMEs it.
        Safe from any thread, including a handler: called on the dispatcher thread it does not
        join that thread, which ends once the handler returns.
        """
        if not isinstance(keep_session, bool):
            raise TypeError("keep_session must be a bool")
        self._close(timeout, 4000 if keep_session else 1000)

    def _close(self, timeout: float, code: int) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ConfigError("timeout must be a number of seconds >= 0")
        with self._lock:
            self._closed = True
            sup, disp, starting = self._supervisor, self._dispatcher, self._starting
        if starting is not None:
            starting.close()  # interrupts a discovery in flight; start() then connects nothing
        if sup is None or disp is None:
            return
        deadline = time.monotonic() + timeout
        # With a session store, the last slice of the timeout is kept for the final save in case a
        # handler is still running when the handlers' share runs out.
        save_share = min(FINAL_SAVE_SHARE_MAX, timeout * FINAL_SAVE_SHARE) if sup.has_store else 0.0
        current = threading.current_thread()
        if not sup.stopped.is_set():
            sup.post(("stop", code, max(0.0, timeout * 0.8)))
        if current is not sup.thread:
            sup.thread.join(max(0.0, deadline - time.monotonic()))
        if current is not disp.thread and disp.thread.is_alive():
            disp.thread.join(max(0.0, deadline - save_share - time.monotonic()))
            if disp.thread.is_alive():
                # Once close() returns no handler call starts; one still running is named.
                disp.halt()
                running = disp.current
                if running is not None:
                    log.warning(
                        "close() returns after %.1fs while handler %s still runs on %s (for %.1fs); "
                        "no later handler will start",
                        timeout, running[0], running[1], time.monotonic() - running[2],
                    )
                    # Save the session as handled so far, within what is left of the timeout.
                    # (Stuck in a session-store write instead, the dispatcher finishes that save
                    # itself: never wait on it here.)
                    if not sup.final_persist_within(deadline - time.monotonic()):
                        log.warning("close(): the session store is slow; the final save of the "
                                    "session finishes in the background")
        if sup.thread.is_alive() and current is not sup.thread:
            log.warning("close() timed out after %.1fs; threads left to finish as daemons", timeout)

    def reconnect(self, fresh: bool = False) -> None:
        """Ask for a reconnect. ``fresh=True`` drops the session first and IDENTIFYs anew (never a
        RESUME of the old session); otherwise the session is resumed. Returns at once."""
        if not isinstance(fresh, bool):
            raise TypeError("fresh must be a bool")
        sup = self._supervisor
        if sup is None:
            raise RuntimeError("the client is not started")
        sup.post(("reconnect", fresh, "forced-fresh" if fresh else "forced"))

    # ------------------------------------------------------------------ sending

    def send(self, op: int, d: Any, *, timeout: Optional[float] = None) -> None:
        """Send a gateway command. Blocks while the session is not READY/RESUMED (reconnecting) and
        while the 120-per-60-s send window is full; raises ``TimeoutError`` after *timeout* seconds,
        :class:`PayloadTooLarge` (nothing sent) for more than 4096 encoded bytes."""
        if isinstance(op, bool) or not isinstance(op, int):
            raise TypeError(f"op must be an int, got {type(op).__name__}")
        if op in protocol.SUPERVISOR_OPS:
            raise ValueError(f"op {op} ({Op(op).name}) is sent by the client itself and cannot be sent by hand")
        if op in protocol.RECEIVE_ONLY_OPS:
            raise ValueError(f"op {op} ({Op(op).name}) is only sent by Discord")
        try:
            text = codec.encode({"op": op, "d": d})
        except (TypeError, ValueError) as exc:
            raise TypeError(f"d is not JSON-serialisable: {exc}") from None
        size = len(text.encode("utf-8"))
        if size > protocol.MAX_PAYLOAD_BYTES:
            raise PayloadTooLarge(size, protocol.MAX_PAYLOAD_BYTES)
        sup = self._supervisor
        if sup is None:
            raise RuntimeError("the client is not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            conn = sup.ready_connection
            if conn is None:
                with sup.state_changed:
                    while sup.ready_connection is None:
                        if sup.stopped.is_set() or self._closed:
                            raise GatewayError("the client is closed; nothing was sent")
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            raise TimeoutError("the session was not ready in time; nothing was sent")
                        sup.state_changed.wait(0.25 if remaining is None else min(remaining, 0.25))
                continue
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not conn.window.acquire(priority=False, timeout=remaining, cancel=conn.ended):
                if conn.ended.is_set():
                    continue
                raise TimeoutError("the send window (120 per 60 s) stayed full; nothing was sent")
            if sup.ready_connection is not conn:
                continue
            try:
                conn.send_text(text)
                return
            except Exception as exc:  # the socket died under us; the next one will take it
                log.debug("send on e%d failed (%s); waiting for the next session", conn.epoch, exc)
                continue

    def update_presence(
        self,
        status: str = "online",
        activities: Sequence[Mapping[str, Any]] = (),
        afk: bool = False,
        since: Optional[int] = None,
        *,
        timeout: Optional[float] = None,
    ) -> None:
        """Op 3. Also becomes the presence sent with later IDENTIFYs — only once it was sent: an
        update that is refused (:class:`PayloadTooLarge`, ``TimeoutError``...) changes nothing."""
        d = protocol.presence(status=status, activities=activities, afk=afk, since=since)
        identify = codec.encode(protocol.identify(
            self._token, int(self.intents), properties=self._properties, shard=self._shard, presence=d,
            large_threshold=self._large_threshold,
        ))
        size = len(identify.encode("utf-8"))
        if size > protocol.MAX_PAYLOAD_BYTES:  # every later IDENTIFY would be refused by Discord (4002)
            raise PayloadTooLarge(size, protocol.MAX_PAYLOAD_BYTES)
        self.send(Op.PRESENCE_UPDATE, d, timeout=timeout)
        self._presence = d

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
        """Op 8; answers arrive as ``GUILD_MEMBERS_CHUNK`` dispatches."""
        payload = protocol.request_guild_members(guild_id, query, limit, user_ids, presences, nonce)
        self.send(payload["op"], payload["d"], timeout=timeout)

    # ------------------------------------------------------------------ inspection

    def status(self) -> Status:
        sup = self._supervisor
        if sup is None:
            state: State = "closed" if self._closed else "idle"
            return Status(
                state=state, connected=False, session_id=None, seq=None, resume_url=None, epoch=0, latency=None,
                last_heartbeat_ack_at=None, last_event_at=None, identifies=0, resumes=0, reconnects=0,
                orphaned_readers=0, last_disconnect=None, last_error=None, shard_id=self.shard_id,
            )
        return sup.status()

    @property
    def latency(self) -> Optional[float]:
        return self.status().latency

    def load(self) -> Dict[str, Optional[int]]:
        """What is queued or spent at this instant, for metrics and health checks (status() is the
        lifecycle; this is the pressure): ``dispatch_backlog`` (events waiting for handlers),
        ``reader_paced`` (times so far a reader, more than a batch of events ahead of the
        handlers, waited a few ms for them), ``send_window_used`` / ``send_window_limit`` (frames
        in the ready socket's 120-per-60-s window; None while no socket is ready). Cheap, never
        blocks on I/O, safe from any thread."""
        sup = self._supervisor
        conn = sup.ready_connection if sup is not None else None
        return {
            "dispatch_backlog": sup.dispatcher.backlog() if sup is not None else 0,
            "reader_paced": sup.dispatcher.paced if sup is not None else 0,
            "send_window_used": conn.window.used() if conn is not None else None,
            "send_window_limit": conn.window.limit if conn is not None else None,
        }

    def session_start_info(self) -> Dict[str, Any]:
        """The bot's daily session-start budget as this client's IDENTIFY gate knows it:
        ``{"total", "remaining", "resets_in" (seconds), "max_concurrency"}``, or ``{}`` before it is
        known (``start()`` learns it from ``GET /gateway/bot``). A Redis/File gate reads its shared
        ledger here, so this may do a short bounded I/O; never call it from a handler in a loop."""
        return self._identify_gate().session_start_info()

    @property
    def rest(self) -> "RestClient":
        """A :class:`~sync_gateway.RestClient` with this client's token, ``api_base`` and proxy, made on
        first use (no network until a request). Its rate limits are the process's, shared with
        every other RestClient of the bot. It stays usable after ``close()`` (it has no threads)."""
        from .rest import RestClient

        with self._lock:
            rest = self.__dict__.get("_rest")
            if rest is None:
                rest = self.__dict__["_rest"] = RestClient(self._token, self._api_base, proxies=self._rest_proxies())
            return rest

    def stopped(self) -> bool:
        """True once this client's lifecycle loop has ended: closed, or stopped on its own (a
        fatal close code, ``max_attempts`` used up). A seam for code that watches many clients
        (``ShardedClient``) without reaching into them; never blocks."""
        sup = self._supervisor
        return sup is not None and sup.stopped.is_set()

    def stop_error(self) -> Optional[BaseException]:
        """The error this client stopped with (what :meth:`run_forever` raises), or None: still
        running, closed by the user, or never started."""
        sup = self._supervisor
        return sup.error if sup is not None and sup.stopped.is_set() else None

    def runs_on(self, thread: threading.Thread) -> bool:
        """True if *thread* is this client's supervisor or dispatcher thread (a handler calling
        ``close()`` runs on the latter: whoever closes must not wait on it)."""
        sup = self._supervisor
        return sup is not None and (thread is sup.thread or thread is sup.dispatcher.thread)

    def threads(self) -> "list[threading.Thread]":
        """The threads this client started that are still alive (readers, supervisor, dispatcher)."""
        sup = self._supervisor
        if sup is None:
            return []
        out = [sup.thread, sup.dispatcher.thread] + [c.thread for c in sup.readers() + sup.orphans]
        if sup.saver is not None:
            out.append(sup.saver)
        return [t for t in out if t.is_alive()]


def limit_source(gateway_url: Optional[str], api_base: Optional[str], known: bool = False) -> Optional[str]:
    """Where to read the session-start limit when the gateway URL was given: the ``api_base``
    the user named, else Discord's API unless the gateway is a loopback test server."""
    if known or gateway_url is None:
        return None
    if api_base is not None:
        return api_base
    return None if is_loopback_url(gateway_url) else DEFAULT_API_BASE


def resolve_proxy(proxy: Optional[str], trust_env: bool, target: str) -> Optional[Proxy]:
    """The proxy for *target*: the one given, else (``trust_env=True`` only) ``HTTPS_PROXY`` /
    ``https_proxy`` unless ``NO_PROXY`` covers the host, as requests reads them."""
    if proxy is not None:
        return Proxy(proxy)
    if not trust_env:
        return None
    import requests.utils

    if requests.utils.should_bypass_proxies(target.replace("wss://", "https://", 1).replace("ws://", "http://", 1),
                                            no_proxy=None):
        return None
    scheme = "https" if target.startswith("wss://") else "http"
    found = os.environ.get(f"{scheme}_proxy") or os.environ.get(f"{scheme.upper()}_PROXY")
    return Proxy(found) if found else None


__all__ = ["GatewayClient", "Dispatch", "LifecycleEvent", "Status", "LifecycleConfig"]


from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:  # the type of the ``rest`` property; at run time it is imported on first use
    from .rest import RestClient  # noqa: F401
