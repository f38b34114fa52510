"""Every script in examples/ runs as-is: each is started as a child process against a FakeGateway
started here (and a private redis-server for the Redis one), configured only by the environment a
user would set, and its output is checked."""
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from procs.harness import REDIS_SERVER, redis_server

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.example-token.for-tests-only"


def _default_sigint():
    # A job started in the background of a shell inherits SIGINT ignored, and Python then never
    # raises KeyboardInterrupt: give the child the default, so Ctrl-C (SIGINT) works as for a user.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Example:
    """One example script as a child process; its stdout and stderr lines are read by threads so
    the test can wait for a line of either (with a timeout) without polling."""

    def __init__(self, script, *args, env=None, cwd=None):
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p])
        full_env["PYTHONUNBUFFERED"] = "1"
        full_env["PYTHONFAULTHANDLER"] = "1"  # stacks on SIGABRT, for a child that hangs
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args],
            cwd=str(cwd or EXAMPLES), env=full_env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=_default_sigint,
        )
        self.lines = queue.Queue()
        self.out, self.err = [], []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self, stream, into):
        for line in stream:
            into.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, pattern, timeout=20.0):
        """The first unread output line (stdout or stderr) matching *pattern* (a regex), waiting up
        to *timeout*."""
        rx = re.compile(pattern)
        ended = 0
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout}s; {self.output()}") from None
            if line is None:
                ended += 1
                if ended < 2:
                    continue
                raise AssertionError(f"exited ({self.proc.wait()}) before a line matching {pattern!r}; {self.output()}")
            m = rx.search(line)
            if m:
                return m

    def expect_all(self, patterns, timeout=20.0):
        """Wait for a line matching each of *patterns*, in any order; returns their matches."""
        left = {p: re.compile(p) for p in patterns}
        found = {}
        while left:
            m = self.expect("|".join(f"(?:{p})" for p in left), timeout)
            for p, rx in list(left.items()):
                hit = rx.search(m.string)
                if hit:
                    found[p] = hit
                    del left[p]
                    break
        return [found[p] for p in patterns]

    def interrupt(self, sig=signal.SIGINT, timeout=30.0):
        """Send *sig* (Ctrl-C by default) and return the exit code. A child that does not exit
        in time is aborted (SIGABRT: faulthandler prints every thread's stack) and the test fails
        with that output."""
        self.proc.send_signal(sig)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.wait(10)
            raise AssertionError(f"still running {timeout}s after {sig!r}; {self.output()}") from None

    def wait(self, timeout=30.0):
        code = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return code

    def output(self):
        return f"stdout:\n{''.join(self.out)}\nstderr:\n{''.join(self.err)}"

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def gateway():
    from sync_gateway.testing import FakeGateway

    with FakeGateway(heartbeat_interval=2000) as gw:
        yield gw


@pytest.fixture
def run(gateway):
    """run(script, *args, env={}) -> Example, with DISCORD_TOKEN and SYNC_GATEWAY_URL set to the fake."""
    started = []

    def start(script, *args, env=None, **kwargs):
        example = Example(script, *args, env={"DISCORD_TOKEN": TOKEN, "SYNC_GATEWAY_URL": gateway.url, **(env or {})}, **kwargs)
        started.append(example)
        return example

    yield start
    for example in started:
        example.kill()


def message(content, n=1):
    return {"id": str(n), "channel_id": "20", "author": {"id": "40", "username": "ann"}, "content": content}


def dispatch_when_ready(gateway, t, d):
    """Dispatch once the example's socket got READY (the fake sends to the live session only)."""
    conn = gateway.wait_for_connections(1, timeout=20)
    assert conn.ready.wait(20)
    return gateway.dispatch(t, d)


def test_every_example_is_covered_here():
    source = Path(__file__).read_text(encoding="utf-8")
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert scripts, "no examples"
    missing = [s for s in scripts if f'"{s}"' not in source]
    assert not missing, f"examples no test runs: {missing}"
    assert (EXAMPLES / "sync-gateway-bot.service").exists()


def test_plain_script_prints_messages(gateway, run):
    ex = run("plain_script.py")
    ex.expect(r"^ready as ")
    dispatch_when_ready(gateway, "MESSAGE_CREATE", message("hello from the fake"))
    ex.expect(r"^ann hello from the fake$")
    assert ex.interrupt() == 0, ex.output()  # Ctrl-C
    assert gateway.connections[0].client_close_code == 1000


