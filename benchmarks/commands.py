"""The evaluation commands: ``pyvision run``, ``pyvision eval`` and ``pyvision compare`` (and ``pyvision
experiment``, from :mod:`benchmarks.experiments.commands`).

``run`` and ``eval`` are one runner, :class:`~benchmarks.evaluation.harness.Evaluation`: ``run`` plays a number of
episodes of a built-in policy on one suite, in order (a walk-through); ``eval`` evaluates any policy on several
suites and public benchmarks, ``K`` samples per task, several episodes at once, optionally on Ray. Both write the
same run folder and print the same table. :func:`add_commands` is this package's entry in the
``pyvision.commands`` group (see :mod:`pyvision_env.cli`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agents.make import MODEL_POLICIES, POLICIES
from pyvision_env.deprecation import REMOVED_IN

from .experiments.commands import add_commands as experiment_commands

if TYPE_CHECKING:
    from .evaluation.harness import Evaluation


def add_commands(commands: Any) -> None:
    """Add ``run``, ``eval``, ``compare`` and ``experiment`` to the ``pyvision`` subparsers."""
    run = commands.add_parser(
        "run", help="run a built-in policy on a suite and print the summary table",
        description="Run --episodes episodes of a policy on a suite (tasks in order from --first-task, cycling), "
                    "with a progress bar; print accuracy, turns, tool calls, tool errors, visual tokens and wall "
                    "time; record every episode (JSONL + images) and an HTML page of them under --out (the run "
                    "folder of `pyvision eval`).")
    run.add_argument("--suite", required=True, help="suite name (see `pyvision tasks`)")
    _add_policy_options(run, POLICIES)
    run.add_argument("--episodes", type=int, default=20, help="number of episodes (default: %(default)s)")
    run.add_argument("--first-task", type=int, default=0, help="index of the first task (default: %(default)s)")
    run.add_argument("--out", type=Path, help="run folder (default: runs/<suite>-<policy>-<time>)")
    run.set_defaults(handler=run_episodes)

    evaluate = commands.add_parser(
        "eval", help="evaluate any policy (scripted, served or local models) on suites and public benchmarks",
        description="Evaluate a policy on one or more suites: K samples per task (avg@K, pass@K), several episodes "
                    "at once, per-category breakdowns and each public benchmark's own metrics, written to "
                    "summary.md/.csv/.json in the run folder with every episode recorded. Model policies: openai "
                    "(any OpenAI-compatible endpoint), hf (a local Hugging Face VLM), vllm (vLLM's offline engine). "
                    "An episode whose policy fails scores 0 and the run goes on; an interrupted run continues "
                    "where it stopped when given the same --out.")
    evaluate.add_argument("--suite", required=True, action="append", metavar="NAME[,NAME...]",
                          help="suites to evaluate on (repeatable or comma-separated; see `pyvision tasks`)")
    _add_policy_options(evaluate, (*POLICIES, *MODEL_POLICIES))
    evaluate.add_argument("--limit", type=int, help="evaluate only the first N tasks of each suite (default: all)")
    evaluate.add_argument("--samples", type=int, default=1, metavar="K",
                          help="episodes per task: accuracy is avg@K, and pass@K is reported (default: %(default)s)")
    evaluate.add_argument("--concurrency", type=int, default=4,
                          help="episodes run at once (scripted and openai policies; hf and vllm batch in one "
                               "worker) (default: %(default)s)")
    evaluate.add_argument("--by", action="append", default=[], metavar="KEY",
                          help="break results down by this task metadata key (repeatable; default: every key "
                               "with a few text values, e.g. category)")
    evaluate.add_argument("--benchmarks", type=Path, metavar="DIR",
                          help="register the public benchmarks found in DIR/<name>/ first (default: "
                               "$PYVISION_BENCHMARKS when set)")
    evaluate.add_argument("--robust", metavar="TRANSFORM",
                          help="evaluate each suite's rotated/flipped variant instead: rot90, rot180, rot270, "
                               "hflip, vflip")
    evaluate.add_argument("--faithfulness", metavar="MODE[,MODE...]", default="",
                          help="after the run, play each tool-using episode again with its evidence removed and "
                               "report the accuracy drop: blackout (the cropped regions blacked out in the "
                               "originals), swap (tool outputs from another task of the suite), no-tools (code "
                               "refused), replay (unchanged: the noise floor); also the share of crops that "
                               "contain the task's ground-truth region")
    evaluate.add_argument("--out", type=Path, help="run folder; an interrupted run given the same folder "
                                                   "continues where it stopped (default: runs/eval-<policy>-<time>)")
    model = evaluate.add_argument_group("model policies")
    model.add_argument("--model", help="hf/vllm: a model folder; openai: the served model's name")
    model.add_argument("--base-url", help="openai: the API root, e.g. http://127.0.0.1:8000/v1 "
                                          "(default: $OPENAI_BASE_URL)")
    model.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    model.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    model.add_argument("--max-tokens", type=int, default=1024, help="tokens per response (default: %(default)s)")
    model.add_argument("--device", default="auto", help="hf: cpu, cuda, cuda:N or auto (default: %(default)s)")
    model.add_argument("--context-images", type=int,
                       help="keep at most this many images in the model's context (the oldest go first)")
    model.add_argument("--max-images", type=int, dest="old_max_images", help=argparse.SUPPRESS)
    cluster = evaluate.add_argument_group(
        "Ray", "run the environments (and their kernels) on Ray actors instead of this process (pip install "
               "'pyvision-rl[ray]'; see docs/scaling.md)")
    cluster.add_argument("--ray", metavar="ADDRESS", help="'local' (a private Ray instance for the run), 'auto' "
                                                          "(this machine's cluster), HOST:PORT or ray://HOST:10001")
    cluster.add_argument("--ray-workers", type=int, default=2, help="env worker actors (default: %(default)s)")
    cluster.add_argument("--envs-per-worker", type=int,
                         help="episodes each worker runs at once (default: --concurrency / --ray-workers, "
                              "rounded up)")
    cluster.add_argument("--cpus-per-worker", type=float, default=1.0,
                         help="CPUs each worker reserves; fractions allowed (default: %(default)s)")
    cluster.add_argument("--on-worker-lost", choices=("retry", "fail"), default="retry",
                         help="an episode whose worker died is played again or recorded as failed (default: "
                              "%(default)s)")
    cluster.add_argument("--max-retries", type=int, default=2,
                         help="new attempts of such an episode (default: %(default)s)")
    evaluate.set_defaults(handler=run_evaluation)

    comparison = commands.add_parser(
        "compare", help="put evaluation runs and published numbers side by side",
        description="One row per suite, one column per run folder (its summary.json from `pyvision eval`) and per "
                    "model of a published-numbers CSV (columns model,suite,<metric>; fractions or percentages).")
    comparison.add_argument("runs", nargs="*", type=Path, help="run folders of `pyvision eval`")
    comparison.add_argument("--published", type=Path, metavar="CSV", help="published numbers to add")
    comparison.add_argument("--metric", default="accuracy", help="summary column to compare (default: %(default)s)")
    comparison.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV")
    comparison.add_argument("--plot", type=Path, metavar="PNG", help="also draw the table as grouped bars")
    comparison.set_defaults(handler=run_compare)
    experiment_commands(commands)


def _add_policy_options(parser: argparse.ArgumentParser, policies: tuple[str, ...]) -> None:
    """The options ``run`` and ``eval`` share."""
    parser.add_argument("--policy", default="scripted", choices=policies,
                        help="scripted: the suite's tool-using solver; direct: answers from the first view without "
                             "tools; uniform: video suites, answers from frames sampled at 1 fps (the baseline of "
                             "on-demand video); random: random responses (default: %(default)s)")
    parser.add_argument("--protocol", default="pyvision", choices=["pyvision", "codevision", "openai-tools"],
                        help="action/observation format (default: %(default)s)")
    parser.add_argument("--split", help="use only this split of the suite (e.g. train, held-out)")
    parser.add_argument("--max-turns", type=int, default=8, help="turns per episode (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random policies (default: %(default)s)")
    parser.add_argument("--no-record", action="store_true", help="do not record episodes")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def run_episodes(args: argparse.Namespace) -> int:
    """``pyvision run``: ``--episodes`` episodes of one suite, one after the other."""
    from .evaluation.harness import Evaluation

    if args.episodes < 1:
        raise SystemExit(f"pyvision run: --episodes must be at least 1, got {args.episodes}")
    out = args.out or Path("runs") / time.strftime(f"{args.suite}-{args.policy}-%Y%m%d-%H%M%S")
    return _run(args, lambda: Evaluation([args.suite], _policy_factory(args, {}), out, episodes=args.episodes,
                                         first_task=args.first_task, protocol=args.protocol,
                                         record=not args.no_record, env_options=_env_options(args)))


def run_evaluation(args: argparse.Namespace) -> int:
    """``pyvision eval``: suites and public benchmarks, ``--samples`` per task, ``--concurrency`` at once."""
    from .evaluation.harness import Evaluation

    if args.old_max_images is not None:
        warnings.warn(f"--max-images is now --context-images (the old name goes in {REMOVED_IN})",
                      DeprecationWarning, stacklevel=1)
        args.context_images = args.old_max_images
    suites = [name for value in args.suite for name in value.split(",") if name]
    if args.benchmarks is not None or os.environ.get("PYVISION_BENCHMARKS"):
        from .evaluation.public import register_public_benchmarks

        try:
            register_public_benchmarks(args.benchmarks)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"pyvision eval: {error}") from None
    base_of: dict[str, str] = {}  # robustness variant -> its suite (whose scripted policy solves it)
    if args.robust:
        from .evaluation.robustness import register_robust_variant

        try:
            for name in suites:
                register_robust_variant(name, args.robust)
        except ValueError as error:
            raise SystemExit(f"pyvision eval: {error}") from None
        base_of = {f"{name}-{args.robust}": name for name in suites}
        suites = list(base_of)
    out = args.out or Path("runs") / time.strftime(f"eval-{args.policy}-%Y%m%d-%H%M%S")
    concurrency = 1 if args.policy in ("hf", "vllm") else args.concurrency  # those batch in one worker
    pool = _ray_pool(args, concurrency) if args.ray else None
    try:
        return _run(args, lambda: Evaluation(suites, _policy_factory(args, base_of), out, samples=args.samples,
                                             limit=args.limit, concurrency=concurrency, protocol=args.protocol,
                                             record=not args.no_record, by=args.by, pool=pool,
                                             env_options=_env_options(args), faithfulness=args.faithfulness))
    finally:
        if pool is not None:
            pool.close()


def _run(args: argparse.Namespace, make_evaluation: Callable[[], Evaluation]) -> int:
    """Make and run the evaluation, and print its summary (a table, or JSON) and its failures; bad settings are
    a one-line error."""
    from .evaluation.harness import summary_markdown

    try:
        evaluation = make_evaluation()
        summary = evaluation.run()
    except (KeyError, ValueError, OSError) as error:
        raise SystemExit(f"pyvision {args.command}: {error.args[0] if isinstance(error, KeyError) else error}"
                         ) from None
    rows = summary["suites"]
    print(json.dumps(rows[0] if len(rows) == 1 else rows) if args.json else summary_markdown(summary))
    failures = [record for record in evaluation.results if record.get("error")]
    for record in failures[:5]:
        print(f"episode on {record['suite']} task {record['task_id']} failed: {record['error']}", file=sys.stderr)
    if len(failures) > 5:
        print(f"... and {len(failures) - 5} more failed episodes (see {evaluation.out / 'results.jsonl'})",
              file=sys.stderr)
    print(f"results in {evaluation.out}/ (summary.md, summary.csv, summary.json, summary.png, results.jsonl"
          f"{', faithfulness.jsonl' if evaluation.faithfulness else ''}"
          f"{'' if args.no_record else ', episodes/; view: pyvision view ' + str(evaluation.out)})", file=sys.stderr)
    return 0


def _env_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"split": args.split, "max_turns": args.max_turns,
            **({"video_context": "uniform"} if args.policy == "uniform" else {})}


def _policy_factory(args: argparse.Namespace, base_of: dict[str, str]) -> Any:
    """``(suite, protocol) -> policy`` for ``--policy``: a local model is loaded once and batched for every
    suite; the others are made per suite (a robustness variant gets its suite's scripted policy)."""
    from agents.make import ModelOptions, PolicyError, make_policy

    options = ModelOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(ModelOptions)
                              if hasattr(args, field.name)})
    shared: dict[str, Any] = {}

    def policy_for(suite: str, protocol: Any) -> Any:
        if args.policy in ("hf", "vllm") and "policy" in shared:
            return shared["policy"]
        try:
            policy = make_policy(args.policy, suite=base_of.get(suite, suite), protocol=protocol, seed=args.seed,
                                 model=options)
        except PolicyError as error:
            raise SystemExit(f"pyvision {args.command}: {error}") from None
        shared["policy"] = policy
        return policy

    return policy_for


