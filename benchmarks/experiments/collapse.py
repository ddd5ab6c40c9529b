"""Interaction collapse in miniature: does outcome-only RL make the tiny VLM stop using its tool, and do the
accumulative tool reward and OFR prevent it? (``pyvision experiment collapse``, ``python -m benchmarks --only
collapse``.)

**Design** (fixed before any result was seen; the report states it and the one run it shows):

* *Tasks* — ``collapse-mix``, a mixture built on ``tally`` (count the squares of one colour in a 96x96 image).
  Each task is independently (per-task RNG) *hinted* with probability 1/2 — the question states the count
  ("... There are 4."), so it can be answered without looking — and its image is stored as RGBA with
  probability 1/3, where the cold-start code (``np.asarray(image) == (r, g, b)``) raises: the tool call fails
  and, as in PyVision-RL's training (``on_tool_error: end``), the episode ends with reward 0. So some tasks
  need the tool (an unhinted count is guessed right 1 time in 9), some can be answered directly, and a third
  of the tool calls fail, whatever the task.
* *Start* — one tiny model (the CPU demo's), one cold-start SFT on a teacher that uses the tool in half of its
  episodes and otherwise answers at once (the hint when there is one, else a guess). Every arm starts from
  this SFT model.
* *Arms* — GRPO with the demo's settings (group 4, lr 1e-3, max 3 turns, clip 0.2/0.28, no KL) and:
  ``outcome`` — the grade as the reward, one round of 8 groups per update (vanilla GRPO); ``tool-reward`` —
  the accumulative tool reward ``R = acc + 0.1 · tool turns · 1[correct]``, same batches; ``ofr`` — the
  grade, with OFR (rounds of 12 groups until 32 trajectories survive, at most 3 rounds); ``both`` — the
  accumulative reward with OFR (the demo's and the paper's setting).
* *Seeds* — the same seeds for every arm (the seed drives task order, sampling and episode seeds).
* *Measured* — per update, over every episode generated: tool calls per episode, turns, accuracy, reward. At
  the end, greedy accuracy and tool calls on the held-out split, per run (Wilson 95 % interval) and per arm
  (pooled over seeds), also by task kind.

Example::

    results = run_collapse(Path("runs/collapse"))              # the full run: 4 arms x 3 seeds
    results = run_collapse(Path("/tmp/c"), settings=QUICK)      # a few minutes: the code path, no science
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import math
import multiprocessing
import re
import shutil
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.baselines import GuessingMixture
from pyvision_env.messages import Message, TextPart
from pyvision_env.registry import register_suite
from pyvision_env.suites import tally
from pyvision_env.suites.common import SyntheticSuite
from pyvision_env.tasks import Task

NAME = "collapse"
DESCRIPTION = "interaction collapse in miniature: outcome reward vs tool reward vs OFR vs both, on the tiny VLM"

SUITE_NAME = "collapse-mix"
HINTED_SHARE = 0.5
"""Tasks whose question states the answer (answerable without the tool)."""
TOOL_FAILS_SHARE = 1 / 3
"""Tasks whose image is RGBA, where the cold-start counting code raises (the tool call fails)."""


def make_task(rng: np.random.Generator, index: int) -> Task:
    """A ``tally`` task, hinted and/or with a failing tool at the shares above (``metadata``: ``kind`` is
    ``hinted`` or ``count``, ``tool_fails``)."""
    task = tally.make_task(rng, index)
    hinted = bool(rng.random() < HINTED_SHARE)
    tool_fails = bool(rng.random() < TOOL_FAILS_SHARE)
    image = task.images[0].convert("RGBA") if tool_fails else task.images[0]
    return replace(task, id=f"mix-{index:04d}", images=(image,),
                   question=task.question + (f" There are {task.answer}." if hinted else ""),
                   metadata={**task.metadata, "kind": "hinted" if hinted else "count", "tool_fails": tool_fails})


SUITE = SyntheticSuite(SUITE_NAME, 1, make_task, tags=("synthetic", "count", "experiment"), default_count=500,
                       description="tally tasks, half with the answer in the question, a third with a failing "
                                   "tool (the collapse experiment)")
register_suite(SUITE_NAME, SUITE)

ARMS: dict[str, dict[str, Any]] = {
    "outcome": {"reward": None, "ofr": False},
    "tool-reward": {"reward": "accumulative", "ofr": False},
    "ofr": {"reward": None, "ofr": True},
    "both": {"reward": "accumulative", "ofr": True},
}
"""The four arms: the reward (None: the grade alone) and whether OFR selects the batch."""

PAPER_EXPECTS = {"outcome": "collapse", "tool-reward": "no collapse", "ofr": "no collapse", "both": "no collapse"}
"""What PyVision-RL's account predicts under each arm."""


