"""A cron job: connect, wait until ready, do one thing, close. Exit 0 on success, 1 if not ready.

Here the one thing is setting the bot's presence (a status line, op 3) and printing how many guilds
the session started with; put your own work in its place::

    # crontab: every hour
    0 * * * *  DISCORD_TOKEN=... /usr/bin/python3 /opt/mybot/cron_job.py "Nightly report ready"

Against the fake gateway: ``DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ python
examples/cron_job.py "hello"`` (the URL that ``sync-gateway fake-gateway`` prints).
"""
import os
import sys

import sync_gateway as sg

status_text = sys.argv[1] if len(sys.argv) > 1 else "Running the nightly job"
guilds = []

with sg.GatewayClient(os.environ["DISCORD_TOKEN"], gateway_url=os.environ.get("SYNC_GATEWAY_URL")) as client:
    client.on("READY", lambda event: guilds.extend(event.data["guilds"]))
    client.start()
    if not client.wait_until_ready(timeout=30):
        print("not ready after 30 s:", client.status().last_error, file=sys.stderr)
        sys.exit(1)  # __exit__ still closes the client
    client.update_presence(
        status="online",
        activities=[{"name": "Custom Status", "type": 4, "state": status_text}],  # 4: custom status
        timeout=10,
    )
    print(f"presence set to {status_text!r}; the session started with {len(guilds)} guild(s)")
# leaving the with block closed the connection (code 1000) and joined every thread
