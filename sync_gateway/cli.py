"""The ``sync-gateway`` command (also ``python -m sync_gateway``).

Subcommands::

    sync-gateway demo [--seconds N] [--json]
    sync-gateway tail [--intents NAMES] [--json] [-q] [--token-file PATH] [--gateway-url URL]
                      [--api-base URL] [--timeout S] [--compress KIND] [--max-attempts N]
    sync-gateway probe [--json] [--token-file PATH] [--api-base URL] [--timeout S]
    sync-gateway fake-gateway [--host H] [--port P] [--rate N] [--chaos] [--every S] [--token T]
                              [--heartbeat-interval MS] [--allow-remote]
    sync-gateway send CHANNEL_ID TEXT [--json] [--token-file PATH] [--api-base URL] [--timeout S]

``-v`` shows the library's INFO lines on stderr (one line per routine reconnect, with its reason),
``-vv`` DEBUG; by default only WARNINGs and errors are shown. The bot token comes from the
``DISCORD_TOKEN`` environment variable or ``--token-file PATH`` (``-`` reads it from stdin). There
is deliberately no ``--token`` option for a real token: a command line is visible to every user of
the machine (``ps``) and lands in shell history, so ``--token`` is refused with that reason.

Secrets: the token is never printed, logged or put in an error message. Every message this command
writes goes through :func:`redact`, which removes the known secrets (``DISCORD_TOKEN``, the token
file's contents) and anything shaped like a Discord token; argument errors never echo a value that
argparse could not place, and no option can be abbreviated (``--tok`` is not ``--token-file``).

Exit codes
----------

===  ======================================================================================
0    success (``tail``/``fake-gateway`` also: stopped by SIGTERM, closed cleanly)
1    Discord answered "no": token rejected (REST 401 or gateway close 4004), privileged
     intents not enabled (4014), another fatal close code (4010-4013), or an API error
2    nothing was learned about the token: a usage error (argparse), no token given, the token
     file unreadable, or Discord unreachable (DNS, refused, timeout, 5xx after retries)
130  interrupted by Ctrl-C (the connection was still closed cleanly, with code 1000)
===  ======================================================================================

Why usage errors and "unreachable" share 2 rather than moving usage to 64 (``EX_USAGE``): every
Python command line exits 2 on bad arguments (argparse does it before our code runs), scripts and
people expect that, and both cases mean the same thing to a caller — "fix the setup or the
network and run it again; the token may be fine" — whereas 1 always means "Discord said no". A
script that must tell them apart can read stderr or use ``probe --json``, whose ``error`` field is
``"usage"``, ``"unreachable"``, ``"auth"`` or ``"http"``.
"""
import argparse
import datetime
import ipaddress
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Dict, Iterable, List, Mapping, NoReturn, Optional, Sequence, Set, TextIO
from urllib.parse import urlsplit

from ._log import REDACTED, get_logger, register_secret
from ._log import redact as _redact_registered
from ._version import __version__

