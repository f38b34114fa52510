"""``sync-gateway demo``: a real client survives five classic faults while events stream, no token.

Everything runs in this process on 127.0.0.1: a :class:`~sync_gateway.testing.FakeGateway`, a
:class:`~sync_gateway.testing.FreezingProxy` in front of it, and a real
:class:`~sync_gateway.GatewayClient` through the proxy. A feeder dispatches MESSAGE_CREATE at a steady
rate while the chaos engine injects, spaced over the run: a frozen socket + forced fresh reconnect,
op 7, op 9, a zombie connection, a HELLO stall. Every number of the closing summary is counted by
the :class:`~sync_gateway.testing.chaos.Ledger` (what the fake sent vs what the handlers got), never
assumed. The exit code is 0 only if every invariant held and every injected fault recovered.

Needs the ``testing`` extra (``websockets``). The CLI wrapper lives in ``cli.py``; this module owns
the output (it writes to *out*, the CLI's stdout).
"""
import collections
import json
import sys
import textwrap
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, TextIO, Tuple

from ._log import get_logger
from .protocol import LifecycleConfig

log = get_logger(__name__)

__all__ = ["run_demo", "DEMO_CONFIG", "DEMO_RATE", "format_summary", "explain_summary", "timing_note"]

#: Short but sane timeouts, so that each recovery fits in a second or two on loopback.
DEMO_CONFIG = LifecycleConfig(
    hello_timeout=1.5,
    ready_timeout=1.5,
    drain_timeout=1.0,
    force_close_timeout=0.5,
    backoff_base=0.1,
    backoff_max=0.5,
    invalid_session_delay=(0.1, 0.4),
)
#: MESSAGE_CREATE events per second the fake dispatches.
DEMO_RATE = 200.0
#: Heartbeat interval the fake asks for (ms): short, so a zombie is noticed within ~2 s.
DEMO_HEARTBEAT_MS = 1000
#: How often the live status line is redrawn on a terminal (seconds).
_REFRESH = 0.25
#: Time kept back from ``seconds + 10`` for teardown.
_TEARDOWN_BUDGET = 3.0

_TIMING_NOTE = (
    "timeouts are shortened so that each fault recovers in a second or two: heartbeat every {hb:g} s "
    "(Discord asks for ~41.25 s), HELLO timeout {hello:g} s and READY timeout {ready:g} s (defaults "
    "{d_hello:g} s and {d_ready:g} s), reconnect backoff {b0:g}..{b1:g} s (default {d_b0:g}..{d_b1:g} s); "
    "a real client keeps the defaults"
)

_GATE_NOTE = (
    "the IDENTIFY gate runs with interval 0 here (demo only; Discord allows one IDENTIFY per 5 s "
    "per max_concurrency bucket, and the default gate keeps to that)"
)


