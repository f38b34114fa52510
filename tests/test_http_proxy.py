"""The gateway (and the REST the client does) through a real HTTP proxy: tinyproxy on 127.0.0.1.

HTTP CONNECT is done on our own socket, so ``abort()`` reaches it at every stage, the proxy
handshake included (DESIGN.md invariant 1).
"""
import logging
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest

from sync_gateway import ConfigError, GatewayClient, MemoryIdentifyGate
from sync_gateway.client import resolve_proxy
from sync_gateway.testing import FakeGateway
from support import FAST, TOKEN, Recorder, handshakes, wait_until
from test_hardening import StallServer

TINYPROXY = shutil.which("tinyproxy")
pytestmark = pytest.mark.timeout(60)
needs_tinyproxy = pytest.mark.skipif(TINYPROXY is None, reason="tinyproxy is not installed (apt-get install tinyproxy)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tinyproxy:
    def __init__(self, directory, auth=None):
        self.port = _free_port()
        self.log = os.path.join(directory, "tinyproxy.log")
        conf = os.path.join(directory, "tinyproxy.conf")
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 30", "MaxClients 20",
                 "LogLevel Connect", f"LogFile \"{self.log}\""]
        if auth:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        with open(conf, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        self.proc = subprocess.Popen([TINYPROXY, "-d", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert wait_until(self._listening, timeout=10), "tinyproxy did not start"

    def _listening(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def url(self, auth=None):
        creds = f"{auth[0]}:{auth[1]}@" if auth else ""
        return f"http://{creds}127.0.0.1:{self.port}"

    def logged(self):
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def tinyproxy(tmp_path):
    proxy = Tinyproxy(str(tmp_path))
    yield proxy
    proxy.stop()


def _client(gw, **kwargs):
    kwargs.setdefault("config", FAST)
    kwargs.setdefault("identify_gate", MemoryIdentifyGate(interval=0, margin=0))
    return GatewayClient(TOKEN, gateway_url=gw.url, **kwargs)


@needs_tinyproxy
def test_ready_and_recovery_through_tinyproxy(tinyproxy):
    with FakeGateway(token=TOKEN) as gw:
        client = _client(gw, proxy=tinyproxy.url(), api_base=gw.api_base)
        rec = Recorder(client)
        try:
            client.start()
            assert client.wait_until_ready(10)
            gw.connections[-1].send_op(7)  # op 7: RESUME, through the proxy again
            rec.wait_kind("resumed")
            gw.connections[-1].close(4000)
            rec.wait_kind("resumed", 2)
            gw.dispatch("MESSAGE_CREATE", {"content": "through the proxy"})
            rec.wait_events("MESSAGE_CREATE", 1)
            assert handshakes(gw) == ["I", "R", "R"]
            assert client.rest.get_current_user()["id"]  # client.rest shares the proxy
        finally:
            client.close()
            client.rest.close()
        logged = tinyproxy.logged()
        assert logged.count(f"CONNECT 127.0.0.1:{gw.port}") >= 3, logged[-2000:]
        assert "/api/v10/gateway/bot" in logged  # the session-start limit went through it too
        assert "/api/v10/users/@me" in logged


@needs_tinyproxy
def test_wss_through_tinyproxy_survives_the_demo_s_faults(tinyproxy):
    with FakeGateway(token=TOKEN, tls=True, heartbeat_interval=500) as gw:
        client = _client(gw, proxy=tinyproxy.url(), ssl_context=gw.client_ssl_context())
        rec = Recorder(client)
        try:
            client.start()
            assert client.wait_until_ready(10)
            gw.connections[-1].send_op(7)  # op 7
            rec.wait_kind("resumed")
            gw.connections[-1].invalid_session(False)  # op 9: a fresh session
            rec.wait_kind("ready", 2)
            gw.ack_heartbeats = False  # zombie: no ACK, the client reconnects and resumes
            rec.wait_kind("resumed", 2)
            gw.ack_heartbeats = True
            gw.connections[-1].drop()  # TCP gone
            rec.wait_kind("resumed", 3)
            gw.dispatch("MESSAGE_CREATE", {"content": "over wss through the proxy"})
            rec.wait_events("MESSAGE_CREATE", 1)
            assert gw.live_connections() == 1
        finally:
            client.close()
        assert tinyproxy.logged().count(f"CONNECT 127.0.0.1:{gw.front_port}") == len(gw.connections)


@needs_tinyproxy
def test_proxy_that_wants_credentials_is_a_clear_error_without_them(tmp_path):
    proxy = Tinyproxy(str(tmp_path), auth=("alice", "s3cret-pw"))
    try:
        with FakeGateway(token=TOKEN) as gw:
            bad = _client(gw, proxy=proxy.url())
            try:
                bad.start()
                assert wait_until(lambda: "407" in (bad.status().last_error or ""), timeout=10)
                assert f"127.0.0.1:{proxy.port}" in bad.status().last_error
                assert gw.connections == []
            finally:
                bad.close()
            good = _client(gw, proxy=proxy.url(("alice", "s3cret-pw")))
            try:
                good.start()
                assert good.wait_until_ready(10)
            finally:
                good.close()
            assert "s3cret-pw" not in repr(good._proxy) and "alice" not in good._proxy.display
    finally:
        proxy.stop()


@needs_tinyproxy
def test_proxy_that_cannot_reach_the_gateway_names_itself(tinyproxy, unused_port):
    client = GatewayClient(TOKEN, gateway_url=f"ws://127.0.0.1:{unused_port}/", config=FAST,
                           proxy=tinyproxy.url(), identify_gate=MemoryIdentifyGate(interval=0, margin=0))
    try:
        client.start()
        assert wait_until(lambda: "refused the tunnel" in (client.status().last_error or ""), timeout=10)
        assert f"proxy http://127.0.0.1:{tinyproxy.port}" in client.status().last_error
    finally:
        client.close()


def test_stalled_connect_keeps_close_timeout_and_leaves_no_socket():
    stall = StallServer()  # a "proxy" that accepts and never answers the CONNECT
    try:
        client = GatewayClient(TOKEN, gateway_url="wss://gateway.invalid/", config=FAST,
                               proxy=f"http://127.0.0.1:{stall.port}",
                               identify_gate=MemoryIdentifyGate(interval=0, margin=0))
        client.start()
        assert stall.wait(lambda s: s.live == 1, 10)
        started = time.monotonic()
        client.close(timeout=2)
        assert time.monotonic() - started < 2.5
        assert stall.wait(lambda s: s.live == 0, 2)
        assert client.threads() == []
    finally:
        stall.close()


def test_proxy_settings_are_checked_and_the_environment_only_on_request(monkeypatch):
    with pytest.raises(ConfigError, match="http://"):
        GatewayClient(TOKEN, proxy="socks5://127.0.0.1:1080")
    with pytest.raises(ConfigError) as info:
        GatewayClient(TOKEN, proxy="ftp://bob:hunter2@127.0.0.1:21")
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert resolve_proxy(None, False, "wss://gateway.discord.gg/") is None  # off by default
    found = resolve_proxy(None, True, "wss://gateway.discord.gg/")
    assert found is not None and found.port == 3128
    monkeypatch.setenv("NO_PROXY", "discord.gg")
    assert resolve_proxy(None, True, "wss://gateway.discord.gg/") is None


def _cli(*args, env_token=TOKEN, timeout=60):
    import sys

    env = dict(os.environ, DISCORD_TOKEN=env_token)
    return subprocess.run([sys.executable, "-m", "sync_gateway", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@needs_tinyproxy
def test_probe_and_tail_take_a_proxy(tinyproxy):
    import signal
    import sys

    with FakeGateway(token=TOKEN) as gw:
        done = _cli("probe", "--api-base", gw.api_base, "--proxy", tinyproxy.url())
        assert done.returncode == 0, done.stdout + done.stderr
        assert "/api/v10/users/@me" in tinyproxy.logged()
        tail = subprocess.Popen(
            [sys.executable, "-m", "sync_gateway", "tail", "--gateway-url", gw.url, "--api-base", gw.api_base,
             "--proxy", tinyproxy.url()],
            env=dict(os.environ, DISCORD_TOKEN=TOKEN), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert gw.wait_for_connections(1, timeout=20).ready.wait(20)
            assert f"CONNECT 127.0.0.1:{gw.port}" in tinyproxy.logged()
        finally:
            tail.send_signal(signal.SIGINT)
            out, err = tail.communicate(timeout=30)
        assert tail.returncode == 130, err


def test_a_bad_proxy_is_a_usage_error_that_hides_the_password():
    done = _cli("send", "123", "hi", "--proxy", "socks5://bob:hunter2@127.0.0.1:1080")
    assert done.returncode == 2
    assert "hunter2" not in done.stdout + done.stderr and "--proxy" in done.stderr
