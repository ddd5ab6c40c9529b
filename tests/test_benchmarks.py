"""The benchmark suite runs end to end and writes complete reports (performance targets are not asserted)."""

from __future__ import annotations

import json
import math
import os
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
"""Engine metrics every run reports, besides one ``throughput_c<N>`` row per concurrency level."""

ENV_METRICS = {
    *(f"step_{cell}_{q}" for cell in ("assignment", "print", "figure") for q in ("p50", "p90")),
    "reset_warm_p50", "reset_warm_p90", "reset_uncached_p50", "reset_uncached_p90", "reset_uncached_jpeg_p50",
    "reset_to_first_result_p50", "reset_back_to_back_p50", "reset_back_to_back_p90",
    "reset_back_to_back_to_first_result_p50", "answer_step_p50",
    *(f"reset_part_{part}_p50" for part in ("verify", "open_session_empty", "open_session_image", "cached_view",
                                            "decode", "resize", "close_session")),
    "vector_reset", "vector_reset_to_first_result", "vector_close",
}
"""Env metrics every run reports, besides ``vector_steps_per_s_n<N>`` and ``vector_step_p50_n<N>`` per level."""

NUMBER = re.compile(r"^[+-]?\d+(\.\d+)?( \S+)?$")


def _check_report(out: Path, name: str, header: list[str], expected: set[str]) -> dict:
    """``<name>.json`` has the expected metrics with finite values, and ``<name>.md`` a matching table."""
    report = json.loads((out / f"{name}.json").read_text())
    metrics = {m["id"]: m for m in report["metrics"]}
    assert set(metrics) >= expected, expected - set(metrics)
    for key, metric in metrics.items():
        assert math.isfinite(metric["value"]) and metric["value"] >= 0, key
        if metric["reference"] is not None:
            assert math.isfinite(metric["reference"]) and metric["reference"] >= 0, key

    table = [line for line in (out / f"{name}.md").read_text().splitlines() if line.startswith("| ")]
    assert [cell.strip() for cell in table[0].split("|")[1:-1]] == header
    rows = table[1:]
    assert len(rows) == len(metrics)
    by_label = {row.split("|")[1].strip(): [cell.strip() for cell in row.split("|")[2:-1]] for row in rows}
    assert len(by_label) == len(rows)  # one row per metric, labels unique
    for metric in metrics.values():
        value, reference, _, _, verdict = by_label[metric["metric"]]
        assert NUMBER.match(value), (metric["metric"], value)
        assert NUMBER.match(reference) if metric["reference"] is not None else reference == "—"
        assert verdict in ("pass", "FAIL", "info")
    return report