@dataclass(frozen=True)
class Settings:
    """How big the experiment is."""

    updates: int = 30
    """GRPO updates per run."""
    seeds: tuple[int, ...] = (0, 1, 2)
    teacher_episodes: int = 200
    eval_episodes: int = 100
    """Held-out tasks played greedily at the end of each run (and once for the SFT model): all 100 of the
    split."""
    workers: int = 2
    """Runs trained at once (one process each, one torch thread each)."""


FULL = Settings()
QUICK = Settings(updates=1, seeds=(0,), teacher_episodes=24, eval_episodes=6, workers=2)
"""Exercises every step of the experiment in a few minutes; its numbers mean nothing."""


def run_collapse(out: Path, settings: Settings = FULL, arms: Sequence[str] = tuple(ARMS)) -> dict[str, Any]:
    """Run the experiment into ``out``; returns its results (also ``results.json``; ``report.html`` shows them).

    Runs whose ``run.json`` already exists are not run again: an interrupted experiment continues where it
    stopped when given the same ``out`` and settings (other settings are refused)."""
    from tqdm.auto import tqdm

    from trainers.demo import make_demo_model, record_teacher

    unknown = sorted(set(arms) - set(ARMS))
    if unknown or not arms:
        raise ValueError(f"unknown arms {unknown}; known: {sorted(ARMS)}")
    out.mkdir(parents=True, exist_ok=True)
    recorded = out / "settings.json"
    defining = {key: value for key, value in json.loads(json.dumps(asdict(settings))).items() if key != "workers"}
    if recorded.is_file() and json.loads(recorded.read_text()) != defining:
        raise ValueError(f"{out} holds an experiment run with other settings ({recorded.read_text().strip()}); "
                         "give another folder, or the same settings to continue it")
    recorded.write_text(json.dumps(defining))  # how many runs train at once changes no result
    started = time.perf_counter()
    timings: dict[str, float] = {}
    start = out / "start"
    sft_model = start / "sft-model"
    if not (sft_model / "config.json").is_file():
        clock = time.perf_counter()
        shutil.rmtree(start, ignore_errors=True)  # a start interrupted before its end is made again
        train_tasks = SUITE.load().split("train")[:40]
        model = make_demo_model(start / "tiny-model", tasks=train_tasks)
        teacher = record_teacher(start / "teacher", settings.teacher_episodes, 0.5, 0, suite=SUITE_NAME,
                                 teacher=HintReadingTeacher, on_tool_error="end")
        (start / "teacher.json").write_text(json.dumps(teacher, indent=2))
        _cold_start(model, start / "teacher", start / "sft", sft_model)
        timings["start"] = time.perf_counter() - clock
    baseline_file = start / "baseline.json"
    if not baseline_file.is_file():
        baseline_file.write_text(json.dumps(_evaluate_only(sft_model, start / "baseline", settings)))
    runs = [(arm, seed) for arm in arms for seed in settings.seeds]
    todo = [(arm, seed) for arm, seed in runs if not (out / "runs" / f"{arm}-seed{seed}" / "run.json").is_file()]
    clock = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # torch and kernels in fresh processes
    with concurrent.futures.ProcessPoolExecutor(settings.workers, mp_context=context) as pool, \
            tqdm(total=len(runs), initial=len(runs) - len(todo), desc="collapse runs", unit="run") as bar:
        futures = [pool.submit(train_arm, arm, seed, sft_model, out / "runs" / f"{arm}-seed{seed}", settings)
                   for arm, seed in todo]
        for future in concurrent.futures.as_completed(futures):
            future.result()  # a failed run stops the experiment with its error; finished runs are kept
            bar.update()
    timings["runs"] = time.perf_counter() - clock
    results = summarize(out, arms, settings)
    results["teacher"] = json.loads((start / "teacher.json").read_text())
    results["timings_s"] = {**timings, "total": time.perf_counter() - started}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_collapse_report(out, results)
    return results