__all__ = [
    "main",
    "build_parser",
    "looks_like_token",
    "redact",
    "LifecycleView",
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_UNREACHABLE",
    "EXIT_INTERRUPTED",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130

PROG = "sync-gateway"
DEFAULT_API_BASE = "https://discord.com/api/v10"
#: ``tail --timeout`` / ``probe --timeout`` default: seconds to wait for the REST API.
DEFAULT_REST_TIMEOUT = 10.0
#: The heartbeat interval Discord sends in HELLO (ms); ``fake-gateway`` uses it unless ``--chaos``.
DISCORD_HEARTBEAT_MS = 41250
COMPRESS_CHOICES = ("zlib-stream", "zstd-stream", "none")

_TOKEN_HELP = (
    "set DISCORD_TOKEN in the environment (for example: export DISCORD_TOKEN='...', copied from the "
    "Developer Portal -> your application -> Bot -> Reset Token) or pass --token-file PATH"
)
_TOKEN_REFUSED = (
    "--token is not accepted: a command line is visible to every user of this machine (ps, /proc) and "
    "is saved in your shell history. Give the token one of two ways: the DISCORD_TOKEN environment "
    "variable (export DISCORD_TOKEN='...'), or --token-file PATH (a file only you can read; '-' reads "
    "it from stdin)"
)
_TOKEN_REFUSED_TYPED = (
    ". If you typed a real token, it is now in your shell history: consider making a new one "
    "(Developer Portal -> your application -> Bot -> Reset Token)"
)

log = get_logger("sync_gateway.cli")


class _UsageError(Exception):
    """A problem with what the user gave us; exit 2 with the message."""


# ---------------------------------------------------------------------------------------------
# secrets: what must never be echoed

#: Three base64url parts joined by dots, as Discord bot tokens are (~59-72 characters: the bot's
#: id, a timestamp, an HMAC). Generous on purpose: in an error message a false positive costs a
#: ``<redacted>``, a false negative leaks a credential.
_TOKEN_SHAPE = re.compile(
    r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{17,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{16,}(?![A-Za-z0-9_-])"
)
_known_secrets: Set[str] = set()
_secrets_lock = threading.Lock()


def _remember_secret(value: Optional[str]) -> None:
    """Treat *value* (and its ``Bot``-less form) as a secret for the rest of the process."""
    if not value:
        return
    candidates = {value, value.strip()}
    stripped = value.strip()
    if stripped.lower().startswith("bot "):
        candidates.add(stripped[4:].strip())
    with _secrets_lock:
        for c in candidates:
            if len(c) >= 8:
                _known_secrets.add(c)
    for c in candidates:
        register_secret(c)  # the library's loggers scrub it too (they ignore short values)


def looks_like_token(text: Optional[str]) -> bool:
    """True if *text* is shaped like a Discord token (optionally with a ``Bot`` prefix) or is a
    secret this process knows (the ``DISCORD_TOKEN`` value, a token file's contents)."""
    if not text:
        return False
    t = text.strip()
    if t.lower().startswith("bot "):
        t = t[4:].strip()
    if not t:
        return False
    with _secrets_lock:
        known = t in _known_secrets or text in _known_secrets
    return known or bool(_TOKEN_SHAPE.fullmatch(t))


def redact(text: str) -> str:
    """*text* with every known secret and everything token-shaped replaced by ``<redacted>``."""
    with _secrets_lock:
        known = sorted(_known_secrets, key=len, reverse=True)
    text = _redact_registered(str(text), known)
    return _TOKEN_SHAPE.sub(REDACTED, text)


def _shown(value: Any) -> str:
    """``repr(value)`` for a message, or a note that it is hidden because it looks like a token."""
    text = str(value)
    if looks_like_token(text):
        return "<a value that looks like a token, not shown>"
    return redact(repr(text))


# ---------------------------------------------------------------------------------------------
# argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse with no abbreviations and errors that never echo a secret.

    ``allow_abbrev`` is forced off: with it, ``--token X`` was taken as ``--token-file X`` and the
    token ended up in the "cannot read" message. Subparsers are of this class too (argparse makes
    them with the parent's class), so every level behaves the same.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        parsed: argparse.Namespace
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(_unrecognized_message(extras, _option_strings(self)))
        return parsed

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact(message)}\n")


def _option_strings(parser: argparse.ArgumentParser) -> Set[str]:
    """Every option string of *parser* and its subparsers (for the 'cannot be abbreviated' hint)."""
    found: Set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found |= _option_strings(child)
    return found


def _unrecognized_message(extras: Sequence[str], known: Iterable[str]) -> str:
    """argparse's "unrecognized arguments" without the values: a stray value may be the token."""
    known = set(known)
    options: List[str] = []
    values = 0
    abbreviated = False
    for arg in extras:
        if arg.startswith("-") and len(arg) > 1 and not re.fullmatch(r"-[0-9.]+", arg):
            name, eq, _ = arg.partition("=")
            options.append(name + ("=..." if eq else ""))
            if name.startswith("--") and any(k.startswith(name) and k != name for k in known):
                abbreviated = True
        else:
            values += 1
    parts = []
    if options:
        parts.append(" ".join(options))
    if values:
        parts.append(f"{values} value{'s' if values != 1 else ''} (not shown: a stray value may be a token)")
    message = "unrecognized arguments: " + " and ".join(parts)
    if abbreviated:
        message += "; options cannot be abbreviated, write them out in full (see -h)"
    return message


class _RefuseToken(argparse.Action):
    """``--token``/``--token=X``: refused with the reason and the two right ways."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.pop("nargs", None)
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, metavar="TOKEN", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        if isinstance(values, str):
            _remember_secret(values)
        typed = isinstance(values, str) and (looks_like_token(values) or len(values.strip()) >= 20)
        parser.error(_TOKEN_REFUSED + (_TOKEN_REFUSED_TYPED if typed else ""))


def _refuse_token_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--token", action=_RefuseToken,
        help="not accepted, on purpose: a command line is visible to other users (ps) and kept in shell "
        "history. Use the DISCORD_TOKEN environment variable or --token-file PATH",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="A Discord Gateway client on plain threads: demo, tail events, probe a token, run a fake gateway.",
        epilog="Exit codes: 0 ok, 1 Discord said no (token rejected, intents not allowed), "
        "2 usage error or Discord unreachable, 130 Ctrl-C. See 'python -m sync_gateway COMMAND -h'.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more log output on stderr: -v INFO (details such as IDENTIFY waits), -vv DEBUG "
        "(default: warnings and errors only)",
    )
    _refuse_token_option(parser)
    verbose = _Parser(add_help=False, allow_abbrev=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "demo", parents=[verbose], allow_abbrev=False,
        help="run a self-contained demo against a local fake gateway (no token needed)",
        description="A real client survives five classic faults (frozen socket, op 7, op 9, zombie, HELLO "
        "stall) against a FakeGateway on 127.0.0.1 while events stream; every number of the summary is "
        "counted, and the exit code is 0 only if no event was lost or duplicated. Timeouts are shortened "
        "so each recovery takes a second or two. Needs the 'testing' extra.",
    )
    p.add_argument(
        "--seconds", type=_positive_float, default=20.0, metavar="S",
        help="how long the demo runs; the five faults are spread over it (default 20)",
    )
    p.add_argument("--json", action="store_true", help="print only one JSON object, the summary (default: text)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "tail",
        parents=[verbose], allow_abbrev=False,
        help="connect with a bot token and print every event",
        description="Connect to the gateway and print one line per event on stdout; lifecycle changes "
        "(connecting, ready, reconnecting, resumed, ...) go to stderr. Ctrl-C closes cleanly. Token: "
        + _TOKEN_HELP + ".",
    )
    _token_options(p)
    p.add_argument(
        "--intents", type=_intents, default="default", metavar="NAMES",
        help="comma-separated intent names (GUILDS,GUILD_MESSAGES,MESSAGE_CONTENT,...), or 'default' "
        "(every non-privileged intent), 'all', 'none' (default: default)",
    )
    p.add_argument(
        "--json", action="store_true",
        help="one JSON object per event line: name, seq, shard_id, data (default: a short text summary)",
    )
    p.add_argument(
        "-q", "--quiet", action="store_true",
        help="no lifecycle lines on stderr; errors are still shown (default: show them)",
    )
    p.add_argument(
        "--gateway-url", metavar="URL",
        help="connect to this ws:// or wss:// URL instead of asking GET /gateway/bot; for a FakeGateway, the "
        "gateway_url that 'sync-gateway fake-gateway' prints (default: ask the API)",
    )
    p.add_argument(
        "--api-base", default=None, metavar="URL",
        help=f"REST base URL asked for the gateway URL (and the daily session-start limit); for a "
        f"FakeGateway, the api_base it prints (default {DEFAULT_API_BASE}; with --gateway-url on "
        f"loopback and no --api-base, none is asked)",
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=DEFAULT_REST_TIMEOUT, metavar="S",
        help=f"give up (exit 2) if the API has not answered GET /gateway/bot within S seconds "
        f"(default {DEFAULT_REST_TIMEOUT:g})",
    )
    _proxy_option(p)
    p.add_argument(
        "--compress", choices=COMPRESS_CHOICES, default="zlib-stream",
        help="transport compression: zlib-stream, zstd-stream (needs the 'zstd' extra) or none "
        "(default zlib-stream)",
    )
    p.add_argument(
        "--max-attempts", type=_positive_int, default=None, metavar="N",
        help="give up (exit 2) after N failed connection attempts in a row (default: retry forever)",
    )
    p.add_argument(
        "--metrics-port", type=int, default=None, metavar="N",
        help="serve Prometheus metrics at http://0.0.0.0:N/metrics while tailing (needs the 'metrics' extra: "
        "pip install 'sync-gateway[metrics]'; from a checkout: pip install -e '.[metrics]'); default: off",
    )
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser(
        "probe",
        parents=[verbose], allow_abbrev=False,
        help="check a bot token: who it is, shards, session starts left",
        description="GET /users/@me and GET /gateway/bot: prints the bot's id and name, the recommended "
        "shard count, session starts remaining of the daily total and when they reset, max_concurrency, "
        "and how long each request took. Exit 0 ok, 1 token rejected or API error, 2 unreachable. "
        "Token: " + _TOKEN_HELP + ".",
    )
    _token_options(p)
    p.add_argument(
        "--json", action="store_true",
        help="print one JSON object, also on failure (its 'error' field: usage, unreachable, auth, http) "
        "(default: text)",
    )
    p.add_argument(
        "--api-base", default=DEFAULT_API_BASE, metavar="URL",
        help=f"REST base URL; for a FakeGateway, the api_base it prints (default {DEFAULT_API_BASE})",
    )
    p.add_argument(
        "--timeout", type=_positive_float, default=DEFAULT_REST_TIMEOUT, metavar="S",
        help=f"seconds to wait for each HTTP request (default {DEFAULT_REST_TIMEOUT:g})",
    )
    _proxy_option(p)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser(
        "fake-gateway",
        parents=[verbose], allow_abbrev=False,
        help="run a FakeGateway on loopback until Ctrl-C (for trying clients without Discord)",
        description="Run sync_gateway.testing.FakeGateway standalone. Prints two lines on stdout: "
        "'gateway_url: ws://...' and 'api_base: http://...'. Needs the 'testing' extra (websockets). "
        "Every dispatched event is kept for RESUME replay, so memory grows with --rate over time.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on, loopback only (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=0, help="port to listen on (default 0: any free port)")
    p.add_argument(
        "--rate", type=_nonnegative_float, default=0.0, metavar="EVENTS_PER_S",
        help="dispatch MESSAGE_CREATE to the live session at this rate (default 0: none)",
    )
    p.add_argument(
        "--chaos", action="store_true",
        help="inject a random fault (op 7, op 9, zombie, dropped socket, ...) every --every seconds, "
        "waiting for the client to recover before the next one (default: off)",
    )
    p.add_argument(
        "--every", type=_positive_float, default=2.0, metavar="SECONDS",
        help="with --chaos: seconds between faults (default 2)",
    )
    p.add_argument(
        "--token", default=None,
        help="the only token the fake accepts; any other is rejected (401, close 4004). A made-up test "
        "token, never a real one (default: any token is accepted)",
    )
    p.add_argument(
        "--heartbeat-interval", type=_positive_int, default=None, metavar="MS",
        help=f"heartbeat_interval sent in HELLO, in milliseconds (default {DISCORD_HEARTBEAT_MS} as Discord; "
        "with --chaos, short enough for the fault rate: a quarter of --every, so a zombie fault is noticed "
        "before the next one is due)",
    )
    p.add_argument(
        "--allow-remote", action="store_true",
        help="allow a --host that is not a loopback address; the fake has no real authentication "
        "(default: refuse)",
    )
    p.set_defaults(func=cmd_fake_gateway)
    _add_send_parser(sub, verbose)
    return parser


def _proxy_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--proxy", default=None, metavar="URL",
        help="an HTTP proxy for the gateway (HTTP CONNECT) and REST, http://[user:pass@]host:port; "
        "HTTPS_PROXY is not read (default: connect directly)",
    )


def _proxies(args: argparse.Namespace) -> Optional[Dict[str, str]]:
    """requests' ``proxies=`` for ``--proxy`` (checked like the client checks it)."""
    if not getattr(args, "proxy", None):
        return None
    from .connection import Proxy
    from .errors import ConfigError

    try:
        proxy = Proxy(args.proxy)
    except ConfigError as exc:
        raise _UsageError(f"--proxy: {exc}") from None
    return {"http": proxy.url, "https": proxy.url}


def _token_options(p: argparse.ArgumentParser) -> None:
    """``--token-file`` plus the refused ``--token``: for every subcommand that needs the bot token."""
    p.add_argument(
        "--token-file", metavar="PATH",
        help="read the bot token from this file ('-': stdin) (default: the DISCORD_TOKEN environment variable)",
    )
    _refuse_token_option(p)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {_shown(text)}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {_shown(text)}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {_shown(text)}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {_shown(text)}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {_shown(text)}")
    return value


def _intents(text: str) -> Any:
    from .intents import Intents

    if looks_like_token(text):
        raise argparse.ArgumentTypeError(f"not intent names: {_shown(text)}")
    try:
        return Intents.from_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(redact(str(exc))) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {_shown(text)}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {_shown(text)}")
    return value


# ---------------------------------------------------------------------------------------------
# shared helpers


class _RedactingFormatter(logging.Formatter):
    """The CLI's log format, with secrets scrubbed from the finished line (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _ReportedByCli(logging.Filter):
    """Drops library log lines that would repeat what the CLI itself prints.

    * the machine's ERROR line for a fatal stop (``shard N: <error>``): the CLI prints the same error
      once, as its exit message, with advice;
    * with lifecycle lines on (``tail`` without ``-q``), the INFO lines that narrate the same steps
      (reconnecting, session lost, READY/RESUMED), so ``-v`` does not show each reconnect twice.
    """

    _NARRATED = re.compile(r"shard \d+: (reconnecting \(|session \S+ lost: |READY \(|RESUMED \()")

    def __init__(self) -> None:
        super().__init__()
        self.lifecycle_shown = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name not in ("sync_gateway.machine", "sync_gateway.protocol"):  # the lifecycle machine
            return True
        if record.levelno >= logging.ERROR:
            return False
        if self.lifecycle_shown and record.levelno == logging.INFO:
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: let logging report it
                return True
            return not self._NARRATED.match(message)
        return True


_reported_by_cli = _ReportedByCli()


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sync_gateway_cli", False)]:
        root.removeHandler(old)  # main() called again in the same process
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_reported_by_cli)
    handler._sync_gateway_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries (urllib3, websockets) stay at WARNING
    logging.getLogger("sync_gateway").setLevel(level)
    _reported_by_cli.lifecycle_shown = False


def _err(message: str) -> None:
    print(f"{PROG}: {redact(message)}", file=sys.stderr, flush=True)


def _note(message: str) -> None:
    """A progress line on stderr (what the command is doing), timestamped like lifecycle lines."""
    print(f"{_clock()} {redact(message)}", file=sys.stderr, flush=True)


def read_token(token_file: Optional[str], env: Optional[Mapping[str, str]] = None) -> str:
    """The bot token from *token_file* ('-': stdin) or ``DISCORD_TOKEN``; raises _UsageError.

    No message names a file whose name looks like a token (``--token-file <TOKEN>`` is a common
    slip), and none quotes the file's contents.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if token_file:
        named = "the token file" if looks_like_token(token_file) else f"the token file {token_file!r}"
        try:
            if token_file == "-":
                text = sys.stdin.readline()
            else:
                with open(token_file, encoding="utf-8") as fh:
                    text = fh.read()
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            if looks_like_token(token_file):
                raise _UsageError(
                    f"cannot read the token file: {why}. The value given to --token-file looks like a token, "
                    "not a path, so it is not shown; --token-file wants the path of a file holding the token "
                    "(or '-' for stdin), or set DISCORD_TOKEN"
                ) from None
            raise _UsageError(f"cannot read {named}: {why}") from None
        except UnicodeDecodeError:
            raise _UsageError(f"{named} is not UTF-8 text; it should hold only the bot token") from None
        token = text.strip()
        source = named
    else:
        token = environ.get("DISCORD_TOKEN", "").strip()
        source = "DISCORD_TOKEN"
        if not token:
            raise _UsageError("no bot token: " + _TOKEN_HELP)
    if token.lower().startswith("bot "):
        token = token[4:].strip()
    if not token:
        raise _UsageError(f"{source} is empty: " + _TOKEN_HELP)
    if any(c.isspace() or ord(c) < 0x20 for c in token):
        for word in token.split():
            _remember_secret(word)  # never quoted anyway; this makes sure of it
        raise _UsageError(f"{source} holds more than one word; it should hold only the bot token")
    _remember_secret(token)  # scrubbed from every message and log record from now on
    return token


def _human_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _clock() -> str:
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


def _check_api_base(api_base: str) -> str:
    """*api_base* without a trailing slash, or a _UsageError naming it (unless it looks like a token)."""
    parts = urlsplit(api_base)
    if parts.scheme not in ("http", "https") or not parts.hostname or looks_like_token(parts.hostname):
        raise _UsageError(
            f"--api-base must be an http(s) URL such as {DEFAULT_API_BASE}, got {_shown(api_base)}"
        )
    return api_base.rstrip("/")


def _check_gateway_url(url: str) -> str:
    """*url* if it is a usable ws(s):// URL, else a _UsageError that names it (unless token-shaped)."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname or looks_like_token(parts.hostname):
        raise _UsageError(
            f"--gateway-url must be a ws:// or wss:// URL with a host, such as the gateway_url that "
            f"'{PROG} fake-gateway' prints (ws://127.0.0.1:PORT/), got {_shown(url)}"
        )
    return url


def _host_of(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2] or url
    return "<redacted>" if looks_like_token(parts.hostname or "") else host


def _why_unreachable(exc: BaseException, timeout: float) -> str:
    """A short reason for a failed HTTP exchange, from the exception chain (never urllib3's text)."""
    import requests

    chain: List[BaseException] = []
    seen: Set[int] = set()
    todo: List[Optional[BaseException]] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        chain.append(e)
        todo += [e.__cause__, e.__context__, getattr(e, "reason", None)]
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
    text = " ".join(f"{type(e).__name__} {e}" for e in chain)
    if any(isinstance(e, requests.exceptions.ConnectTimeout) for e in chain) or "ConnectTimeout" in text:
        return f"no connection within {timeout:g}s"
    if any(isinstance(e, (requests.exceptions.ReadTimeout, TimeoutError)) for e in chain) or "timed out" in text:
        return f"connected, but no answer within {timeout:g}s"
    if any(isinstance(e, requests.exceptions.SSLError) for e in chain) or "SSL" in text or "TLS" in text:
        return "TLS verification failed"
    if any(isinstance(e, ConnectionRefusedError) for e in chain) or "Connection refused" in text:
        return "connection refused"
    if "NameResolution" in text or "getaddrinfo" in text or "Name or service not known" in text or "nodename nor servname" in text:
        return "the host name does not resolve (no such host, or no network)"
    if any(isinstance(e, ConnectionResetError) for e in chain) or "reset" in text.lower():
        return "the connection was reset"
    if "unreachable" in text.lower():
        return "network unreachable"
    return "the connection failed"


class _Interrupted(Exception):
    """SIGTERM asked us to stop (handled like Ctrl-C, but exit 0)."""


# ---------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from . import demo  # written separately; imported lazily so the CLI works without it
    except ModuleNotFoundError as exc:
        if exc.name not in ("sync_gateway.demo",):
            raise
        _err("the demo is not part of this installation (sync_gateway.demo is missing)")
        return EXIT_FAILURE
    try:
        code = demo.run_demo(seconds=args.seconds, json_output=args.json, out=sys.stdout)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return int(code or 0)


# ---------------------------------------------------------------------------------------------
# probe


def cmd_probe(args: argparse.Namespace) -> int:
    from .errors import AuthenticationError, ConfigError, GatewayError, GatewayUnreachable, HTTPError
    from .rest import RestClient

    def fail(kind: str, message: str, code: int) -> int:
        message = redact(message)
        if args.json:
            shown_base = redact(args.api_base) if not looks_like_token(args.api_base) else REDACTED
            print(json.dumps({"ok": False, "error": kind, "message": message, "api_base": shown_base}), flush=True)
        _err(message)
        return code

    try:
        api_base = _check_api_base(args.api_base)
        token = read_token(args.token_file)
        rest = RestClient(token, api_base, timeout=args.timeout, max_retries=1, retry_base=0.2, retry_max=1.0,
                          proxies=_proxies(args))
    except _UsageError as exc:
        return fail("usage", str(exc), EXIT_USAGE)
    except ConfigError as exc:
        return fail("usage", str(exc), EXIT_USAGE)
    timings: Dict[str, float] = {}
    try:
        with rest:
            started = time.perf_counter()
            user = rest.get_current_user()
            timings["users_me_ms"] = (time.perf_counter() - started) * 1000
            started = time.perf_counter()
            info = rest.get_gateway_bot()
            timings["gateway_bot_ms"] = (time.perf_counter() - started) * 1000
    except AuthenticationError:
        return fail(
            "auth",
            "token rejected: Discord answered 401 Unauthorized. Check that it is the bot token (not the client "
            "secret) or make a new one: Developer Portal -> your application -> Bot -> Reset Token",
            EXIT_FAILURE,
        )
    except GatewayUnreachable as exc:
        why = _why_unreachable(exc, args.timeout)
        return fail("unreachable", f"cannot reach the API at {_host_of(rest.api_base)}: {why}", EXIT_UNREACHABLE)
    except HTTPError as exc:
        kind, code = ("unreachable", EXIT_UNREACHABLE) if exc.status >= 500 else ("http", EXIT_FAILURE)
        return fail(kind, f"the API answered with an error: {exc}", code)
    except GatewayError as exc:
        return fail("http", f"unexpected answer from the API: {exc}", EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED

    limit = info.get("session_start_limit") or {}
    reset_ms = limit.get("reset_after")
    result: Dict[str, Any] = {
        "ok": True,
        "api_base": rest.api_base,
        "bot": {
            "id": str(user.get("id", "")),
            "username": user.get("username"),
            "discriminator": user.get("discriminator"),
            "global_name": user.get("global_name"),
            "bot": user.get("bot"),
        },
        "gateway_url": info.get("url"),
        "shards": info.get("shards"),
        "session_start_limit": {
            "total": limit.get("total"),
            "remaining": limit.get("remaining"),
            "reset_after_ms": reset_ms,
            "max_concurrency": limit.get("max_concurrency"),
        },
        "timings_ms": {k[:-3]: round(v, 2) for k, v in timings.items()},
    }
    if args.json:
        print(json.dumps(result), flush=True)
        return EXIT_OK
    name = str(user.get("username", "?"))
    if user.get("discriminator") not in (None, "", "0"):
        name += f"#{user['discriminator']}"
    reset = _human_duration(reset_ms / 1000) if isinstance(reset_ms, (int, float)) else "?"
    rows = [
        ("bot", f"{name} (id {user.get('id', '?')})"),
        ("gateway", str(info.get("url"))),
        ("recommended shards", str(info.get("shards", "?"))),
        (
            "session starts",
            f"{limit.get('remaining', '?')} of {limit.get('total', '?')} remaining, reset in {reset}",
        ),
        ("max_concurrency", str(limit.get("max_concurrency", "?"))),
        ("GET /users/@me", f"{timings['users_me_ms']:.1f} ms"),
        ("GET /gateway/bot", f"{timings['gateway_bot_ms']:.1f} ms"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key + ':':<{width + 1}} {value}")
    sys.stdout.flush()
    if limit.get("remaining") == 0:
        _err(f"warning: no session starts left; the next IDENTIFY must wait {reset}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# tail


def _short(value: Any, limit: int = 80) -> str:
    text = str(value).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def summarize(name: str, data: Any) -> str:
    """A short, one-line summary of an event's data: guild, channel, author, content when present."""
    if not isinstance(data, dict):
        return "" if data is None else _short(data)
    parts: List[str] = []
    if name in ("READY",):
        user = data.get("user") or {}
        parts.append(f"user={user.get('username', '?')}")
        parts.append(f"guilds={len(data.get('guilds') or [])}")
        parts.append(f"session={data.get('session_id', '?')}")
        return " ".join(parts)
    if name.startswith("GUILD_") and name in ("GUILD_CREATE", "GUILD_UPDATE") and "name" in data:
        return f"guild={_short(data.get('name'), 40)} ({data.get('id', '?')})"
    guild = data.get("guild_id")
    if guild is not None:
        parts.append(f"guild={guild}")
    channel = data.get("channel_id")
    if channel is not None:
        parts.append(f"channel={channel}")
    author = data.get("author") or data.get("user") or (data.get("member") or {}).get("user")
    if isinstance(author, dict) and (author.get("username") or author.get("id")):
        parts.append(f"author={_short(author.get('username') or author.get('id'), 40)}")
    emoji = data.get("emoji")
    if isinstance(emoji, dict) and emoji.get("name"):
        parts.append(f"emoji={emoji['name']}")
    content = data.get("content")
    if isinstance(content, str) and content:
        parts.append(f"content={json.dumps(_short(content), ensure_ascii=False)}")
    if not parts:
        keys = [k for k in data.keys()][:5]
        parts.append("keys=" + ",".join(str(k) for k in keys))
    return " ".join(parts)


class LifecycleView:
    """Renders lifecycle events as ``tail``'s one-line stderr narrative (without the clock).

    A socket that never got as far as HELLO did not "disconnect": it failed to connect. The machine
    reports both as ``disconnected`` (with the code it would close with, 4000 on a connect timeout),
    so this view remembers which epochs saw HELLO and renders the others as ``[connect failed]
    <reason>``, without a close code. ``fatal`` is skipped: the CLI reports it once, as its exit
    message.
    """

    def __init__(self) -> None:
        self._greeted: Set[int] = set()

    def render(self, event: Any) -> Optional[str]:
        kind = event.kind
        if kind == "fatal":
            return None
        code = event.code
        if kind == "hello":
            self._greeted.add(event.epoch)
        if kind == "disconnected" and event.epoch not in self._greeted:
            kind, code = "connect failed", None
        text = f"[{kind}]"
        if code is not None:
            text += f" code={code}"
        if event.reason:
            text += f" {event.reason}"
        return text


def _discover(token: str, api_base: str, timeout: float, proxies: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """``GET /gateway/bot`` within *timeout* seconds in all (a 5xx is retried while time is left)."""
    from .errors import HTTPError
    from .rest import RestClient

    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: paces a retry, synchronises nothing
    while True:
        left = max(0.1, deadline - time.monotonic())
        with RestClient(token, api_base, timeout=left, max_retries=0, max_ratelimit_wait=left, proxies=proxies) as rest:
            try:
                return rest.get_gateway_bot()
            except HTTPError as exc:
                if exc.status < 500 or deadline - time.monotonic() < 1.5:
                    raise
                log.info("GET /gateway/bot answered %d; asking again", exc.status)
        pause.wait(0.5)


def cmd_tail(args: argparse.Namespace) -> int:
    from . import GatewayClient, Intents
    from .errors import AuthenticationError, ConfigError, FatalGatewayError, GatewayError, GatewayUnreachable, HTTPError
    from .protocol import LifecycleConfig

    intents = _intents(args.intents) if isinstance(args.intents, str) else args.intents
    compress = None if args.compress == "none" else args.compress
    gateway_url = _check_gateway_url(args.gateway_url) if args.gateway_url else None
    api_base = _check_api_base(args.api_base or DEFAULT_API_BASE)
    # Given --gateway-url without --api-base, the client decides where the session-start limit is
    # read (Discord's API, or nowhere for a loopback test server).
    client_api_base = api_base if args.api_base or gateway_url is None else None
    token = read_token(args.token_file)
    config = LifecycleConfig(max_attempts=args.max_attempts) if args.max_attempts else None
    try:
        from . import codec

        codec.check_compress(compress)  # before asking the API: a missing extra is a usage error
        if gateway_url is None:
            if not args.quiet:
                _note(f"asking {api_base} for the gateway URL (GET /gateway/bot, timeout {args.timeout:g}s)...")
            info = _discover(token, api_base, args.timeout, _proxies(args))
            gateway_url = info["url"]
            # The client reads the session-start limit from api_base itself at start() (bounded),
            # into the IDENTIFY gate it binds to this bot.
        client = GatewayClient(
            token, intents, gateway_url=gateway_url, api_base=client_api_base, config=config, compress=compress,
            proxy=args.proxy
        )
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None
    except AuthenticationError:
        _err(
            "token rejected: Discord answered 401 Unauthorized to GET /gateway/bot. Check that it is the bot "
            "token (not the client secret), or make a new one: Developer Portal -> your application -> Bot -> Reset Token"
        )
        return EXIT_FAILURE
    except GatewayUnreachable as exc:
        _err(f"cannot reach the API at {_host_of(api_base)}: {_why_unreachable(exc, args.timeout)}")
        return EXIT_UNREACHABLE
    except HTTPError as exc:
        if exc.status >= 500:
            _err(f"Discord's API is not answering properly ({_host_of(api_base)} answered {exc.status}); try again later")
            return EXIT_UNREACHABLE
        _err(f"the API answered with an error: {exc}")
        return EXIT_FAILURE
    except GatewayError as exc:
        _err(f"unexpected answer from the API at {_host_of(api_base)}: {exc}")
        return EXIT_FAILURE

    out: TextIO = sys.stdout
    broken = threading.Event()
    as_json = args.json
    view = LifecycleView()
    _reported_by_cli.lifecycle_shown = not args.quiet

    def on_event(event: Any) -> None:
        if broken.is_set():
            return
        try:
            if as_json:
                line = json.dumps(
                    {"name": event.name, "seq": event.seq, "shard_id": event.shard_id, "data": event.data},
                    ensure_ascii=False,
                    separators=(",", ":"),
                )
            else:
                seq = "-" if event.seq is None else event.seq
                line = f"{_clock()}  {event.name}  #{seq}  {summarize(event.name, event.data)}".rstrip()
            out.write(line + "\n")
            out.flush()
        except BrokenPipeError:  # `sync-gateway tail | head`: stop quietly
            broken.set()
            client.close()

    def on_lifecycle(event: Any) -> None:
        text = view.render(event)  # always: it tracks which sockets saw HELLO
        if args.quiet or text is None:
            return
        print(f"{_clock()} {redact(text)}", file=sys.stderr, flush=True)

    # metrics first: an event is counted before its line is printed
    metrics = _serve_metrics(client, args.metrics_port) if args.metrics_port is not None else None
    client.on("*", on_event)
    client.on_lifecycle(on_lifecycle)
    terminated = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        terminated.set()
        client.close()

    previous = _install_signal(signal.SIGTERM, on_sigterm)
    try:
        client.start()
        if terminated.is_set():  # SIGTERM during start(): close() found nothing to close yet
            client.close()
        client.run_forever()
    except KeyboardInterrupt:
        if not args.quiet:
            print(f"{_clock()} interrupted; connection closed", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except FatalGatewayError as exc:
        if exc.code == 4004:
            _err(
                "token rejected: the gateway closed with 4004 (authentication failed). Check that it is the bot "
                "token (not the client secret), or make a new one: Developer Portal -> your application -> Bot -> "
                "Reset Token"
            )
        elif exc.code == 4014:
            asked = Intents(int(intents)).privileged_names()
            named = ", ".join(asked) if asked else "a privileged intent"
            _err(
                f"privileged intents not allowed (close 4014): --intents asked for {named}. Switch "
                f"{'them' if len(asked) > 1 else 'it'} on in the Discord Developer Portal -> your application -> "
                "Bot -> Privileged Gateway Intents, or leave "
                f"{'them' if len(asked) > 1 else 'it'} out of --intents (the default set has none)"
            )
        else:
            _err(str(exc))
        return EXIT_FAILURE
    except GatewayError as exc:  # max_attempts ran out: could not connect
        _err(f"could not connect: {exc}")
        return EXIT_UNREACHABLE
    finally:
        client.close()
        if metrics is not None:
            metrics.close()
        _restore_signal(signal.SIGTERM, previous)
        if broken.is_set():
            _silence_stdout()
    return EXIT_OK


def _serve_metrics(client: Any, port: int) -> Any:
    """``tail --metrics-port``: sync_gateway.metrics on a registry of its own; usage errors exit 2."""
    if not 0 <= port <= 65535:
        raise _UsageError(f"--metrics-port {port}: not a TCP port (0-65535)")
    try:
        from .metrics import serve_client
    except ImportError as exc:
        raise _UsageError(str(exc)) from None
    try:
        return serve_client(client, port)
    except OSError as exc:
        raise _UsageError(f"--metrics-port {port}: cannot listen: {exc.strerror or exc}") from None


def _install_signal(signum: int, handler: Any) -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(signum, handler)
    except (ValueError, OSError):  # not available on this platform
        return None


def _restore_signal(signum: int, previous: Any) -> None:
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    try:
        signal.signal(signum, previous)
    except (ValueError, OSError):
        pass


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at devnull so the interpreter's final flush stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# ---------------------------------------------------------------------------------------------
# fake-gateway


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_WORDS = (
    "gateway heartbeat resume shard intent session sequence dispatch thread socket zlib frame "
    "latency guild channel message reaction presence member voice ready reconnect"
).split()


def _fake_message(n: int) -> Dict[str, Any]:
    words = " ".join(_WORDS[(n * 7 + i * 3) % len(_WORDS)] for i in range(4 + n % 9))
    return {
        "id": str(1_200_000_000_000_000_000 + n),
        "channel_id": "200000000000000002",
        "guild_id": "300000000000000003",
        "author": {"id": "400000000000000004", "username": f"user{n % 17}", "discriminator": "0", "bot": False},
        "content": f"message {n}: {words}",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "type": 0,
    }


def _fake_heartbeat_ms(args: argparse.Namespace) -> int:
    """HELLO's heartbeat_interval: --heartbeat-interval if given; with --chaos, one short enough for
    the fault rate (see :func:`sync_gateway.testing.chaos.heartbeat_for_fault_rate`); else Discord's."""
    if args.heartbeat_interval is not None:
        return int(args.heartbeat_interval)
    if args.chaos:
        try:
            from .testing.chaos import heartbeat_for_fault_rate
        except ImportError:  # no 'testing' extra: reported when the fake is imported
            return DISCORD_HEARTBEAT_MS
        return heartbeat_for_fault_rate(args.every, DISCORD_HEARTBEAT_MS)
    return DISCORD_HEARTBEAT_MS


def cmd_fake_gateway(args: argparse.Namespace) -> int:
    if not args.allow_remote and not _is_loopback(args.host):
        raise _UsageError(
            f"refusing to listen on {_shown(args.host)}: not a loopback address. The fake gateway accepts any "
            "token and is meant for tests on this machine; pass --allow-remote to do it anyway"
        )
    try:
        from .testing import FakeGateway
        from .testing.fake_rest import FakeRest
    except ImportError as exc:
        _err(
            "the fake gateway needs the 'testing' extra: pip install 'sync-gateway[testing]' "
            f"(from a checkout: pip install -e '.[testing]') ({exc})"
        )
        return EXIT_FAILURE
    if args.token:
        _remember_secret(args.token)
    heartbeat_ms = _fake_heartbeat_ms(args)
    try:
        gateway = FakeGateway(args.host, args.port, heartbeat_interval=heartbeat_ms, token=args.token)
    except OSError as exc:
        _err(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return EXIT_UNREACHABLE
    stop = threading.Event()
    stopped_by_signal = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        stopped_by_signal.set()
        stop.set()

    previous = _install_signal(signal.SIGTERM, on_sigterm)
    chaos = None
    rate_thread = None
    interrupted = False
    gateway.start()
    # Discord's REST with its rate limits enforced, for bots that answer (client.rest, `send`)
    rest = FakeRest(args.host, 0, token=args.token, gateway_url=gateway.url).start()
    try:
        print(f"gateway_url: {gateway.url}", flush=True)
        print(f"api_base: {gateway.api_base}", flush=True)
        print(f"rest_api_base: {rest.api_base}", flush=True)
        print(
            f"connect a client with: DISCORD_TOKEN=... {PROG} tail --gateway-url {gateway.url} --api-base {gateway.api_base}"
            + ("" if args.token else "  (any token is accepted)"),
            file=sys.stderr,
            flush=True,
        )
        if args.chaos:
            try:
                from .testing.chaos import ServerChaos
            except ImportError as exc:
                _err(f"--chaos is not available in this installation ({exc})")
                return EXIT_FAILURE
            print(
                f"{_clock()} chaos: a fault every {args.every:g}s; heartbeat_interval {heartbeat_ms} ms"
                + (
                    " (set by --heartbeat-interval)" if args.heartbeat_interval is not None
                    else f", so a zombie fault is noticed within ~{2 * heartbeat_ms / 1000:g}s "
                    "(--heartbeat-interval overrides)"
                ),
                file=sys.stderr,
                flush=True,
            )

            def on_fault(phase: str, result: Any) -> None:
                took = getattr(result, "took", None)
                text = f"{_clock()} chaos: {phase} {getattr(result, 'kind', '?')}"
                if phase != "injected":
                    text += f" -> {getattr(result, 'outcome', '?')}"
                    text += f" in {took:.2f}s" if isinstance(took, (int, float)) else ""
                print(text, file=sys.stderr, flush=True)

            try:
                chaos = ServerChaos(gateway, faults=None, every=args.every, on_fault=on_fault)
            except TypeError:  # an older ServerChaos without on_fault
                chaos = ServerChaos(gateway, faults=None, every=args.every)
            chaos.start()
        if args.rate > 0:
            rate_thread = threading.Thread(
                target=_dispatch_at_rate, args=(gateway, args.rate, stop), name="fake_gateway-rate", daemon=True
            )
            rate_thread.start()
        while not stop.wait(0.2):  # short slices: Ctrl-C arrives promptly
            pass
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        if rate_thread is not None:
            rate_thread.join(5.0)
        if chaos is not None:
            try:
                chaos.stop()
            except Exception:  # pragma: no cover - best effort on the way out
                log.exception("stopping the chaos injector failed")
        rest.stop()
        gateway.stop()
        _restore_signal(signal.SIGTERM, previous)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def _dispatch_at_rate(gateway: Any, rate: float, stop: threading.Event) -> None:
    """Send MESSAGE_CREATE to the live session at *rate* per second, in small batches."""
    tick = max(0.005, min(0.1, 1.0 / rate))
    started = time.monotonic()
    sent = 0
    n = 0
    while not stop.wait(tick):
        due = int((time.monotonic() - started) * rate) - sent
        if due <= 0:
            continue
        due = min(due, max(1, int(rate)))  # never more than a second's worth in one go
        batch = [_fake_message(n + i) for i in range(due)]
        try:
            gateway.dispatch_many("MESSAGE_CREATE", batch)
            n += due
        except RuntimeError:  # no session yet: nothing to send to, and no backlog either
            pass
        sent += due
        if sent < int((time.monotonic() - started) * rate) - int(rate):
            sent = int((time.monotonic() - started) * rate)  # fell behind by > 1 s: skip, do not burst


# ---------------------------------------------------------------------------------------------
# send


def _add_send_parser(sub: Any, verbose: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "send",
        parents=[verbose],
        help="post one message to a channel (for cron jobs and shell scripts)",
        description="POST /channels/CHANNEL_ID/messages with TEXT ('-' reads it from stdin), within "
        "Discord's rate limits. Prints the new message's id (or the message as JSON with --json). "
        "Exit 0 sent, 1 Discord refused (token rejected, no access, bad message), 2 usage error or "
        "Discord unreachable, 130 Ctrl-C. Token: " + _TOKEN_HELP + ".",
    )
    _token_options(p)
    p.add_argument("channel_id", metavar="CHANNEL_ID", help="the channel's id (Developer Mode -> right click -> Copy Channel ID)")
    p.add_argument("text", metavar="TEXT", help="the message content; '-' reads it from stdin")
    p.add_argument(
        "--json", action="store_true", help="print the created message as one JSON object (default: its id only)"
    )
    p.add_argument(
        "--api-base", default=DEFAULT_API_BASE, metavar="URL",
        help=f"REST base URL (default {DEFAULT_API_BASE})",
    )
    p.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds per HTTP request (default 10)")
    _proxy_option(p)
    p.set_defaults(func=cmd_send)


def cmd_send(args: argparse.Namespace) -> int:
    from .errors import AuthenticationError, ConfigError, GatewayUnreachable, HTTPError, TooManyInvalidRequests
    from .rest import RestClient

    channel_id = args.channel_id.strip()
    if not channel_id.isdigit():
        raise _UsageError(f"CHANNEL_ID must be a channel's numeric id, got {args.channel_id!r}")
    if args.text == "-" and args.token_file == "-":
        raise _UsageError("TEXT and --token-file cannot both be '-' (stdin)")
    text = sys.stdin.read() if args.text == "-" else args.text
    if args.text == "-":
        text = text.rstrip("\n")
    if not text.strip():
        raise _UsageError("TEXT is empty: Discord does not send empty messages")
    token = read_token(args.token_file)
    try:
        rest = RestClient(token, args.api_base, timeout=args.timeout, max_retries=2, retry_base=0.5, retry_max=2.0,
                          proxies=_proxies(args))
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None
    try:
        with rest:
            message = rest.send_message(channel_id, text)
    except AuthenticationError:
        _err("token rejected: Discord answered 401 Unauthorized. Check that it is the bot token (not the client "
             "secret) or make a new one: Developer Portal -> your application -> Bot -> Reset Token")
        return EXIT_FAILURE
    except GatewayUnreachable as exc:
        _err(f"cannot reach the API at {rest.api_base}: {exc}")
        return EXIT_UNREACHABLE
    except TooManyInvalidRequests as exc:
        _err(str(exc))
        return EXIT_FAILURE
    except HTTPError as exc:
        _err(f"the API answered with an error: {exc}")
        return EXIT_UNREACHABLE if exc.status >= 500 else EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(message), flush=True)
    else:
        print(message.get("id", ""), flush=True)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# entry point


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with *argv* (default ``sys.argv[1:]``) and return the exit code.

    Argument errors, ``--help`` and ``--version`` return their code too (2, 0, 0) instead of raising
    SystemExit, so the function can be called in-process.
    """
    _remember_secret(os.environ.get("DISCORD_TOKEN"))  # redacted from every message from the start
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    verbosity = getattr(args, "verbose", 0) or 0
    _setup_logging(verbosity)
    if hasattr(sys.stdout, "reconfigure"):
        try:
            sys.stdout.reconfigure(errors="backslashreplace")
        except (ValueError, OSError):
            pass
    try:
        return int(args.func(args))
    except _UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an unforeseen failure: one redacted line, details with -vv
        if verbosity >= 2:
            log.exception("unexpected error")
        _err(f"unexpected error: {type(exc).__name__}: {exc}" + ("" if verbosity >= 2 else " (-vv shows the traceback)"))
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
