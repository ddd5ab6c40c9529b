"""Seeded simulation: how much of each update carries a non-zero advantage, with and without OFR.

No model is trained. A population of tasks has a per-task success probability that drifts with the update
index (a learning-curve model): easy tasks (40 %) rise from 0.5–0.9 to 1, medium ones (35 %) from 0.05–0.4 to
0.97, hard ones (25 %) stay at 0–0.05. Each rollout is correct with its task's probability; its tool count
is the task's habitual count (0–4) or, with a probability that decays from 1 to 0.15 as the policy sharpens,
uniform in 0–4; its reward is the accumulative tool reward ``acc × (1 + 0.1 × tools)``. 2 % of rollouts end
over-length and 1 % at the image limit (reward 0). Groups of G = 8 rollouts per prompt.

Per update, two arms, each with its own seeded random stream and the same drift schedule (so the comparison
isolates the selection; the simulation does not model OFR changing how fast the policy learns):

* no OFR — generate the target number of groups and train on all of them;
* OFR — :class:`trainers.ofr.OFRSelector` with PyVision-RL's settings scaled to the target: generation
  rounds of ``oversampling × target`` groups, zero-std and end-reason filters, rank by group reward std, keep
  the target number of trajectories; at most ``max_rounds`` rounds, then train on a partial batch.

Advantages are the group-mean baseline, computed on each group as generated (before filtering). Reported: the
fraction of the update's samples with a non-zero advantage (early / mid / late thirds of the run), the
generation cost (groups generated per update) and the solve-none / solve-all / solve-partial fractions.

Run it with ``python -m benchmarks --only ofr [--quick] [--out DIR]``; it writes ``ofr.md``, ``ofr.json`` and
``ofr.png``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pyvision_env.reporting import markdown_table, save_figure
from trainers.ofr import OFRConfig, OFRSelector, Rollout, group_advantages

from .report import save_report

NAME = "ofr"
DESCRIPTION = "OFR batch selection vs none in a seeded drifting-difficulty simulation (non-zero advantages)"

PHASES = ("early", "mid", "late")
TIERS = {  # share of tasks, initial success range, final success (None: stays at its initial value)
    "easy": (0.40, (0.5, 0.9), 1.0),
    "medium": (0.35, (0.05, 0.4), 0.97),
    "hard": (0.25, (0.0, 0.05), None),
}
TOOL_BONUS = 0.1
MAX_TOOLS = 4
END_REASON_PROBS = {"over_length": 0.02, "max_images": 0.01}


@dataclass(frozen=True)
class Settings:
    """Size of the simulated run."""

    updates: int = 300
    tasks: int = 2000
    group_size: int = 8
    target_groups: int = 64
    """Groups per update (PyVision-RL: 64 prompts × 8 = 512 trajectories)."""
    oversampling: float = 0.5
    """PyVision-RL: generation batches of 32 prompts for a target of 64."""
    max_rounds: int = 8
    seed: int = 0


FULL = Settings()
QUICK = Settings(updates=60, tasks=500, target_groups=16)


class TaskPopulation:
    """Tasks whose success probability follows a learning curve in the run's progress ``x`` in [0, 1].

    >>> population = TaskPopulation(10, np.random.default_rng(0))
    >>> bool(np.all(population.success(1.0)[population.tier == "easy"] > 0.99))
    True
    """

    def __init__(self, count: int, rng: np.random.Generator):
        names = list(TIERS)
        self.tier = rng.choice(names, size=count, p=[TIERS[name][0] for name in names])
        low = np.array([TIERS[t][1][0] for t in self.tier])
        high = np.array([TIERS[t][1][1] for t in self.tier])
        self.p0 = rng.uniform(low, high)
        self.p_final = np.array([self.p0[i] if TIERS[t][2] is None else TIERS[t][2] for i, t in enumerate(self.tier)])
        self.tau = np.where(self.tier == "easy", 0.1, 0.4)  # fraction of the run to close 63 % of the gap
        self.habit = rng.integers(0, MAX_TOOLS + 1, size=count)

    def success(self, x: float) -> np.ndarray:
        return self.p_final - (self.p_final - self.p0) * np.exp(-x / self.tau)


def tool_spread(x: float) -> float:
    """Probability that a rollout's tool count is random rather than the task's habit (the policy sharpens)."""
    return 0.15 + 0.85 * math.exp(-x / 0.3)


def generate(population: TaskPopulation, x: float, groups: int, size: int, rng: np.random.Generator,
             ) -> list[list[Rollout]]:
    """``groups`` groups of ``size`` rollouts of uniformly drawn tasks; advantages in ``extra``."""
    tasks = rng.integers(0, len(population.p0), size=groups)
    p = population.success(x)[tasks]
    correct = rng.random((groups, size)) < p[:, None]
    random_tools = rng.random((groups, size)) < tool_spread(x)
    tools = np.where(random_tools, rng.integers(0, MAX_TOOLS + 1, (groups, size)), population.habit[tasks, None])
    ends = rng.choice(["answered", *END_REASON_PROBS], size=(groups, size),
                      p=[1 - sum(END_REASON_PROBS.values()), *END_REASON_PROBS.values()])
    correct &= ends == "answered"
    rewards = correct * (1 + TOOL_BONUS * tools)
    batch = []
    for g, task in enumerate(tasks):
        advantages = group_advantages(rewards[g])
        batch.append([Rollout(int(task), float(rewards[g, k]), end_reason=str(ends[g, k]), tool_calls=int(tools[g, k]),
                              extra={"advantage": float(advantages[k])}) for k in range(size)])
    return batch


def nonzero_fraction(rollouts: list[Rollout]) -> float:
    return float(np.mean([abs(r.extra["advantage"]) > 1e-12 for r in rollouts])) if rollouts else math.nan


def ofr_config(settings: Settings) -> OFRConfig:
    """PyVision-RL's OFR settings scaled to the simulated target."""
    return OFRConfig(target_size=settings.target_groups * settings.group_size, oversampling=settings.oversampling,
                     max_generation_rounds=settings.max_rounds, exhaustion="partial")


