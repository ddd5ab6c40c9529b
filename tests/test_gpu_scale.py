"""The one-GPU benchmark script (benchmarks/performance/gpu_scale.py): its models' sizes against the published
ones, and the whole script on CPU with small models of the same structures (--tiny)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.performance.gpu_scale import METRICS, PUBLISHED_PARAMETERS, model_config, parameter_count

ROOT = Path(__file__).resolve().parents[1]


def run_script(out: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """``python -m benchmarks.performance.gpu_scale --tiny --out OUT OPTIONS`` on one thread per process."""
    return subprocess.run([sys.executable, "-m", "benchmarks.performance.gpu_scale", "--tiny", "--out", str(out),
                           *options], cwd=ROOT, capture_output=True, text=True, timeout=280,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> dict:
    from agents.tiny_model import make_tiny_model

    return json.loads((make_tiny_model(tmp_path_factory.mktemp("tiny")) / "config.json").read_text())


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_the_models_have_the_published_sizes(tiny_config, size):
    """Qwen2.5-VL-3B/7B-Instruct's parameter counts (3,754,622,976 and 8,292,166,656: their safetensors
    indexes), counted on the meta device; the architectures match exactly."""
    assert parameter_count(model_config(size, tiny_config)) == PUBLISHED_PARAMETERS[size]


@pytest.mark.timeout(300)
def test_one_update_per_arm_is_measured_and_reported(tmp_path):
    done = run_script(tmp_path, "--models", "3b", "--settings", "lora,full")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_scale.json").read_text())
    assert report["complete"] and report["builds"]["3b"]["weights_gb"] > 0
    assert [(arm["model"], arm["setting"]) for arm in report["arms"]] == [("3b", "lora"), ("3b", "full")]
    for arm in report["arms"]:
        result = arm["result"]
        assert "error" not in result and set(METRICS) <= set(result) and result["load_s"] > 0
        assert math.isfinite(result["throughput/update_tokens_per_s"]) and result["throughput/update_tokens_per_s"] > 0
        assert result["time/step"] >= result["time/generation"] + result["time/update"] > 0
        assert result["trained_trajectories"] == result["episodes"] == 16  # zero advantages drop nothing
        assert result["memory/peak_gib"] is None  # on CPU the trainer logs no peak
    lora, full = (arm["result"]["memory/state_bytes_per_parameter"] for arm in report["arms"])
    assert full == pytest.approx(16.0) and lora < full  # frozen weights need no gradients or optimizer state
    markdown = (tmp_path / "gpu_scale.md").read_text()
    for row in ("| 3b | lora | 0.010 | ran | — |", "| 3b | full | 0.010 | ran | — |"):
        assert row in markdown and row in done.stdout


@pytest.mark.timeout(120)
def test_arms_over_their_time_are_stopped_and_reported(tmp_path):
    """An arm over --arm-timeout-s is killed with its process group; a model that cannot start in the budget
    left is skipped; the report names both."""
    done = run_script(tmp_path, "--models", "3b,7b", "--settings", "lora", "--arm-timeout-s", "3",
                      "--budget-s", "95")
    assert done.returncode == 0, done.stderr[-3000:]
    outcomes = [(arm["model"], arm["result"]["error"]) for arm in json.loads(
        (tmp_path / "gpu_scale.json").read_text())["arms"]]
    assert outcomes == [("3b", "stopped: time"), ("7b", "skipped: time")]
    assert "| 3b | lora | 0.010 | stopped: time |" in done.stdout and "| 7b | lora | — | skipped: time |" in done.stdout
