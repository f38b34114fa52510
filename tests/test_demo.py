"""`sync-gateway demo` (sync_gateway.demo.run_demo): five faults recovered, every number from the ledger."""
import io
import json
import re

import pytest

from sync_gateway.demo import _Display, run_demo

pytestmark = pytest.mark.timeout(60)


def table_value(text, label):
    match = re.search(rf"^\s*{re.escape(label)}\s+(\d+)\s*$", text, re.M)
    assert match, f"no {label!r} row in:\n{text}"
    return int(match.group(1))


def test_demo_recovers_five_faults_and_loses_nothing():
    out = io.StringIO()
    assert run_demo(seconds=8, out=out, tty=False) == 0, out.getvalue()
    text = out.getvalue()
    assert "\r" not in text  # piped: plain lines only
    assert table_value(text, "faults injected") >= 5
    assert table_value(text, "faults recovered") == table_value(text, "faults injected")
    assert table_value(text, "events delivered") > 0
    assert table_value(text, "events lost") == 0
    assert table_value(text, "duplicate events") == 0
    assert table_value(text, "max live sockets") == 1
    assert table_value(text, "IDENTIFYs used") == 3  # the first, the forced fresh one, after op 9
    for kind in ("frozen-fresh", "op7", "op9-not-resumable", "zombie", "hello-stall"):
        assert f"fault {kind}: injected" in text and f"fault {kind}: recovered" in text
    assert "lifecycle session_lost" in text and "lifecycle resumed" in text
    assert "interval 0" in text  # the demo says its IDENTIFY gate is not Discord's
    assert "OK: every invariant held" in text
    # the questions a first run raises are answered in the output itself
    assert "timeouts are shortened" in text and "heartbeat every 1 s" in text and "HELLO timeout 1.5 s" in text
    assert "fault hello-stall: injected (op 7, then no HELLO on the next connection" in text
    assert "hello-stall shows an op 7 first" in text
    dropped = re.search(r"(\d+) dropped with a lost session \(expected\)", text).group(1)
    assert f"* {dropped} dropped with a lost session (expected): events the fake had sent" in text
    assert "plus one reader thread per live socket" in " ".join(text.split())


def test_demo_json_is_one_object():
    out = io.StringIO()
    code = run_demo(seconds=2, json_output=True, out=out, tty=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert code == 0, summary
    assert summary["passed"] and summary["ok"]
    assert summary["faults_recovered"] == summary["faults_injected"] >= 5
    assert (summary["lost"], summary["duplicates"], summary["max_live_sockets"]) == (0, 0, 1)
    assert summary["identify_gate_interval"] == 0


def test_tty_display_redraws_one_status_line():
    out = io.StringIO()
    d = _Display(out, tty=True, quiet=False)
    d.status("state ready")
    d.line("fault op7: injected")
    d.status("state resuming")
    d.end_status()
    text = out.getvalue()
    assert text.startswith("\r\x1b[Kstate ready")
    assert "\r\x1b[Kfault op7: injected\nstate ready" in text  # a permanent line, then the status again
    assert text.endswith("\r\x1b[K")


def test_notes_follow_the_numbers_of_the_run():
    from sync_gateway.demo import DEMO_CONFIG, DEMO_HEARTBEAT_MS, explain_summary, timing_note

    base = {"faults": {"op7": {}}, "dropped_with_lost_session": 0, "threads_min": 3, "threads_max": 3}
    notes = " ".join(explain_summary(base))
    assert "hello-stall" not in notes  # no such fault in this run: nothing to explain
    assert "threads 3..3" in notes and "no reader" not in notes
    notes = " ".join(explain_summary(dict(base, faults={"hello-stall": {}}, threads_min=2, threads_max=3)))
    assert "hello-stall shows an op 7 first" in notes
    assert "threads 2..3" in notes and "no reader, hence the 2" in notes and "README's 3 threads" in notes
    note = timing_note()
    assert f"HELLO timeout {DEMO_CONFIG.hello_timeout:g} s" in note and "defaults 20 s and 15 s" in note
    assert f"heartbeat every {DEMO_HEARTBEAT_MS / 1000:g} s" in note
