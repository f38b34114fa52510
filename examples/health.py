"""A liveness check on ``client.status()``, for a container health check or a /health route
(used by ``examples/wsgi_app.py``).

Live: the session is ready and the last heartbeat ACK (or, before the first one, the connection)
is newer than two heartbeat intervals. Every ``*_at`` field of the status is ``time.monotonic()``.
"""
import time

import sync_gateway as sg


def healthy(client: sg.GatewayClient) -> bool:
    st = client.status()
    if st.state != "ready":
        return False
    last = st.last_heartbeat_ack_at or st.connected_at  # no ACK yet just after connecting
    return last is not None and time.monotonic() - last < 2 * (st.heartbeat_interval or 45.0)
