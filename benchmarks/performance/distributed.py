"""The trainer over processes: update throughput at 1 and 2 data-parallel processes, the training state's bytes
per parameter in each memory setting, the weight-sync time, and what one-step-off generation saves.

Every arm is a real run of ``pyvision train`` (``--nproc 2`` starts torchrun; gloo on CPU) on the ``tally``
suite with real kernels and Hugging Face generation, on a small random Qwen2.5-VL (:data:`MODEL`: larger than the
demo's so that an update is compute, not overhead). OFR is off so every update trains on all its episodes. The
figures are the trainer's own metrics, averaged over the updates after the first:

* ``throughput/update_tokens_per_s`` — tokens of the whole update batch (all ranks) per second of rank 0's
  update (forward, backward, optimizer); with N processes, scaling efficiency = tokens/s(N) / (N × tokens/s(1));
* ``memory/state_bytes_per_parameter`` — bytes of parameters, gradients and optimizer state each rank holds
  per parameter (float32 full fine-tuning: 16 in one process, 8 on each of two; LoRA: about the frozen weights'
  dtype size);
* ``time/weight_sync`` — loading the trained weights into the generation engine (a copy of the model: with
  one process the Hugging Face engine samples from the trained model itself and syncs nothing);
* ``time/step`` — with ``rollout.staleness: 1`` the next batch is generated while this one trains.

Arms, side by side in one run: 1 process; 2 processes; LoRA (rank 8) on 1 and on 2; 1 process one step off.
On a 2-core machine two processes use both cores where one process uses one (``model.torch_threads: 1``).

Run it with ``python -m benchmarks --only distributed [--quick] [--out DIR]``; it writes ``distributed.md``,
``distributed.json`` and ``distributed.png``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyvision_env.reporting import markdown_table, save_figure

from .report import log, machine_description, save_report

NAME = "distributed"
DESCRIPTION = "GRPO updates at 1 and 2 processes (scaling), state bytes per parameter, weight sync, one step off"

MODEL = {"hidden_size": 256, "layers": 4, "vision_depth": 2}
"""The benchmark's random Qwen2.5-VL (2.7 M parameters with the 1024-token vocabulary)."""

METRICS = ("throughput/update_tokens_per_s", "throughput/tokens_per_s", "memory/state_bytes_per_parameter",
           "time/update", "time/generation", "time/weight_sync", "time/step", "staleness")


@dataclass(frozen=True)
class Settings:
    steps: int
    prompts: int
    group_size: int
    max_new_tokens: int
    arms: tuple[str, ...]


ARMS: dict[str, tuple[int, tuple[str, ...]]] = {
    "1 process": (1, ()),
    "2 processes": (2, ()),
    "1 process, LoRA r8": (1, ("model.lora_rank=8", "model.lora_alpha=16")),
    "2 processes, LoRA r8": (2, ("model.lora_rank=8", "model.lora_alpha=16")),
    "1 process, one step off": (1, ("rollout.staleness=1",)),
}
"""Arm -> (processes, settings)."""

QUICK = Settings(steps=2, prompts=4, group_size=2, max_new_tokens=24, arms=("1 process", "2 processes"))
FULL = Settings(steps=4, prompts=8, group_size=4, max_new_tokens=48, arms=tuple(ARMS))


def measure(model_path: Path, run_dir: Path, settings: Settings, arm: str) -> dict[str, Any]:
    """Run one arm with ``pyvision train``; the mean of each metric over its updates after the first, and its
    rows."""
    from trainers.demo import CONFIGS

    processes, overrides = ARMS[arm]
    command = [sys.executable, "-m", "pyvision_env.cli", "train", str(CONFIGS / "demo_grpo.yaml"),
               *(["--nproc", str(processes)] if processes > 1 else [])]
    for setting in (f"output_dir={run_dir}", f"model.path={model_path}", f"steps={settings.steps}",
                    f"prompts_per_round={settings.prompts}", f"rollout.group_size={settings.group_size}",
                    f"rollout.max_new_tokens={settings.max_new_tokens}", f"env.num_envs={settings.prompts}",
                    "ofr.enabled=false", "eval.every=0", f"checkpoint.every={settings.steps}",
                    "checkpoint.resume=false", "logging.progress=false", "logging.tensorboard=false",
                    f"algorithm.mini_batch_size={settings.prompts * settings.group_size}",
                    "algorithm.micro_batch_size=4", "model.torch_threads=1", *overrides):
        command += ["--set", setting]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{arm}: pyvision train failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "train.jsonl").read_text().splitlines()]
    measured = rows[1:] if len(rows) > 1 else rows  # the first update pays one-time costs
    return {"processes": processes, "settings": list(overrides), "rows": rows,
            "mean": {key: sum(float(row.get(key, 0.0)) for row in measured) / len(measured) for key in METRICS}}


