"""Helpers shared by the integration tests (imported as ``support``)."""
import dataclasses
import functools
import importlib.util
import inspect
import threading
import time

from sync_gateway import GatewayClient, LifecycleConfig

TOKEN = "MTAwMDAwMDAwMDAwMDAwMDAx.fake-token.for-tests-only-xyz"

#: Timeouts short enough for tests, long enough for a slow shared 2-core machine.
FAST = LifecycleConfig(
    hello_timeout=3.0,
    ready_timeout=3.0,
    drain_timeout=1.0,
    force_close_timeout=0.5,
    backoff_base=0.05,
    backoff_max=0.2,
    invalid_session_delay=(0.05, 0.1),
)

#: FAST, with HELLO/READY deadlines long enough for a handshake and a READY delivered a few bytes
#: at a time on a loaded machine (CI saw 3 s pass on Pythons 3.9 and 3.13, where the same exchange
#: takes ~0.4 s on a quiet one): a deadline hit there is the machine's slowness, not what these
#: tests are about. Tests of the deadlines themselves set their own.
PIECES = dataclasses.replace(FAST, hello_timeout=10.0, ready_timeout=10.0)


def fast_for(transport):
    """The lifecycle config for tests over *transport*: FAST, or PIECES when frames come in pieces."""
    return PIECES if "trickle" in transport else FAST


#: Seed of the trickle transport; the pieces and pauses of a run are reproducible from it.
TRICKLE_SEED = 10


def gateway_options(transport, seed=TRICKLE_SEED):
    """FakeGateway keyword arguments for a transport name (see conftest's ``transports`` marker).

    Over ``tls+trickle`` every message is written as TLS records of 1-7 plaintext bytes (the client's
    reader gets its frames in those pieces) and the TCP stream is cut into pieces of up to 64 bytes
    (1-7 bytes of ciphertext would cost seconds per test); the last bytes of every burst wait
    50-200 ms. Over plain ``trickle`` the TCP pieces are the 1-7 bytes the reader sees.
    """
    from sync_gateway.testing import Trickle

    if transport not in ("plain", "tls", "trickle", "tls+trickle"):
        raise ValueError(f"unknown transport {transport!r}")
    options = {"tls": transport.startswith("tls")}
    if transport == "trickle":
        options["trickle"] = Trickle(seed=seed)
    elif transport == "tls+trickle":
        options["trickle"] = Trickle(seed=seed, chunk=(1, 64), pause=(0.0, 0.001))
    return options


def client_options(gateway, **kwargs):
    """``kwargs`` for GatewayClient, plus what makes it trust ``gateway``'s certificate over TLS.

    GatewayClient's own ``ssl_context=`` is used if it has one; otherwise the context goes to each
    Connection through ``_connection_factory`` (wrapping a factory the test gave)."""
    if not getattr(gateway, "tls", False):
        return kwargs
    ctx = gateway.client_ssl_context()
    if "ssl_context" in inspect.signature(GatewayClient).parameters:
        kwargs.setdefault("ssl_context", ctx)
    else:
        from sync_gateway.connection import Connection

        factory = kwargs.get("_connection_factory") or Connection
        kwargs["_connection_factory"] = functools.partial(factory, ssl_context=ctx)
    return kwargs


def freezing_proxy(gateway, **kwargs):
    """A FreezingProxy (not started) in front of ``gateway`` as clients reach it: behind it the trickle
    proxy if any, and its ``url`` says ``wss://`` over TLS (the proxy only sees TCP)."""
    from sync_gateway.testing import FreezingProxy

    kwargs.setdefault("scheme", "wss" if gateway.tls else "ws")
    return FreezingProxy("127.0.0.1", gateway.front_port, **kwargs)


class Recorder:
    """Collects dispatches and lifecycle events from the dispatcher thread; tests wait on it."""

    def __init__(self, client=None):
        self.cond = threading.Condition()
        self.events = []
        self.lifecycle = []
        self.threads = set()
        if client is not None:
            client.on("*", self.on_event)
            client.on_lifecycle(self.on_lifecycle)

    def on_event(self, event):
        with self.cond:
            self.events.append(event)
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()

    def on_lifecycle(self, event):
        with self.cond:
            self.lifecycle.append(event)
            self.cond.notify_all()

    def wait_for(self, predicate, timeout=10.0, what="condition"):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out waiting for {what}; lifecycle={self.kinds()}")
                self.cond.wait(remaining)

    def wait_kind(self, kind, count=1, timeout=10.0):
        self.wait_for(lambda r: r.kinds().count(kind) >= count, timeout, f"{count}x lifecycle {kind}")

    def wait_events(self, name, count, timeout=10.0):
        self.wait_for(lambda r: len(r.named(name)) >= count, timeout, f"{count}x {name}")

    def kinds(self):
        return [e.kind for e in self.lifecycle]

    def named(self, name):
        return [e for e in self.events if e.name == name]

    def seqs(self, name="MESSAGE_CREATE"):
        return [e.seq for e in self.named(name)]




def handshakes(gateway):
    """'I' or 'R' per connection, in order: which handshake each socket carried ('-' for none)."""
    out = []
    for conn in gateway.connections:
        out.append("I" if conn.identify is not None else "R" if conn.resume is not None else "-")
    return out


def stuck_reader_factory(release, epochs=None):
    """A Connection whose reader will not die after its socket is closed, until *release* is set.

    It stands for a reader stuck in a library call; the OS socket is still closed by the
    supervisor's hard close, so no second live socket can exist.
    """
    from sync_gateway.connection import Connection

    class StuckConnection(Connection):
        def _close_os_socket(self):
            super()._close_os_socket()
            if epochs is None or self.epoch in epochs:
                release.wait(30)

    return StuckConnection


def wait_until(predicate, timeout=5.0, step=0.01):
    """For state that has no event to wait on (another process's view, a counter): check in short
    Event waits until *predicate* holds or *timeout* passes."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        pause.wait(step)
    return True


def load_file(name, path):
    """The Python file at *path* (a tool or an example, not a package) imported as module *name*."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