def test_metrics_exporter_serves_the_client_s_numbers(gateway, run):
    pytest.importorskip("prometheus_client")
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = run("metrics_exporter.py", env={"METRICS_PORT": str(port)})
    url = ex.expect(r"^metrics at (\S+)").group(1)
    dispatch_when_ready(gateway, "MESSAGE_CREATE", message("counted"))
    for _ in range(100):
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        if 'sync_gateway_events_total{event="MESSAGE_CREATE",shard="0"} 1.0' in text:
            break
        threading.Event().wait(0.05)
    assert 'sync_gateway_events_total{event="MESSAGE_CREATE",shard="0"} 1.0' in text, text[-3000:]
    assert 'sync_gateway_identifies_total{shard="0"} 1.0' in text
    assert ex.interrupt() == 0, ex.output()


def test_cron_job_does_one_thing_and_exits(gateway, run):
    ex = run("cron_job.py", "Backups done")
    assert ex.wait() == 0, ex.output()
    assert "presence set to 'Backups done'; the session started with 0 guild(s)" in "".join(ex.out)
    conn = gateway.connections[0]
    presence = conn.wait_for(op=3, timeout=1)
    assert presence["d"]["activities"][0]["state"] == "Backups done"
    assert conn.close_received.wait(5) and conn.client_close_code == 1000


def test_systemd_service_stops_cleanly_on_sigterm(gateway, run):
    ex = run("systemd_service.py")
    conn = gateway.wait_for_connections(1, timeout=20)
    assert conn.ready.wait(20)
    gateway.dispatch("MESSAGE_CREATE", message("deploy finished"))
    ex.expect(r"INFO mybot: message in 20: deploy finished$")  # its log, on stderr as journald takes it
    assert ex.interrupt(signal.SIGTERM) == 0, ex.output()
    err = "".join(ex.err)
    assert "SIGTERM: closing" in err and "INFO mybot: closed" in err
    assert conn.client_close_code == 1000


def test_the_bot_and_recipe_tests_pass_with_the_plugin(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # load the plugin by name: independent of what is installed
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "sync_gateway.testing.pytest_plugin", "-p", "no:cacheprovider",
         "-q", "--rootdir", str(tmp_path), str(EXAMPLES / "test_bot.py"), str(EXAMPLES / "test_recipes.py"),
         str(EXAMPLES / "test_reply_bot.py")],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=80,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "9 passed" in proc.stdout


def test_reply_bot_answers_ping_as_a_script(gateway, run):
    from sync_gateway.testing.fake_rest import FakeRest

    with FakeRest(gateway_url=gateway.url) as rest:
        ex = run("reply_bot.py", env={"SYNC_GATEWAY_API_BASE": rest.api_base})
        dispatch_when_ready(gateway, "MESSAGE_CREATE", message("!ping"))
        rest.wait_for(lambda requests: len(rest.messages(20)) == 1, timeout=20)
        assert rest.messages(20)[0]["content"] == "pong"
        assert ex.interrupt() == 0, ex.output()
        assert rest.count(status=429) == 0


def test_the_bot_runs_on_its_own(gateway, run):
    ex = run("bot.py")
    ex.expect(r"^ready$")
    dispatch_when_ready(gateway, "GUILD_CREATE", {"id": "7", "name": "Cats"})
    ex.expect(r"^guilds: \['Cats'\]$")
    assert ex.interrupt() == 0, ex.output()
    assert gateway.connections[0].client_close_code == 1000


