"""The ``sync-gateway`` command line, run as a subprocess (``python -m sync_gateway``) against a
FakeGateway in this process. Every wait on a subprocess is bounded; a process still alive at the end
of a test is killed."""
import json
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

from sync_gateway import GatewayClient, MemoryIdentifyGate
from sync_gateway import cli
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
