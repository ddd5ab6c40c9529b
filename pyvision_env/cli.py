"""The ``pyvision`` command line.

Subcommands (later parts of the project add more):

* ``pyvision demo``   — a short end-to-end demonstration of the sandboxed execution engine;
* ``pyvision exec``   — run the cells of a Python file (``# %%`` separated) in one sandboxed kernel;
* ``pyvision doctor`` — report what isolation and limits this machine can enforce;
* ``pyvision tasks``  — list the registered suites (``PyVision/<Suite>-v0`` environments);
* ``pyvision run``    — run a policy on a suite with a progress bar, print the summary table, record episodes;
* ``pyvision view``   — render recorded episodes as one HTML page, and open or serve it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyvision_env.pools.ray_pool import RayEnvPool

DESCRIPTION = """\
PyVision-RL: train and evaluate agentic vision models — multimodal LLMs that answer visual
questions by writing Python that crops, zooms, rotates and enhances images, looking at the results
and trying again. Model-written code runs in sandboxed, stateful Jupyter kernels."""


def add_policy_arguments(parser: argparse.ArgumentParser, policies: Sequence[str]) -> None:
    """The options `run` and `eval` share."""
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


def add_run_arguments(parser: argparse.ArgumentParser, policies: Sequence[str]) -> None:
    parser.add_argument("--suite", required=True, help="suite name (see `pyvision tasks`)")
    add_policy_arguments(parser, policies)
    parser.add_argument("--episodes", type=int, default=20, help="number of episodes (default: %(default)s)")
    parser.add_argument("--first-task", type=int, default=0, help="index of the first task (default: %(default)s)")
    parser.add_argument("--out", type=Path, help="recording folder (default: runs/<suite>-<policy>-<time>)")


def add_eval_arguments(parser: argparse.ArgumentParser, policies: Sequence[str]) -> None:
    parser.add_argument("--suite", required=True, action="append", metavar="NAME[,NAME...]",
                        help="suites to evaluate on (repeatable or comma-separated; see `pyvision tasks`)")
    add_policy_arguments(parser, policies)
    parser.add_argument("--limit", type=int, help="evaluate only the first N tasks of each suite (default: all)")
    parser.add_argument("--samples", type=int, default=1, metavar="K",
                        help="episodes per task: accuracy is avg@K, and pass@K is reported (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=4,
                        help="episodes run at once (scripted and openai policies; hf and vllm batch in one "
                             "worker) (default: %(default)s)")
    parser.add_argument("--by", action="append", default=[], metavar="KEY",
                        help="break results down by this task metadata key (repeatable; default: every key "
                             "with a few text values, e.g. category)")
    parser.add_argument("--benchmarks", type=Path, metavar="DIR",
                        help="register the public benchmarks found in DIR/<name>/ first (default: "
                             "$PYVISION_BENCHMARKS when set)")
    parser.add_argument("--robust", metavar="TRANSFORM",
                        help="evaluate each suite's rotated/flipped variant instead: rot90, rot180, rot270, hflip, "
                             "vflip")
    parser.add_argument("--out", type=Path, help="run folder; an interrupted run given the same folder continues "
                                                 "where it stopped (default: runs/eval-<policy>-<time>)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyvision", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="run a short demonstration of sandboxed code cells on a generated image",
        description="Start the execution engine, open one episode with a generated image as `image_clue_0`, "
                    "and run cells the way a model would: inspect, crop and zoom, show figures, keep state, "
                    "recover from an error, a timeout and a crash. Shown images are saved to --out.")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="where shown images are saved "
                      "(default: %(default)s)")

    run_file = commands.add_parser(
        "exec", help="run the cells of a Python file in one sandboxed kernel",
        description="Split FILE into cells at lines starting with '# %%' and run them in order in one fresh "
                    "sandboxed kernel, printing each cell's result (state persists between cells).")
    run_file.add_argument("file", help="Python file, or - for standard input")
    run_file.add_argument("--image", action="append", default=[], metavar="NAME=PATH",
                          help="load an image file as a PIL image named NAME (repeatable)")
    run_file.add_argument("--timeout", type=float, default=30.0, help="seconds per cell (default: %(default)s)")
    run_file.add_argument("--json", action="store_true", help="print one JSON object per cell")
    run_file.add_argument("--save-images", type=Path, metavar="DIR", help="save shown images as PNG files")

    commands.add_parser("doctor", help="report the isolation, cgroups and limits available on this machine",
                        description="Probe bubblewrap and cgroups, start one kernel, and print what the "
                                    "engine can enforce here.")

    tasks = commands.add_parser("tasks", help="list the registered suites",
                                description="List every registered suite with its Gymnasium id and description.")
    tasks.add_argument("--details", action="store_true",
                       help="also load each suite and show its size and splits (generates built-in suites)")

    run = commands.add_parser(
        "run", help="run a built-in policy on a suite and print the summary table",
        description="Run --episodes episodes of a policy on a suite (tasks in order, cycling), with a progress "
                    "bar; print accuracy, turns, tool calls, tool errors, visual tokens and wall time; record "
                    "every episode (JSONL + images) and an HTML page of them under --out.")
    add_run_arguments(run, POLICIES)
    evaluate = commands.add_parser(
        "eval", help="evaluate any policy (scripted, served or local models) on suites and public benchmarks",
        description="Evaluate a policy on one or more suites: K samples per task (avg@K, pass@K), several episodes "
                    "at once, per-category breakdowns and each public benchmark's own metrics, written to "
                    "summary.md/.csv/.json in the run folder with every episode recorded. Model policies: openai "
                    "(any OpenAI-compatible endpoint), hf (a local Hugging Face VLM), vllm (vLLM's offline engine). "
                    "An episode whose policy fails scores 0 and the run goes on; an interrupted run continues "
                    "where it stopped when given the same --out.")
    add_eval_arguments(evaluate, (*POLICIES, *MODEL_POLICIES))
    model = evaluate.add_argument_group("model policies")
    model.add_argument("--model", help="hf/vllm: a model folder; openai: the served model's name")
    model.add_argument("--base-url", help="openai: the API root, e.g. http://127.0.0.1:8000/v1 "
                                          "(default: $OPENAI_BASE_URL)")
    model.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    model.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (default: %(default)s)")
    model.add_argument("--max-tokens", type=int, default=1024,
                       help="tokens per response (default: %(default)s)")
    model.add_argument("--device", default="auto", help="hf: cpu, cuda, cuda:N or auto (default: %(default)s)")
    model.add_argument("--max-images", type=int, help="keep at most this many images in the model's context")
    cluster = evaluate.add_argument_group(
        "Ray", "run the environments (and their kernels) on Ray actors instead of this process (pip install "
               "'pyvision-rl[ray]'; see docs/scaling.md)")
    cluster.add_argument("--ray", metavar="ADDRESS", help="'local' (a private Ray instance for the run), 'auto' (this "
                                                          "machine's cluster), HOST:PORT or ray://HOST:10001")
    cluster.add_argument("--ray-workers", type=int, default=2, help="env worker actors (default: %(default)s)")
    cluster.add_argument("--envs-per-worker", type=int,
                         help="episodes each worker runs at once (default: --concurrency / --ray-workers, rounded up)")
    cluster.add_argument("--cpus-per-worker", type=float, default=1.0,
                         help="CPUs each worker reserves; fractions allowed (default: %(default)s)")
    cluster.add_argument("--on-worker-lost", choices=("retry", "fail"), default="retry",
                         help="an episode whose worker died is played again or recorded as failed (default: "
                              "%(default)s)")
    cluster.add_argument("--max-retries", type=int, default=2, help="new attempts of such an episode (default: "
                                                                    "%(default)s)")

    comparison = commands.add_parser(
        "compare", help="put evaluation runs and published numbers side by side",
        description="One row per suite, one column per run folder (its summary.json from `pyvision eval`) and per "
                    "model of a published-numbers CSV (columns model,suite,<metric>; fractions or percentages).")
    comparison.add_argument("runs", nargs="*", type=Path, help="run folders of `pyvision eval`")
    comparison.add_argument("--published", type=Path, metavar="CSV", help="published numbers to add")
    comparison.add_argument("--metric", default="accuracy", help="summary column to compare (default: %(default)s)")
    comparison.add_argument("--csv", type=Path, metavar="FILE", help="also write the table as CSV")
    comparison.add_argument("--plot", type=Path, metavar="PNG", help="also draw the table as grouped bars")

    serve = commands.add_parser(
        "serve", help="serve a local Hugging Face VLM behind an OpenAI-compatible chat endpoint",
        description="Serve MODEL (a folder) at http://HOST:PORT/v1 (/v1/models, /v1/chat/completions); "
                    "concurrent requests are batched.")
    serve.add_argument("model", type=Path, help="model folder (e.g. from `pyvision make-tiny-model`)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: %(default)s; 0 picks a free one)")
    serve.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)")
    serve.add_argument("--max-batch", type=int, default=8, help="requests generated together (default: %(default)s)")

    tiny = commands.add_parser(
        "make-tiny-model", help="build a tiny random Qwen2.5-VL (no download) for tests and CPU demos",
        description="Build a tiny random Qwen2.5-VL into OUT: byte-level BPE tokenizer with the Qwen special tokens "
                    "and chat template, ~0.2 M parameters, PIL image processor; it loads with from_pretrained.")
    tiny.add_argument("out", type=Path, help="folder to write (created)")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights (default: %(default)s)")
    tiny.add_argument("--family", default="qwen2.5-vl", choices=["qwen2.5-vl", "qwen2-vl"],
                      help="model family (default: %(default)s)")
    tiny.add_argument("--demo", action="store_true",
                      help="build the CPU training demo's model: its conversations as phrase tokens, weights of "
                           "std 0.08 (see trainers/demo.py)")

    from trainers.cli import add_parsers as add_trainer_parsers

    from .viewer import add_view_parser

    add_view_parser(commands)
    add_trainer_parsers(commands)
    return parser


def run_training(args: argparse.Namespace) -> int:
    from trainers.cli import run

    return run(args)


def run_serve(args: argparse.Namespace) -> int:
    from agents.hf import HFChatModel, ModelLoadError
    from agents.serve import make_server

    try:
        model = HFChatModel(args.model, device=args.device)
    except (ModelLoadError, ImportError) as error:
        raise SystemExit(f"pyvision serve: {error}") from None
    server = make_server(model, args.host, args.port, max_batch=args.max_batch)
    host, port = server.server_address[:2]
    print(f"serving {model.name} at http://{host}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def run_make_tiny_model(args: argparse.Namespace) -> int:
    from agents.tiny_model import make_tiny_model

    try:
        options = {}
        if args.demo:
            from trainers.demo import TINY_MODEL, tokenizer_corpus

            options = {"corpus": tokenizer_corpus(), **TINY_MODEL}
        path = make_tiny_model(args.out, seed=args.seed, family=args.family, **options)
    except ImportError as error:
        raise SystemExit(f"pyvision make-tiny-model needs torch and transformers ({error}); "
                         "pip install 'pyvision-rl[train]'") from None
    print(f"tiny {args.family} written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from . import demo  # imported late: `pyvision --help` stays fast
    from .viewer import run_view

    handlers = {"demo": demo.run_demo, "exec": run_exec, "doctor": run_doctor, "tasks": run_tasks,
                "run": run_policy, "eval": run_eval, "compare": run_compare, "view": run_view, "make-tiny-model": run_make_tiny_model,
                "serve": run_serve, "train": run_training, "sft": run_training, "train-demo": run_training}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def split_cells(source: str) -> list[str]:
    """Cells of a percent-format script (``# %%`` lines separate them); empty cells are dropped.

    >>> split_cells("a = 1\\n# %%\\nprint(a)\\n")
    ['a = 1', 'print(a)']
    """
    cells, current = [], []
    for line in source.splitlines():
        if line.lstrip().startswith("# %%"):
            cells.append("\n".join(current))
            current = []
        else:
            current.append(line)
    cells.append("\n".join(current))
    return [cell.strip("\n") for cell in cells if cell.strip()]


def run_exec(args: argparse.Namespace) -> int:
    from .execution import Engine, ExecutionLimits

    source = sys.stdin.read() if args.file == "-" else _read_text(args.file)
    images = {}
    for spec in args.image:
        name, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"pyvision exec: --image takes NAME=PATH, got {spec!r}")
        images[name] = path
    failed = False
    with Engine(limits=ExecutionLimits(cell_timeout=args.timeout), spare_kernels=1) as engine, \
            engine.session(images=images) as session:
        for index, cell in enumerate(split_cells(source)):
            result = session.run(cell)
            failed = failed or not result.ok
            saved = _save_images(result.images, args.save_images, f"cell{index}")
            if args.json:
                print(json.dumps({"cell": index, "status": result.status.value, "stdout": result.stdout,
                                  "stderr": result.stderr, "result": result.result,
                                  "error": result.error_name, "error_value": result.error_value,
                                  "images": saved or len(result.images), "truncated": result.truncated,
                                  "state_lost": result.state_lost, "duration": result.duration,
                                  "notes": result.notes}))
            else:
                print(f"--- cell {index}: {result.summary()}")
                print(format_result(result), end="")
                for path in saved:
                    print(f"[image saved: {path}]")
    return 1 if failed else 0


def run_doctor(args: argparse.Namespace) -> int:
    from .execution import Engine

    with Engine(spare_kernels=1) as engine:
        with engine.session() as session:
            probe = session.run("import os, socket\nprint(os.getpid(), sorted(socket.if_nameindex()))")
        status = engine.status()
        limits = engine.limits
    print(f"isolation : {status.isolation} ({status.isolation_reason})")
    print(f"cgroups   : {status.cgroups}")
    print(f"kernel    : {'started and ran a cell' if probe.ok else 'FAILED: ' + probe.error_value}"
          f" (pid and interfaces inside: {probe.stdout.strip()})")
    print(f"limits    : cell {limits.cell_timeout:g} s, memory {limits.memory_bytes >> 20} MiB, "
          f"disk {limits.disk_bytes >> 20} MiB, processes {limits.max_processes}, "
          f"output {limits.max_output_bytes >> 20} MiB per cell")
    if status.weak:
        print("WARNING: kernels are not sandboxed here; install bubblewrap (apt-get install bubblewrap).")
    return 0 if probe.ok and not status.weak else 1


POLICIES = ("scripted", "direct", "uniform", "random")
MODEL_POLICIES = ("openai", "hf", "vllm")


def run_tasks(args: argparse.Namespace) -> int:
    from . import list_suites

    if os.environ.get("PYVISION_BENCHMARKS"):
        from benchmarks.public import register_public_benchmarks

        try:
            register_public_benchmarks()
        except FileNotFoundError as error:
            raise SystemExit(f"pyvision tasks: {error}") from None

    rows = []
    for suite in list_suites():
        size, splits = "-", "-"
        if args.details:
            try:
                tasks = suite.load()
                size = str(len(tasks))
                splits = ", ".join(sorted({t.split for t in tasks if t.split})) or "-"
            except (OSError, ValueError) as error:
                size, splits = "?", f"cannot load: {error}"
        rows.append((suite.name, suite.env_id, size, splits, suite.description))
    titles = ("suite", "id", "tasks", "splits") if args.details else ("suite", "id")
    widths = [max(len(row[i]) for row in [*rows, titles]) for i in range(len(titles))]
    print("  ".join(t.ljust(w) for t, w in zip(titles, widths)) + "  description")
    for row in rows:
        print("  ".join(value.ljust(w) for value, w in zip(row, widths)) + "  " + row[4])
    if not args.details:
        print("\n(--details loads every suite to show its size and splits; built-in suites are generated "
              "on first use)")
    return 0


def run_policy(args: argparse.Namespace) -> int:
    import time
    import warnings

    from .env import PyVisionEnv
    from .execution import Engine, WeakIsolationWarning
    from .recording import RecordEpisodes
    from .runner import run_episodes
    from .viewer import render_html

    if args.episodes < 1:
        raise SystemExit(f"pyvision {args.command}: --episodes must be at least 1")
    out = None if args.no_record else (args.out or Path("runs") / time.strftime(
        f"{args.suite}-{args.policy}-%Y%m%d-%H%M%S"))
    with warnings.catch_warnings():
        warnings.simplefilter("default", WeakIsolationWarning)
        engine = Engine(spare_kernels=2)
    try:
        try:
            env = PyVisionEnv(args.suite, protocol=args.protocol, split=args.split, max_turns=args.max_turns,
                              engine=engine, video_context="uniform" if args.policy == "uniform" else "on-demand")
        except (KeyError, ValueError, OSError) as error:
            raise SystemExit(f"pyvision {args.command}: {error}") from None
        if out is not None:
            env = RecordEpisodes(env, out)
        policy = make_policy(args.policy, args.suite, env.unwrapped.protocol, args.seed, args)
        summary = run_episodes(env, policy, args.episodes, suite=args.suite, first_task=args.first_task)
        env.close()
    finally:
        engine.close()
    if args.json:
        print(json.dumps(summary.row()))
    else:
        print(summary.table())
    for episode in summary.episodes:
        if episode.error is not None:
            print(f"episode on task {episode.task_id} failed: {episode.error}", file=sys.stderr)
    if out is not None:
        (out / "summary.json").write_text(json.dumps(summary.to_json(), indent=2))
        page = render_html(out / "episodes.jsonl", out / "episodes.html")
        print(f"recorded {len(summary.episodes)} episodes in {out}/ (view: pyvision view {out}; page: {page})")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import time

    from benchmarks.harness import Evaluation, summary_markdown

    suites = [name for value in args.suite for name in value.split(",") if name]
    base_of: dict[str, str] = {}  # robustness variant -> its suite (whose scripted policy solves it)
    if args.benchmarks is not None or os.environ.get("PYVISION_BENCHMARKS"):
        from benchmarks.public import register_public_benchmarks

        try:
            register_public_benchmarks(args.benchmarks)
        except (FileNotFoundError, ValueError) as error:
            raise SystemExit(f"pyvision eval: {error}") from None
    if args.robust:
        from benchmarks.robustness import register_robust_variant

        try:
            for name in suites:
                register_robust_variant(name, args.robust)
        except ValueError as error:
            raise SystemExit(f"pyvision eval: {error}") from None
        base_of = {f"{name}-{args.robust}": name for name in suites}
        suites = list(base_of)
    out = args.out or Path("runs") / time.strftime(f"eval-{args.policy}-%Y%m%d-%H%M%S")
    concurrency = 1 if args.policy in ("hf", "vllm") else args.concurrency
    shared = {}

    def policy_for(suite: str, protocol):
        if args.policy in ("hf", "vllm"):  # one model, batched inside one worker, for every suite
            if "policy" not in shared:
                shared["policy"] = make_policy(args.policy, suite, protocol, args.seed, args)
            return shared["policy"]
        return make_policy(args.policy, base_of.get(suite, suite), protocol, args.seed, args)

    pool = None
    try:
        if args.ray:
            pool = make_ray_pool(args, concurrency)
        evaluation = Evaluation(suites, policy_for, out, samples=args.samples, limit=args.limit,
                                concurrency=concurrency, protocol=args.protocol, record=not args.no_record,
                                by=args.by, pool=pool,
                                env_options={"split": args.split, "max_turns": args.max_turns,
                                             **({"video_context": "uniform"} if args.policy == "uniform" else {})})
        summary = evaluation.run()
    except (KeyError, ValueError, OSError) as error:
        raise SystemExit(f"pyvision eval: {error.args[0] if isinstance(error, KeyError) else error}") from None
    finally:
        if pool is not None:
            pool.close()
    print(json.dumps(summary["suites"][0] if len(summary["suites"]) == 1 else summary["suites"])
          if args.json else summary_markdown(summary))
    failures = [r for r in evaluation.results if r.get("error")]
    for record in failures[:5]:
        print(f"episode on {record['suite']} task {record['task_id']} failed: {record['error']}", file=sys.stderr)
    if len(failures) > 5:
        print(f"... and {len(failures) - 5} more failed episodes (see {out / 'results.jsonl'})", file=sys.stderr)
    print(f"results in {out}/ (summary.md, summary.csv, summary.json, summary.png, results.jsonl"
          f"{', episodes/' if not args.no_record else ''})", file=sys.stderr)
    return 0


def make_ray_pool(args: argparse.Namespace, concurrency: int) -> RayEnvPool:
    """The Ray pool ``pyvision eval --ray ...`` asks for."""
    from pyvision_env.pools import PoolConfig
    from pyvision_env.pools.ray_pool import RayEnvPool

    try:
        import ray  # noqa: F401
    except ImportError:
        raise SystemExit("pyvision eval: --ray needs Ray: pip install 'pyvision-rl[ray]'") from None
    envs_per_worker = args.envs_per_worker or -(-concurrency // args.ray_workers)
    config = PoolConfig(backend="ray", address=None if args.ray == "local" else args.ray, workers=args.ray_workers,
                        envs_per_worker=envs_per_worker, cpus_per_worker=args.cpus_per_worker,
                        on_worker_lost=args.on_worker_lost, max_retries=args.max_retries)
    return RayEnvPool(config)


def run_compare(args: argparse.Namespace) -> int:
    import csv

    from benchmarks.harness import compare, plot_comparison

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


def make_policy(name: str, suite: str, protocol, seed: int = 0, args: argparse.Namespace | None = None):
    """A policy by name for a suite, speaking ``protocol`` (model policies read their options from ``args``)."""
    if name in MODEL_POLICIES:
        return make_model_policy(name, protocol, args)
    if name == "scripted":
        from agents.scripted import scripted_policy

        try:
            return scripted_policy(suite, protocol)
        except KeyError as error:
            raise SystemExit(error.args[0]) from None
    if name == "uniform":
        from agents.video_policies import UniformVideoPolicy

        return UniformVideoPolicy(protocol)
    from agents.baselines import DirectAnswerPolicy, RandomPolicy

    if name == "direct":
        return DirectAnswerPolicy(protocol)
    if name == "random":
        return RandomPolicy(protocol, seed=seed)
    raise SystemExit(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")


def make_model_policy(name: str, protocol, args: argparse.Namespace | None):
    if args is None or not getattr(args, "model", None):
        raise SystemExit(f"pyvision eval: --policy {name} needs --model")
    sampling = {"temperature": args.temperature, "top_p": args.top_p, "max_images": args.max_images}
    if name == "openai":
        from agents.openai_policy import OpenAIPolicy

        return OpenAIPolicy(args.model, base_url=args.base_url, protocol=protocol, max_tokens=args.max_tokens,
                            **sampling)
    try:
        if name == "hf":
            from agents.hf import HFPolicy

            return HFPolicy(args.model, protocol=protocol, device=args.device, seed=args.seed,
                            max_new_tokens=args.max_tokens, **sampling)
        from agents.vllm_policy import VLLMPolicy

        return VLLMPolicy(args.model, protocol=protocol, seed=args.seed, max_tokens=args.max_tokens, **sampling)
    except ImportError as error:
        raise SystemExit(f"pyvision eval: --policy {name} needs {error.name or error}: "
                         f"{'pip install vllm (GPU) or make test-vllm (CPU build)' if name == 'vllm' else 'pip install torch transformers'}") \
            from None
    except Exception as error:  # noqa: BLE001  (a model that cannot load is a clear message, not a traceback)
        raise SystemExit(f"pyvision eval: cannot load {args.model}: {error}") from None


def format_result(result) -> str:
    """A cell result as a person would like to read it in a terminal."""
    parts = []
    if result.text:
        parts.append(result.text if result.text.endswith("\n") else result.text + "\n")
    if result.stderr:
        parts.append(textwrap.indent(result.stderr, "stderr| "))
    if result.error_name:
        parts.append(f"{result.error_name}: {result.error_value}\n")
    if result.images:
        parts.append(f"[{len(result.images)} image(s): {', '.join(f'{w}x{h}' for w, h in (i.size for i in result.images))}]\n")
    for note in result.notes:
        parts.append(f"note: {note}\n")
    return "".join(parts)


def _save_images(images, directory: Path | None, stem: str) -> list[str]:
    if directory is None:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, image in enumerate(images):
        path = directory / f"{stem}_image{number}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise SystemExit(f"pyvision exec: cannot read {path!r}: {exc.strerror}") from None


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
