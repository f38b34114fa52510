"""The pytest plugin (sync_gateway.testing.pytest_plugin), as a user meets it: pytest runs in a
child process on a temporary directory holding the user's test file, with the plugin loaded the
way the ``pytest11`` entry point loads it."""
import os
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "sync_gateway.testing.pytest_plugin"

#: A user's test file: three tests, each with its own fresh fake and client.
USER_TESTS = '''
import threading

def test_message_reaches_the_handler(fake_gateway, gateway_client):
    got = threading.Event()
    seen = []
    gateway_client.on("MESSAGE_CREATE", lambda e: (seen.append(e.data["content"]), got.set()))
    fake_gateway.dispatch("MESSAGE_CREATE", {"content": "hi"})
    assert got.wait(5)
    assert seen == ["hi"]

def test_op7_resumes(fake_gateway, gateway_client):
    resumed = threading.Event()
    gateway_client.on_lifecycle(lambda e: e.kind == "resumed" and resumed.set())
    fake_gateway.connections[-1].send_op(7)
    assert resumed.wait(5)
    assert fake_gateway.connections[-1].resume is not None

def test_handlers_registered_before_start_see_ready(fake_gateway, make_gateway_client):
    client = make_gateway_client(start=False)
    names = []
    ready = threading.Event()
    client.on("READY", lambda e: (names.append(e.name), ready.set()))
    client.start()
    assert client.wait_until_ready(5)
    assert ready.wait(5)
    assert names == ["READY"]
    identify = fake_gateway.connections[0].wait_for(op=2)
    assert identify["d"]["token"].startswith("MTAw")
'''


def run_pytest(tmp_path, source, *args, name="test_user.py"):
    """Run pytest on *source* in *tmp_path* as a child; the plugin loaded by name only (autoload off,
    so the result does not depend on what else is installed here). Returns (proc, junit root, secs)."""
    (tmp_path / name).write_text(textwrap.dedent(source), encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    junit = tmp_path / "junit.xml"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "-q",
         f"--junitxml={junit}", "-o", "junit_family=xunit2", *args, name],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=100,
    )
    took = time.monotonic() - started
    root = ET.parse(junit).getroot() if junit.exists() else None
    return proc, root, took


def cases(root):
    return {case.get("name"): float(case.get("time")) for case in root.iter("testcase")}


def test_three_user_tests_run_without_identify_waits(tmp_path):
    proc, root, took = run_pytest(tmp_path, USER_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    times = cases(root)
    assert len(times) == 3
    suite = float(next(root.iter("testsuite")).get("time"))
    print(f"\nplugin: 3 user tests in {suite:.2f}s (pytest), {took:.2f}s with interpreter start-up; per test {times}")
    # The process-wide IDENTIFY bucket would hold the 2nd and 3rd client for 5 s each: every test
    # staying below that proves the fixtures' clients never wait for it. (Typically ~0.1 s each.)
    assert all(t < 4.0 for t in times.values()), times


def test_a_thread_left_running_fails_the_test(tmp_path):
    source = '''
    import sync_gateway as sg

    def test_forgets_to_close(fake_gateway, make_gateway_client):
        make_gateway_client()  # closed by the fixture: fine
        stray = sg.GatewayClient("MTAw.stray.client", gateway_url=fake_gateway.url,
                                 identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))
        stray.start()
        assert stray.wait_until_ready(5)
    '''
    proc, _, _ = run_pytest(tmp_path, source, "-o", "console_output_style=classic")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "sync_gateway threads still alive after close()" in proc.stdout
    assert "sync_gateway-supervisor-s0" in proc.stdout


def test_a_client_that_never_gets_ready_fails_with_its_state(tmp_path):
    source = '''
    def test_no_ready(fake_gateway, make_gateway_client):
        fake_gateway.answer_identify = False
        make_gateway_client(ready_timeout=0.5)
    '''
    proc, _, _ = run_pytest(tmp_path, source)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "the client was not ready within 0.5s" in proc.stdout


def test_importing_the_plugin_is_cheap_and_needs_no_extra():
    # pytest imports every pytest11 entry point at start-up, even when the testing extra (websockets)
    # is missing: the plugin module must not import the fake, websockets or redis then.
    code = (
        f"import sys, {PLUGIN} as p; "
        "bad = [m for m in ('websockets', 'sync_gateway.testing.fake_gateway', 'redis') if m in sys.modules]; "
        "print(bad); assert not bad; "
        "assert {'fake_gateway', 'gateway_client', 'make_gateway_client'} <= set(dir(p))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_setup_declares_the_entry_point_and_extras(tmp_path):
    # What pip records on install: egg_info writes the same entry_points.txt and requires.txt.
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    info = next(tmp_path.glob("*.egg-info"))
    entry_points = (info / "entry_points.txt").read_text()
    assert "[pytest11]\nsync_gateway.testing.pytest_plugin = sync_gateway.testing.pytest_plugin" in entry_points
    requires = (info / "requires.txt").read_text()
    for extra in ("[testing]", "[test]", "[docs]"):
        assert extra in requires
    testing = requires.split("[testing]", 1)[1].split("[", 1)[0]
    assert "websockets" in testing


def test_the_entry_point_registers_the_fixtures(tmp_path):
    # Metadata as an install writes it (egg_info), found on sys.path by importlib.metadata just as
    # pytest finds an installed plugin: no -p, autoload on. "-p <module>" on top must not clash.
    meta = tmp_path / "meta"
    meta.mkdir()
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(meta)],
        cwd=str(ROOT), capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    work = tmp_path / "work"
    work.mkdir()
    (work / "test_user.py").write_text("def test_x(fake_gateway, gateway_client):\n    assert gateway_client.status().state == 'ready'\n")
    env = dict(os.environ)
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    env["PYTHONPATH"] = os.pathsep.join([str(meta), str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    for extra in ([], ["-p", PLUGIN]):
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra, "test_user.py"],
            cwd=str(work), env=env, capture_output=True, text=True, timeout=100,
        )
        assert proc.returncode == 0 and "1 passed" in proc.stdout, (extra, proc.stdout + proc.stderr)