def render_markdown(results: dict[str, dict[str, Any]], settings: Settings, parameters: int, duration: float) -> str:
    base = results["1 process"]["mean"]
    rows = []
    for arm, result in results.items():
        mean = result["mean"]
        throughput = mean["throughput/update_tokens_per_s"]
        versus = throughput / base["throughput/update_tokens_per_s"] if base["throughput/update_tokens_per_s"] else 0
        rows.append({"arm": arm, "update": f"{throughput:.0f}", "versus": f"{versus:.2f}",
                     "efficiency": f"{versus / result['processes']:.0%}",
                     "generation": f"{mean['throughput/tokens_per_s']:.0f}",
                     "bytes": f"{mean['memory/state_bytes_per_parameter']:.1f}",
                     "sync": f"{mean['time/weight_sync']:.3f}", "step": f"{mean['time/step']:.1f}",
                     "step_versus": f"{mean['time/step'] / base['time/step']:.2f}" if base["time/step"] else "—",
                     "staleness": f"{mean['staleness']:.0f}"})
    columns = [("arm", "arm", "{}"), ("update", "update tokens/s", "{}"), ("versus", "× 1 process", "{}"),
               ("efficiency", "scaling efficiency", "{}"), ("generation", "generation tokens/s", "{}"),
               ("bytes", "state bytes / parameter", "{}"), ("sync", "weight sync (s)", "{}"),
               ("step", "step (s)", "{}"), ("step_versus", "step × 1 process", "{}"),
               ("staleness", "staleness", "{}")]
    notes = [f"{settings.steps} updates per arm (the first not counted), {settings.prompts} prompts x "
             f"{settings.group_size} episodes, max {settings.max_new_tokens} new tokens per response; random "
             f"Qwen2.5-VL of {parameters / 1e6:.1f} M parameters (hidden {MODEL['hidden_size']}, {MODEL['layers']} "
             f"layers), tally suite, real kernels, gloo, 1 torch thread per process; total {duration:.0f} s.",
             "Scaling efficiency = update tokens/s of the arm / (processes x those of 1 process). State bytes per "
             "parameter: parameters + gradients + optimizer state each rank holds (CPU memory here; on a GPU the "
             "same bytes are GPU memory, activations and the engine come on top)."]
    return "\n".join([markdown_table(rows, columns), "", *notes]) + "\n"


def plot(results: dict[str, dict[str, Any]], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.2 + 0.6 * len(labels)), sharey=True)
    left.barh(labels, [results[arm]["mean"]["throughput/update_tokens_per_s"] for arm in labels], color="tab:blue")
    left.set(xlabel="update tokens/s", title="Update throughput")
    right.barh(labels, [results[arm]["mean"]["memory/state_bytes_per_parameter"] for arm in labels],
               color="tab:orange")
    right.set(xlabel="bytes per parameter (each rank)", title="Training state")
    left.invert_yaxis()
    return save_figure(fig, out_dir / "distributed.png")


def run(out_dir: Path, quick: bool = False) -> str:
    """Measure every arm; write ``distributed.md``, ``distributed.json`` and ``distributed.png``; return the
    Markdown."""
    from safetensors import safe_open

    from agents.tiny_model import make_tiny_model

    settings = QUICK if quick else FULL
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "distributed-runs"
    started = time.perf_counter()
    model_path = make_tiny_model(work / "model", **MODEL)
    with safe_open(next(model_path.glob("*.safetensors")), "pt") as weights:
        parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    results = {}
    for index, arm in enumerate(settings.arms):
        log(NAME, f"{arm} ({index + 1}/{len(settings.arms)})")
        results[arm] = measure(model_path, work / f"arm-{index}", settings, arm)
    duration = time.perf_counter() - started
    markdown = save_report(out_dir, NAME, "Data-parallel trainer benchmark",
                           render_markdown(results, settings, parameters, duration), quick, duration,
                           settings=asdict(settings), model={**MODEL, "parameters": parameters},
                           machine=machine_description(), results=results)
    plot(results, out_dir)
    return markdown