def test_sharding_runs_the_recommended_shards(gateway, run):
    gateway.gateway_bot["shards"] = 2
    gateway.gateway_bot["session_start_limit"]["max_concurrency"] = 2  # both IDENTIFY at once
    ex = run("sharding.py", env={"SYNC_GATEWAY_API_BASE": gateway.api_base})
    ex.expect_all([r"-dispatch-s0 shard 0 of 2: ready$", r"-dispatch-s1 shard 1 of 2: ready$"])
    # guild 0 lives on shard 0, guild 1 << 22 on shard 1 ((guild_id >> 22) % shard_count)
    for conn in gateway.connections:
        shard = conn.identify["shard"][0]  # the IDENTIFY payload's d
        gateway.dispatch("GUILD_CREATE", {"id": str(shard << 22), "name": f"g{shard}"}, connection=conn)
    ex.expect_all([r"-dispatch-s0 shard 0: guild g0 \(shard_for_guild says 0\)$",
                   r"-dispatch-s1 shard 1: guild g1 \(shard_for_guild says 1\)$"])
    assert ex.interrupt() == 0, ex.output()
    assert [c.client_close_code for c in gateway.connections] == [1000, 1000]
    assert ("GET", "/api/v10/gateway/bot") in [(m, p.split("?")[0]) for m, p, _ in gateway.rest_requests]


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not on PATH (apt-get install redis-server)")
def test_redis_gateway_and_worker(gateway, run, tmp_path):
    pytest.importorskip("redis")
    with redis_server(str(tmp_path)) as url:
        worker = run("redis_worker.py", "w1", env={"REDIS_URL": url})
        worker.expect(r"^w1: reading mybot:events$")
        gw = run("redis_gateway.py", env={"REDIS_URL": url})
        gw.expect(r"^gateway: ready$")
        seq = dispatch_when_ready(gateway, "MESSAGE_CREATE", message("to the workers"))
        worker.expect(rf"^w1: to the workers \(seq {seq}, entry \d+-\d+\)$")
        assert gw.interrupt(signal.SIGTERM) == 0, gw.output()
        assert re.search(r"gateway: closed after writing [2-9] event\(s\)", "".join(gw.out)), gw.output()
        assert worker.interrupt(signal.SIGTERM) == 0, worker.output()
        assert re.search(r"w1: stopped after [2-9] event\(s\)", "".join(worker.out)), worker.output()


def test_wsgi_app_serves_health_and_messages(gateway, run):
    # /health answers with healthy(client) from "health.py", which the app imports
    assert "from health import healthy" in (EXAMPLES / "wsgi_app.py").read_text(encoding="utf-8")
    ex = run("wsgi_app.py", "--port", "0")
    base = ex.expect(r"^serving on (http://127\.0\.0\.1:\d+/) \(state: ready\)$").group(1)
    with urllib.request.urlopen(base + "health", timeout=10) as resp:
        assert resp.status == 200 and json.load(resp) == {"ok": True, "state": "ready"}
    gateway.dispatch("MESSAGE_CREATE", message("over http"))
    ex.expect(r"^message: over http$")
    with urllib.request.urlopen(base + "messages", timeout=10) as resp:
        assert json.load(resp) == [{"author": "ann", "content": "over http"}]
    assert ex.interrupt() == 0, ex.output()  # Ctrl-C: the server shuts down, atexit closes the client
    assert "Traceback" not in "".join(ex.err), ex.output()
    assert gateway.connections[0].client_close_code == 1000


@pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not on PATH (apt-get install redis-server)")
def test_sharding_processes_share_the_gate_and_resume_after_sigterm(gateway, run, tmp_path):
    pytest.importorskip("redis")
    with redis_server(str(tmp_path)) as url:
        env = {"REDIS_URL": url, "SHARD_COUNT": "2"}
        a = run("sharding_processes.py", env={**env, "SHARD_IDS": "0"})
        b = run("sharding_processes.py", env={**env, "SHARD_IDS": "1-1"})
        a.expect(r"shard 0: ready$")
        b.expect(r"shard 1: ready$", timeout=30)
        identifies = sorted(c.wait_for(op=2)["d"]["shard"][0] for c in gateway.connections)
        assert identifies == [0, 1]
        # max_concurrency 1: one bucket, one IDENTIFY per 5 s, kept across the two processes
        t = sorted(next(ts for ts, p in c.received if p.get("op") == 2) for c in gateway.connections)
        assert t[1] - t[0] > 4.5, t

        conn_a = next(c for c in gateway.connections if c.identify["shard"][0] == 0)
        assert a.interrupt(signal.SIGTERM) == 0, a.output()  # a deploy: the session is kept
        assert conn_a.client_close_code == 4000
        again = run("sharding_processes.py", env={**env, "SHARD_IDS": "0"})
        again.expect(r"shard 0: resumed$")
        assert gateway.connections[-1].resume is not None and gateway.connections[-1].identify is None
        assert again.interrupt() == 0 and b.interrupt() == 0  # Ctrl-C: closed for good
