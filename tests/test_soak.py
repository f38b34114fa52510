"""A ~30 s soak in-process, through the very code of tools/soak.py: every fault of the catalogue in
the draw, events dispatched throughout, and the invariants checked by the ledger."""
import os

import pytest

from support import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
SOAK_PATH = os.path.join(os.path.dirname(HERE), "tools", "soak.py")

#: Fixed so a failure can be replayed with `python tools/soak.py --seed N`; SOAK_SEED overrides it.
SEED = int(os.environ.get("SOAK_SEED", "20240611"))


def load_soak():
    return load_file("soak_tool", SOAK_PATH)


@pytest.mark.timeout(120)
def test_soak_30s_keeps_every_invariant():
    soak = load_soak()
    summary = soak.run(30.0, every=1.5, seed=SEED)
    table = soak.format_table(summary)
    assert summary["faults_injected"] >= 10, table
    assert summary["faults_recovered"] == summary["faults_injected"], table
    assert summary["lost"] == 0, table
    assert summary["duplicates"] == 0, table
    assert summary["mismatched"] == 0, table
    assert summary["max_live_sockets"] == 1, table
    assert summary["threads_bounded"], table
    assert summary["settled"], table
    assert summary["identifies_used"] == summary["identifies_required"], table
    assert summary["events_delivered"] + summary["dropped_with_lost_session"] == summary["events_sent"], table
    assert summary["passed"] and "PASS" in table


def test_soak_cli_parses_and_formats(capsys):
    soak = load_soak()
    with pytest.raises(SystemExit):
        soak.main(["--minutes", "0"])
    assert "--minutes" in capsys.readouterr().err