class _Display:
    """All output of the demo. Thread-safe: the chaos thread, the dispatcher thread (lifecycle) and
    the main thread (status line) all write here."""

    def __init__(self, out: TextIO, tty: bool, quiet: bool) -> None:
        self.out = out
        self.tty = tty
        self.quiet = quiet
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._status = ""
        #: rebuilds the status line; called on redraws after a permanent line, so counts are fresh
        self.status_source: Optional[Callable[[], str]] = None
        self.faults_injected = 0
        self.faults_recovered = 0

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self.started:6.2f}s]"

    def line(self, text: str) -> None:
        if self.quiet:
            return
        fresh = None
        if self.tty and self.status_source is not None:
            try:
                fresh = self.status_source()
            except Exception:  # the client is closing: keep the last status
                fresh = None
        with self._lock:
            if self.tty and self._status:
                self.out.write("\r\x1b[K")
            self.out.write(text + "\n")
            if self.tty and self._status:
                self._status = fresh or self._status
                self.out.write(self._status)
            self.out.flush()

    def status(self, text: str) -> None:
        if self.quiet or not self.tty:
            return
        with self._lock:
            self._status = text
            self.out.write("\r\x1b[K" + text)
            self.out.flush()

    def end_status(self) -> None:
        if self.quiet or not self.tty:
            return
        with self._lock:
            if self._status:
                self.out.write("\r\x1b[K")
                self.out.flush()
            self._status = ""

    # callbacks --------------------------------------------------------------------------------

    def on_fault(self, phase: str, result: Any) -> None:
        if phase == "injected":
            self.faults_injected += 1
            what = _fault_description(result.kind)
            self.line(f"{self._stamp()} fault {result.kind}: injected ({what}{'; ' if what else ''}expect {result.expected})")
        elif phase == "recovered":
            self.faults_recovered += 1
            how = {"resumed": "session resumed", "ready": "new session", "none": "socket stayed up"}.get(
                result.outcome, result.outcome
            )
            extra = f" (expected {result.expected})" if result.unexpected else ""
            self.line(f"{self._stamp()} fault {result.kind}: recovered in {result.took:.2f}s, {how}{extra}")
        else:
            self.line(f"{self._stamp()} fault {result.kind}: NOT recovered ({result.outcome}) {result.detail}".rstrip())

    def on_lifecycle(self, event: Any) -> None:
        if self.tty:
            return  # on a terminal the status line shows the state
        reason = f": {event.reason}" if event.reason else ""
        code = f" code {event.code}" if event.code is not None else ""
        self.line(f"{self._stamp()} lifecycle {event.kind} (epoch {event.epoch}{code}){reason}")