class HintReadingTeacher(GuessingMixture):
    """The cold-start teacher: the scripted tally policy in half of the episodes; otherwise an answer at once,
    the count the question states when it states one, else a random guess."""

    def guess(self, observation: list[Message]) -> str:
        question = " ".join(part.text for message in observation for part in message.content
                            if isinstance(part, TextPart))
        stated = re.search(r"There are (\d+)\.", question)
        return stated.group(1) if stated else super().guess(observation)


@functools.lru_cache(maxsize=1)
def _tasks_by_id() -> dict[str, Task]:
    return {task.id: task for task in SUITE.load()}


def _cold_start(model: Path, episodes: Path, run_dir: Path, final: Path) -> None:
    """SFT of ``model`` on the teacher's ``episodes`` (the demo's SFT settings); the model goes to ``final``."""
    from trainers.checkpoint import latest_checkpoint
    from trainers.config import SFTConfig, load_config
    from trainers.demo import CONFIGS
    from trainers.sft import SFTTrainer

    config = load_config(SFTConfig, CONFIGS / "demo_sft.yaml", [
        f"output_dir={run_dir}", f"model.path={model}", f"data.episodes=[{episodes}]", "seed=0",
        "logging.progress=true"])
    with SFTTrainer(config) as sft:
        sft.train()
    shutil.copytree(latest_checkpoint(run_dir), final, dirs_exist_ok=True)


def _config(arm: str, seed: int, model: Path, run_dir: Path, settings: Settings, steps: int) -> Any:
    from trainers.config import GRPOConfig, load_config
    from trainers.demo import CONFIGS

    spec = ARMS[arm]
    reward = spec["reward"] if spec["reward"] is not None else "null"
    return load_config(GRPOConfig, CONFIGS / "demo_grpo.yaml", [
        f"output_dir={run_dir}", f"model.path={model}", f"seed={seed}", f"steps={steps}",
        f"env.suite={SUITE_NAME}", f"env.reward={reward}", "env.on_tool_error=end",
        f"ofr.enabled={str(spec['ofr']).lower()}", "prompts_per_round=8", f"eval.every={max(steps, 1)}",
        "eval.before_first=false",
        f"eval.episodes={settings.eval_episodes}", f"checkpoint.every={max(steps, 1)}", "logging.progress=false",
        "logging.tensorboard=false"])


def train_arm(arm: str, seed: int, model: Path, run_dir: Path, settings: Settings) -> dict[str, Any]:
    """Train one arm with one seed from the SFT model; writes and returns ``run.json`` (the per-update train
    metrics and the final held-out evaluation, per episode)."""
    from trainers.grpo import GRPOTrainer

    config = _config(arm, seed, model, run_dir, settings, settings.updates)
    with GRPOTrainer(config) as trainer:
        trainer.train()  # evaluates after the last update
        train_rows = trainer.logger.history("train")
        episodes = [_episode(t) for t in trainer.last_eval]
    run = {"arm": arm, "seed": seed, "train": train_rows, "eval": episodes}
    (run_dir / "run.json").write_text(json.dumps(run))
    return run


def _evaluate_only(model: Path, run_dir: Path, settings: Settings) -> list[dict[str, Any]]:
    """The SFT model's greedy held-out episodes (the common start of every arm)."""
    from trainers.grpo import GRPOTrainer

    with GRPOTrainer(_config("outcome", 0, model, run_dir, settings, steps=0)) as trainer:
        trainer.evaluate()
        return [_episode(t) for t in trainer.last_eval]


def _episode(trajectory: Any) -> dict[str, Any]:
    task = _tasks_by_id().get(trajectory.task_id)
    return {"task_id": trajectory.task_id, "correct": bool(trajectory.correct), "tool_calls": trajectory.tool_calls,
            "turns": trajectory.turns, "end_reason": trajectory.end_reason, "error": trajectory.error,
            "kind": task.metadata["kind"] if task else None, "tool_fails": task.metadata["tool_fails"] if task else None}


# --- analysis ------------------------------------------------------------------------------------------

