"""The benchmark suite runs end to end and writes complete reports (performance targets are not asserted)."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

ENGINE_METRICS = {
    "cold_start", "acquire_p50", "acquire_p99",
    "round_trip_p50", "round_trip_p99", "round_trip_sync_p50", "round_trip_sync_p99", "parent_cpu_p50",
    "image_p50",
    "interrupt_python_p50", "interrupt_python_max", "interrupt_python_message_p50", "deadline_python_p50",
    "interrupt_numpy_p50", "interrupt_numpy_message_p50",
    "start_all", "memory_pss", "memory_pss_same_imports",
}
"""Metrics every run reports, besides one ``throughput_c<N>`` row per concurrency level."""

NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?( \S+)?$")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_benchmark_writes_complete_reports(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("engine.md", "engine.json", "engine_latency.png", "engine_throughput.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    report = json.loads((tmp_path / "engine.json").read_text())
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["versions"]["ipykernel"]
    assert report["engine_status"]["isolation"] in ("bubblewrap", "none")
    metrics = {m["id"]: m for m in report["metrics"]}
    throughput = [key for key in metrics if key.startswith("throughput_c")]
    assert set(metrics) >= ENGINE_METRICS, ENGINE_METRICS - set(metrics)
    assert len(throughput) >= 2
    for key, metric in metrics.items():
        assert math.isfinite(metric["engine"]) and metric["engine"] >= 0, key
        if metric["reference"] is not None:
            assert math.isfinite(metric["reference"]) and metric["reference"] >= 0, key
    assert len(report["raw"]["round_trip"]["engine"]) == len(report["raw"]["round_trip"]["reference"]) > 0

    table = [line for line in (tmp_path / "engine.md").read_text().splitlines() if line.startswith("| ")]
    header, rows = table[0], table[1:]
    assert header.split("|")[1:-1] == [" metric ", " engine ", " reference ", " ratio/overhead ", " target ",
                                       " pass/fail "]
    assert len(rows) == len(metrics)
    by_label = {row.split("|")[1].strip(): [cell.strip() for cell in row.split("|")[2:-1]] for row in rows}
    for metric in metrics.values():
        engine, reference, _, _, verdict = by_label[metric["metric"]]
        assert NUMBER.match(engine), (metric["metric"], engine)
        assert NUMBER.match(reference) if metric["reference"] is not None else reference == "—"
        assert verdict in ("pass", "FAIL", "info")
    assert "| metric | engine | reference |" in done.stdout  # the table went to stdout too
