"""A Ray Tune sweep of trainer settings with the tiny model on CPU: ``python -m trainers.tune_sweep``.

Each trial is one GRPO run of ``configs/demo_grpo.yaml`` (shortened by :data:`SHORT_RUN`) with the trial's
settings; it reports its metrics to Tune after every update (``GRPOTrainer.train(on_update=...)``), so Tune's
schedulers and searchers work on them. The sweep writes, in ``--out``:

* ``sweep.md`` and ``sweep.csv`` — one row per trial: its settings, its last accuracy, reward and tool calls,
  its held-out accuracy, its time, or the error that stopped it;
* ``sweep.png`` — training accuracy and tool calls per update, one line per trial;
* ``sweep/`` — Tune's experiment folder (each trial's run folder is in it).

Example::

    python -m trainers.tune_sweep --out runs/sweep --grid algorithm.lr=3e-4,1e-3 --grid rollout.group_size=2,4
    python -m trainers.tune_sweep --model runs/demo/sft --set steps=6     # sweep RL from the demo's SFT model

On a cluster, ``--ray-address auto`` runs the trials on its nodes (``--cpus-per-trial`` each); a trial's
environments can themselves run on Ray actors with ``--set pool.backend=ray``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from .config import GRPOConfig, load_config
from .demo import CONFIGS, make_demo_model

SHORT_RUN = ("steps=2", "env.num_envs=4", "rollout.group_size=2", "ofr.target_size=4", "ofr.oversampling=1.0",
             "ofr.max_generation_rounds=2", "eval.every=2", "eval.episodes=8", "algorithm.mini_batch_size=4",
             "algorithm.micro_batch_size=4", "checkpoint.every=2", "logging.progress=false",
             "logging.tensorboard=false")
"""Overrides of ``demo_grpo.yaml`` that make a trial last well under a minute on one CPU core."""

DEFAULT_GRID = {"algorithm.lr": ["3e-4", "1e-3"]}
COLUMNS = ("accuracy", "reward/mean", "tool_calls", "eval/accuracy")
"""Metrics of each trial's last report shown in the table."""


def grpo_trial(settings: dict[str, Any]) -> None:
    """The Tune trainable: a GRPO run with ``settings["base"]`` overrides and the trial's ``settings["grid"]``
    values, reporting ``{"update": N, **metrics}`` after every update."""
    from ray import tune

    from .grpo import GRPOTrainer

    trial_dir = Path(tune.get_context().get_trial_dir())
    overrides = [*settings["base"], *(f"{key}={value}" for key, value in settings["grid"].items()),
                 f"output_dir={trial_dir / 'run'}"]
    config = load_config(GRPOConfig, CONFIGS / "demo_grpo.yaml", overrides)
    with GRPOTrainer(config) as trainer:
        trainer.train(on_update=lambda step, metrics: tune.report({"update": step, **metrics}))


def run_sweep(out: Path, grid: dict[str, list[str]], *, model: Path | None = None, overrides: list[str] = (),
              cpus_per_trial: float = 1.0, ray_address: str | None = None) -> list[dict[str, Any]]:
    """Run one trial per combination of ``grid`` values; write the table and plot; return the rows."""
    import ray
    from ray import tune

    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = out / "model"
        if not (model / "config.json").is_file():
            make_demo_model(model)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=ray_address or "local", include_dashboard=False, configure_logging=False)
    try:
        base = [*SHORT_RUN, f"model.path={Path(model).resolve()}", *overrides]
        load_config(GRPOConfig, CONFIGS / "demo_grpo.yaml", base)  # a bad setting fails here, not in every trial
        tuner = tune.Tuner(
            tune.with_resources(grpo_trial, {"cpu": cpus_per_trial}),
            param_space={"base": base, "grid": {key: tune.grid_search(values) for key, values in grid.items()}},
            tune_config=tune.TuneConfig(metric="accuracy", mode="max"),
            run_config=tune.RunConfig(name="sweep", storage_path=str(out.resolve()), verbose=1))
        results = tuner.fit()
        rows, curves = [], []
        for result in results:
            history = result.metrics_dataframe
            last = result.metrics or {}
            rows.append({**result.config["grid"],
                         **{name: last.get(name) for name in COLUMNS},
                         "updates": last.get("update"), "seconds": last.get("time_total_s"),
                         "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}"})
            curves.append((result.config["grid"], history))
    finally:
        if started_ray:
            ray.shutdown()
    write_table(out, rows, list(grid))
    plot_curves(out / "sweep.png", curves)
    return rows


def write_table(out: Path, rows: list[dict[str, Any]], keys: list[str]) -> None:
    """``sweep.csv`` and ``sweep.md`` (settings first, then :data:`COLUMNS`, updates, seconds, error)."""
    from pyvision_env.reporting import markdown_table

    fields = [*keys, *COLUMNS, "updates", "seconds", "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows({field: row.get(field) for field in fields} for row in rows)
    (out / "sweep.csv").write_text(buffer.getvalue())
    formats = {**dict.fromkeys(COLUMNS, "{:.3f}"), "seconds": "{:.0f}"}
    table = [{field: _shown(row.get(field)) for field in fields} for row in rows]
    columns = [(field, field, formats.get(field, "{}")) for field in fields]
    (out / "sweep.md").write_text("# Tune sweep\n\n" + markdown_table(table, columns) + "\n\n![curves](sweep.png)\n")


def _shown(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def plot_curves(path: Path, curves: list[tuple[dict[str, Any], Any]]) -> Path:
    """Training accuracy and tool calls per update, one line per trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyvision_env.reporting import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for settings, history in curves:
        label = ", ".join(f"{key.split('.')[-1]}={value}" for key, value in settings.items())
        if history is None or history.empty:
            continue
        for axis, metric in zip(axes, ("accuracy", "tool_calls")):
            if metric in history:
                axis.plot(history["update"], history[metric], marker="o", label=label)
    for axis, metric in zip(axes, ("training accuracy", "tool calls per episode")):
        axis.set_xlabel("update")
        axis.set_title(metric)
        axis.legend(fontsize=8)
    return save_figure(fig, path)


def parse_grid(values: list[str]) -> dict[str, list[str]]:
    """``["algorithm.lr=3e-4,1e-3"]`` -> ``{"algorithm.lr": ["3e-4", "1e-3"]}``."""
    grid = {}
    for value in values:
        key, sep, choices = value.partition("=")
        if not sep or not key or not choices:
            raise ValueError(f"--grid takes KEY=V1,V2,...; got {value!r}")
        grid[key] = choices.split(",")
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainers.tune_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="output folder (default: %(default)s)")
    default_grid = " ".join(f"{key}={','.join(values)}" for key, values in DEFAULT_GRID.items())
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help=f"a setting and its values; repeat for a product (default: {default_grid})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every trial (after the short-run defaults)")
    parser.add_argument("--model", type=Path, help="the model folder (default: a new tiny demo model)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs each trial reserves (default: 1)")
    parser.add_argument("--ray-address", help="a Ray cluster to run on (default: a private local instance)")
    args = parser.parse_args(argv)
    try:
        grid = parse_grid(args.grid) if args.grid else DEFAULT_GRID
    except ValueError as error:
        parser.error(str(error))
    trials = math.prod(len(values) for values in grid.values())
    print(f"{trials} trials: {json.dumps(grid)}", flush=True)
    rows = run_sweep(args.out, grid, model=args.model, overrides=args.set, cpus_per_trial=args.cpus_per_trial,
                     ray_address=args.ray_address)
    print((args.out / "sweep.md").read_text())
    failed = [row for row in rows if row["error"]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
