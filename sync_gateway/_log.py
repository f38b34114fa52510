"""Loggers of the ``sync_gateway`` tree with the bot token redacted from every record.

Logger filters are not inherited by child loggers, so every module gets its logger from
:func:`get_logger`, which attaches the one shared :class:`RedactingFilter`. The token should never be
put into a log call in the first place; this is the second line of defence (invariant 7).
"""
import logging
import threading
from typing import Iterable, Set

REDACTED = "<redacted>"

_secrets: Set[str] = set()
_lock = threading.Lock()


def register_secret(secret: str) -> None:
    """Remember a secret so that it is scrubbed from every record of our loggers."""
    if secret and len(secret) >= 8:
        with _lock:
            _secrets.add(secret)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """Return *text* with every registered secret (and *extra*) replaced by ``<redacted>``."""
    with _lock:
        secrets = list(_secrets)
    for s in list(extra) + secrets:
        if s and s in text:
            text = text.replace(s, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """Formats the record's message now and scrubs secrets from it and from its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error path
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
