"""Test-side harness for child processes and a private redis-server (no sleeps: select/Events)."""
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator, List

import sync_gateway

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(sync_gateway.__file__))


def child_env(token: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["SG_TEST_TOKEN"] = token  # not on argv: argv is world-readable in ps
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Child:
    """A helper script run with ``sys.executable``; its stdout (stderr merged) is read line by line
    with select() and timeouts, on the test thread."""

    def __init__(self, script: str, *args: str, token: str = "") -> None:
        self.argv = [sys.executable, os.path.join(HERE, script), *args]
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child_env(token),
        )
        self.lines: List[str] = []
        self._buf = b""
        self._eof = False

    def _pump(self, timeout: float) -> bool:
        """Read what is there (waiting up to *timeout*); False at EOF."""
        if self._eof:
            return False
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        if not ready:
            return True
        data = os.read(fd, 65536)
        if not data:
            self._eof = True
            if self._buf:
                self.lines.append(self._buf.decode("utf-8", "replace"))
                self._buf = b""
            return False
        self._buf += data
        *complete, self._buf = self._buf.split(b"\n")
        self.lines.extend(line.decode("utf-8", "replace").rstrip("\r") for line in complete)
        return True

    def wait_line(self, predicate: Callable[[str], bool], timeout: float = 15.0, what: str = "a line") -> str:
        """The first line (ever) matching *predicate*; AssertionError with the output on timeout/EOF."""
        deadline = time.monotonic() + timeout
        index = 0
        while True:
            while index < len(self.lines):
                line = self.lines[index]
                index += 1
                if predicate(line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not self._pump(left):
                if self._eof:  # drained: one more look at the last lines
                    while index < len(self.lines):
                        if predicate(self.lines[index]):
                            return self.lines[index]
                        index += 1
                raise AssertionError(f"child {self.argv[1:]} gave no {what} in {timeout}s; output:\n" + self.output())

    def drain(self, timeout: float = 0.2) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pump(deadline - time.monotonic()):
            pass

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def values(self, prefix: str) -> List[str]:
        """The rest of every line starting with *prefix* + space, e.g. values("EV")."""
        p = prefix + " "
        return [line[len(p):] for line in self.lines if line.startswith(p)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.drain_to_eof()

    def stop(self, timeout: float = 15.0) -> int:
        """Close stdin (the scripts' cue to close cleanly), wait for the exit code, read to EOF."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self.drain_to_eof()
        return code

    def drain_to_eof(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._pump(deadline - time.monotonic()):
            pass
        with contextlib.suppress(OSError):
            self.proc.stdout.close()
        with contextlib.suppress(OSError):
            if self.proc.stdin:
                self.proc.stdin.close()


@contextlib.contextmanager
def children() -> Iterator[List[Child]]:
    """Collects Child objects; every one still running at the end is killed."""
    made: List[Child] = []
    try:
        yield made
    finally:
        for child in made:
            if child.proc.poll() is None:
                child.kill()
            else:
                child.drain_to_eof(0.5)


# ---------------------------------------------------------------------------------------------
# redis-server

REDIS_SERVER = shutil.which("redis-server")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.02)
    return True


class RedisURL(str):
    """The server's URL, carrying its ``pid`` (tests SIGSTOP it to freeze Redis)."""

    def __new__(cls, url: str, pid: int) -> "RedisURL":
        self = super().__new__(cls, url)
        self.pid = pid
        return self


@contextlib.contextmanager
def redis_server(directory: str) -> Iterator[str]:
    """A private redis-server on 127.0.0.1 and a free port, data in *directory*, no persistence.
    Yields its URL; terminated (and reaped) at the end."""
    assert REDIS_SERVER is not None
    last = ""
    for _attempt in range(5):
        port = _free_port()  # a tiny race with other programs: retried
        proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if _wait_until(lambda: proc.poll() is not None or _ping(port), 10.0) and proc.poll() is None:
            try:
                yield RedisURL(f"redis://127.0.0.1:{port}/0", proc.pid)
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
                proc.stdout.close()
            return
        proc.kill()
        out = proc.communicate(timeout=5)[0]
        last = out.decode("utf-8", "replace")[-2000:]
    raise RuntimeError(f"redis-server did not start: {last}")