def simulate(settings: Settings) -> dict[str, Any]:
    """Run both arms update after update; return per-update series."""
    population = TaskPopulation(settings.tasks, np.random.default_rng(settings.seed))
    rng_plain = np.random.default_rng(settings.seed + 1)
    rng_ofr = np.random.default_rng(settings.seed + 2)
    selector = OFRSelector(ofr_config(settings), group_size=settings.group_size)
    series: dict[str, list[float]] = {key: [] for key in (
        "plain_nonzero", "ofr_nonzero", "ofr_generated_groups", "ofr_rounds", "ofr_batch", "solve_none",
        "solve_all", "solve_partial")}
    for update in range(settings.updates):
        x = update / max(1, settings.updates - 1)
        plain = generate(population, x, settings.target_groups, settings.group_size, rng_plain)
        series["plain_nonzero"].append(nonzero_fraction([r for g in plain for r in g]))
        selection = selector.collect(lambda n, x=x: generate(population, x, n, settings.group_size, rng_ofr))
        series["ofr_nonzero"].append(nonzero_fraction(selection.kept))
        series["ofr_generated_groups"].append(selection.metrics["generated_groups"])
        series["ofr_rounds"].append(selection.metrics["generation_rounds"])
        series["ofr_batch"].append(selection.metrics["kept"])
        for key in ("solve_none", "solve_all", "solve_partial"):
            series[key].append(selection.metrics[key])
    return series


def phase_means(values: list[float]) -> dict[str, float]:
    """Means over the early, mid and late thirds of the run, and over all of it."""
    thirds = np.array_split(np.asarray(values, dtype=float), 3)
    return {**{phase: float(np.mean(part)) for phase, part in zip(PHASES, thirds)}, "all": float(np.mean(values))}


