"""The one-GPU benchmark script (benchmarks/performance/gpu_scale.py) on CPU with small models of the same
structure, and its models' sizes against the published ones."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.performance.gpu_scale import METRICS, model_config, parameter_count

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size, published", [("7b", 8_292_166_656), ("3b", 3_754_622_976)])
def test_the_models_have_the_published_sizes(tmp_path, size, published):
    """Qwen2.5-VL-7B/3B-Instruct's parameter counts (their safetensors index), of the configs built on the
    tiny model's (counted on the meta device)."""
    from agents.tiny_model import make_tiny_model

    tiny = json.loads((make_tiny_model(tmp_path / "tiny") / "config.json").read_text())
    assert parameter_count(model_config(size, tiny)) == published


@pytest.mark.timeout(300)
def test_one_update_per_arm_is_measured_and_reported(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.performance.gpu_scale", "--tiny", "--out",
                           str(tmp_path), "--models", "3b", "--settings", "lora,full"], cwd=ROOT, capture_output=True,
                          text=True, timeout=280, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_scale.json").read_text())
    assert [(arm["model"], arm["setting"]) for arm in report["arms"]] == [("3b", "lora"), ("3b", "full")]
    for arm in report["arms"]:
        result = arm["result"]
        assert "error" not in result and set(result) == set(METRICS)
        assert math.isfinite(result["throughput/update_tokens_per_s"]) and result["throughput/update_tokens_per_s"] > 0
        assert result["time/step"] >= result["time/generation"] + result["time/update"] > 0
    lora, full = (arm["result"]["memory/state_bytes_per_parameter"] for arm in report["arms"])
    assert full == pytest.approx(16.0) and lora < full  # frozen weights need no gradients or optimizer state
    assert "| 3b | lora |" in done.stdout and "| 3b | full |" in done.stdout
