"""The evaluation harness behind ``pyvision eval`` and ``pyvision run``: any policy on any set of suites, ``k``
samples per task (or a number of episodes), several episodes at once, resumable, every episode recorded.

A run folder holds:

* ``results.jsonl`` — one line per scored episode: where it ran (suite, task id, sample, policy, protocol,
  attempts, times, the task's metadata) and its :class:`~agents.episodes.EpisodeResult` (correct, score, turns,
  tool calls and errors, visual tokens, the answer given...). A run started again on the same folder skips
  every (suite, task, sample) already there: an interrupted evaluation continues where it stopped and nothing
  scored is recomputed.
* ``episodes/`` — the recording of every episode (``pyvision view``).
* ``faithfulness.jsonl`` — with ``faithfulness`` modes: one line per (scored episode, mode), the outcome of the
  episode played again with its evidence removed (:mod:`.faithfulness`); resumed the same way.
* ``summary.md``, ``summary.csv``, ``summary.json``, ``summary.png`` — per suite: accuracy (avg@k), pass@k, mean score,
  turns, tool calls, tool errors, visual tokens and wall time; per-category breakdowns; each public
  benchmark's own metrics (its module's ``aggregate``); and with faithfulness modes, the accuracy under each
  counterfactual, its drop and the share of crops that contain the ground-truth region.

:func:`compare` puts several runs, and published numbers from a CSV file, side by side.

Example::

    from benchmarks.evaluation.harness import Evaluation
    evaluation = Evaluation(["zoom", "count"], lambda suite, protocol: scripted_policy(suite, protocol),
                            Path("runs/eval"), samples=4, concurrency=4)
    summary = evaluation.run()          # -> {"suites": [...], "breakdowns": {...}, "benchmark_metrics": {...}}
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import queue
import statistics
import sys
import threading
import time
import uuid
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from agents.base import Policy
from agents.episodes import EpisodeResult, play_episode
from pyvision_env.pools import EnvPool, LocalEnvPool, WorkerLost
from pyvision_env.protocols import Protocol
from pyvision_env.reporting import markdown_table, save_figure
from pyvision_env.tasks import Task, TaskSet
from pyvision_env.wrappers.recording import RecordEpisodes, append_line

from .faithfulness import (
    COUNTERFACTUALS,
    MODES,
    CropRecord,
    counterfactual,
    crops_contain_regions,
    faithfulness_columns,
    faithfulness_table_columns,
    mode_key,
    parse_modes,
)

RESULTS = "results.jsonl"
MAX_AUTO_CATEGORIES = 40
"""Metadata keys with more distinct values than this are not broken down unless asked for (``by``)."""

PolicyFactory = Callable[[str, Protocol], Policy]
"""``(suite name, the env's protocol) -> policy``: called once per worker and suite."""


class ResultsFileError(ValueError):
    """``results.jsonl`` is damaged somewhere other than a torn last line."""


@dataclass(frozen=True)
class WorkItem:
    suite: str
    task_index: int
    task_id: str
    sample: int


@dataclass(frozen=True)
class CounterfactualItem:
    record: dict[str, Any]
    """The scored episode (its ``results.jsonl`` line)."""
    mode: str


def read_results(out: Path, name: str = RESULTS) -> list[dict[str, Any]]:
    """The scored episodes of run folder ``out`` (none if it has no results yet), or the lines of its file
    ``name`` (e.g. ``faithfulness.jsonl``). A torn last line — a run killed while writing it — is ignored: that
    episode runs again."""
    path = Path(out) / name
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ResultsFileError(f"{path} line {number} is not JSON ({error}); fix or remove it") from None
    return records


def drop_torn_line(path: Path) -> None:
    """Cut an unterminated last line (a run killed while writing it) off ``path``, so that appending goes on
    from whole lines."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


class Evaluation:
    """Evaluate a policy on ``suites`` (registered names) into run folder ``out``; see the module docstring.

    ``samples``: episodes per task (avg@k and pass@k); ``limit``: the first tasks of each suite only;
    ``episodes``: instead, that many episodes per suite on its tasks in order from ``first_task``, cycling (a
    task's second round is its next sample: what ``pyvision run`` plays);
    ``concurrency``: episodes run at once (one environment and one policy per worker thread);
    ``env_options``: more :class:`~pyvision_env.env.PyVisionEnv` arguments (``max_turns``, ``split``, ...);
    ``pool``: where the environments run (:mod:`pyvision_env.pools`; default: a local pool for the run). An
    episode whose Ray worker died is played again up to ``pool.episode_attempts`` times in all, then recorded
    as failed (``end_reason`` ``worker_lost``, with the reason);
    ``faithfulness``: counterfactual modes (``"blackout,swap,no-tools"``, see :mod:`.faithfulness`) played after
    the episodes on a local pool; the episodes then trace their image operations and record their crops.
    """

    def __init__(self, suites: Sequence[str], make_policy: PolicyFactory, out: str | os.PathLike, *,
                 samples: int = 1, limit: int | None = None, episodes: int | None = None, first_task: int = 0,
                 concurrency: int = 1, protocol: str = "pyvision", record: bool = True, progress: bool = True,
                 by: Sequence[str] = (), env_options: dict[str, Any] | None = None,
                 pool: EnvPool | None = None, faithfulness: str | Sequence[str] = ()) -> None:
        if not suites:
            raise ValueError("give at least one suite")
        if samples < 1 or concurrency < 1 or (limit is not None and limit < 1) or (episodes is not None
                                                                                   and episodes < 1):
            raise ValueError(f"samples, concurrency, limit and episodes must be at least 1; got {samples}, "
                             f"{concurrency}, {limit}, {episodes}")
        if episodes is not None and (samples != 1 or limit is not None):
            raise ValueError("give episodes, or samples and limit, not both")
        if first_task < 0:
            raise ValueError(f"first_task must be at least 0, got {first_task}")
        self.suites, self.make_policy, self.out = list(dict.fromkeys(suites)), make_policy, Path(out)
        self.samples, self.limit, self.concurrency, self.protocol = samples, limit, concurrency, protocol
        self.episodes, self.first_task = episodes, first_task
        self.record, self.progress, self.by = record, progress, tuple(by)
        self.env_options = dict(env_options or {})
        self.pool = pool
        self.faithfulness = parse_modes(faithfulness)
        if self.faithfulness:
            self.env_options["trace_operations"] = True
        self._lock = threading.Lock()
        self.results: list[dict[str, Any]] = []
        """Every scored episode of the run folder, once :meth:`run` has finished."""

    def tasks(self, suite: str) -> TaskSet:
        """The tasks of ``suite`` the run draws from (its ``split`` when given)."""
        from pyvision_env.registry import load_suite

        split = self.env_options.get("split")
        return load_suite(suite).split(split) if split else load_suite(suite)

    def work(self) -> list[WorkItem]:
        """Every (suite, task, sample) of the run, suite by suite (also the ones already scored)."""
        items = []
        for suite in self.suites:
            tasks = self.tasks(suite)
            if self.episodes is not None:
                places = [divmod(self.first_task + number, len(tasks)) for number in range(self.episodes)]
                items += [WorkItem(suite, index, tasks[index].id, sample) for sample, index in places]
                continue
            chosen = list(tasks)[:self.limit] if self.limit else list(tasks)
            items += [WorkItem(suite, index, task.id, sample) for sample in range(self.samples)
                      for index, task in enumerate(chosen)]
        return items

    def run(self) -> dict[str, Any]:
        """Run what is not scored yet (then, with faithfulness modes, the counterfactuals not played yet), then
        write and return the summary."""
        from pyvision_env.execution import WeakIsolationWarning

        self.out.mkdir(parents=True, exist_ok=True)
        drop_torn_line(self.out / RESULTS)
        done = {(r["suite"], r["task_id"], r["sample"]) for r in read_results(self.out)}
        todo = [item for item in self.work() if (item.suite, item.task_id, item.sample) not in done]
        if done and self.progress:
            print(f"resuming {self.out}: {len(done)} episodes already scored, {len(todo)} to go", flush=True)
        owned: list[EnvPool] = []

        def local_pool() -> EnvPool:
            if isinstance(self.pool, LocalEnvPool):
                return self.pool
            if not owned:
                with warnings.catch_warnings():
                    warnings.simplefilter("default", WeakIsolationWarning)
                    owned.append(LocalEnvPool(concurrency=self.concurrency))
            return owned[0]

        try:
            if todo:
                self._play_all(todo, self.pool or local_pool(), "eval", self._play_item)
            self.results = read_results(self.out)
            if self.faithfulness:
                drop_torn_line(self.out / COUNTERFACTUALS)
                counterfactuals = self._counterfactual_work()
                if counterfactuals:
                    self._play_all(counterfactuals, local_pool(), "faithfulness", self._play_counterfactual)
        finally:
            for pool in owned:
                pool.close()
        summary = summarize(self.results, by=self.by, counterfactuals=read_results(self.out, COUNTERFACTUALS))
        write_summary(self.out, summary)
        if self.record and (self.out / "episodes" / "episodes.jsonl").is_file():
            from pyvision_env.viewer import render_html

            render_html(self.out / "episodes" / "episodes.jsonl", self.out / "episodes" / "episodes.html")
        return summary

    def _play_all(self, items: Sequence[Any], pool: EnvPool, desc: str,
                  play: Callable[[Any, EnvPool, dict[str, Any]], tuple[str, dict[str, Any]]]) -> None:
        """``play(item, pool, opened)`` -> ``(file name, line)`` for each item on ``concurrency`` worker threads,
        each line appended to its file in the run folder as it comes; ``opened`` is the worker's
        ``{suite: (env or None, policy)}``, its envs closed at the end. The first error stops the run."""
        pending: queue.Queue[Any] = queue.Queue()
        for item in items:
            pending.put(item)
        session = uuid.uuid4().hex[:12]
        bar = tqdm(total=len(items), desc=desc, unit="ep", disable=not self.progress)
        errors: list[BaseException] = []
        try:
            workers = [threading.Thread(target=self._worker, args=(pending, pool, session, bar, errors, play),
                                        name=f"{desc}-{i}", daemon=True)
                       for i in range(min(self.concurrency, len(items)))]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
        finally:
            bar.close()
        if errors:
            raise errors[0]

    def _worker(self, pending: queue.Queue[Any], pool: EnvPool, session: str, bar: Any,
                errors: list[BaseException], play: Callable[..., tuple[str, dict[str, Any]]]) -> None:
        opened: dict[str, tuple[Any, Policy]] = {}
        try:
            while not errors:
                try:
                    item = pending.get_nowait()
                except queue.Empty:
                    return
                name, record = play(item, pool, opened)
                record["session"] = session
                append_line(self.out / name, json.dumps(record, default=str) + "\n")
                with self._lock:
                    bar.update()
        except BaseException as error:  # noqa: BLE001 - a broken environment stops the run; results so far are kept
            errors.append(error)
        finally:
            for env, _ in opened.values():
                if env is not None:
                    env.close()

    def _play_item(self, item: WorkItem, pool: EnvPool, opened: dict[str, tuple[Any, Policy]]
                   ) -> tuple[str, dict[str, Any]]:
        if item.suite not in opened:
            opened[item.suite] = self._open(item.suite, pool)
        env, policy = opened[item.suite]
        return RESULTS, self._episode(env, policy, item, pool.episode_attempts)

    def _open(self, suite: str, pool: EnvPool) -> tuple[Any, Policy]:
        env = pool.make_env(suite, protocol=self.protocol, **self.env_options)
        if self.faithfulness:
            env = CropRecord(env)
        if self.record:
            env = RecordEpisodes(env, self.out / "episodes", metadata={"suite": suite})
        return env, self.make_policy(suite, env.unwrapped.protocol)

    def _episode(self, env: Any, policy: Policy, item: WorkItem, attempts: int) -> dict[str, Any]:
        """Play one episode (again, up to ``attempts`` times, while its worker dies) into a result record: where
        it ran, and its :class:`~agents.episodes.EpisodeResult` (with faithfulness modes, its crops and whether
        they contain the task's regions)."""
        task = env.unwrapped.tasks[item.task_index]
        started, attempt = time.time(), 0
        while True:
            attempt += 1
            try:
                result = play_episode(env, policy, options={"task_index": item.task_index})
            except WorkerLost as lost:
                if attempt < attempts:
                    continue
                result = EpisodeResult.failed(item.task_id, "worker_lost", lost, time.time() - started)
            except Exception as error:  # noqa: BLE001 - a failing policy scores 0 for this episode and the run goes on
                result = EpisodeResult.failed(item.task_id, "policy_error", error, time.time() - started)
            record = {"suite": item.suite, "sample": item.sample, "metadata": dict(task.metadata),
                      "policy": getattr(policy, "name", type(policy).__name__),
                      "protocol": env.unwrapped.protocol.name, **result.to_json(), "attempts": attempt,
                      "started": started, "ended": time.time()}
            if self.faithfulness:
                crops = env.get_wrapper_attr("crops") if result.error is None else []
                record.update(crops=crops, region_contained=None if result.error is not None
                              else crops_contain_regions(crops, task))
            return record

    def _counterfactual_work(self) -> list[CounterfactualItem]:
        """The (scored episode of this run's work, mode) pairs without a line in ``faithfulness.jsonl``."""
        keys = {(item.suite, item.task_id, item.sample) for item in self.work()}
        done = {(r["suite"], r["task_id"], r["sample"], r["mode"]) for r in read_results(self.out, COUNTERFACTUALS)}
        return [CounterfactualItem(record, mode) for record in self.results
                if (record["suite"], record["task_id"], record["sample"]) in keys for mode in self.faithfulness
                if (record["suite"], record["task_id"], record["sample"], mode) not in done]

    def _play_counterfactual(self, item: CounterfactualItem, pool: EnvPool, opened: dict[str, tuple[Any, Policy]]
                             ) -> tuple[str, dict[str, Any]]:
        suite = item.record["suite"]
        options = {key: value for key, value in self.env_options.items() if key not in ("split", "trace_operations")}

        def make_env(tasks: list[Task], **overrides: Any) -> Any:
            return pool.make_env(tasks, protocol=self.protocol, **{**options, **overrides})

        def policy_for(protocol: Protocol) -> Policy:
            if suite not in opened:
                opened[suite] = (None, self.make_policy(suite, protocol))
            return opened[suite][1]

        return COUNTERFACTUALS, counterfactual(item.mode, item.record, self.tasks(suite), make_env, policy_for)


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from ``n`` samples of which ``c`` are correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def summarize(records: Iterable[dict[str, Any]], by: Sequence[str] = (),
              counterfactuals: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """Per-suite rows, per-category breakdowns and public benchmarks' own metrics from result records; with
    ``counterfactuals`` (``faithfulness.jsonl`` lines), the rows and groups also have the columns of
    :func:`~.faithfulness.faithfulness_columns`."""
    by_suite: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_suite[record["suite"]].append(record)
    lines = {(line["suite"], line["task_id"], line["sample"], line["mode"]): line for line in counterfactuals}
    rows, breakdowns, metrics = [], {}, {}
    for suite, results in by_suite.items():
        rows.append({**_suite_row(suite, results), **faithfulness_columns(results, lines)})
        breakdowns[suite] = {key: _breakdown(results, key, lines) for key in (by or _category_keys(results))}
        if (aggregate := _benchmark_aggregate(suite)) is not None:
            metrics[suite] = aggregate(results)
    return {"suites": rows, "breakdowns": breakdowns, "benchmark_metrics": metrics}


def _suite_row(suite: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    per_task: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        per_task[result["task_id"]].append(bool(result["correct"]))
    k = min(len(outcomes) for outcomes in per_task.values())
    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        sessions[result.get("session", "")].append(result)
    wall = sum(max(r["ended"] for r in rs) - min(r["started"] for r in rs) for rs in sessions.values())
    mean = lambda key: statistics.fmean(float(r[key]) for r in results)  # noqa: E731
    return {"suite": suite, "policy": results[0].get("policy", ""), "protocol": results[0].get("protocol", ""),
            "tasks": len(per_task), "samples": k,
            "episodes": len(results), "accuracy": mean("correct"),
            "pass_at_k": statistics.fmean(pass_at_k(len(o), sum(o), k) for o in per_task.values()),
            "score": mean("score"), "turns": mean("turns"), "tool_calls": mean("tool_calls"),
            "tool_errors": mean("tool_errors"), "visual_tokens": mean("visual_tokens"), "wall_s": wall,
            "failed": sum(r.get("error") is not None for r in results)}


def _category_keys(results: list[dict[str, Any]]) -> list[str]:
    """Metadata keys worth a breakdown: text values, 2 to :data:`MAX_AUTO_CATEGORIES` distinct ones."""
    values: dict[str, set[str]] = defaultdict(set)
    for result in results:
        for key, value in result.get("metadata", {}).items():
            if isinstance(value, str) and "id" not in key.lower() and "path" not in key.lower():
                values[key].add(value)
    return sorted(key for key, seen in values.items() if 2 <= len(seen) <= MAX_AUTO_CATEGORIES)


def _breakdown(results: list[dict[str, Any]], key: str, lines: dict[tuple[str, str, int, str], dict[str, Any]]
               ) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        groups[str(result.get("metadata", {}).get(key, "(none)"))].append(result)
    return [{key: value, "episodes": len(rs), "accuracy": statistics.fmean(float(r["correct"]) for r in rs),
             "score": statistics.fmean(float(r["score"]) for r in rs), **faithfulness_columns(rs, lines)}
            for value, rs in sorted(groups.items())]


def _benchmark_aggregate(suite: str) -> Callable[[list[dict[str, Any]]], dict[str, Any]] | None:
    """The ``aggregate`` function of the public benchmark ``suite`` (its loader module), if it has one."""
    from . import public

    bench = public.public_benchmarks().get(suite)
    if bench is None:
        return None
    return getattr(sys.modules[bench.loader.__module__], "aggregate", None)


COLUMNS = (("suite", "suite", "{}"), ("policy", "policy", "{}"), ("protocol", "protocol", "{}"),
           ("tasks", "tasks", "{}"), ("samples", "k", "{}"), ("accuracy", "accuracy (avg@k)", "{:.1%}"), ("pass_at_k", "pass@k", "{:.1%}"),
           ("score", "mean score", "{:.3f}"), ("turns", "turns", "{:.2f}"), ("tool_calls", "tool calls", "{:.2f}"),
           ("tool_errors", "tool errors", "{:.2f}"), ("visual_tokens", "visual tokens", "{:.0f}"),
           ("wall_s", "wall s", "{:.1f}"), ("failed", "failed", "{}"))


FAITHFULNESS_FIRST = (("suite", "suite", "{}"), ("episodes", "episodes", "{}"), ("accuracy", "accuracy", "{:.1%}"),
                      ("tool_calls", "tool calls", "{:.2f}"), ("visual_tokens", "visual tokens", "{:.0f}"))
"""The columns the faithfulness table starts with; the accuracy under each counterfactual follows."""


def summary_markdown(summary: dict[str, Any]) -> str:
    parts = ["# Evaluation", "", markdown_table(summary["suites"], COLUMNS)]
    faithfulness = faithfulness_table_columns(summary["suites"], FAITHFULNESS_FIRST)
    if len(faithfulness) > len(FAITHFULNESS_FIRST):
        parts += ["", "## Faithfulness: accuracy with the evidence removed", "",
                  markdown_table(summary["suites"], faithfulness)]
    for suite, keys in summary["breakdowns"].items():
        for key, groups in keys.items():
            parts += ["", f"## {suite} by {key}", "",
                      markdown_table(groups, faithfulness_table_columns(groups, (
                          (key, key, "{}"), ("episodes", "episodes", "{}"), ("accuracy", "accuracy", "{:.1%}"),
                          ("score", "mean score", "{:.3f}")), counts=False))]
    for suite, values in summary["benchmark_metrics"].items():
        parts += ["", f"## {suite}: the benchmark's own metrics", "",
                  markdown_table([{"metric": k, "value": v} for k, v in _flat(values).items()],
                                 (("metric", "metric", "{}"), ("value", "value", "{}")))]
    return "\n".join(parts) + "\n"


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    """``summary.md``, ``summary.csv`` (one row per suite), ``summary.json`` and the plot ``summary.png``
    (see :func:`plot_summary`) in ``out``."""
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot = plot_summary(summary, out / "summary.png")
    (out / "summary.md").write_text(summary_markdown(summary)
                                    + (f"\n![accuracy by suite and category]({plot.name})\n" if plot else ""))
    keys = [key for key, _, _ in COLUMNS]
    keys += [key for key, _, _ in faithfulness_table_columns(summary["suites"], ()) if key not in keys]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys)
    writer.writeheader()
    writer.writerows({key: row.get(key) for key in keys} for row in summary["suites"])
    (out / "summary.csv").write_text(buffer.getvalue())


MAX_PLOTTED_BREAKDOWNS = 8
"""Breakdown panels drawn in ``summary.png`` at most (the tables hold them all)."""


def plot_summary(summary: dict[str, Any], path: Path) -> Path | None:
    """Bars of accuracy (avg@k) and pass@k per suite; with faithfulness results, bars of accuracy as run and
    under each counterfactual per suite; then one panel of accuracy per category for each breakdown (the
    first :data:`MAX_PLOTTED_BREAKDOWNS`). Returns ``path``, or ``None`` with no suites."""
    if not summary["suites"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f"{suite} by {key}", key, groups) for suite, keys in summary["breakdowns"].items()
              for key, groups in keys.items()][:MAX_PLOTTED_BREAKDOWNS]
    suites = summary["suites"]
    modes = [mode for mode in MODES if any(f"accuracy_{mode_key(mode)}" in row for row in suites)]
    first = 2 if modes else 1
    columns = min(3, first + len(panels))
    rows = math.ceil((first + len(panels)) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.8 * rows), squeeze=False)
    overview = axes[0][0]
    positions = range(len(suites))
    overview.bar([p - 0.2 for p in positions], [row["accuracy"] for row in suites], width=0.4, label="avg@k")
    overview.bar([p + 0.2 for p in positions], [row["pass_at_k"] for row in suites], width=0.4, label="pass@k")
    overview.set_xticks(list(positions), [f"{row['suite']}\n(k={row['samples']})" for row in suites],
                        rotation=30 if len(suites) > 4 else 0, fontsize=8)
    overview.set_ylim(0, 1.18)
    overview.set_ylabel("accuracy")
    overview.set_title("accuracy per suite")
    overview.legend(fontsize=8, ncol=2, loc="upper center")
    if modes:
        _plot_faithfulness(axes.flat[1], suites, modes)
    for axis, (title, key, groups) in zip(axes.flat[first:], panels):
        labels = [str(group[key])[:28] for group in groups]
        axis.barh(labels, [group["accuracy"] for group in groups], color="tab:green")
        for y, group in enumerate(groups):
            axis.text(min(group["accuracy"], 1.0) + 0.01, y, f"{group['accuracy']:.0%} (n={group['episodes']})",
                      va="center", fontsize=7)
        axis.set_xlim(0, 1.25)
        axis.set_xlabel("accuracy")
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=7)
        axis.set_title(title, fontsize=9)
    for axis in axes.flat[first + len(panels):]:
        axis.axis("off")
    return save_figure(fig, path)


def _plot_faithfulness(axis: Any, suites: Sequence[dict[str, Any]], modes: Sequence[str]) -> None:
    """Grouped bars per suite: accuracy as run, then under each counterfactual mode."""
    series = [("as run", "accuracy"), *((mode, f"accuracy_{mode_key(mode)}") for mode in modes)]
    width = 0.8 / len(series)
    for index, (label, key) in enumerate(series):
        values = [math.nan if row.get(key) is None else row[key] for row in suites]
        bars = axis.bar([p - 0.4 + width * (index + 0.5) for p in range(len(suites))], values, width=width,
                        label=label)
        axis.bar_label(bars, labels=["" if math.isnan(v) else f"{v:.0%}" for v in values], fontsize=7)
    axis.set_xticks(list(range(len(suites))), [row["suite"] for row in suites],
                    rotation=30 if len(suites) > 4 else 0, fontsize=8)
    axis.set_ylim(0, 1.18)
    axis.set_ylabel("accuracy")
    axis.set_title("faithfulness: accuracy with the evidence removed")
    axis.legend(fontsize=8, ncol=len(series), loc="upper center")


def plot_comparison(rows: Sequence[dict[str, Any]], path: Path, metric: str = "accuracy") -> Path:
    """Grouped bars of :func:`compare`'s ``rows``: one group per suite, one bar per run or published model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label in (rows[0] if rows else {}) if label != "suite"]
    width = 0.8 / max(1, len(labels))
    fig, axis = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) * max(1, len(labels)) ** 0.5 + 2), 4))
    for index, label in enumerate(labels):
        values = [row.get(label) for row in rows]
        axis.bar([p - 0.4 + width * (index + 0.5) for p in range(len(rows))],
                 [math.nan if v is None else v for v in values], width=width, label=label)
    axis.set_xticks(list(range(len(rows))), [row["suite"] for row in rows], rotation=30 if len(rows) > 4 else 0)
    axis.set_ylabel(metric)
    if all(0 <= (row.get(label) or 0) <= 1 for row in rows for label in labels):
        axis.set_ylim(0, 1.18)
    axis.set_title(f"{metric} by suite")
    axis.legend(fontsize=8, ncol=min(3, max(1, len(labels))), loc="upper center")
    return save_figure(fig, path)


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = f"{value:.4g}" if isinstance(value, float) else str(value)
    return flat


def compare(runs: Sequence[str | os.PathLike], published: str | os.PathLike | None = None,
            metric: str = "accuracy") -> tuple[str, list[dict[str, Any]]]:
    """Runs (their ``summary.json``) and published numbers (a CSV with columns ``model,suite,<metric>``,
    values as fractions or percentages) side by side: one row per suite, one column per run or model.
    Returns ``(markdown, rows)``."""
    columns: dict[str, dict[str, float]] = {}
    for run in runs:
        path = Path(run) / "summary.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run} an evaluation run folder?")
        rows = json.loads(path.read_text())["suites"]
        label = Path(run).name
        columns[label] = {row["suite"]: row[metric] for row in rows if metric in row}
    if published is not None:
        path = Path(published)
        if not path.is_file():
            raise FileNotFoundError(f"published numbers file {path} not found")
        with path.open(newline="", encoding="utf-8") as handle:
            for number, row in enumerate(csv.DictReader(handle), 2):
                if not {"model", "suite", metric} <= set(row):
                    raise ValueError(f"{path} needs the columns model, suite, {metric}")
                try:
                    value = float(row[metric].rstrip("%"))
                except ValueError:
                    raise ValueError(f"{path} line {number}: {metric} {row[metric]!r} is not a number") from None
                value = value / 100 if row[metric].endswith("%") or value > 1 else value
                columns.setdefault(f"{row['model']} (published)", {})[row["suite"]] = value
    suites = sorted({suite for values in columns.values() for suite in values})
    table = [{"suite": suite, **{label: values.get(suite) for label, values in columns.items()}}
             for suite in suites]
    markdown = markdown_table(table, (("suite", "suite", "{}"),
                                      *((label, label, "{:.1%}") for label in columns)))
    return markdown, table
