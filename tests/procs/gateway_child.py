"""A GatewayClient in a process of its own, for the multi-process tests.

    python gateway_child.py --url WS_URL [--gate file:PATH|redis:URL] [--prefix P]
                            [--store file:PATH|redis:URL] [--shard ID/COUNT] [--mc N]

The token comes from $SG_TEST_TOKEN. Prints (flushed) ``LC <kind>`` for each lifecycle event and
``EV <name> <seq>`` for each handled dispatch. Closing stdin closes the client (``BYE``); the
tests also SIGKILL it.
"""
import argparse
import logging
import os
import sys

import sync_gateway as sg
from sync_gateway.gates import FileIdentifyGate, RedisIdentifyGate
from sync_gateway.stores import FileSessionStore, RedisSessionStore

CONFIG = sg.LifecycleConfig(
    hello_timeout=10.0,
    ready_timeout=10.0,
    drain_timeout=1.0,
    force_close_timeout=0.5,
    backoff_base=0.05,
    backoff_max=0.2,
    invalid_session_delay=(0.05, 0.1),
)


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def split(spec):
    kind, _, arg = spec.partition(":")
    return kind, arg


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--gate", default="memory")
    parser.add_argument("--prefix", default="sync_gateway")
    parser.add_argument("--store", default="none")
    parser.add_argument("--shard", default=None)
    parser.add_argument("--mc", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="LOG %(levelname)s %(name)s %(message)s")

    kind, arg = split(args.gate)
    if kind == "file":
        gate = FileIdentifyGate(arg)
    elif kind == "redis":
        gate = RedisIdentifyGate(arg, key_prefix=args.prefix)
    else:
        gate = sg.MemoryIdentifyGate()
    kind, arg = split(args.store)
    store = None
    if kind == "file":
        store = FileSessionStore(arg)
    elif kind == "redis":
        store = RedisSessionStore(arg, key_prefix=args.prefix)
    shard = None
    if args.shard:
        sid, count = args.shard.split("/")
        shard = (int(sid), int(count))

    client = sg.GatewayClient(
        os.environ["SG_TEST_TOKEN"],
        gateway_url=args.url,
        config=CONFIG,
        identify_gate=gate,
        session_store=store,
        shard=shard,
        _max_concurrency=args.mc,
    )
    client.on("*", lambda e: out(f"EV {e.name} {e.seq}"))
    client.on_lifecycle(lambda e: out(f"LC {e.kind}"))
    client.start()
    out("STARTED")
    sys.stdin.read()  # until the test closes our stdin
    client.close()
    out("BYE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
