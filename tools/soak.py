#!/usr/bin/env python
"""Soak: a real client through a freezing proxy against FakeGateway, a random fault every ~2 s.

    python tools/soak.py --minutes 1 [--every 2.0] [--seed N] [--json]

Every fault of the catalogue (``sync_gateway.testing.chaos.FAULTS``) is in the draw, while the fake
dispatches MESSAGE_CREATE continuously. At the end a table shows faults injected/recovered per kind,
events sent vs delivered, lost, duplicated, dropped with a lost session, max live sockets, orphaned
readers, client threads min/max over time and IDENTIFYs used vs required. Exit 0 only when nothing
was lost or duplicated, there was never more than one live socket and the thread count stayed
bounded (and every injected fault recovered). ``--seed`` replays the same sequence of faults.

Runs from a fresh clone after ``pip install -e '.[test]'``; ``tests/test_soak.py`` runs :func:`run`.
"""
import argparse
import json
import logging
import os
import random
import threading
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

try:
    import sync_gateway  # noqa: F401
except ImportError:  # run from a checkout that was not installed: use the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sync_gateway.testing.chaos import FAULTS, ChaosRig, FaultResult, chaos_config  # noqa: E402

log = logging.getLogger("soak")

#: Events per second the fake dispatches during the soak.
RATE = 200.0


def run(
    seconds: float,
    every: float = 2.0,
    seed: Optional[int] = None,
    rate: float = RATE,
    on_fault: Optional[Callable[[str, FaultResult], None]] = None,
    tls: bool = False,
    trickle: Optional[int] = None,
) -> Dict[str, Any]:
    """Soak for *seconds* and return the ledger's summary (plus ``passed`` and ``seed``)."""
    if seed is None:
        seed = random.SystemRandom().randrange(1 << 31)
    stop = threading.Event()
    pieces = None
    if trickle is not None:
        from sync_gateway.testing.proxy import Trickle

        pieces = Trickle(seed=trickle, chunk=(1, 64), pause=(0.0, 0.001), hold_bytes=3, hold=(0.005, 0.05),
                         records=(1, 64))
    with ChaosRig(
        tls=tls,
        trickle=pieces,
        config=chaos_config(),
        heartbeat_interval=1000,
        rate=rate,
        faults=None,  # the whole catalogue
        every=every,
        seed=seed,
        stuck_readers=True,
        on_fault=on_fault,
    ) as rig:
        rig.start()
        rig.start_chaos()
        stop.wait(seconds)  # the soak's duration: nothing to synchronise with
        summary = rig.finish()
    summary["seed"] = seed
    summary["every"] = every
    summary["seconds"] = seconds
    summary["transport"] = ("wss" if tls else "ws") + ("" if trickle is None else f" + trickle (seed {trickle})")
    summary["passed"] = passed(summary)
    return summary


def passed(summary: Dict[str, Any]) -> bool:
    return bool(summary["ok"]) and summary["faults_recovered"] == summary["faults_injected"]


def format_table(summary: Dict[str, Any]) -> str:
    lines: List[str] = []
    lines.append(
        f"soak: {summary['seconds']:g}s, a fault every ~{summary['every']:g}s, seed {summary['seed']}, "
        f"over {summary.get('transport', 'ws')}"
    )
    lines.append("")
    lines.append(f"  {'fault':<20} {'injected':>8} {'recovered':>9} {'unexpected':>10}")
    for kind, c in summary["faults"].items():
        lines.append(f"  {kind:<20} {c['injected']:>8} {c['recovered']:>9} {c['unexpected']:>10}")
    lines.append(f"  {'total':<20} {summary['faults_injected']:>8} {summary['faults_recovered']:>9}")
    never = [f.name for f in FAULTS if f.name not in summary["faults"]]
    if never:
        lines.append(f"  (not drawn this run: {', '.join(never)})")
    lines.append("")
    rows = [
        ("events sent", summary["events_sent"]),
        ("events delivered", summary["events_delivered"]),
        ("lost", summary["lost"]),
        ("duplicated", summary["duplicates"]),
        ("not as sent (mismatched)", summary["mismatched"]),
        ("dropped with a lost session", summary["dropped_with_lost_session"]),
        ("max live sockets", summary["max_live_sockets"]),
        ("orphaned readers", summary["orphaned_readers"]),
        ("threads min / max", f"{summary['threads_min']} / {summary['threads_max']}"),
        ("thread samples over bound", summary["thread_violations"]),
        ("IDENTIFYs used / required", f"{summary['identifies_used']} / {summary['identifies_required']}"),
        ("RESUMEs", summary["resumes"]),
        ("sessions", summary["sessions"]),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        lines.append(f"  {name:<{width}}  {value:>10}")
    lines.append("")
    lines.append("PASS" if summary["passed"] else "FAIL")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to soak (default 1)")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between faults, about (default 2)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault sequence (default: random)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument("-v", "--verbose", action="store_true", help="log faults and reconnects to stderr")
    parser.add_argument("--tls", action="store_true", help="over wss:// with a test certificate (default: ws://)")
    parser.add_argument(
        "--trickle", type=int, default=None, metavar="SEED",
        help="deliver the server's bytes in pieces (1-64 byte TLS records and chunks, bursts held at their "
        "end) with this seed (default: whole writes)",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.every <= 0:
        parser.error("--minutes and --every must be > 0")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run(args.minutes * 60.0, every=args.every, seed=args.seed, tls=args.tls, trickle=args.trickle)
    if args.json:
        sys.stdout.write(json.dumps(summary, sort_keys=True) + "\n")
    else:
        sys.stdout.write(format_table(summary) + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
