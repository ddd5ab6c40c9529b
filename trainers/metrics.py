"""Training metrics on disk: JSONL (the record), CSV (for spreadsheets), TensorBoard, PNG plots.

:class:`MetricsLogger` appends one JSON line per step to ``train.jsonl`` or ``eval.jsonl`` in the run folder,
flushed at once (a run may be killed at any time), keeps ``train.csv`` / ``eval.csv`` in step with it and writes
the same scalars to ``tensorboard/``. A resumed run reads the JSONL back; :meth:`MetricsLogger.truncate` drops
the steps logged after the checkpoint it resumes from. :class:`CollapseAlarm` watches tool calls per episode
for interaction collapse, and :func:`plot_run` draws the curves of a run folder as PNG files.

Example::

    logger = MetricsLogger("runs/grpo")
    alarm = CollapseAlarm()
    for step in range(1, 101):
        metrics = {"reward/mean": 0.4, "accuracy": 0.35, "tool_calls": 1.8, "turns": 2.6, "time/step": 41.0}
        logger.log(step, metrics)
        progress.set_postfix_str(logger.summary_line(metrics))   # reward 0.400 acc 35.0% tools 1.80 ...
        if (warning := alarm.update(step, metrics)) is not None:
            progress.write(warning)
    logger.close()
    plot_run("runs/grpo")                                         # runs/grpo/plots/reward.png, ...
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from pyvision_env.wrappers.recording import append_line

KINDS = ("train", "eval")
TIME_PARTS = ("time/generation", "time/environment", "time/scoring", "time/update", "time/weight_sync")
LOSS_KEYS = ("loss", "clip_fraction", "kl", "grad_norm", "logprob_mismatch")
# The progress-bar summary: (key, label, format), in the order shown.
SUMMARY_KEYS = (("reward/mean", "reward", "{:.3f}"), ("accuracy", "acc", "{:.1%}"),
                ("tool_calls", "tools", "{:.2f}"), ("turns", "turns", "{:.2f}"),
                ("ofr/kept_ratio", "kept", "{:.0%}"), ("time/step", "step", "{:.1f}s"))


class MetricsWarning(UserWarning):
    """Something in the metrics files was skipped, or TensorBoard logging is off."""


class MetricsLogger:
    """Log scalar metrics of a run folder, one row per step and kind (``"train"`` or ``"eval"``).

    Files in ``run_dir``: ``train.jsonl`` / ``eval.jsonl`` (``{"step": 3, "reward/mean": 0.5, ...}`` per line),
    ``train.csv`` / ``eval.csv`` (step, then every key in first-seen order; missing values are empty cells),
    and ``tensorboard/`` (scalars ``train/reward/mean`` etc., when ``tensorboard`` and ``torch`` are
    installed; otherwise a :class:`MetricsWarning` says once that it is off). NaN and infinite values are
    stored as ``null``. Rows already in the JSONL files are read back on construction (resume).

    ``console``: whether the trainer shows :meth:`summary_line` on its progress bar. The logger itself never
    prints, so it cannot break a tqdm bar.

    Example::

        logger = MetricsLogger(run_dir)
        logger.log(1, {"reward/mean": 0.25, "tool_calls": 2.0})
        logger.log(1, {"accuracy": 0.4}, kind="eval")
        logger.history("train")     # [{"step": 1, "reward/mean": 0.25, "tool_calls": 2.0}]
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True, console: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.console = console
        self._rows = {kind: _read_rows(self.run_dir / f"{kind}.jsonl") for kind in KINDS}
        self._columns = {kind: _columns(rows) for kind, rows in self._rows.items()}
        self._writer = self._open_writer() if tensorboard else None

    def log(self, step: int, metrics: Mapping[str, float | int | None], kind: str = "train") -> None:
        """Append one row: the JSONL line (flushed), the rewritten CSV and the TensorBoard scalars."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if "step" in metrics:
            raise ValueError("'step' is the row's key; pass it as the step argument, not as a metric")
        row = {"step": int(step), **{key: _number(key, value) for key, value in metrics.items()}}
        append_line(self.run_dir / f"{kind}.jsonl", json.dumps(row, allow_nan=False) + "\n")
        self._rows[kind].append(row)
        columns = self._columns[kind]
        columns.extend(key for key in row if key not in columns)
        self._write_csv(kind)
        if self._writer is not None:
            for key, value in row.items():
                if key != "step" and value is not None:
                    self._writer.add_scalar(f"{kind}/{key}", value, row["step"])
            self._writer.flush()

    def history(self, kind: str = "train") -> list[dict[str, Any]]:
        """The rows logged so far (read back from disk on resume, then appended), in order."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return [dict(row) for row in self._rows[kind]]

    def truncate(self, after_step: int) -> None:
        """Drop the rows with ``step > after_step`` from both JSONL files and CSVs (rewritten atomically),
        and hide those steps in TensorBoard: for a run resumed from a checkpoint older than its last row."""
        dropped = False
        for kind in KINDS:
            rows = [row for row in self._rows[kind] if row["step"] <= after_step]
            if len(rows) == len(self._rows[kind]):
                continue
            dropped = True
            text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)
            _replace_text(self.run_dir / f"{kind}.jsonl", text)
            self._rows[kind], self._columns[kind] = rows, _columns(rows)
            self._write_csv(kind)
        if dropped and self._writer is not None:
            self._writer.close()  # a new event file whose purge step hides the later events of the old ones
            self._writer = self._open_writer(purge_step=after_step + 1)

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the JSONL and CSV files are complete after every log)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    @staticmethod
    def summary_line(metrics: Mapping[str, Any]) -> str:
        """A short line of the main metrics present, for a progress bar's postfix.

        >>> MetricsLogger.summary_line({"reward/mean": 0.5, "accuracy": 0.25, "tool_calls": 1.5, "loss": 3})
        'reward 0.500 acc 25.0% tools 1.50'
        """
        parts = []
        for key, label, template in SUMMARY_KEYS:
            value = metrics.get(key)
            if value is not None and math.isfinite(value):
                parts.append(f"{label} {template.format(value)}")
        return " ".join(parts)

    def _open_writer(self, purge_step: int | None = None) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:
            warnings.warn(f"TensorBoard logging is off (pip install tensorboard; it also needs torch): {error}",
                          MetricsWarning, stacklevel=3)
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge_step)

    def _write_csv(self, kind: str) -> None:
        path = self.run_dir / f"{kind}.csv"
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with temporary.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=self._columns[kind], restval="")
            writer.writeheader()
            writer.writerows({key: "" if value is None else value for key, value in row.items()}
                             for row in self._rows[kind])
        os.replace(temporary, path)


