"""Recipes for testing a bot against FakeGateway with the pytest plugin's fixtures (the
``testing`` extra registers them): op 7, op 9, a fatal close and a zombie connection.
Run with ``pytest examples/test_recipes.py``.
"""
import threading


def test_op7_is_resumed_and_nothing_is_missed(fake_gateway, gateway_client):
    got, resumed = threading.Event(), threading.Event()
    gateway_client.on("MESSAGE_CREATE", lambda event: got.set())
    gateway_client.on_lifecycle(lambda event: event.kind == "resumed" and resumed.set())
    fake_gateway.connections[-1].send_op(7)  # op 7: reconnect and resume
    fake_gateway.dispatch("MESSAGE_CREATE", {"content": "hi"})  # replayed on RESUME if missed
    assert resumed.wait(5) and got.wait(5)
    assert fake_gateway.connections[-1].resume is not None  # the new socket RESUMEd


def test_op9_starts_a_new_session(fake_gateway, gateway_client):
    lost = threading.Event()
    gateway_client.on_lifecycle(lambda event: event.kind == "session_lost" and lost.set())
    old = gateway_client.status().session_id
    fake_gateway.connections[-1].invalid_session(False)  # op 9, not resumable
    assert lost.wait(5)  # rebuild your caches here
    fake_gateway.connections[-1].wait_for(op=2)  # a new IDENTIFY
    assert gateway_client.wait_until_ready(5)
    assert gateway_client.status().session_id not in (None, old)


def test_a_fatal_close_stops_the_client(fake_gateway, gateway_client):
    fatal = threading.Event()
    gateway_client.on_lifecycle(lambda event: event.kind == "fatal" and fatal.set())
    fake_gateway.connections[-1].close(4014)  # "disallowed intents": never retried
    assert fatal.wait(5)
    assert gateway_client.status().state == "failed"
    assert len(fake_gateway.connections) == 1  # no reconnect


def test_a_zombie_connection_is_replaced(fake_gateway, gateway_client):
    resumed = threading.Event()
    gateway_client.on_lifecycle(lambda event: event.kind == "resumed" and resumed.set())
    fake_gateway.ack_heartbeats = False  # the socket stays open, heartbeats go unanswered
    fake_gateway.wait_for_connections(2, timeout=10)  # no ACK by the next beat (2 s here): a new socket
    fake_gateway.ack_heartbeats = True
    assert resumed.wait(5)  # and the session was resumed on it