CURVES = (("tool_calls", "tool calls per episode"), ("turns", "turns per episode"), ("accuracy", "accuracy"),
          ("reward/mean", "reward"))


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default).

    >>> [round(v, 3) for v in wilson(8, 10)]
    [0.49, 0.943]
    """
    if total == 0:
        return (float("nan"), float("nan"))
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(out: Path, arms: Sequence[str], settings: Settings) -> dict[str, Any]:
    """Curves (mean and spread over seeds per update), final held-out numbers and verdicts, from the run
    folders."""
    baseline = json.loads((out / "start" / "baseline.json").read_text())
    runs = {arm: [json.loads((out / "runs" / f"{arm}-seed{seed}" / "run.json").read_text())
                  for seed in settings.seeds] for arm in arms}
    curves = {arm: {key: _spread([[row.get(key) for row in run["train"]] for run in arm_runs])
                    for key, _ in CURVES} for arm, arm_runs in runs.items()}
    final = [{**_held_out(arm, [episode for run in arm_runs for episode in run["eval"]],
                          [_played_mean(run["eval"], "correct") for run in arm_runs]),
              "tool_calls_per_seed": " ".join(f"{_played_mean(run['eval'], 'tool_calls'):.2f}" for run in arm_runs),
              "collapsed_runs": f"{sum(collapsed(run) for run in arm_runs)}/{len(arm_runs)}"}
             for arm, arm_runs in runs.items()]
    by_kind = [{"model": model, "kind": kind, **_held_out_numbers([e for e in episodes if e["kind"] == kind])}
               for model, episodes in [("SFT start", baseline),
                                       *((arm, [e for run in arm_runs for e in run["eval"]])
                                         for arm, arm_runs in runs.items())]
               for kind in ("count", "hinted")]
    return {"settings": asdict(settings), "design": __doc__.split("**Design**")[1].split("Example::")[0].strip(),
            "baseline": _held_out("SFT start", baseline, [_played_mean(baseline, "correct")]),
            "curves": curves, "held_out": final, "held_out_by_kind": by_kind,
            "verdicts": {arm: verdict(arm, curves[arm]["tool_calls"]["mean"], sum(map(collapsed, arm_runs)),
                                      len(arm_runs)) for arm, arm_runs in runs.items()}}


def _spread(series: list[list[float | None]]) -> dict[str, Any]:
    """Per update: mean, min and max over the runs (seeds), and each run's own values (``runs``)."""
    steps = min(len(values) for values in series) if series else 0
    columns = [[float(values[i]) for values in series if values[i] is not None] for i in range(steps)]
    return {"mean": [statistics.fmean(c) if c else math.nan for c in columns],
            "min": [min(c) if c else math.nan for c in columns], "max": [max(c) if c else math.nan for c in columns],
            "runs": [[math.nan if value is None else float(value) for value in values[:steps]] for values in series]}


