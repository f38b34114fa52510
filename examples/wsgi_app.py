"""A web app with a gateway client inside: any WSGI server (gunicorn, uwsgi, Flask's, or the
standard library's wsgiref below) serves it, and the client runs on its own threads.

The client is built and started once, when the module is imported (one per worker process), and
closed at interpreter exit. Two routes: ``/health`` (200 when connected and heartbeats are
acknowledged, else 503: a container health check; see ``health.py``) and ``/messages`` (the last
20, as JSON). Ctrl-C or SIGTERM stops the server::

    DISCORD_TOKEN=... gunicorn --workers 1 wsgi_app:app         # with gunicorn (not --preload:
                                                                 # threads do not survive a fork)
    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ python examples/wsgi_app.py --port 8000

With Flask, keep the client part as it is and route to ``healthy(client)`` and ``recent``.
"""
import argparse
import atexit
import collections
import json
import os
import signal
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import sync_gateway as sg
from health import healthy  # examples/health.py

client = sg.GatewayClient(
    os.environ["DISCORD_TOKEN"],
    intents=sg.Intents.DEFAULT | sg.Intents.MESSAGE_CONTENT,
    gateway_url=os.environ.get("SYNC_GATEWAY_URL"),
)
recent = collections.deque(maxlen=20)  # appended on the client's thread, read on the server's


@client.on("MESSAGE_CREATE")
def remember(event):
    recent.append({"author": event.data["author"]["username"], "content": event.data["content"]})
    print("message:", event.data["content"], flush=True)


client.start()  # returns at once
atexit.register(client.close)


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    if path == "/health":
        ok = healthy(client)
        status, body = ("200 OK" if ok else "503 Service Unavailable"), {"ok": ok, "state": client.status().state}
    elif path == "/messages":
        status, body = "200 OK", list(recent)
    else:
        status, body = "404 Not Found", {"error": "try /health or /messages"}
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class QuietHandler(WSGIRequestHandler):
    def log_request(self, *args):  # one line per request is noise here
        pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve the app with the standard library's wsgiref")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    args = parser.parse_args()
    with make_server("127.0.0.1", args.port, app, handler_class=QuietHandler) as server:
        # Ctrl-C and SIGTERM stop the server from a handler, not by KeyboardInterrupt: wsgiref
        # would log and swallow one that lands while a request is answered. shutdown() waits for
        # serve_forever() to return, so it runs on a thread of its own.
        def stop(signum, frame):
            threading.Thread(target=server.shutdown, daemon=True).start()

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        client.wait_until_ready(timeout=30)
        print(f"serving on http://127.0.0.1:{server.server_port}/ (state: {client.status().state})", flush=True)
        server.serve_forever()
