"""Where a GRPO step's time goes: generation, environment, scoring, update (and weight sync), with tokens/s.

The modular trainer (:class:`trainers.grpo.GRPOTrainer`) runs real steps on the ``tally`` suite with the tiny
random Qwen2.5-VL of the CPU demo (:func:`trainers.demo.make_demo_model`), real kernels and Hugging Face
generation. OFR is off so that every step trains on the same number of episodes (a random model solves nothing, and OFR would
drop every group). The timings are the trainer's own step metrics (``time/*``, ``throughput/*``).

Arms, measured side by side in one run:

* ``cpu, 1 torch thread`` — the default on a small CPU machine (``model.torch_threads: 1``);
* ``cpu, all torch threads`` — torch's default thread count, competing with the kernels for the cores;
* ``cuda`` — the same on the GPU, when one is present.

Run it with ``python -m benchmarks --only trainer [--quick] [--out DIR]``; it writes ``trainer.md``,
``trainer.json`` and ``trainer.png``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyvision_env.reporting import markdown_table, save_figure

from .report import save_report

NAME = "trainer"
DESCRIPTION = "GRPO step-time breakdown (generation / environment / scoring / update) and tokens/s, tiny VLM"

PARTS = ("generation", "environment", "scoring", "update", "weight_sync")
"""The parts of a step, as the trainer logs them (``time/<part>``)."""


@dataclass(frozen=True)
class Settings:
    steps: int
    prompts: int
    group_size: int
    max_new_tokens: int
    num_envs: int


QUICK = Settings(steps=1, prompts=2, group_size=2, max_new_tokens=24, num_envs=4)
FULL = Settings(steps=3, prompts=8, group_size=4, max_new_tokens=64, num_envs=16)


def arms() -> list[tuple[str, dict[str, Any]]]:
    """``(label, model settings)`` of each arm this machine can run."""
    import torch

    out = [("cpu, 1 torch thread", {"device": "cpu", "torch_threads": 1}),
           (f"cpu, all torch threads ({torch.get_num_threads()})", {"device": "cpu", "torch_threads": 0})]
    if torch.cuda.is_available():
        out.append((f"cuda ({torch.cuda.get_device_name(0)})", {"device": "cuda", "torch_threads": 1}))
    return out


def measure(model_path: Path, run_dir: Path, settings: Settings, model: dict[str, Any]) -> dict[str, Any]:
    """Run ``settings.steps`` steps; return the mean of each step metric and the per-step rows."""
    import torch

    from trainers.config import GRPOConfig, load_config
    from trainers.demo import CONFIGS
    from trainers.grpo import GRPOTrainer

    threads = torch.get_num_threads()
    overrides = [f"output_dir={run_dir}", f"model.path={model_path}", f"steps={settings.steps}",
                 f"prompts_per_round={settings.prompts}", f"rollout.group_size={settings.group_size}",
                 f"rollout.max_new_tokens={settings.max_new_tokens}", f"env.num_envs={settings.num_envs}",
                 "ofr.enabled=false", "eval.every=0", "checkpoint.every=1000", "checkpoint.resume=false",
                 "logging.progress=false", "logging.tensorboard=false",
                 *(f"model.{key}={value}" for key, value in model.items())]
    config = load_config(GRPOConfig, CONFIGS / "demo_grpo.yaml", overrides)
    try:
        with GRPOTrainer(config) as trainer:
            trainer.train()
            rows = trainer.logger.history("train")
    finally:
        torch.set_num_threads(threads)
    measured = rows[1:] if len(rows) > 1 else rows  # the first step pays one-time costs (allocations, caches)
    keys = [f"time/{part}" for part in PARTS] + ["time/step", "throughput/tokens_per_s",
                                                 "throughput/update_tokens_per_s", "episodes", "response_tokens"]
    return {"mean": {key: sum(float(row[key]) for row in measured) / len(measured) for key in keys}, "rows": rows}


def render_markdown(results: dict[str, dict[str, Any]], settings: Settings, duration: float) -> str:
    labels = list(results)
    columns = [("metric", "metric", "{}"), *((label, label, "{}") for label in labels)]
    if len(labels) > 1:
        columns.append(("ratio", "ratio (2nd / 1st)", "{}"))
    metrics = [(f"{part} (s per step)", f"time/{part}", "{:.2f}") for part in PARTS]
    metrics += [("whole step (s)", "time/step", "{:.2f}"),
                ("generation tokens/s", "throughput/tokens_per_s", "{:.0f}"),
                ("update tokens/s (forward + backward)", "throughput/update_tokens_per_s", "{:.0f}"),
                ("episodes per step", "episodes", "{:.0f}"),
                ("sampled tokens per episode", "response_tokens", "{:.1f}")]
    rows = []
    for metric, key, fmt in metrics:
        values = [results[arm]["mean"][key] for arm in labels]
        rows.append({"metric": metric, **{arm: fmt.format(value) for arm, value in zip(labels, values)},
                     "ratio": f"{values[1] / values[0]:.2f}" if len(values) > 1 and values[0] else "—"})
    first = results[labels[0]]["mean"]
    shares = ", ".join(f"{part} {first[f'time/{part}'] / first['time/step']:.0%}" for part in PARTS
                       if first["time/step"])
    notes = [f"Step shares ({labels[0]}): {shares}.",
             f"{settings.steps} step(s) per arm (the first one not counted when there are more), {settings.prompts} prompts x {settings.group_size} episodes, "
             f"max {settings.max_new_tokens} new tokens per response, {settings.num_envs} environments; "
             f"tiny random Qwen2.5-VL (hidden 64), tally suite, real kernels; total {duration:.0f} s.",
             "Environment = rollout wall time not spent in generation (kernels, tokenizing observations); "
             "scoring = advantages and old log-probs; update = forward + backward + optimizer."]
    return "\n".join([markdown_table(rows, columns), "", *notes]) + "\n"


def plot(results: dict[str, dict[str, Any]], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.9 * len(results)))
    labels = list(results)
    left = [0.0] * len(labels)
    for part in PARTS:
        widths = [results[arm]["mean"][f"time/{part}"] for arm in labels]
        ax.barh(labels, widths, left=left, label=part)
        left = [a + b for a, b in zip(left, widths)]
    ax.set(xlabel="seconds per step", title="GRPO step-time breakdown")
    ax.legend(fontsize=8, ncols=len(PARTS), loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return save_figure(fig, out_dir / "trainer.png")


def run(out_dir: Path, quick: bool = False) -> str:
    """Measure every arm; write ``trainer.md``, ``trainer.json`` and ``trainer.png``; return the Markdown."""
    import torch

    from trainers.demo import make_demo_model

    settings = QUICK if quick else FULL
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / "trainer-runs"
    started = time.perf_counter()
    model_path = make_demo_model(work / "tiny-model")
    results = {}
    for index, (label, model) in enumerate(arms()):
        print(f"trainer benchmark: {label}", file=sys.stderr, flush=True)
        results[label] = measure(model_path, work / f"arm-{index}", settings, model)
    duration = time.perf_counter() - started
    markdown = save_report(out_dir, NAME, "Trainer step-time benchmark", render_markdown(results, settings, duration),
                           quick, duration, settings=asdict(settings),
                           machine={"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                    "torch": torch.__version__},
                           results=results)
    plot(results, out_dir)
    return markdown