def render_markdown(series: dict[str, list[float]], settings: Settings, quick: bool, duration: float) -> str:
    target = settings.target_groups * settings.group_size
    per_round = ofr_config(settings).groups_per_round(settings.group_size)
    rows = [
        ("samples with non-zero advantage, no OFR", phase_means(series["plain_nonzero"]), "{:.3f}"),
        ("samples with non-zero advantage, OFR", phase_means(series["ofr_nonzero"]), "{:.3f}"),
        ("groups generated per update, no OFR", phase_means([settings.target_groups] * settings.updates), "{:.1f}"),
        ("groups generated per update, OFR", phase_means(series["ofr_generated_groups"]), "{:.1f}"),
        ("generation rounds per update, OFR", phase_means(series["ofr_rounds"]), "{:.2f}"),
        ("trajectories per update, OFR", phase_means(series["ofr_batch"]), "{:.1f}"),
        ("solve-none groups (generated)", phase_means(series["solve_none"]), "{:.3f}"),
        ("solve-all groups (generated)", phase_means(series["solve_all"]), "{:.3f}"),
        ("solve-partial groups (generated)", phase_means(series["solve_partial"]), "{:.3f}"),
    ]
    columns = [("metric", "metric", "{}"), *((phase, phase, "{}") for phase in PHASES), ("all", "whole run", "{}")]
    table = markdown_table([{"metric": label, **{key: fmt.format(value) for key, value in means.items()}}
                            for label, means, fmt in rows], columns)
    short = sum(batch < target for batch in series["ofr_batch"])
    notes = [
        f"Seed {settings.seed}; {settings.updates} updates ({'quick' if quick else 'full'} mode), {settings.tasks} "
        f"tasks, G = {settings.group_size}; target {settings.target_groups} groups = {target} trajectories per "
        f"update; OFR: {per_round} groups per generation round, at most {settings.max_rounds} rounds, then a "
        f"partial batch ({short} of {settings.updates} updates were short); total {duration:.1f} s.",
        "Phases are thirds of the run. Non-zero advantage: |reward − group mean| > 1e-12, mean baseline computed "
        "per group as generated. Solve fractions are over the groups OFR generated (correct = reward >= 1).",
    ]
    return "\n".join([table, "", *notes]) + "\n"


def plot(series: dict[str, list[float]], settings: Settings, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    updates = np.arange(settings.updates)
    fig, (signal, cost) = plt.subplots(1, 2, figsize=(13, 4.5))
    signal.plot(updates, series["plain_nonzero"], label="no OFR (first groups generated)", alpha=0.8)
    signal.plot(updates, series["ofr_nonzero"], label="OFR (oversample, filter, rank)", alpha=0.8)
    for key in ("solve_none", "solve_all", "solve_partial"):
        signal.plot(updates, series[key], linestyle=":", label=f"{key.replace('_', '-')} groups (generated)")
    signal.set(xlabel="update", ylabel="fraction", ylim=(0, 1.02),
               title="Samples per update with a non-zero advantage")
    signal.legend(fontsize=8)
    signal.grid(True, alpha=0.3)
    cost.plot(updates, series["ofr_generated_groups"], label="OFR", color="tab:orange")
    cost.axhline(settings.target_groups, color="tab:blue", label="no OFR")
    cost.set(xlabel="update", ylabel="groups generated", ylim=(0, None), title="Generation cost per update")
    cost.legend(fontsize=8)
    cost.grid(True, alpha=0.3)
    return save_figure(fig, out_dir / "ofr.png")


def run(out_dir: Path, quick: bool = False) -> str:
    """Simulate, write ``ofr.md``, ``ofr.json`` and ``ofr.png`` into ``out_dir``; return the Markdown."""
    settings = QUICK if quick else FULL
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    series = simulate(settings)
    duration = time.perf_counter() - started
    markdown = save_report(out_dir, NAME, "OFR benchmark", render_markdown(series, settings, quick, duration), quick,
                           duration, settings=asdict(settings),
                           summary={key: phase_means(values) for key, values in series.items()}, series=series)
    plot(series, settings, out_dir)
    return markdown
