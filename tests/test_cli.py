"""The ``sync-gateway`` command line, run as a subprocess (``python -m sync_gateway``) against a
FakeGateway in this process. Every wait on a subprocess is bounded; a process still alive at the end
of a test is killed."""
import argparse
import io
import json
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from sync_gateway import GatewayClient, MemoryIdentifyGate
from sync_gateway import _log, cli
from sync_gateway.protocol import LifecycleEvent
from sync_gateway.testing import FakeGateway
from support import FAST, TOKEN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 60.0  # generous: a slow shared 2-core machine, interpreter start-up included

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")


def _env(token=None):
    env = dict(os.environ)
    env.pop("DISCORD_TOKEN", None)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    if token is not None:
        env["DISCORD_TOKEN"] = token
    return env


def run(*args, token=None, timeout=WAIT, stdin=None):
    """Run the CLI to completion; returns CompletedProcess (text)."""
    return subprocess.run(
        [sys.executable, "-m", "sync_gateway", *args],
        env=_env(token),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
    )


class Proc:
    """A running CLI subprocess whose stdout lines arrive on a queue (read by a helper thread)."""

    def __init__(self, *args, token=None):
        self.p = subprocess.Popen(
            [sys.executable, "-m", "sync_gateway", *args],
            env=_env(token),
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines = queue.Queue()
        self.stderr_text = ""
        self._out = threading.Thread(target=self._pump, name="test_cli-stdout", daemon=True)
        self._err = threading.Thread(target=self._pump_err, name="test_cli-stderr", daemon=True)
        self._out.start()
        self._err.start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _pump_err(self):
        self.stderr_text = self.p.stderr.read()

    def line(self, timeout=WAIT):
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line within {timeout}s; stderr so far: {self.stderr_text!r}") from None
        if line is None:
            self.wait(WAIT)
            raise AssertionError(f"process ended (exit {self.p.returncode}); stderr: {self.stderr_text!r}")
        return line

    def line_where(self, predicate, timeout=WAIT):
        while True:
            line = self.line(timeout)
            if predicate(line):
                return line

    def wait(self, timeout=WAIT):
        code = self.p.wait(timeout=timeout)
        self._out.join(timeout)
        self._err.join(timeout)
        return code

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        try:
            self.wait(WAIT)
        finally:
            for stream in (self.p.stdout, self.p.stderr):
                if stream:
                    stream.close()


@pytest.fixture
def proc():
    started = []

    def start(*args, token=None):
        p = Proc(*args, token=token)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


@pytest.fixture
def gw():
    with FakeGateway(token=TOKEN) as gateway:
        yield gateway


def _secret_free(*texts):
    for text in texts:
        assert TOKEN not in text


# ------------------------------------------------------------------------------------------ usage


def test_no_command_prints_usage_and_exits_2():
    r = run()
    assert r.returncode == 2
    assert "usage:" in r.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["probe", "--bogus"], "unrecognized arguments"),
        (["demo", "--seconds", "-1"], "--seconds"),
        (["tail", "--intents", "GUILDS,NOPE"], "unknown intent"),
        (["fake-gateway", "--port", "70000"], "port"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_arguments_print_usage_and_exit_2(args, needle):
    r = run(*args, token=TOKEN)
    assert r.returncode == 2, r.stderr
    assert "usage:" in r.stderr
    assert needle in r.stderr


def test_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.startswith("sync-gateway ")


@pytest.mark.parametrize("command", ["probe", "tail"])
def test_missing_token_says_how_to_set_it(command):
    r = run(command)
    assert r.returncode == 2
    assert "DISCORD_TOKEN" in r.stderr
    assert "--token-file" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreadable_token_file_is_a_usage_error(tmp_path):
    r = run("probe", "--token-file", str(tmp_path / "missing"))
    assert r.returncode == 2
    assert "cannot read the token file" in r.stderr


# ------------------------------------------------------------------------------------------ demo


def test_demo_runs_and_exits_0():
    r = run("demo", "--seconds", "8", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip()


# ------------------------------------------------------------------------------------------ probe


def test_probe_prints_bot_and_limits(gw):
    r = run("probe", "--api-base", gw.api_base, token=TOKEN)
    assert r.returncode == 0, r.stderr
    assert "fake-bot" in r.stdout
    assert "100000000000000001" in r.stdout
    assert "1000 of 1000 remaining" in r.stdout
    assert "reset in 4h 0m" in r.stdout
    assert "max_concurrency" in r.stdout
    assert " ms" in r.stdout
    _secret_free(r.stdout, r.stderr)


def test_probe_json(gw):
    r = run("probe", "--json", "--api-base", gw.api_base, token=TOKEN)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] is True
    assert data["bot"] == {
        "id": "100000000000000001", "username": "fake-bot", "discriminator": "0", "global_name": None, "bot": True,
    }
    assert data["shards"] == 1
    assert data["gateway_url"] == gw.url
    assert data["session_start_limit"] == {
        "total": 1000, "remaining": 1000, "reset_after_ms": 14400000, "max_concurrency": 1,
    }
    assert data["timings_ms"]["users_me"] > 0 and data["timings_ms"]["gateway_bot"] > 0
    _secret_free(r.stdout, r.stderr)  # the JSON never carries the token


def test_probe_reads_token_file(gw, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    r = run("probe", "--token-file", str(path), "--api-base", gw.api_base)
    assert r.returncode == 0, r.stderr
    assert "fake-bot" in r.stdout


def test_probe_wrong_token_exits_1(gw):
    wrong = "MTAwMDAwMDAwMDAwMDAwMDAx.wrong-token.not-the-right-one"
    r = run("probe", "--api-base", gw.api_base, token=wrong)
    assert r.returncode == 1
    assert "token rejected" in r.stderr
    assert wrong not in r.stdout + r.stderr
    r = run("probe", "--json", "--api-base", gw.api_base, token=wrong)
    assert r.returncode == 1
    assert json.loads(r.stdout)["error"] == "auth"


def test_probe_unreachable_exits_2(unused_port):
    r = run("probe", "--json", "--api-base", f"http://127.0.0.1:{unused_port}/api/v10", token=TOKEN)
    assert r.returncode == 2
    assert json.loads(r.stdout)["error"] == "unreachable"
    assert "cannot reach" in r.stderr
    _secret_free(r.stdout, r.stderr)


# ------------------------------------------------------------------------------------------ tail


def _message(n):
    return {
        "id": str(1000 + n), "channel_id": "22", "guild_id": "33",
        "author": {"id": "44", "username": "alice"}, "content": f"hello {n}",
    }


@posix_only
def test_tail_prints_events_and_closes_on_ctrl_c(gw, proc):
    p = proc("tail", "--gateway-url", gw.url, "--api-base", gw.api_base, token=TOKEN)
    conn = gw.wait_for_connections(1, timeout=WAIT)
    assert conn.ready.wait(WAIT)
    assert "READY" in p.line()
    gw.dispatch_many("MESSAGE_CREATE", [_message(n) for n in range(3)])
    lines = [p.line_where(lambda s: "MESSAGE_CREATE" in s) for _ in range(3)]
    assert "guild=33" in lines[0] and "channel=22" in lines[0] and "author=alice" in lines[0]
    assert '"hello 0"' in lines[0] and "#2" in lines[0]
    assert '"hello 2"' in lines[2]
    p.p.send_signal(signal.SIGINT)
    assert p.wait(WAIT) == 130
    assert conn.close_received.wait(WAIT)
    assert conn.client_close_code == 1000  # a clean close, not a dropped socket
    assert "[ready]" in p.stderr_text and "[closed]" in p.stderr_text
    _secret_free(p.stderr_text)


@posix_only
def test_tail_json_lines_and_sigterm(gw, proc):
    p = proc("tail", "--json", "--gateway-url", gw.url, token=TOKEN)
    conn = gw.wait_for_connections(1, timeout=WAIT)
    assert conn.ready.wait(WAIT)
    gw.dispatch("MESSAGE_CREATE", _message(7))
    event = json.loads(p.line_where(lambda s: "MESSAGE_CREATE" in s))
    assert event == {"name": "MESSAGE_CREATE", "seq": 2, "shard_id": 0, "data": _message(7)}
    p.p.send_signal(signal.SIGTERM)
    assert p.wait(WAIT) == 0
    assert conn.close_received.wait(WAIT) and conn.client_close_code == 1000


def test_tail_wrong_token_gateway_4004_exits_1(gw):
    wrong = "MTAwMDAwMDAwMDAwMDAwMDAx.wrong-token.not-the-right-one"
    r = run("tail", "--gateway-url", gw.url, token=wrong)
    assert r.returncode == 1
    assert "token rejected" in r.stderr and "4004" in r.stderr
    assert wrong not in r.stdout + r.stderr
    # one message: no ERROR log line repeating the CLI's, no advice about a prefix the client strips
    assert r.stderr.count("token rejected") == 1 and "ERROR" not in r.stderr, r.stderr
    assert "Bot '" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith("sync-gateway: token rejected")


def test_tail_wrong_token_rest_401_exits_1(gw):
    wrong = "MTAwMDAwMDAwMDAwMDAwMDAx.wrong-token.not-the-right-one"
    r = run("tail", "--api-base", gw.api_base, token=wrong)
    assert r.returncode == 1
    assert "token rejected" in r.stderr and "401" in r.stderr
    assert wrong not in r.stdout + r.stderr
    assert not gw.connections  # never got as far as the gateway


def test_tail_discovers_the_gateway_over_rest(gw, proc):
    p = proc("tail", "--json", "--api-base", gw.api_base, token=TOKEN)
    conn = gw.wait_for_connections(1, timeout=WAIT)
    assert conn.ready.wait(WAIT)
    assert json.loads(p.line())["name"] == "READY"
    assert any(path.endswith("/gateway/bot") for _, path, _ in gw.rest_requests)


def test_tail_privileged_intents_4014_names_them(gw):
    gw.identify_close_code = 4014
    r = run("tail", "--intents", "default,MESSAGE_CONTENT,GUILD_MEMBERS", "--gateway-url", gw.url, token=TOKEN)
    assert r.returncode == 1
    assert "4014" in r.stderr
    assert "MESSAGE_CONTENT" in r.stderr and "GUILD_MEMBERS" in r.stderr
    assert "Privileged Gateway Intents" in r.stderr
    assert gw.connections[0].identify["intents"] & (1 << 15)


def test_tail_unreachable_api_exits_2(unused_port):
    r = run("tail", "--api-base", f"http://127.0.0.1:{unused_port}/api/v10", token=TOKEN)
    assert r.returncode == 2
    assert "cannot reach" in r.stderr
    _secret_free(r.stdout, r.stderr)


def test_tail_unreachable_gateway_gives_up_after_max_attempts(unused_port):
    r = run("tail", "--max-attempts", "1", "--gateway-url", f"ws://127.0.0.1:{unused_port}/", token=TOKEN)
    assert r.returncode == 2
    assert "could not connect" in r.stderr
    assert "after 1 failed connection attempt;" in r.stderr  # singular
    assert "[connect failed] connection refused" in r.stderr  # it never connected: no [disconnected]
    assert "[disconnected]" not in r.stderr and "ERROR" not in r.stderr, r.stderr


# ------------------------------------------------------------------------------------------ fake-gateway


@posix_only
def test_fake_gateway_serves_a_client(proc):
    p = proc("fake-gateway", "--port", "0", "--rate", "50")
    url = p.line()
    api = p.line()
    assert url.startswith("gateway_url: ws://127.0.0.1:")
    assert api.startswith("api_base: http://127.0.0.1:")
    url, api = url.split(" ", 1)[1], api.split(" ", 1)[1]
    client = GatewayClient(TOKEN, gateway_url=url, config=FAST, identify_gate=MemoryIdentifyGate(interval=0.0, margin=0.0))
    got = threading.Event()
    client.on("MESSAGE_CREATE", lambda e: got.set())
    try:
        client.start()
        assert client.wait_until_ready(WAIT)
        assert got.wait(WAIT)  # --rate dispatches to the live session
    finally:
        client.close()
    p.p.send_signal(signal.SIGTERM)
    assert p.wait(WAIT) == 0
    r = run("probe", "--json", "--api-base", api, token=TOKEN, timeout=WAIT)
    assert r.returncode == 2  # the server is gone: unreachable


@posix_only
def test_fake_gateway_checks_its_token(proc):
    p = proc("fake-gateway", "--token", TOKEN)
    api = p.line_where(lambda s: s.startswith("api_base: ")).split(" ", 1)[1]
    assert run("probe", "--api-base", api, token=TOKEN).returncode == 0
    assert run("probe", "--api-base", api, token=TOKEN + "x").returncode == 1
    p.p.send_signal(signal.SIGINT)
    assert p.wait(WAIT) in (0, 130)
    assert TOKEN not in p.stderr_text


def test_fake_gateway_refuses_a_non_loopback_host():
    r = run("fake-gateway", "--host", "0.0.0.0")
    assert r.returncode == 2
    assert "loopback" in r.stderr and "--allow-remote" in r.stderr


# ------------------------------------------------------------------------------------------ helpers (in process)


def test_summaries():
    assert cli.summarize("MESSAGE_CREATE", _message(1)) == 'guild=33 channel=22 author=alice content="hello 1"'
    assert cli.summarize("GUILD_CREATE", {"id": "5", "name": "My Guild"}) == "guild=My Guild (5)"
    assert cli.summarize("TYPING_START", {"channel_id": "1", "user_id": "2"}) == "channel=1"
    assert cli.summarize("RESUMED", {}) == "keys="
    assert cli.summarize("X", {"content": "a\nb" + "c" * 200}).startswith('content="a\\\\nbccc')
    assert cli.summarize("X", None) == ""


def test_human_duration():
    assert cli._human_duration(14400) == "4h 0m"
    assert cli._human_duration(61) == "1m 1s"
    assert cli._human_duration(5) == "5s"
    assert cli._human_duration(90000) == "1d 1h"


def test_loopback_check():
    assert cli._is_loopback("127.0.0.1") and cli._is_loopback("::1") and cli._is_loopback("localhost")
    assert cli._is_loopback("127.1.2.3")
    assert not cli._is_loopback("0.0.0.0") and not cli._is_loopback("192.168.1.2") and not cli._is_loopback("example.com")


# ------------------------------------------------------------------------------------------ secrets (issue 11)

#: Shaped like a real bot token (id . timestamp . 38-char HMAC); distinct from support.TOKEN.
SECRET = "MTEyMjMzNDQ1NTY2Nzc4ODk5.GhIjKl.q9W8e7R6t5Y4u3I2o1PaSdFgHjKlZxCvBnM123"
#: A secret with no token shape: known only because it is the DISCORD_TOKEN value.
PLAIN_SECRET = "correct-horse-battery-staple-42"


def _leaks(text, secret=SECRET):
    """The secret, or a large piece of it, in *text*."""
    pieces = [secret] + [p for p in secret.split(".") if len(p) >= 12]
    return [p for p in pieces if p in text]


@pytest.fixture
def inproc(monkeypatch, capsys):
    """Run ``cli.main`` in this process: (code, stdout, stderr). Secrets learned by earlier runs are
    forgotten first, so each run must find them on its own; the CLI's log handler is removed after."""
    monkeypatch.setattr(cli, "_known_secrets", set())
    monkeypatch.setattr(_log, "_secrets", set())
    monkeypatch.delenv("DISCORD_TOKEN", raising=False)

    def call(*argv, env_token=None, stdin=None):
        if env_token is None:
            monkeypatch.delenv("DISCORD_TOKEN", raising=False)
        else:
            monkeypatch.setenv("DISCORD_TOKEN", env_token)
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        capsys.readouterr()
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    yield call
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_sync_gateway_cli", False)]:
        root.removeHandler(h)
    logging.getLogger("sync_gateway").setLevel(logging.NOTSET)


def _subparsers(parser=None):
    parser = parser or cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def _value_options(parser):
    """The long option string of every option of *parser* that takes a value."""
    found = []
    for a in parser._actions:
        if not a.option_strings or a.nargs == 0 or isinstance(a, (argparse._HelpAction, argparse._VersionAction)):
            continue
        found.append(max(a.option_strings, key=len))
    return found


#: Options where a token-shaped value is legitimate and the command would run on: the fake's own
#: (made-up) test token.
_ACCEPTS_A_TOKEN = {("fake-gateway", "--token")}


def _argv_cases():
    cases = [[SECRET], ["--token", SECRET, "tail"], [f"--token={SECRET}", "probe"], ["-v", SECRET]]
    for name, sub in _subparsers().items():
        cases += [[name, SECRET], [name, "--tok", SECRET], [name, f"--tok={SECRET}"], [name, "--", SECRET]]
        if (name, "--token") not in _ACCEPTS_A_TOKEN:
            cases += [[name, "--token", SECRET], [name, f"--token={SECRET}"]]
        for option in _value_options(sub):
            if (name, option) in _ACCEPTS_A_TOKEN:
                continue
            cases += [[name, option, SECRET], [name, f"{option}={SECRET}"]]
    return cases


def test_token_in_argv_is_never_echoed_by_any_subcommand(inproc):
    """Every subcommand (found from the parser, so a new one is covered too), every option that takes
    a value, stray values, --token and abbreviations of it: each is an error, and none prints it."""
    cases = _argv_cases()
    assert len(cases) > 40
    for argv in cases:
        code, out, err = inproc(*argv)
        assert code != 0, argv
        assert not _leaks(out + err), (argv, out, err)
        assert "Traceback" not in err, (argv, err)


@pytest.mark.parametrize("env_token", [SECRET, PLAIN_SECRET])
def test_token_in_argv_and_env_is_never_echoed(inproc, env_token):
    """The same sweep with the token also in DISCORD_TOKEN (the commands this module owns: a new
    subcommand with a token might go on to the network here); a DISCORD_TOKEN value without a token
    shape is redacted too, because the CLI knows it is the secret."""
    for argv in _argv_cases():
        if argv and argv[0] not in ("demo", "tail", "probe", "fake-gateway"):
            continue
        argv = [env_token if a == SECRET else a.replace(SECRET, env_token) for a in argv]
        code, out, err = inproc(*argv, env_token=env_token)
        assert code != 0, argv
        assert not _leaks(out + err, env_token), (argv, out, err)


def test_token_in_files_and_env_is_never_echoed(inproc, tmp_path, unused_port, gw):
    unreachable = f"http://127.0.0.1:{unused_port}/api/v10"
    two_words = tmp_path / "two-words"
    two_words.write_text(f"{SECRET} trailing-junk\n")
    good = tmp_path / "token"
    good.write_text(f"Bot {SECRET}\n")
    (tmp_path / SECRET).mkdir()  # a directory whose name is the token
    cases = [
        (["tail", "--token-file", str(two_words)], None, 2),
        (["probe", "--json", "--token-file", str(two_words)], None, 2),
        (["probe", "--token-file", str(tmp_path / SECRET)], None, 2),
        (["tail", "--token-file", str(tmp_path / SECRET / "missing")], None, 2),
        (["probe", "--json", "--token-file", SECRET], None, 2),
        (["tail", "--token-file", "-"], None, 2),  # stdin: the two-word text below
        (["tail", "--token-file", str(good), "--api-base", unreachable], None, 2),
        (["probe", "--json", "--token-file", str(good), "--api-base", unreachable], None, 2),
        (["tail", "--api-base", unreachable], SECRET, 2),
        (["probe", "--json", "--api-base", unreachable], SECRET, 2),
        (["probe", "--json"], f"Bot {SECRET} junk", 2),
        (["probe", "--json", "--api-base", gw.api_base], SECRET, 1),  # 401: not the fake's token
        (["tail", "--api-base", gw.api_base], SECRET, 1),  # 401 from GET /gateway/bot
        (["tail", "--gateway-url", gw.url], SECRET, 1),  # 4004 from the gateway
        (["tail", "-v", "--max-attempts", "1", "--gateway-url", f"ws://127.0.0.1:{unused_port}/"], SECRET, 2),
    ]
    for argv, env_token, expected in cases:
        code, out, err = inproc(*argv, env_token=env_token, stdin=f"{SECRET} more\n")
        assert code == expected, (argv, out, err)
        assert not _leaks(out + err), (argv, out, err)
        assert err.strip(), argv  # an error path: it said something
        if "--json" in argv:
            assert json.loads(out)["ok"] is False


def test_token_is_not_echoed_by_the_installed_command(tmp_path, unused_port):
    """The same, as a user runs it: ``python -m sync_gateway ...`` (the processes run side by side)."""
    cases = [
        (["tail", "--token", SECRET], None),
        (["tail", f"--token={SECRET}"], None),
        (["tail", "--tok", SECRET], None),
        (["tail", "--token-file", SECRET], None),
        (["tail", SECRET], None),
        ([SECRET], None),
        (["probe", "--json", "--token", SECRET], None),
        (["probe", "--json", "--token-file", SECRET], None),
        (["probe", "--json", "--api-base", f"http://127.0.0.1:{unused_port}/api/v10"], SECRET),
        (["probe", "--json", SECRET], SECRET),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "sync_gateway", *argv], env=_env(token), cwd=REPO,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for argv, token in cases
    ]
    try:
        for (argv, _), p in zip(cases, procs):
            out, err = p.communicate(timeout=WAIT)
            assert p.returncode == 2, (argv, err)
            assert not _leaks(out + err), (argv, out, err)
            assert "Traceback" not in err
            if "--json" in argv and "--token" not in argv and SECRET not in argv[-1:]:
                assert json.loads(out)["ok"] is False
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


@pytest.mark.parametrize("argv", [["tail", "--token", SECRET], ["probe", f"--token={SECRET}"], ["--token", "tail"]])
def test_token_option_is_refused_with_the_reason_and_the_right_ways(inproc, argv):
    code, out, err = inproc(*argv)
    assert code == 2
    assert "--token is not accepted" in err
    assert "ps" in err and "shell history" in err  # why
    assert "DISCORD_TOKEN" in err and "--token-file" in err  # the two right ways
    assert ("Reset Token" in err) == (SECRET in argv[-1] or SECRET in argv)  # typed a real one: reset it
    assert not _leaks(out + err)


def test_looks_like_token_and_redact():
    assert cli.looks_like_token(SECRET) and cli.looks_like_token(f"Bot {SECRET}") and cli.looks_like_token(TOKEN)
    for harmless in ("notaurl", "ws://127.0.0.1:1234/", "sync_gateway.testing.chaos", "/tmp/x/token.txt",
                     "GUILDS,GUILD_MESSAGES", "discord.com", "", "a.b.c"):
        assert not cli.looks_like_token(harmless), harmless
    assert cli.redact(f"file '/tmp/{SECRET}/x': gone") == "file '/tmp/<redacted>/x': gone"
    assert SECRET not in cli.redact(f"Authorization: Bot {SECRET}")


# ------------------------------------------------------------------------------------------ parser


def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_parsers(child)


def test_no_parser_accepts_abbreviations():
    parsers = list(_all_parsers(cli.build_parser()))
    assert len(parsers) >= 5
    assert all(p.allow_abbrev is False for p in parsers)
    assert cli.build_parser().parse_args(["-vv", "demo"]).verbose == 2  # short flags still combine


@pytest.mark.parametrize("argv", [["tail", "--token-f", "x"], ["probe", "--time", "5"], ["fake-gateway", "--heart", "5"]])
def test_abbreviated_options_are_rejected_and_said_so(inproc, argv):
    code, _, err = inproc(*argv)
    assert code == 2
    assert "unrecognized arguments: " + argv[1] in err
    assert "cannot be abbreviated" in err


def test_every_option_is_documented_with_its_default():
    """The CLI's reference is its --help: every option says what it does and what happens without it."""
    missing = []
    for name, sub in _subparsers().items():
        for a in sub._actions:
            if not a.option_strings or isinstance(a, argparse._HelpAction) or a.help == argparse.SUPPRESS:
                continue
            text = (a.help or "").lower()
            if len(text) < 20 or ("default" not in text and not isinstance(a, cli._RefuseToken)):
                missing.append(f"{name} {a.option_strings[0]}: {a.help!r}")
    assert not missing, missing
    top = cli.build_parser()
    assert all(a.help for a in top._actions if a.option_strings)


def test_help_lists_the_options_newcomers_asked_about():
    parsers = _subparsers()
    for name, options in {
        "tail": ["--gateway-url", "--api-base", "--max-attempts", "--quiet", "--timeout", "--compress", "--token"],
        "probe": ["--timeout", "--api-base", "--token-file"],
        "fake-gateway": ["--token", "--heartbeat-interval", "--every", "--chaos"],
    }.items():
        text = parsers[name].format_help()
        for option in options:
            assert option in text, (name, option)


# ------------------------------------------------------------------------------------------ tail rough edges


def test_tail_against_a_silent_api_says_what_it_does_and_gives_up(inproc):
    """An API that accepts the connection and never answers: one progress line, then one clear
    error naming the host, within --timeout (it was 42 s of silence and urllib3's internals)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody ever reads or answers
        port = silent.getsockname()[1]
        api = f"http://127.0.0.1:{port}/api/v10"
        started = time.monotonic()
        code, out, err = inproc("tail", "--api-base", api, "--timeout", "0.5", env_token=SECRET)
        took = time.monotonic() - started
    assert code == 2
    assert took < 10.0
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert f"asking {api} for the gateway URL" in lines[0]
    assert lines[1] == f"sync-gateway: cannot reach the API at 127.0.0.1:{port}: connected, but no answer within 0.5s"
    assert not out and not _leaks(err)


def test_tail_quiet_does_not_announce_discovery(inproc, unused_port):
    code, _, err = inproc("tail", "-q", "--api-base", f"http://127.0.0.1:{unused_port}/api/v10", env_token=SECRET)
    assert code == 2
    assert err.strip().splitlines() == [f"sync-gateway: cannot reach the API at 127.0.0.1:{unused_port}: connection refused"]


def test_tail_gateway_url_error_names_the_url(inproc):
    code, _, err = inproc("tail", "--gateway-url", "notaurl", env_token=SECRET)
    assert code == 2
    assert "'notaurl'" in err and "ws://" in err


@pytest.mark.parametrize("compress, expected", [("none", None), ("zlib-stream", "zlib-stream"), ("zstd-stream", "zstd-stream")])
def test_tail_compress(gw, proc, compress, expected):
    if compress == "zstd-stream":
        pytest.importorskip("zstandard")
    p = proc("tail", "--json", "--compress", compress, "--gateway-url", gw.url, token=TOKEN)
    conn = gw.wait_for_connections(1, timeout=WAIT)
    assert conn.ready.wait(WAIT)
    assert json.loads(p.line())["name"] == "READY"  # decoded through the chosen compression
    assert conn.compress == expected


@posix_only
def test_tail_verbose_shows_each_reconnect_once(gw, proc):
    p = proc("-v", "tail", "--json", "--gateway-url", gw.url, token=TOKEN)
    first = gw.wait_for_connections(1, timeout=WAIT)
    assert first.ready.wait(WAIT)
    first.send_op(7)  # Discord asks for a reconnect: the client resumes on a new socket
    second = gw.wait_for_connections(2, timeout=WAIT)
    assert second.ready.wait(WAIT)
    # the [resumed] line goes out before the RESUMED event is printed (one thread, in order)
    p.line_where(lambda line: '"RESUMED"' in line)
    p.p.send_signal(signal.SIGINT)
    assert p.wait(WAIT) == 130
    err = p.stderr_text
    assert "session-start limit" not in err  # a loopback gateway without --api-base: nobody asked
    assert sum("reconnecting" in line for line in err.splitlines()) == 1, err
    assert sum("resumed" in line.lower() for line in err.splitlines()) == 1, err


def _ev(kind, epoch, code=None, reason=""):
    return LifecycleEvent(kind, 0.0, code, reason, epoch)


def test_lifecycle_view_says_connect_failed_for_a_socket_that_never_connected():
    view = cli.LifecycleView()
    assert view.render(_ev("connecting", 1, reason="identify")) == "[connecting] identify"
    assert view.render(_ev("disconnected", 1, 4000, "connect-timeout: no connection within 20s")) == (
        "[connect failed] connect-timeout: no connection within 20s"
    )
    assert view.render(_ev("disconnected", 2, None, "connection refused")) == "[connect failed] connection refused"
    assert view.render(_ev("hello", 3, reason="heartbeat_interval=41250ms")) == "[hello] heartbeat_interval=41250ms"
    assert view.render(_ev("disconnected", 3, 4000, "zombie")) == "[disconnected] code=4000 zombie"
    assert view.render(_ev("fatal", 4, 4004, "x")) is None  # reported once, as the exit message


def test_log_filter_drops_only_what_the_cli_reports_itself():
    f = cli._ReportedByCli()

    def rec(level, msg, name="sync_gateway.machine"):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    f.lifecycle_shown = True
    assert not f.filter(rec(logging.ERROR, "shard 0: Discord closed the gateway with 4004"))
    assert not f.filter(rec(logging.INFO, "shard 0: reconnecting (resume) in 0.0s after op 7"))
    assert not f.filter(rec(logging.INFO, "shard 0: RESUMED (session abc, epoch 2)"))
    assert f.filter(rec(logging.INFO, "shard 0: IDENTIFY waits 4.2s: identify bucket 0 busy"))
    assert f.filter(rec(logging.WARNING, "shard 0: e1: ignored a malformed frame"))
    assert f.filter(rec(logging.ERROR, "something else", name="sync_gateway.rest"))
    f.lifecycle_shown = False  # -q -v: the INFO lines are the only narrative left
    assert f.filter(rec(logging.INFO, "shard 0: reconnecting (resume) in 0.0s after op 7"))


# ------------------------------------------------------------------------------------------ fake-gateway --chaos


def test_chaos_heartbeat_fits_the_fault_rate():
    from sync_gateway.testing.chaos import heartbeat_for_fault_rate

    assert heartbeat_for_fault_rate(2.0) == 500
    assert heartbeat_for_fault_rate(1000.0) == 41250  # never longer than Discord's
    assert heartbeat_for_fault_rate(0.01) == 100  # nor absurdly short
    with pytest.raises(ValueError):
        heartbeat_for_fault_rate(0)

    def ms(*argv):
        return cli._fake_heartbeat_ms(cli.build_parser().parse_args(["fake-gateway", *argv]))

    assert ms() == 41250
    assert ms("--chaos", "--every", "2") == 500
    assert ms("--chaos", "--every", "2", "--heartbeat-interval", "5000") == 5000  # the option still wins
    assert ms("--heartbeat-interval", "900") == 900


@posix_only
def test_fake_gateway_chaos_hello_uses_the_short_heartbeat(proc):
    p = proc("fake-gateway", "--chaos", "--every", "1")
    url = p.line_where(lambda s: s.startswith("gateway_url: ")).split(" ", 1)[1]
    client = GatewayClient(TOKEN, gateway_url=url, config=FAST, identify_gate=MemoryIdentifyGate(interval=0.0, margin=0.0))
    try:
        client.start()
        assert client.wait_until_ready(WAIT)
        assert client.status().heartbeat_interval == pytest.approx(0.25)
    finally:
        client.close()
    p.p.send_signal(signal.SIGTERM)
    assert p.wait(WAIT) == 0
    assert "heartbeat_interval 250 ms" in p.stderr_text


# ------------------------------------------------------------------------------------------ install hints


def test_missing_extra_hint_works_from_a_checkout(monkeypatch):
    from sync_gateway import codec
    from sync_gateway.errors import ConfigError

    monkeypatch.setitem(sys.modules, "zstandard", None)  # import fails as if not installed
    with pytest.raises(ConfigError) as info:
        codec.check_compress("zstd-stream")
    assert "pip install 'sync-gateway[zstd]'" in str(info.value)
    assert "pip install -e '.[zstd]'" in str(info.value)