def run_quick(name: str, out: Path, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m benchmarks --only NAME --quick``: it succeeds and writes ``NAME.md``, ``.json`` and ``.png``."""
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--only", name, "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for suffix in (".md", ".json", ".png"):
        assert (out / f"{name}{suffix}").stat().st_size > 0, suffix
    return done


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_benchmark_writes_complete_reports(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=580)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("engine.md", "engine.json", "engine_latency.png", "engine_throughput.png", "env.md", "env.json",
                 "env.png", "kernels.md", "kernels.json", "kernels.png"):
        assert (tmp_path / name).stat().st_size > 0, name

    report = _check_report(tmp_path, "engine", ["metric", "engine", "reference", "ratio/overhead", "target",
                                                "pass/fail"], ENGINE_METRICS)
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["versions"]["ipykernel"]
    assert report["engine_status"]["isolation"] in ("bubblewrap", "none")
    assert len([m for m in report["metrics"] if m["id"].startswith("throughput_c")]) >= 2
    assert len(report["raw"]["round_trip"]["engine"]) == len(report["raw"]["round_trip"]["reference"]) > 0
    assert "| metric | engine | reference |" in done.stdout  # the table went to stdout too

    report = _check_report(tmp_path, "env", ["metric", "env", "bare engine", "overhead", "target", "pass/fail"],
                           ENV_METRICS)
    ids = {m["id"] for m in report["metrics"]}
    levels = {key.removeprefix("vector_steps_per_s_n") for key in ids if key.startswith("vector_steps_per_s_n")}
    assert len(levels) >= 2 and {f"vector_step_p50_n{level}" for level in levels} <= ids
    raw, settings = report["raw"], report["settings"]
    assert len(raw["reset_warm"]["reset"]) == len(raw["reset_warm"]["first_step"]) == settings["resets"]
    assert len(raw["reset_uncached_png"]["reset"]) == settings["uncached_resets"]
    assert "| metric | env | bare engine |" in done.stdout
    collected = (tmp_path / "report.md").read_text()
    assert "## Machine" in collected and "## engine:" in collected and "## env:" in collected
    assert "![engine_latency](engine_latency.png)" in collected and "![env](env.png)" in collected


KERNELS_METRICS = {"cpu_vs_bare", "cpu_vs_exec", "wall_vs_exec", "ready", "pss", "factory_pss", "group_cpu", "fork"}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kernels_benchmark_report(tmp_path):
    done = run_quick("kernels", tmp_path, timeout=280)
    report = _check_report(tmp_path, "kernels", ["metric", "forked", "reference", "ratio/overhead", "target",
                                                 "pass/fail"], KERNELS_METRICS)
    raw, settings = report["raw"], report["settings"]
    assert report["engine_status"]["start_method"] == "fork"
    assert {kind: row["episodes"] for kind, row in raw["episodes"].items()} == \
        dict.fromkeys(("forked", "new interpreter", "bare jupyter"), settings["rounds"] * settings["episodes_per_round"])
    assert len(raw["memory"]["forked"]) == len(raw["memory"]["new interpreter"]) == settings["idle_kernels"]
    assert len(raw["forks"]["fork"]) == len(raw["forks"]["cells_again"]) == settings["forks"]
    assert "| metric | forked | reference |" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ofr_simulation_report(tmp_path):
    run_quick("ofr", tmp_path, timeout=100)
    report = json.loads((tmp_path / "ofr.json").read_text())
    updates = report["settings"]["updates"]
    for key in ("plain_nonzero", "ofr_nonzero", "ofr_generated_groups", "solve_none", "solve_all", "solve_partial"):
        assert len(report["series"][key]) == updates, key
        assert all(math.isfinite(v) for v in report["series"][key]), key
    assert all(0 <= v <= 1 for v in report["series"]["plain_nonzero"] + report["series"]["ofr_nonzero"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_video_benchmark_report(tmp_path):
    env = {**os.environ, "PYVISION_CACHE": str(tmp_path / "cache")}
    done = run_quick("video", tmp_path, timeout=280, env=env)
    report = json.loads((tmp_path / "video.json").read_text())
    assert set(report["results"]) == {"video-event", "video-count", "video-measure", "video-needle"}
    for suite, modes in report["results"].items():
        assert set(modes) == {"on-demand", "uniform 1 fps"}, suite
        assert all(row["episodes"] == report["tasks_per_suite"] and 0 <= row["accuracy"] <= 1
                   for row in modes.values()), suite
        assert modes["uniform 1 fps"]["frames_decoded"] == 0 and modes["on-demand"]["frames_decoded"] >= 1
    assert {row["backend"] for row in report["fetch_latency"]} >= {"pyav"}
    assert all(row["median_ms"] > 0 for row in report["fetch_latency"])
    assert "| suite | token reduction |" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_trainer_benchmark_report(tmp_path):
    done = run_quick("trainer", tmp_path, timeout=280)
    report = json.loads((tmp_path / "trainer.json").read_text())
    assert len(report["results"]) >= 2  # CPU with 1 thread and with all threads, side by side
    for arm in report["results"].values():
        mean = arm["mean"]
        assert mean["time/step"] >= sum(mean[f"time/{part}"] for part in ("generation", "update")) > 0
        assert mean["throughput/tokens_per_s"] > 0 and mean["throughput/update_tokens_per_s"] > 0
        assert mean["episodes"] == report["settings"]["prompts"] * report["settings"]["group_size"]
    assert "| generation (s per step) |" in done.stdout


@pytest.mark.timeout(300)
def test_distributed_benchmark_report(tmp_path):
    """1 and 2 processes of ``pyvision train`` side by side: the update batch's tokens per second, and the
    training state per parameter halved by sharding (float32 AdamW: 16 bytes in one process, 8 on each of two)."""
    done = run_quick("distributed", tmp_path, timeout=280)
    report = json.loads((tmp_path / "distributed.json").read_text())
    one, two = report["results"]["1 process"], report["results"]["2 processes"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert len(one["rows"]) == len(two["rows"]) == report["settings"]["steps"]
    for arm in (one, two):
        assert arm["mean"]["throughput/update_tokens_per_s"] > 0 and arm["mean"]["time/update"] > 0
    assert one["mean"]["memory/state_bytes_per_parameter"] == pytest.approx(16.0, rel=0.01)
    assert two["mean"]["memory/state_bytes_per_parameter"] == pytest.approx(8.0, rel=0.05)
    # 2 processes load a generation copy; 1 process samples from the trained model itself
    assert two["mean"]["time/weight_sync"] > 100 * one["mean"]["time/weight_sync"]
    assert "| 2 processes |" in done.stdout and "scaling efficiency" in done.stdout


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cluster_benchmark_report(tmp_path):
    done = run_quick("cluster", tmp_path, timeout=280)
    report = json.loads((tmp_path / "cluster.json").read_text())
    raw = report["raw"]
    assert sorted(raw["ray"], key=int) == [str(w) for w in report["settings"]["workers"]]
    assert raw["local"]["steps_per_s"] > 0 and all(arm["steps_per_s"] > 0 for arm in raw["ray"].values())
    assert len(raw["local_round_trips"]) == len(raw["ray_round_trips"]) == report["settings"]["round_trips"]
    sizes = raw["bytes"]
    for kind in ("reset", "step"):  # PIL images travel as raw RGB: about 3 bytes a pixel, more than their PNG
        assert sizes[f"{kind}_pickle"] >= 3 * sizes[f"{kind}_pixels"] > sizes[f"{kind}_png"] > 0, kind
    assert "| vector steps/s, 4 envs, 2 worker(s) |" in done.stdout


def test_the_collected_report_has_the_machine_each_table_its_plots_and_failures(tmp_path):
    from benchmarks.performance.__main__ import Section, write_report

    (tmp_path / "ofr.png").write_bytes(b"png")
    (tmp_path / "other.png").write_bytes(b"png")
    table = "| metric | with OFR | without | ratio |\n|---|---:|---:|---:|\n| kept | 0.9 | 0.6 | 1.5 |"
    text = write_report(tmp_path, [Section("ofr", "OFR batch selection", table, 2.0)], ["video"], quick=True,
                        duration=3.0).read_text()
    assert "| CPU | logical (physical) cores | RAM | GPU |" in text and "quick mode, 3 s in all" in text
    assert text.index("## ofr: OFR batch selection") < text.index(table) < text.index("![ofr](ofr.png)")
    assert "other.png" not in text and "- video (see the traceback on stderr)" in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_collapse_experiment_as_a_benchmark(tmp_path):
    done = run_quick("collapse", tmp_path, timeout=580,
                     env={**os.environ, "PYVISION_CACHE": str(tmp_path / "cache")})
    results = json.loads((tmp_path / "collapse.json").read_text())
    assert set(results["verdicts"]) == {"outcome", "tool-reward", "ofr", "both"}
    assert "| model | episodes | errors | accuracy |" in done.stdout
    assert all((tmp_path / f"collapse_{name}.png").stat().st_size > 0 for name in ("turns", "accuracy", "reward_mean"))