def _held_out_numbers(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (Wilson interval) and tool calls over the episodes that ran: an episode whose environment or
    generation failed (``end_reason: error``, e.g. a kernel that did not start on a loaded machine) says nothing
    about the model; those are counted apart, as the trainer keeps them out of its baselines."""
    played = [e for e in episodes if e["end_reason"] != "error"]
    correct = sum(e["correct"] for e in played)
    low, high = wilson(correct, len(played))
    return {"episodes": len(played), "errors": len(episodes) - len(played),
            "accuracy": correct / len(played) if played else math.nan, "ci95_low": low, "ci95_high": high,
            "tool_calls": statistics.fmean(e["tool_calls"] for e in played) if played else math.nan}


def _played_mean(episodes: list[dict[str, Any]], key: str) -> float:
    """The mean of ``key`` over the episodes that ran (not ``error``)."""
    return statistics.fmean(e[key] for e in episodes if e["end_reason"] != "error")


def _held_out(model: str, episodes: list[dict[str, Any]], per_seed: list[float]) -> dict[str, Any]:
    return {"model": model, **_held_out_numbers(episodes),
            "accuracy_per_seed": " ".join(f"{value:.1%}" for value in per_seed)}


COLLAPSED_BELOW = 0.1
"""A run *collapsed* when its held-out episodes make fewer tool calls than this on average."""


def collapsed(run: dict[str, Any]) -> bool:
    """Whether a run ended collapsed (:data:`COLLAPSED_BELOW`)."""
    return _played_mean(run["eval"], "tool_calls") < COLLAPSED_BELOW


def verdict(arm: str, tool_calls: list[float], collapsed_runs: int, runs: int) -> str:
    """What the arm did — how many runs collapsed, and its mean tool calls per episode over the seeds from the
    first update to the mean of the last three — and whether that is what the paper predicts: most runs collapse
    under the outcome reward, none under a remedy.

    >>> verdict("outcome", [0.5, 0.3, 0.1, 0.0], collapsed_runs=2, runs=3)
    '2/3 runs collapsed; tool calls per episode 0.50 -> 0.13: as the paper predicts (collapse)'
    """
    if len(tool_calls) < 2:
        return f"{collapsed_runs}/{runs} runs collapsed; too few updates to tell"
    first, last = tool_calls[0], statistics.fmean(tool_calls[-3:])
    expected = PAPER_EXPECTS[arm]
    agrees = collapsed_runs > runs / 2 if expected == "collapse" else collapsed_runs == 0
    return (f"{collapsed_runs}/{runs} runs collapsed; tool calls per episode {first:.2f} -> {last:.2f}: "
            f"{'as' if agrees else 'NOT as'} the paper predicts ({expected})")


def write_collapse_report(out: Path, results: dict[str, Any]) -> Path:
    """``report.html``: the design, the verdicts, the held-out tables and one plot per curve (every arm: its mean
    over seeds and each seed)."""
    from trainers.report import write_report

    plots = [plot_curve(results["curves"], key, label, out / f"{key.replace('/', '_')}.png") for key, label in CURVES]
    settings = results["settings"]
    intro = (f"One run of the design below: {len(settings['seeds'])} seeds per arm, {settings['updates']} GRPO "
             f"updates per run, held-out evaluation on {settings['eval_episodes']} tasks (greedy).\n\n"
             + results["design"] + "\n\n"
             + f"A run counts as collapsed when its held-out episodes make fewer than {COLLAPSED_BELOW} tool calls "
               "per episode on average.\n\n"
             + "\n".join(f"{arm}: {text}." for arm, text in results["verdicts"].items()))
    return write_report(out / "report.html", title="Interaction collapse in miniature", intro=intro,
                        tables=[("Held-out at the end (Wilson 95 % interval, pooled over seeds)",
                                 [results["baseline"], *results["held_out"]]),
                                ("Held-out by task kind", results["held_out_by_kind"])],
                        plots=plots)


def plot_curve(curves: dict[str, dict[str, dict[str, list[float]]]], key: str, label: str, path: Path) -> Path:
    """One metric per update for every arm: the mean over seeds as a thick line, each seed as a thin one (runs
    of the tiny model tend to end at all-tool or no-tool policies, which a mean alone hides)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 3.6))
    for arm, arm_curves in curves.items():
        series = arm_curves[key]
        steps = list(range(1, len(series["mean"]) + 1))
        line, = axes.plot(steps, series["mean"], linewidth=2.5, label=f"{arm} (mean)")
        for run in series["runs"]:
            axes.plot(steps, run, linewidth=0.8, alpha=0.45, color=line.get_color())
    axes.set_xlabel("update")
    axes.set_ylabel(label)
    axes.set_title(f"{label}: mean over seeds (thick), each seed (thin)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# --- python -m benchmarks ----------------------------------------------------------------------------

HELD_OUT_COLUMNS = [("model", "model", "{}"), ("episodes", "episodes", "{}"), ("errors", "errors", "{}"),
                    ("accuracy", "accuracy", "{:.1%}"),
                    ("ci95_low", "95 % CI low", "{:.1%}"), ("ci95_high", "95 % CI high", "{:.1%}"),
                    ("accuracy_per_seed", "accuracy per seed", "{}"), ("tool_calls", "tool calls", "{:.2f}"),
                    ("tool_calls_per_seed", "tool calls per seed", "{}"), ("collapsed_runs", "collapsed", "{}")]

def run(out_dir: Path, quick: bool = False) -> str:
    """The benchmark entry: the experiment in ``out_dir/collapse/`` (``quick``: :data:`QUICK`), its tables in
    ``collapse.md``, its results in ``collapse.json`` and its plots as ``collapse.png`` (tool calls) and
    ``collapse_*.png`` beside the other benchmarks' reports."""
    from pyvision_env.reporting import markdown_table

    folder = out_dir / "collapse"
    results = run_collapse(folder, QUICK if quick else FULL)
    lines = [markdown_table([results["baseline"], *results["held_out"]], HELD_OUT_COLUMNS), "",
             *(f"- {arm}: {text}" for arm, text in results["verdicts"].items()), "",
             f"Report with the curves: {folder / 'report.html'}"]
    markdown = "\n".join(lines)
    (out_dir / "collapse.md").write_text(markdown + "\n")
    (out_dir / "collapse.json").write_text(json.dumps(results, indent=2))
    for key, _ in CURVES:  # the tool-call curve is the benchmark's figure; the others follow it
        name = f"{key.replace('/', '_')}.png"
        shutil.copyfile(folder / name, out_dir / ("collapse.png" if key == "tool_calls" else f"collapse_{name}"))
    return markdown
