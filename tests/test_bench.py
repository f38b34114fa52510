"""tools/bench.py runs end to end (tiny numbers) and its --json report has every row. No timing
assertions: only the shape, and that every measured number is a positive number."""
import json
import math
import os
import subprocess
import sys

import pytest

from support import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "tools", "bench.py")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the bench reads /proc and resource where it can")


def _positive(value, what):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{what}: {value!r}"
    assert math.isfinite(value) and value > 0, f"{what} = {value!r}"


def _nonnegative(value, what):
    assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{what}: {value!r}"
    assert math.isfinite(value) and value >= 0, f"{what} = {value!r}"


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    args = [
        sys.executable, BENCH, "--quick", "--json", "--events", "300", "--rss-events", "3000",
        "--idle-seconds", "0.5", "--latency-seconds", "0.3", "--recovery-runs", "1", "--frozen-runs", "1",
    ]
    try:
        proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=280)
    except subprocess.TimeoutExpired as exc:  # subprocess.run has killed it
        pytest.fail(f"bench did not finish in 280 s; stderr: {exc.stderr!r}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.timeout(300)
def test_bench_json_has_every_row(report):
    bench = report["bench"]
    assert bench["events"] == 300 and bench["runs"] == 1 and bench["quick"] is True
    _positive(bench["payload_bytes"], "payload_bytes")
    assert 600 < bench["payload_bytes"] < 900  # ~750-byte MESSAGE_CREATE

    rows = {(r["runner"], r["compress"]): r for r in report["throughput"]}
    sharded = report["sharded"]
    assert sharded["shards"] == 4 and sharded["events"] > 0 and sharded["events_per_s"] > 0
    assert sharded["threads_per_shard"] == 3  # supervisor, reader, dispatcher
    skipped = report["skipped"]
    for compress in ("zlib-stream", "none"):
        for runner in ("floor", "sg-json", "sg-orjson", "discord.py"):
            if runner in skipped:
                assert skipped[runner], f"{runner} skipped without a reason"
                assert (runner, compress) not in rows
                continue
            assert (runner, compress) in rows, f"missing throughput row {runner} {compress}"
            row = rows[(runner, compress)]
            assert row["label"]
            for key in ("events_per_s", "cpu_s", "cpu_us_per_event", "peak_rss_mb", "threads", "vs_floor"):
                _positive(row[key], f"{runner} {compress} {key}")
            assert len(row["runs_events_per_s"]) == 1
            if "discord.py" in skipped:
                assert row["vs_discord_py"] is None
            else:
                _positive(row["vs_discord_py"], f"{runner} {compress} vs_discord_py")
    assert rows[("floor", "none")]["vs_floor"] == pytest.approx(1.0)
    # the decode limit: the same frames decoded from memory; every row's ratio to it
    for compress in ("zlib-stream", "none"):
        assert rows[("limit-json", compress)]["vs_limit"] == pytest.approx(1.0)
        for runner in ("floor", "sg-json", "sg-orjson"):
            if (runner, compress) in rows:
                _positive(rows[(runner, compress)]["vs_limit"], f"{runner} {compress} vs_limit")
    _positive(sharded["vs_one_shard"], "sharded vs_one_shard")
    _positive(sharded["two_processes_vs_one_shard"], "sharded two_processes_vs_one_shard")
    _positive(sharded["two_processes_events_per_s"], "sharded two_processes_events_per_s")
    ish = report["idle_shards"]
    assert ish["added_shards"] == 3 and ish["threads_per_added_shard"] == 3  # supervisor, reader, dispatcher
    assert math.isfinite(ish["rss_per_added_shard_mb"]) and ish["rss_one_shard_mb"] > 0
    assert "floor" not in skipped and "sg-json" not in skipped

    lat = report["latency"]
    for key in ("rate_per_s", "achieved_rate_per_s", "events", "p50_ms", "p99_ms", "max_ms"):
        _positive(lat[key], f"latency {key}")
    assert lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]

    idle = report["idle"]
    _positive(idle["seconds"], "idle seconds")
    _positive(idle["threads"], "idle threads")
    for key in ("cpu_s", "cpu_percent", "context_switches_per_s"):
        _nonnegative(idle[key], f"idle {key}")

    rss = report["rss_growth"]
    assert rss["events"] == 3000 and rss["warmup_events"] == 300
    for key in ("rss_after_warmup_mb", "rss_end_mb", "peak_rss_mb", "events_per_s", "cpu_s"):
        _positive(rss[key], f"rss {key}")
    assert math.isfinite(rss["growth_mb"])
    _nonnegative(rss["backlog_at_warmup"], "rss backlog_at_warmup")

    rec = report["recovery"]
    for key in ("op7_resumed_ms", "frozen_fresh_ready_s"):
        _positive(rec[key]["p50"], f"recovery {key} p50")
        _positive(rec[key]["max"], f"recovery {key} max")
        assert rec[key]["runs"] == 1
    _positive(rec["drain_timeout_s"], "drain_timeout_s")

    server = report["server"]
    assert server["kind"]
    for key in ("stream_encode_per_s", "fake_gateway_dispatch_many_per_s", "floor_via_fake_gateway_per_s"):
        _positive(server[key], f"server {key}")
    assert isinstance(report["notes"], list)


def _bench_module():
    return load_file("bench_tool", BENCH)


@pytest.mark.timeout(300)
def test_bench_table_renders_every_row(report):
    text = _bench_module().render(report)
    for label in ("(a) websocket-client floor", "(b) GatewayClient, json", "(c) discord.py"):
        assert label in text
    for needle in ("latency server-send -> handler", "idle connected client", "RSS growth", "op 7 -> RESUMED",
                   "reconnect(fresh=True) -> READY", "events/s", "x floor", "x d.py", "x limit",
                   "(L) decode limit, json", "each added idle shard"):
        assert needle in text


def test_bench_notes_a_machine_whose_speed_was_not_steady():
    """The decode-limit rows do the same work in one thread every run: their spread is the
    machine's, and the bench says so, with the numbers, instead of printing ratios as if exact."""
    bench = _bench_module()

    def row(runner, runs, compress="zlib-stream"):
        return {"runner": runner, "label": bench.RUNNER_LABELS[runner], "compress": compress, "runs_events_per_s": runs}

    steady = [row("limit-json", [100_000.0, 105_000.0, 110_000.0]), row("sg-json", [50_000.0, 90_000.0])]
    assert bench._unsteady_machine(steady) == []  # 10 % apart; and a client row's spread is not the machine's
    notes = bench._unsteady_machine([row("limit-orjson", [240_000.0, 373_000.0, 250_000.0], "none")])
    assert len(notes) == 1
    assert "(L) decode limit, orjson (none)" in notes[0]
    assert "240,000 to 373,000" in notes[0] and "55% apart" in notes[0]
    assert bench._unsteady_machine([row("limit-json", [100_000.0])]) == []  # one run: no spread to judge
