"""Serve Prometheus metrics for a running client: ``curl localhost:9108/metrics``. Ctrl-C stops it.

Against the fake gateway::

    sync-gateway fake-gateway --rate 1     # prints gateway_url: ws://127.0.0.1:PORT/
    DISCORD_TOKEN=any SYNC_GATEWAY_URL=ws://127.0.0.1:PORT/ python examples/metrics_exporter.py

Needs the ``metrics`` extra (``pip install -e '.[metrics]'`` from a checkout).
"""
import os

import sync_gateway as sg
from sync_gateway.metrics import instrument

client = sg.GatewayClient(os.environ["DISCORD_TOKEN"], gateway_url=os.environ.get("SYNC_GATEWAY_URL"))

metrics = instrument(client)  # on prometheus_client's REGISTRY, before or after start()
server = metrics.serve(int(os.environ.get("METRICS_PORT", "9108")))  # metrics.close() undoes both
print("metrics at", server.url, flush=True)

try:
    client.run_forever()
except KeyboardInterrupt:
    pass
finally:
    metrics.close()