def _ray_pool(args: argparse.Namespace, concurrency: int) -> Any:
    """The Ray pool ``--ray ...`` asks for."""
    from pyvision_env.pools import PoolConfig, make_pool

    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit("pyvision eval: --ray needs Ray: pip install 'pyvision-rl[ray]'") from None
    envs_per_worker = args.envs_per_worker or -(-concurrency // args.ray_workers)
    config = PoolConfig(backend="ray", address=None if args.ray == "local" else args.ray, workers=args.ray_workers,
                        envs_per_worker=envs_per_worker, cpus_per_worker=args.cpus_per_worker,
                        on_worker_lost=args.on_worker_lost, max_retries=args.max_retries)
    return make_pool(config, concurrency)


def run_compare(args: argparse.Namespace) -> int:
    import csv

    from .evaluation.harness import compare, plot_comparison

    if not args.runs and args.published is None:
        raise SystemExit("pyvision compare: give run folders and/or --published CSV")
    try:
        markdown, rows = compare(args.runs, args.published, args.metric)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise SystemExit(f"pyvision compare: {error}") from None
    print(markdown)
    if args.csv is not None:
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["suite"])
            writer.writeheader()
            writer.writerows(rows)
    if args.plot is not None:
        print(f"plot: {plot_comparison(rows, args.plot, args.metric)}", file=sys.stderr)
    return 0
