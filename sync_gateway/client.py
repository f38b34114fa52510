"""GatewayClient: the public face of one shard. Wiring and argument checking; no lifecycle logic.

``start()`` returns at once, ``run_forever()`` blocks (UX.md rule 1). The constructor has no side
effects. Every public method is safe from any thread, including from inside a handler.
"""
import hashlib
import random
import threading
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from . import codec, protocol
from ._log import get_logger, register_secret
from .dispatch import Dispatcher, HandlerMethods, Registry
from .errors import ConfigError, GatewayError, PayloadTooLarge
from .intents import Intents
from .protocol import Dispatch, LifecycleConfig, LifecycleEvent, Op, ShardMachine, Status
from .ratelimit import IdentifyGate, MemoryIdentifyGate
from .stores import SessionStore, session_key
from .supervisor import ConnectionFactory, Supervisor

log = get_logger(__name__)


DEFAULT_API_BASE = "https://discord.com/api/v10"

_shared_gates: Dict[str, MemoryIdentifyGate] = {}
_shared_gate_lock = threading.Lock()


def _process_gate(token: str) -> MemoryIdentifyGate:
    """Clients of one bot in one process share an IDENTIFY gate unless given one (the limit is per bot)."""
    key = hashlib.sha256(token.encode("utf-8")).hexdigest()
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
    return token


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
        api_base: str = DEFAULT_API_BASE,
        compress: Optional[str] = "zlib-stream",
        shard: Optional[Tuple[int, int]] = None,
        presence: Optional[Mapping[str, Any]] = None,
        large_threshold: Optional[int] = None,
        properties: Optional[Mapping[str, str]] = None,
        config: Optional[LifecycleConfig] = None,
        identify_gate: Optional[IdentifyGate] = None,
        session_store: Optional[SessionStore] = None,
        trusted_hosts: Optional[Sequence[str]] = None,
        _connection_factory: Optional[ConnectionFactory] = None,
        _rng: Optional[random.Random] = None,
        _registry: Optional[Registry] = None,
        _max_concurrency: Optional[int] = None,
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
        if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
            raise ConfigError("api_base must be an http(s) URL")
        self._gateway_url = gateway_url
        self._api_base = api_base.rstrip("/")
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
        bad token or an unreachable API raises from ``start()`` with no thread left behind.
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
                gate=self._gate or _process_gate(self._token),
                max_concurrency=self._max_concurrency,
                connection_factory=self._connection_factory,
                store=self._store,
                store_key=session_key(self._token, self.shard_id, self._shard[1] if self._shard else 1),
                shard=self._shard,
            )
            if self._store is not None:
                record = self._store.load_fresh(supervisor._store_key)
                if record is not None:
                    log.info("shard %d: resuming stored session %s (seq %s)", self.shard_id, record.session_id, record.seq)
                    supervisor.preload(record)
        except BaseException:
            with self._lock:
                self._started = False
            raise
        self._dispatcher = dispatcher
        self._supervisor = supervisor
        if self._registry.has("MESSAGE_CREATE") and not self.intents & Intents.MESSAGE_CONTENT:
            log.info(
                "a MESSAGE_CREATE handler is registered without Intents.MESSAGE_CONTENT: message content "
                "will be empty except in DMs and messages mentioning the bot"
            )
        dispatcher.start()
        supervisor.start()

    def _discover(self) -> str:
        if self._gateway_url is not None:
            return self._gateway_url
        from .rest import RestClient

        with RestClient(self._token, self._api_base, max_retries=3, retry_base=0.25, retry_max=2.0) as rest:
            info = rest.get_gateway_bot()
        if not isinstance(info, Mapping) or not isinstance(info.get("url"), str):
            raise GatewayError("GET /gateway/bot answered without a gateway url")
        self.gateway_info = dict(info)
        limit = info.get("session_start_limit")
        if isinstance(limit, Mapping):
            mc = limit.get("max_concurrency")
            if isinstance(mc, int) and mc >= 1:
                self._max_concurrency = mc
            gate = self._gate or _process_gate(self._token)
            gate.update_session_start_limit(dict(limit))
        return info["url"]

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
        assert sup is not None
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
            sup, disp = self._supervisor, self._dispatcher
        if sup is None or disp is None:
            return
        deadline = time.monotonic() + timeout
        current = threading.current_thread()
        if not sup.stopped.is_set():
            sup.post(("stop", code, max(0.0, timeout * 0.8)))
        if current is not sup.thread:
            sup.thread.join(max(0.0, deadline - time.monotonic()))
        if current is not disp.thread and disp.thread.is_alive():
            disp.thread.join(max(0.0, deadline - time.monotonic()))
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
        """Op 3. Also becomes the presence sent with later IDENTIFYs."""
        d = protocol.presence(status=status, activities=activities, afk=afk, since=since)
        self._presence = d
        self.send(Op.PRESENCE_UPDATE, d, timeout=timeout)

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
            state = "closed" if self._closed else "idle"
            return Status(
                state=state, connected=False, session_id=None, seq=None, resume_url=None, epoch=0, latency=None,
                last_heartbeat_ack_at=None, last_event_at=None, identifies=0, resumes=0, reconnects=0,
                orphaned_readers=0, last_disconnect=None, last_error=None, shard_id=self.shard_id,
            )
        return sup.status()

    @property
    def latency(self) -> Optional[float]:
        return self.status().latency

    @property
    def rest(self) -> "RestClient":
        """A :class:`~sync_gateway.RestClient` with this client's token and ``api_base``, made on
        first use (no network until a request). Its rate limits are the process's, shared with
        every other RestClient of the bot. It stays usable after ``close()`` (it has no threads)."""
        from .rest import RestClient

        with self._lock:
            rest = self.__dict__.get("_rest")
            if rest is None:
                rest = self.__dict__["_rest"] = RestClient(self._token, self._api_base)
            return rest

    def threads(self) -> "list[threading.Thread]":
        """The threads this client started that are still alive (readers, supervisor, dispatcher)."""
        sup = self._supervisor
        if sup is None:
            return []
        out = [sup.thread, sup.dispatcher.thread] + [c.thread for c in sup.readers() + sup.orphans]
        return [t for t in out if t.is_alive()]


__all__ = ["GatewayClient", "Dispatch", "LifecycleEvent", "Status", "LifecycleConfig"]


from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:  # the type of the ``rest`` property; at run time it is imported on first use
    from .rest import RestClient  # noqa: F401
