"""Exception types. Every message here is built without the bot token (invariant 7)."""
from typing import Optional

__all__ = [
    "GatewayError",
    "FatalGatewayError",
    "PayloadTooLarge",
    "ConfigError",
    "HTTPError",
    "AuthenticationError",
    "GatewayUnreachable",
    "SessionStartLimitReached",
    "TooManyInvalidRequests",
]


class GatewayError(Exception):
    """Base class of every error this package raises on purpose."""


class FatalGatewayError(GatewayError):
    """Discord closed with a code that must not be retried (4004, 4010-4014).

    ``code`` is the close code; ``reason`` the text Discord sent (may be empty).
    """

    def __init__(self, code: int, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class PayloadTooLarge(GatewayError, ValueError):
    """An outgoing payload is over Discord's 4096-byte limit; nothing was sent."""

    def __init__(self, size: int, limit: int = 4096) -> None:
        super().__init__(f"payload is {size} bytes encoded, over the gateway limit of {limit}; nothing was sent")
        self.size = size
        self.limit = limit


class ConfigError(GatewayError, ValueError):
    """A bad argument to a constructor or option; raised before any I/O."""


class HTTPError(GatewayError):
    """A REST call answered with an error status."""

    def __init__(self, status: int, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class AuthenticationError(HTTPError):
    """401 from REST: the token is wrong or was reset. Never retried."""


class GatewayUnreachable(GatewayError):
    """The REST API or gateway host could not be reached (DNS, refused, timeout)."""


class SessionStartLimitReached(GatewayError):
    """No IDENTIFY may be sent now without risking a token reset (daily session starts used up)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyInvalidRequests(GatewayError):
    """The REST client refused to send: the bot's invalid requests (401, 403, 429) in the last
    10 minutes are near Discord's limit, past which Cloudflare bans the IP for about an hour.

    ``count`` invalid requests were seen, the refusal starts at ``refuse_at`` (of ``limit``), and
    the oldest leaves the window in ``retry_after`` seconds.
    """

    def __init__(self, message: str, count: int, limit: int, refuse_at: int, retry_after: float) -> None:
        super().__init__(message)
        self.count = count
        self.limit = limit
        self.refuse_at = refuse_at
        self.retry_after = retry_after
