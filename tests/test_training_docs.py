"""docs/training.md stays true: every command in it loads as a valid config, and its memory figures are the
arithmetic it states."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from trainers.config import GRPOConfig, load_config
from trainers.grpo import engine_shards, engine_sleeps, importance_cap

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "training.md").read_text()

PARAMETERS = {"Qwen2.5-VL-3B": 3_754_622_976, "Qwen2.5-VL-7B": 8_292_166_656}
"""Of the published configurations, counted on the meta device (tests/test_gpu_scale.py counts them again)."""
LORA_PARAMETERS = {"Qwen2.5-VL-3B": 36 * 64 * (2 * 4096 + 2 * 2304 + 3 * 13056),
                   "Qwen2.5-VL-7B": 28 * 64 * (2 * 7168 + 2 * 4096 + 3 * 22528)}
"""Rank 64 on q, k, v, o, gate, up and down of every decoder layer: rank x (inputs + outputs) each."""
H100_GB, H200_GB = 80, 141
ENGINE_SHARE = load_config(GRPOConfig, ROOT / "trainers/configs/pyvision_image_7b.yaml").rollout.vllm[
    "gpu_memory_utilization"]


def train_commands() -> list[list[str]]:
    """The arguments of every ``pyvision train`` (or torchrun ``-m pyvision_env.cli train``) in the bash blocks."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line.split("#")[0])
            if "train" in words and ("pyvision" in words or "pyvision_env.cli" in words):
                commands.append(words[words.index("train") + 1:])
    return commands


def training_state_gb(model: str, setting: str, gpus: int) -> float:
    """Full: 16 bytes per parameter; LoRA: 2 per frozen parameter and 16 per adapter one; sharded over the GPUs."""
    held = 16 * PARAMETERS[model] if setting == "full" else 2 * PARAMETERS[model] + 16 * LORA_PARAMETERS[model]
    return held / gpus / 1e9


def test_the_docs_give_a_command_for_every_recipe():
    commands = train_commands()
    assert len(commands) == 6  # CPU data parallel, 7B LoRA, 3B full, one node, one node with TP, several nodes
    assert sum("--nproc" in words for words in commands) == 3


@pytest.mark.parametrize("words", train_commands(), ids=lambda words: " ".join(words)[:60])
def test_every_training_command_in_the_docs_is_a_valid_config(words):
    config_file, overrides = words[0], [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    config = load_config(GRPOConfig, ROOT / config_file, overrides)
    importance_cap(config)  # the algorithm's settings agree
    engine_sleeps(config, "cuda:0")
    engine_shards(config, 8, 8)  # the ranks of one 8-GPU node can share its engines
    assert config.model.path  # every recipe names its model


def test_the_memory_table_is_the_arithmetic_it_states():
    rows = re.findall(r"^\| (Qwen2\.5-VL-\dB) \| (full|LoRA r64) \| (\d+) \| (.+?) = ([\d.]+) \| 2 × ([\d.]+) = "
                      r"([\d.]+) \| ([\d.]+) \| (yes|no) \| (yes|no) \|$", DOC, flags=re.M)
    assert len(rows) == 8
    for model, setting, gpus, formula, state, billions, engine, together, fits_h100, fits_h200 in rows:
        gpus, total, adapters = int(gpus), PARAMETERS[model] / 1e9, LORA_PARAMETERS[model] / 1e9
        expected_formula = (f"16 × {total:.4f} / {gpus}" if setting == "full"
                            else f"(2 × {total:.4f} + 16 × {adapters:.4f}) / {gpus}")
        expected_state, expected_engine = training_state_gb(model, setting, gpus), 2 * total
        assert (formula, billions) == (expected_formula, f"{total:.4f}")
        assert float(state) == pytest.approx(expected_state, abs=0.006), (model, setting, gpus)
        assert float(engine) == pytest.approx(expected_engine, abs=0.006)
        assert float(together) == pytest.approx(expected_state + expected_engine, abs=0.006)
        assert (fits_h100, fits_h200) == ("yes" if float(together) < H100_GB else "no",
                                          "yes" if float(together) < H200_GB else "no")


def test_the_generation_figures_are_the_arithmetic():
    """Training state plus the engine's whole budget while it generates (the prose under the table)."""
    budget = ENGINE_SHARE * H100_GB
    assert f"{budget:.0f} GB of an H100 or {ENGINE_SHARE * H200_GB:.2f} GB of an H200" in DOC
    for model, setting, gpus in (("Qwen2.5-VL-3B", "full", 1), ("Qwen2.5-VL-7B", "LoRA r64", 1),
                                 ("Qwen2.5-VL-7B", "full", 8)):
        assert f"{training_state_gb(model, setting, gpus) + budget:.2f} GB" in DOC
    assert training_state_gb("Qwen2.5-VL-3B", "full", 1) + budget > H100_GB  # why the 3B recipe lowers it


def test_the_stated_lora_sizes_are_the_counted_ones():
    assert round(LORA_PARAMETERS["Qwen2.5-VL-7B"] / 1e6, 1) == 161.5 and "161.5" in DOC
    assert round(LORA_PARAMETERS["Qwen2.5-VL-3B"] / 1e6, 1) == 119.7 and "119.7" in DOC
