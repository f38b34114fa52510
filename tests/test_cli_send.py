"""``sync-gateway send CHANNEL_ID TEXT`` as a subprocess against FakeRest on 127.0.0.1."""
import json
import os
import signal
import subprocess
import sys

import pytest

from support import TOKEN
from sync_gateway.testing.fake_rest import FakeRest

pytestmark = pytest.mark.timeout(90)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAIT = 60.0  # a slow shared 2-core machine, interpreter start-up included


def run(*args, token=None, stdin=None):
    env = dict(os.environ)
    env.pop("DISCORD_TOKEN", None)
    if token is not None:
        env["DISCORD_TOKEN"] = token
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(
        [sys.executable, "-m", "sync_gateway", "send", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=WAIT, input=stdin,
    )


@pytest.fixture
def fake():
    with FakeRest(token=TOKEN) as f:
        f.forbidden_channels.add("666")
        yield f


def test_send_prints_the_message_id(fake):
    r = run("123", "backup finished ✓", "--api-base", fake.api_base, token=TOKEN)
    assert r.returncode == 0, r.stderr
    (message,) = fake.messages(123)
    assert message["content"] == "backup finished ✓"
    assert r.stdout.strip() == message["id"]
    assert TOKEN not in r.stdout + r.stderr


def test_send_json_from_stdin_and_token_file(fake, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    r = run("123", "-", "--json", "--token-file", str(path), "--api-base", fake.api_base, stdin="line one\nline two\n")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["content"] == "line one\nline two" and data["channel_id"] == "123"


@pytest.mark.parametrize(
    "args,token,needle",
    [
        (("123", "hi"), None, "no bot token"),
        (("general", "hi"), TOKEN, "numeric id"),
        (("123", "   "), TOKEN, "empty"),
        (("123", "-", "--token-file", "-"), None, "cannot both"),
    ],
    ids=["no-token", "bad-channel", "empty-text", "stdin-twice"],
)
def test_usage_errors_exit_2(fake, args, token, needle):
    r = run(*args, "--api-base", fake.api_base, token=token)
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert fake.requests == []


def test_discord_refusing_exits_1(fake):
    r = run("666", "hi", "--api-base", fake.api_base, token=TOKEN)
    assert r.returncode == 1 and "Missing Access" in r.stderr, r.stderr
    wrong = "MTAwMDAwMDAwMDAwMDAwMDAx.wrong-token.not-the-right-one"
    r = run("123", "hi", "--api-base", fake.api_base, token=wrong)
    assert r.returncode == 1 and "401" in r.stderr
    assert wrong not in r.stderr


def test_unreachable_exits_2():
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    r = run("123", "hi", "--api-base", f"http://127.0.0.1:{port}/api/v10", "--timeout", "1", token=TOKEN)
    assert r.returncode == 2 and "cannot reach" in r.stderr, r.stderr


def test_ctrl_c_exits_130(fake):
    fake.limits["message-create"] = (1, 60.0)
    env = dict(os.environ, DISCORD_TOKEN=TOKEN)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    # The first send uses the bucket up; the second command waits for it (60 s) until interrupted.
    assert run("1", "first", "--api-base", fake.api_base, token=TOKEN).returncode == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "sync_gateway", "-vv", "send", "1", "second", "--api-base", fake.api_base],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # -vv logs the first request's answer: the bucket is learned, the next wait is next.
        for line in proc.stderr:
            if "-> 200" in line or "waits" in line:
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()
