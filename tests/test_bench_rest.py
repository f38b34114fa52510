"""tools/bench_rest.py runs end to end (--quick) and its --json report has every row, each with
no 429 and no error. No timing is asserted: speed is what the bench prints."""
import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "tools", "bench_rest.py")

pytestmark = pytest.mark.timeout(110)


def test_bench_rest_quick_json():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run([sys.executable, BENCH, "--quick", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    expected = ["buckets 5/0.25s", "buckets 10/0.1s", "global 50/s"]
    if shutil.which("redis-server"):
        expected.append("redis, buckets 5/0.25s")
    assert [r["scenario"] for r in rows] == expected
    for row in rows:
        assert row["responses_429"] == 0 and row["errors"] == 0, row
        assert row["elapsed_s"] > 0 and row["ideal_s"] > 0 and row["windows"] > 0