class CollapseAlarm:
    """Warns when a per-episode interaction metric falls well below its early level: interaction collapse.

    Under an outcome-only reward, tool-using vision models learn to call tools less and less until they answer
    directly (PyVision-RL: tool calls per episode are the primary health signal of a run). The early level
    is the mean of the first ``window`` values of ``key``; once ``2 * window`` values were seen, :meth:`update`
    returns a warning when the mean of the last ``window`` values is below ``ratio`` × the early level. It
    fires once, then stays silent until the level recovers to the threshold, after which it may fire again.

    >>> alarm = CollapseAlarm(window=2)
    >>> [alarm.update(step, {"tool_calls": calls}) is not None for step, calls in enumerate([2, 2, 2, 0, 0, 0])]
    [False, False, False, False, True, False]

    On resume, replay the history: ``for row in logger.history(): alarm.update(row["step"], row)``.
    """

    def __init__(self, key: str = "tool_calls", window: int = 5, ratio: float = 0.5) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if not ratio > 0:
            raise ValueError(f"ratio must be positive, got {ratio}")
        self.key, self.window, self.ratio = key, window, ratio
        self._early: list[float] = []
        self._recent: deque[float] = deque(maxlen=window)
        self._seen = 0
        self._fired = False

    def update(self, step: int, metrics: Mapping[str, Any]) -> str | None:
        """Take this step's value of ``key`` (rows without it are ignored); a warning message or None."""
        value = metrics.get(self.key)
        if value is None or not math.isfinite(value):
            return None
        self._seen += 1
        if len(self._early) < self.window:
            self._early.append(float(value))
        self._recent.append(float(value))
        if self._seen < 2 * self.window:
            return None
        early = sum(self._early) / self.window
        recent = sum(self._recent) / self.window
        if not (early > 0 and recent < self.ratio * early):
            self._fired = False
            return None
        if self._fired:
            return None
        self._fired = True
        return (f"interaction collapse? {self.key} fell to {recent:.3g} (mean of the last {self.window} values) "
                f"at step {step}, under {self.ratio:.0%} of its early level {early:.3g} (mean of the first "
                f"{self.window})")


