"""A long-running service: logs every message, stops cleanly on SIGTERM (``systemctl stop``).

Run it under systemd with ``examples/sync-gateway-bot.service``; try it by hand against the fake
gateway (the URL is what ``sync-gateway fake-gateway --rate 1`` prints)::

    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ python examples/systemd_service.py
    kill -TERM <pid>      # or Ctrl-C: both close with code 1000 and exit 0

systemd sends SIGTERM, waits ``TimeoutStopSec``, then SIGKILL; ``client.close()`` takes at most its
``timeout`` (10 s by default), so keep ``TimeoutStopSec`` above that.
"""
import logging
import os
import signal
import sys

import sync_gateway as sg

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # journald adds the time
log = logging.getLogger("mybot")

client = sg.GatewayClient(
    os.environ["DISCORD_TOKEN"],
    intents=sg.Intents.DEFAULT | sg.Intents.MESSAGE_CONTENT,
    gateway_url=os.environ.get("SYNC_GATEWAY_URL"),
)
client.on("MESSAGE_CREATE", lambda event: log.info("message in %s: %s", event.data["channel_id"], event.data["content"]))
client.on_lifecycle(lambda event: event.kind in ("ready", "resumed", "session_lost") and log.info("gateway: %s", event.kind))


def stop(signum, frame):
    log.info("%s: closing", signal.Signals(signum).name)
    client.close()  # code 1000; run_forever() then returns


signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)  # Ctrl-C by hand: the same clean exit
try:
    client.run_forever()
except sg.FatalGatewayError as exc:  # a wrong token (4004), intents not enabled (4014): do not restart
    log.error("%s", exc)
    sys.exit(1)
log.info("closed")
