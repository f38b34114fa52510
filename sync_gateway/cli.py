"""The ``sync-gateway`` command (also ``python -m sync_gateway``).

Subcommands::

    sync-gateway demo [--seconds N] [--json]
    sync-gateway tail [--intents NAMES] [--json] [--token-file PATH] [--gateway-url URL] [--api-base URL]
    sync-gateway probe [--json] [--token-file PATH] [--api-base URL] [--timeout S]
    sync-gateway fake-gateway [--host H] [--port P] [--rate N] [--chaos] [--every S] [--token T]
    sync-gateway send CHANNEL_ID TEXT [--json] [--token-file PATH] [--api-base URL] [--timeout S]

``-v`` shows the library's INFO lines on stderr (one line per routine reconnect, with its reason),
``-vv`` DEBUG; by default only WARNINGs and errors are shown. The bot token comes from the
``DISCORD_TOKEN`` environment variable or ``--token-file PATH`` (``-`` reads it from stdin). There
is deliberately no ``--token`` option for a real token: a command line is visible to every user of
the machine (``ps``) and lands in shell history. The token is never printed, logged or put in an
error message.

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
import signal
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

from ._version import __version__

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_UNREACHABLE", "EXIT_INTERRUPTED"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 2
EXIT_INTERRUPTED = 130

PROG = "sync-gateway"
DEFAULT_API_BASE = "https://discord.com/api/v10"

_TOKEN_HELP = (
    "set DISCORD_TOKEN in the environment (for example: export DISCORD_TOKEN='...', copied from the "
    "Developer Portal -> your application -> Bot -> Reset Token) or pass --token-file PATH"
)

log = logging.getLogger("sync_gateway.cli")


class _UsageError(Exception):
    """A problem with what the user gave us; exit 2 with the message."""


# ---------------------------------------------------------------------------------------------
# argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A Discord Gateway client on plain threads: demo, tail events, probe a token, run a fake gateway.",
        epilog="Exit codes: 0 ok, 1 Discord said no (token rejected, intents not allowed), "
        "2 usage error or Discord unreachable, 130 Ctrl-C. See 'python -m sync_gateway COMMAND -h'.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0,
        help="more log output on stderr: -v INFO (one line per reconnect, with its reason), -vv DEBUG",
    )
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "demo", parents=[verbose], help="run a self-contained demo against a local fake gateway (no token needed)"
    )
    p.add_argument("--seconds", type=_positive_float, default=20.0, help="how long the demo runs (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "tail",
        parents=[verbose],
        help="connect with a bot token and print every event",
        description="Connect to the gateway and print one line per event on stdout; lifecycle changes "
        "(connecting, ready, reconnecting, resumed, ...) go to stderr. Ctrl-C closes cleanly. Token: "
        + _TOKEN_HELP + ".",
    )
    _token_options(p)
    p.add_argument(
        "--intents", type=_intents, default="default", metavar="NAMES",
        help="comma-separated intent names (GUILDS,GUILD_MESSAGES,MESSAGE_CONTENT,...), or 'default' "
        "(every non-privileged intent), 'all', 'none'; default: default",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line: name, seq, shard_id, data")
    p.add_argument("-q", "--quiet", action="store_true", help="no lifecycle lines on stderr (errors still shown)")
    p.add_argument(
        "--gateway-url", metavar="URL",
        help="connect to this ws(s):// URL instead of asking GET /gateway/bot (for a FakeGateway: "
        "the URL 'sync-gateway fake-gateway' prints)",
    )
    p.add_argument(
        "--api-base", default=DEFAULT_API_BASE, metavar="URL",
        help=f"REST base URL (default {DEFAULT_API_BASE}); for a FakeGateway, the api_base it prints",
    )
    p.add_argument(
        "--max-attempts", type=_positive_int, default=None, metavar="N",
        help="give up (exit 2) after N failed connection attempts in a row (default: retry forever)",
    )
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser(
        "probe",
        parents=[verbose],
        help="check a bot token: who it is, shards, session starts left",
        description="GET /users/@me and GET /gateway/bot: prints the bot's id and name, the recommended "
        "shard count, session starts remaining of the daily total and when they reset, max_concurrency, "
        "and how long each request took. Exit 0 ok, 1 token rejected or API error, 2 unreachable. "
        "Token: " + _TOKEN_HELP + ".",
    )
    _token_options(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (also on failure)")
    p.add_argument(
        "--api-base", default=DEFAULT_API_BASE, metavar="URL",
        help=f"REST base URL (default {DEFAULT_API_BASE})",
    )
    p.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds per HTTP request (default 10)")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser(
        "fake-gateway",
        parents=[verbose],
        help="run a FakeGateway on loopback until Ctrl-C (for trying clients without Discord)",
        description="Run sync_gateway.testing.FakeGateway standalone. Prints two lines on stdout: "
        "'gateway_url: ws://...' and 'api_base: http://...'. Needs the 'testing' extra (websockets). "
        "Every dispatched event is kept for RESUME replay, so memory grows with --rate over time.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; loopback only)")
    p.add_argument("--port", type=_port, default=0, help="port (default 0: any free port)")
    p.add_argument(
        "--rate", type=_nonnegative_float, default=0.0, metavar="EVENTS_PER_S",
        help="dispatch MESSAGE_CREATE to the live session at this rate (default 0: none)",
    )
    p.add_argument("--chaos", action="store_true", help="inject faults now and then (sync_gateway.testing.chaos)")
    p.add_argument("--every", type=_positive_float, default=2.0, metavar="SECONDS", help="seconds between faults (default 2)")
    p.add_argument(
        "--token", default=None,
        help="the only token the fake accepts (default: any). A test token, never a real one",
    )
    p.add_argument(
        "--heartbeat-interval", type=_positive_int, default=41250, metavar="MS",
        help="heartbeat_interval sent in HELLO (default 41250)",
    )
    p.add_argument(
        "--allow-remote", action="store_true",
        help="allow a --host that is not a loopback address (the fake has no real authentication)",
    )
    p.set_defaults(func=cmd_fake_gateway)
    _add_send_parser(sub, verbose)
    return parser


def _token_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--token-file", metavar="PATH",
        help="read the bot token from this file ('-': stdin) instead of the DISCORD_TOKEN environment variable",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be an integer > 0, got {text!r}")
    return value


def _intents(text: str) -> Any:
    from .intents import Intents

    try:
        return Intents.from_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------
# shared helpers


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_sync_gateway_cli", False)]:
        root.removeHandler(old)  # main() called again in the same process
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler._sync_gateway_cli = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # other libraries (urllib3, websockets) stay at WARNING
    logging.getLogger("sync_gateway").setLevel(level)


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def read_token(token_file: Optional[str], env: Optional[Dict[str, str]] = None) -> str:
    """The bot token from *token_file* ('-': stdin) or ``DISCORD_TOKEN``; raises _UsageError."""
    env = os.environ if env is None else env
    if token_file:
        try:
            if token_file == "-":
                text = sys.stdin.readline()
            else:
                with open(token_file, encoding="utf-8") as fh:
                    text = fh.read()
        except OSError as exc:
            raise _UsageError(f"cannot read the token file {token_file!r}: {exc.strerror or exc}") from None
        token = text.strip()
        source = f"the token file {token_file!r}"
    else:
        token = env.get("DISCORD_TOKEN", "").strip()
        source = "DISCORD_TOKEN"
        if not token:
            raise _UsageError("no bot token: " + _TOKEN_HELP)
    if token.lower().startswith("bot "):
        token = token[4:].strip()
    if not token:
        raise _UsageError(f"{source} is empty: " + _TOKEN_HELP)
    if any(c.isspace() or ord(c) < 0x20 for c in token):
        raise _UsageError(f"{source} holds more than one word; it should hold only the bot token")
    from ._log import register_secret

    register_secret(token)  # scrubbed from every log record from now on
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
        if args.json:
            print(json.dumps({"ok": False, "error": kind, "message": message, "api_base": args.api_base}), flush=True)
        _err(message)
        return code

    try:
        token = read_token(args.token_file)
    except _UsageError as exc:
        return fail("usage", str(exc), EXIT_USAGE)
    try:
        rest = RestClient(token, args.api_base, timeout=args.timeout, max_retries=1, retry_base=0.2, retry_max=1.0)
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
        return fail("unreachable", f"cannot reach the API at {rest.api_base}: {exc}", EXIT_UNREACHABLE)
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


def cmd_tail(args: argparse.Namespace) -> int:
    from . import GatewayClient, Intents
    from .errors import AuthenticationError, ConfigError, FatalGatewayError, GatewayError, GatewayUnreachable, HTTPError
    from .protocol import LifecycleConfig

    intents = _intents(args.intents) if isinstance(args.intents, str) else args.intents
    token = read_token(args.token_file)
    config = LifecycleConfig(max_attempts=args.max_attempts) if args.max_attempts else None
    try:
        client = GatewayClient(token, intents, gateway_url=args.gateway_url, api_base=args.api_base, config=config)
    except ConfigError as exc:
        raise _UsageError(str(exc)) from None

    out: TextIO = sys.stdout
    broken = threading.Event()
    as_json = args.json

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
        if args.quiet or event.kind == "fatal":  # a fatal error is reported once, as the exit message
            return
        text = f"{_clock()} [{event.kind}]"
        if event.code is not None:
            text += f" code={event.code}"
        if event.reason:
            text += f" {event.reason}"
        print(text, file=sys.stderr, flush=True)

    client.on("*", on_event)
    client.on_lifecycle(on_lifecycle)
    terminated = threading.Event()

    def on_sigterm(signum: int, frame: Any) -> None:
        terminated.set()
        client.close()

    previous = _install_signal(signal.SIGTERM, on_sigterm)
    try:
        client.start()  # REST discovery happens here: auth and reachability errors come out of it
        if terminated.is_set():  # SIGTERM during start(): close() found nothing to close yet
            client.close()
        client.run_forever()
    except KeyboardInterrupt:
        if not args.quiet:
            print(f"{_clock()} interrupted; connection closed", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except AuthenticationError:
        _err(
            "token rejected: Discord answered 401 Unauthorized to GET /gateway/bot. Check that it is the bot "
            "token (not the client secret), or make a new one: Developer Portal -> your application -> Bot -> Reset Token"
        )
        return EXIT_FAILURE
    except FatalGatewayError as exc:
        if exc.code == 4004:
            _err(
                "token rejected: the gateway closed with 4004 (authentication failed). Make a new token: "
                "Developer Portal -> your application -> Bot -> Reset Token"
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
    except GatewayUnreachable as exc:
        _err(f"cannot reach Discord: {exc}")
        return EXIT_UNREACHABLE
    except HTTPError as exc:
        if exc.status >= 500:
            _err(f"Discord's API is not answering properly: {exc}")
            return EXIT_UNREACHABLE
        _err(f"the API answered with an error: {exc}")
        return EXIT_FAILURE
    except GatewayError as exc:  # max_attempts ran out: could not connect
        _err(f"could not connect: {exc}")
        return EXIT_UNREACHABLE
    finally:
        client.close()
        _restore_signal(signal.SIGTERM, previous)
        if broken.is_set():
            _silence_stdout()
    return EXIT_OK


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


def cmd_fake_gateway(args: argparse.Namespace) -> int:
    if not args.allow_remote and not _is_loopback(args.host):
        raise _UsageError(
            f"refusing to listen on {args.host!r}: not a loopback address. The fake gateway accepts any "
            "token and is meant for tests on this machine; pass --allow-remote to do it anyway"
        )
    try:
        from .testing import FakeGateway
    except ImportError as exc:
        _err(f"the fake gateway needs the 'testing' extra: pip install 'sync-gateway[testing]' ({exc})")
        return EXIT_FAILURE
    try:
        gateway = FakeGateway(args.host, args.port, heartbeat_interval=args.heartbeat_interval, token=args.token)
    except OSError as exc:
        _err(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return EXIT_UNREACHABLE
    if args.token:
        from ._log import register_secret

        register_secret(args.token)
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
    try:
        print(f"gateway_url: {gateway.url}", flush=True)
        print(f"api_base: {gateway.api_base}", flush=True)
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
    p.add_argument("--json", action="store_true", help="print the created message as one JSON object")
    p.add_argument(
        "--api-base", default=DEFAULT_API_BASE, metavar="URL",
        help=f"REST base URL (default {DEFAULT_API_BASE})",
    )
    p.add_argument("--timeout", type=_positive_float, default=10.0, help="seconds per HTTP request (default 10)")
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
        rest = RestClient(token, args.api_base, timeout=args.timeout, max_retries=2, retry_base=0.5, retry_max=2.0)
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
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0) or 0)
    if hasattr(sys.stdout, "reconfigure"):
        try:
            sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[attr-defined]
        except (ValueError, OSError):
            pass
    try:
        return int(args.func(args))
    except _UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