def plot_run(run_dir: str | os.PathLike) -> list[Path]:
    """Draw the curves of a run folder's ``train.jsonl`` / ``eval.jsonl`` as PNG files in ``run_dir/plots/``.

    The plots, in the order returned (one whose metrics are all absent is skipped): ``reward.png`` (the mean
    and every ``reward/`` component), ``accuracy.png`` (train, and eval as markers), ``interaction.png`` (tool
    calls and turns per episode: the interaction-collapse signal), ``ofr.png`` (kept ratio and solve rates),
    ``visual_tokens.png``, ``throughput.png`` (tokens per second), ``step_time.png`` (stacked time per phase,
    and the whole step) and ``loss.png`` (loss, clip fraction, KL, gradient norm, logprob mismatch).

    Example::

        plot_run("runs/grpo")    # [Path("runs/grpo/plots/reward.png"), Path("runs/grpo/plots/accuracy.png"), ...]
    """
    run_dir = Path(run_dir)
    if not any((run_dir / f"{kind}.jsonl").is_file() for kind in KINDS):
        raise FileNotFoundError(f"no train.jsonl or eval.jsonl in {run_dir}")
    rows = {kind: _read_rows(run_dir / f"{kind}.jsonl") for kind in KINDS}
    components = [key for key in _columns(rows["train"]) if key.startswith("reward/") and key != "reward/mean"]
    ofr_keys = (("ofr/kept_ratio", "rollouts kept"), ("ofr/solve_none", "groups solved by none"),
                ("ofr/solve_all", "groups solved by all"), ("ofr/solve_partial", "groups solved in part"))
    # (file name, title, y label, percent axis, [(kind, key, legend label)])
    line_plots = [
        ("reward", "Reward per episode", "reward", False,
         [("train", "reward/mean", "reward/mean")] + [("train", key, key) for key in components]
         + [("eval", "reward/mean", "eval reward/mean")]),
        ("accuracy", "Accuracy", "accuracy", True, [("train", "accuracy", "train"), ("eval", "accuracy", "eval")]),
        ("interaction", "Tool calls and turns per episode (a falling curve is interaction collapse)",
         "per episode", False,
         [("train", "tool_calls", "tool calls (train)"), ("train", "turns", "turns (train)"),
          ("eval", "tool_calls", "tool calls (eval)"), ("eval", "turns", "turns (eval)")]),
        ("ofr", "Oversampling–filtering–ranking: kept rollouts and solve rates of groups", "fraction", True,
         [("train", key, label) for key, label in ofr_keys]),
        ("visual_tokens", "Visual tokens per episode", "tokens", False,
         [("train", "visual_tokens", "train"), ("eval", "visual_tokens", "eval")]),
        ("throughput", "Generation throughput", "tokens / s", False,
         [("train", "throughput/tokens_per_s", "tokens per second")]),
    ]
    figures = [(name, _line_plot(title, ylabel, percent, [(kind, label, *_series(rows[kind], key))
                                                          for kind, key, label in series]))
               for name, title, ylabel, percent, series in line_plots]
    figures += [("step_time", _step_time_plot(rows["train"])), ("loss", _loss_plot(rows["train"]))]
    written = []
    for name, figure in figures:
        if figure is not None:
            path = run_dir / "plots" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            figure.savefig(path, dpi=100)
            written.append(path)
    return written


