"""sync_gateway: a Discord Gateway client on plain threads, for programs that do not run asyncio.

``start()`` returns at once, ``run_forever()`` blocks, ``close()`` joins every thread. See README.rst.
"""
from ._version import __version__
from .client import GatewayClient
from .errors import (
    AuthenticationError,
    ConfigError,
    FatalGatewayError,
    GatewayError,
    GatewayUnreachable,
    HTTPError,
    PayloadTooLarge,
    SessionStartLimitReached,
    TooManyInvalidRequests,
)
from .intents import Intents
from .protocol import CLOSE_CODES, Dispatch, LifecycleConfig, LifecycleEvent, Op, Session, Status
from .ratelimit import IdentifyGate, MemoryIdentifyGate, Permit, SendWindow
from .ratelimit_rest import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from .rest import RestClient, RestStatus
from .gates import FileIdentifyGate, RedisIdentifyGate
from .sharding import ShardedClient, ShardedStatus, shard_for_guild
from .sinks import RedisStreamSink, StreamDispatch, StreamWorker, consume
from .stores import FileSessionStore, MemorySessionStore, RedisSessionStore, SessionRecord, SessionStore

__all__ = [
    "__version__",
    "GatewayClient",
    "ShardedClient",
    "ShardedStatus",
    "shard_for_guild",
    "Intents",
    "LifecycleConfig",
    "Dispatch",
    "LifecycleEvent",
    "Status",
    "Session",
    "Op",
    "CLOSE_CODES",
    "IdentifyGate",
    "MemoryIdentifyGate",
    "Permit",
    "SendWindow",
    "SessionStore",
    "SessionRecord",
    "MemorySessionStore",
    "FileSessionStore",
    "RedisSessionStore",
    "FileIdentifyGate",
    "RedisIdentifyGate",
    "RedisStreamSink",
    "StreamWorker",
    "StreamDispatch",
    "consume",
    "GatewayError",
    "FatalGatewayError",
    "PayloadTooLarge",
    "ConfigError",
    "HTTPError",
    "AuthenticationError",
    "GatewayUnreachable",
    "SessionStartLimitReached",
    "TooManyInvalidRequests",
    "RestClient",
    "RestStatus",
    "RateLimiter",
    "MemoryRateLimiter",
    "RedisRateLimiter",
]
