"""Handler registry and dispatcher behaviour that users rely on (UX.md rules 3, 4, 5, 12, 13)."""
import _thread
import logging
import threading

import pytest

import sync_gateway as sg
from sync_gateway import dispatch as dispatch_mod
from sync_gateway.dispatch import Dispatcher, Registry
from sync_gateway.protocol import Dispatch, LifecycleEvent
from support import wait_until

pytestmark = pytest.mark.timeout(30)


def run_items(registry, items):
    d = Dispatcher(registry, name="sync_gateway-dispatch-test")
    d.start()
    d.put_many(items)
    d.stop()
    d.thread.join(5)
    assert not d.thread.is_alive()
    return d


def test_handlers_in_order_wildcard_after_specific_and_lifecycle():
    reg = Registry()
    seen = []
    reg.add("A", lambda e: seen.append(("A", e.seq)))
    reg.add("*", lambda e: seen.append(("*", e.seq)))
    reg.add_lifecycle(lambda e: seen.append(("life", e.kind)))
    run_items(reg, [Dispatch("A", {}, 1), LifecycleEvent("ready", 0.0), Dispatch("B", {}, 2)])
    assert seen == [("A", 1), ("*", 1), ("life", "ready"), ("*", 2)]


def test_raising_handler_logged_with_names_and_others_still_run(caplog):
    reg = Registry()
    seen = []

    def bad(event):
        raise ValueError("nope")

    reg.add("A", bad)
    reg.add("A", seen.append)
    with caplog.at_level(logging.ERROR, logger="sync_gateway"):
        d = run_items(reg, [Dispatch("A", {}, 1), Dispatch("A", {}, 2)])
    assert [e.seq for e in seen] == [1, 2] and d.handler_errors == 2
    rec = caplog.records[0]
    assert "bad" in rec.getMessage() and "A" in rec.getMessage() and rec.exc_info


def test_slow_handler_warning_names_it(monkeypatch, caplog):
    monkeypatch.setattr(dispatch_mod, "SLOW_HANDLER_SECONDS", 0.05)
    reg = Registry()
    pause = threading.Event()

    def slowpoke(event):
        pause.wait(0.1)

    reg.add("A", slowpoke)
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        run_items(reg, [Dispatch("A", {}, 1)])
    assert any("slowpoke" in r.getMessage() and "ThreadPoolExecutor" in r.getMessage() for r in caplog.records)


def test_backlog_warning(monkeypatch, caplog):
    monkeypatch.setattr(dispatch_mod, "BACKLOG_WARNING", 10)
    reg = Registry()
    d = Dispatcher(reg, name="sync_gateway-dispatch-test")
    with caplog.at_level(logging.WARNING, logger="sync_gateway"):
        for i in range(3):
            d.put_many([Dispatch("A", {}, 10 * i + j) for j in range(10)])  # what the supervisor calls
    assert any("waiting for handlers" in r.getMessage() for r in caplog.records)


def _run_of(count, start=2):
    from sync_gateway.codec import cut_dispatch
    from sync_gateway.protocol import DeliverRun

    texts = [b'{"t":"A","s":%d,"op":0,"d":{"n":%d}}' % (seq, seq) for seq in range(start, start + count)]
    return DeliverRun([cut_dispatch(t) for t in texts], "session", 0, 1.0)


def test_backlog_counts_the_events_of_a_run_and_pace_waits_for_the_handlers_bounded(monkeypatch):
    """A reader paces itself only while the handlers are more than PACE_BACKLOG events behind:
    it waits until the dispatcher takes the queue, and never longer than PACE_SECONDS."""
    monkeypatch.setattr(dispatch_mod, "PACE_BACKLOG", 10)
    monkeypatch.setattr(dispatch_mod, "PACE_SECONDS", 30.0)
    reg = Registry()
    seen = []
    reg.add("A", lambda e: seen.append(e.seq))
    d = Dispatcher(reg, name="sync_gateway-dispatch-test")
    d.put_many([_run_of(5)])
    assert d.backlog() == 5
    d.pace()  # not behind: returns at once
    assert d.paced == 0
    d.put_many([_run_of(10, start=7)])
    assert d.backlog() == 15
    waited = threading.Event()

    def reader():
        d.pace()
        waited.set()

    t = threading.Thread(target=reader, name="pacing-reader")
    t.start()
    assert wait_until(lambda: d._pacing == 1)
    assert not waited.is_set()  # behind: the reader waits...
    d.start()  # ... until the handlers take the queue
    assert waited.wait(10)
    t.join(5)
    d.stop()
    d.thread.join(5)
    assert seen == list(range(2, 17)) and d.paced == 1 and d.backlog() == 0


def test_pace_never_waits_longer_than_pace_seconds(monkeypatch):
    monkeypatch.setattr(dispatch_mod, "PACE_BACKLOG", 10)
    monkeypatch.setattr(dispatch_mod, "PACE_SECONDS", 0.05)
    d = Dispatcher(Registry(), name="sync_gateway-dispatch-test")  # never started: nobody takes the queue
    d.put_many([_run_of(20)])
    done = threading.Event()
    t = threading.Thread(target=lambda: (d.pace(), done.set()), name="pacing-reader")
    t.start()
    assert done.wait(5)  # bounded (0.05 s here), not until the handlers catch up
    t.join(5)
    assert d.paced == 1


def test_off_and_registration_guards():
    reg = Registry()
    fn = reg.add
    with pytest.raises(TypeError):
        reg.add("", print)
    with pytest.raises(TypeError):
        reg.add_lifecycle("x")
    assert not reg.remove("A", fn)
    assert not reg.remove_lifecycle(fn)


def test_decorator_and_direct_forms_return_the_function():
    client = sg.GatewayClient("abcdefghijk-token")

    @client.on("MESSAGE_CREATE")
    def a(event):
        pass

    def b(event):
        pass

    assert a.__name__ == "a" and client.on("GUILD_CREATE", b) is b
    assert client.on_lifecycle(b) is b and client.off_lifecycle(b)


def test_run_forever_ctrl_c_closes_and_reraises(gateway):
    from support import FAST, TOKEN

    client = sg.GatewayClient(TOKEN, gateway_url=gateway.url, config=FAST,
                              identify_gate=sg.MemoryIdentifyGate(interval=0, margin=0))

    def on_life(event):
        if event.kind == "ready":
            _thread.interrupt_main()

    client.on_lifecycle(on_life)
    try:
        with pytest.raises(KeyboardInterrupt):
            client.run_forever()
    finally:
        client.close()  # already closed when it passes; else the client must not outlive the test
    assert client.status().state == "closed"
    assert gateway.connections[0].closed.wait(5) and gateway.connections[0].client_close_code == 1000
    assert client.threads() == []