class _Rate:
    """Events per second over the last second, from the ledger's delivered count."""

    def __init__(self, count: Callable[[], int], window: float = 1.0) -> None:
        self._count = count
        self._window = window
        self._points: Deque[Tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        now, n = time.monotonic(), self._count()
        with self._lock:
            self._points.append((now, n))
            while len(self._points) > 2 and now - self._points[1][0] >= self._window:
                self._points.popleft()
            t0, n0 = self._points[0]
        return (n - n0) / (now - t0) if now > t0 else 0.0


def _status_line(client: Any, display: _Display, rate: float) -> str:
    st = client.status()
    latency = f"{st.latency * 1000:.0f} ms" if st.latency is not None else "-"
    return (
        f"state {st.state:<12} epoch {st.epoch:<3} seq {st.seq if st.seq is not None else '-':<6} "
        f"latency {latency:<7} {rate:6.0f} events/s  "
        f"faults {display.faults_injected} injected, {display.faults_recovered} recovered"
    )


def _fault_description(kind: str) -> str:
    from .testing.chaos import get_fault

    try:
        return get_fault(kind).description
    except ValueError:
        return ""


def timing_note(config: LifecycleConfig = DEMO_CONFIG, heartbeat_ms: int = DEMO_HEARTBEAT_MS) -> str:
    """Says how the demo's timeouts differ from the defaults a real client runs with."""
    d = LifecycleConfig()
    return _TIMING_NOTE.format(
        hb=heartbeat_ms / 1000, hello=config.hello_timeout, ready=config.ready_timeout,
        d_hello=d.hello_timeout, d_ready=d.ready_timeout, b0=config.backoff_base, b1=config.backoff_max,
        d_b0=d.backoff_base, d_b1=d.backoff_max,
    )


def explain_summary(summary: Dict[str, Any]) -> List[str]:
    """Notes under the summary: the questions its numbers raise, answered from the run itself."""
    notes: List[str] = []
    if "hello-stall" in summary.get("faults", {}):
        notes.append(
            "hello-stall shows an op 7 first: a HELLO can only go missing on a new connection, so the fault "
            "asks the client to reconnect (op 7) and the fake then sends no HELLO. The client gives up on the "
            f"silent socket after its {DEMO_CONFIG.hello_timeout:g} s HELLO timeout and resumes on a third one."
        )
    dropped = summary.get("dropped_with_lost_session")
    if dropped is not None:
        notes.append(
            f"{dropped} dropped with a lost session (expected): events the fake had sent on a session that was "
            "then invalidated (op 9, the forced fresh IDENTIFY) before the client read them. Discord never "
            "replays a lost session, so no client can get them; they are not 'events lost', which counts "
            "events of a live or resumed session that never reached a handler (that must be 0)."
        )
    lo, hi = summary.get("threads_min"), summary.get("threads_max")
    if lo is not None and hi is not None:
        note = (
            f"threads {lo}..{hi}: a client runs a supervisor and a dispatcher thread all the time, plus one "
            "reader thread per live socket"
        )
        if lo < hi:
            note += f"; between two sockets (during a reconnect) there is no reader, hence the {lo}"
        notes.append(note + ". The README's 3 threads is a connected client.")
    return notes


def format_summary(summary: Dict[str, Any]) -> str:
    """The closing table of the demo (every number from the ledger)."""
    rows = [
        ("faults injected", summary["faults_injected"]),
        ("faults recovered", summary["faults_recovered"]),
        ("events delivered", summary["events_delivered"]),
        ("events lost", summary["lost"]),
        ("duplicate events", summary["duplicates"]),
        ("max live sockets", summary["max_live_sockets"]),
        ("IDENTIFYs used", summary["identifies_used"]),
    ]
    width = max(len(name) for name, _ in rows)
    lines = ["", "summary"]
    for name, value in rows:
        lines.append(f"  {name:<{width}}  {value:>8}")
    lines.append("")
    lines.append(f"  {'fault':<18} {'injected':>8} {'recovered':>9}  recovery")
    for kind, c in summary["faults"].items():
        lines.append(f"  {kind:<18} {c['injected']:>8} {c['recovered']:>9}  {summary['expected'].get(kind, '')}")
    lines.append("")
    lines.append(
        f"  also: {summary['events_sent']} events sent, {summary['dropped_with_lost_session']} dropped with a "
        f"lost session (expected), {summary['identifies_required']} IDENTIFYs required, "
        f"{summary['resumes']} RESUMEs, threads {summary['threads_min']}..{summary['threads_max']}"
    )
    notes = explain_summary(summary)
    if notes:
        lines.append("")
        lines.append("  notes:")
        for note in notes:
            lines.extend(textwrap.wrap(note, width=96, initial_indent="  * ", subsequent_indent="    "))
    return "\n".join(lines)


def run_demo(
    seconds: float = 20.0,
    json_output: bool = False,
    out: Optional[TextIO] = None,
    tty: Optional[bool] = None,
) -> int:
    """Run the demo for about *seconds* (at least long enough for its five faults) and return the
    exit code: 0 only if every invariant held and every injected fault recovered, 1 otherwise.

    Output goes to *out* (default ``sys.stdout``): a live status line on a terminal (*tty*, default
    ``out.isatty()``), plain lines when piped, then a summary table; with *json_output*, only one
    JSON object (the summary). Finishes within ``seconds + 10`` and leaves no thread behind.
    """
    from .testing.chaos import DEMO_FAULTS, ChaosRig, get_fault

    if out is None:
        out = sys.stdout
    if tty is None:
        try:
            tty = bool(out.isatty())
        except (AttributeError, ValueError):
            tty = False
    seconds = max(0.5, float(seconds))
    started = time.monotonic()
    hard_deadline = started + seconds + 10.0 - _TEARDOWN_BUDGET
    display = _Display(out, tty, quiet=json_output)
    spacing = seconds / 6.0
    summary: Optional[Dict[str, Any]] = None
    error: Optional[str] = None
    rig: Optional[ChaosRig] = None
    try:
        rig = ChaosRig(
            config=DEMO_CONFIG,
            heartbeat_interval=DEMO_HEARTBEAT_MS,
            rate=DEMO_RATE,
            faults=DEMO_FAULTS,
            every=spacing,
            order="cycle",
            max_faults=len(DEMO_FAULTS),
            stuck_readers=False,
            identify_interval=0.0,
            on_fault=display.on_fault,
            on_lifecycle=display.on_lifecycle,
        )
        display.line(
            f"sync-gateway demo: a FakeGateway on {rig.gateway.url}, the client connects through a "
            f"freezing proxy at {rig.proxy.url if rig.proxy else '-'}"
        )
        display.line(f"{len(DEMO_FAULTS)} faults over {seconds:g}s (one every {spacing:.2f}s), "
                     f"{DEMO_RATE:g} MESSAGE_CREATE/s; {_GATE_NOTE}")
        display.line(timing_note())
        rig.start(ready_timeout=min(10.0, max(2.0, hard_deadline - time.monotonic())))
        rig.start_chaos()
        rate = _Rate(rig.ledger.delivered_count)
        client = rig.client
        display.status_source = lambda: _status_line(client, display, rate())
        done = rig.chaos.done
        pacer = threading.Event()  # never set: it paces the status line, it synchronises nothing
        while True:
            now = time.monotonic()
            if (now - started >= seconds and done.is_set()) or now >= hard_deadline:
                break
            pacer.wait(_REFRESH)
            display.status(display.status_source())
        if not done.is_set():
            error = "the faults did not all recover in time"
            rig.chaos.stop(timeout=1.0)  # end the fault in flight now (it counts as not recovered)
        display.end_status()
        display.status_source = None
        left = started + seconds + 10.0 - time.monotonic()
        summary = rig.finish(settle_timeout=max(0.5, min(5.0, left - 2.5)), close_timeout=max(0.5, min(5.0, left - 1.5)))
    except Exception as exc:  # report, never hang: the rig is torn down below
        log.exception("demo failed")
        error = f"{type(exc).__name__}: {exc}"
    finally:
        display.end_status()
        if rig is not None:
            rig.close()

    if summary is None:
        summary = {"ok": False, "error": error}
        if json_output:
            out.write(json.dumps(summary) + "\n")
        else:
            out.write(f"\ndemo failed: {error}\n")
        out.flush()
        return 1
    summary["expected"] = {name: get_fault(name).expect for name in DEMO_FAULTS}
    summary["seconds"] = seconds
    summary["identify_gate_note"] = _GATE_NOTE
    summary["timing_note"] = timing_note()
    all_recovered = (
        summary["faults_injected"] >= len(DEMO_FAULTS) and summary["faults_recovered"] == summary["faults_injected"]
    )
    passed = bool(summary["ok"]) and all_recovered and summary.get("settled") is not False and error is None
    summary["passed"] = passed
    if error is not None:
        summary["error"] = error
    if json_output:
        out.write(json.dumps(summary, sort_keys=True) + "\n")
    else:
        out.write(format_summary(summary) + "\n")
        problems: List[str] = []
        if summary["lost"]:
            problems.append(f"{summary['lost']} events lost")
        if summary["duplicates"]:
            problems.append(f"{summary['duplicates']} duplicates")
        if summary["mismatched"]:
            problems.append(f"{summary['mismatched']} events not as sent")
        if summary["max_live_sockets"] != 1:
            problems.append(f"{summary['max_live_sockets']} live sockets at once")
        if not summary["threads_bounded"]:
            problems.append("thread count exceeded its bound")
        if not all_recovered:
            problems.append(f"{summary['faults_recovered']}/{summary['faults_injected']} faults recovered")
        if summary.get("settled") is False:
            problems.append("handlers did not catch up at the end")
        if error is not None:
            problems.append(error)
        verdict = "OK: every invariant held, every fault recovered" if passed else "FAILED: " + "; ".join(problems)
        out.write(f"\n{verdict}\n")
    out.flush()
    return 0 if passed else 1