# --- files ------------------------------------------------------------------------------------------

def _read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics JSONL file ([] when absent); unreadable lines (a writer killed mid-line) are
    skipped with a :class:`MetricsWarning`."""
    if not path.is_file():
        return []
    rows, bad = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
                if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                    raise ValueError("not an object with an integer step")
            except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                bad.append(f"line {number}: {error}")
                continue
            rows.append(row)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) (e.g. a writer killed mid-line): "
                      f"{'; '.join(bad[:3])}", MetricsWarning, stacklevel=3)
    return rows


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns = ["step"]
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    return columns


def _number(key: str, value: Any) -> int | float | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        number = float(value)  # also numpy and 0-d torch scalars
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r} must be a number or None, got {value!r}") from None
    return number if math.isfinite(number) else None


def _replace_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


# --- plots ------------------------------------------------------------------------------------------

def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
    return [step for step, _ in points], [value for _, value in points]


def _line_plot(title: str, ylabel: str, percent: bool,
               series: Sequence[tuple[str, str, list[int], list[float]]]) -> Figure | None:
    """One axes with a line per (kind, label, steps, values) that has points; eval lines get markers."""
    drawn = [entry for entry in series if entry[2]]
    if not drawn:
        return None
    figure = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    for kind, label, steps, values in drawn:
        marker = "o" if kind == "eval" or len(steps) < 30 else None
        axes.plot(steps, values, marker=marker, markersize=4, linewidth=1.5, label=label)
    if percent:
        axes.yaxis.set_major_formatter(PercentFormatter(1.0))
    _decorate(axes, title, ylabel, legend=len(drawn) > 1)
    return figure


def _step_time_plot(train: Sequence[Mapping[str, Any]]) -> Figure | None:
    parts = [key for key in TIME_PARTS if any(row.get(key) is not None for row in train)]
    total_steps, totals = _series(train, "time/step")
    if not parts and not totals:
        return None
    figure = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    axes = figure.subplots()
    if parts:
        rows = [row for row in train if any(row.get(key) is not None for key in parts)]
        axes.stackplot([row["step"] for row in rows], *[[row.get(key) or 0.0 for row in rows] for key in parts],
                       labels=[key.removeprefix("time/") for key in parts], alpha=0.8)
    if totals:
        axes.plot(total_steps, totals, color="black", linewidth=1.5, label="whole step")
    _decorate(axes, "Time per training step, by phase", "seconds", legend=True)
    return figure


def _loss_plot(train: Sequence[Mapping[str, Any]]) -> Figure | None:
    present = [(key, *_series(train, key)) for key in LOSS_KEYS]
    present = [entry for entry in present if entry[1]]
    if not present:
        return None
    figure = Figure(figsize=(7, 1.2 + 1.6 * len(present)), dpi=100, layout="constrained")
    axes_list = figure.subplots(len(present), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (key, steps, values) in zip(axes_list, present):
        axes.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, linewidth=1.2)
        axes.set_ylabel(key.replace("_", " "))
        axes.grid(alpha=0.3)
    axes_list[-1].set_xlabel("step")
    figure.suptitle("Policy update")
    return figure


def _decorate(axes: Any, title: str, ylabel: str, legend: bool) -> None:
    axes.set_title(title, fontsize=11)
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if legend:
        axes.legend(fontsize=8)
