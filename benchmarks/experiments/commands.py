"""``pyvision experiment collapse``: the interaction-collapse experiment (:mod:`benchmarks.experiments.collapse`)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any


def add_commands(commands: Any) -> None:
    """Add ``experiment`` (with its ``collapse`` subcommand) to the ``pyvision`` subparsers."""
    experiment = commands.add_parser("experiment", help="run a scientific experiment end to end (collapse)",
                                     description="Experiments that reproduce a paper's claim on this machine, "
                                                 "with their report.")
    kinds = experiment.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    collapse = kinds.add_parser(
        "collapse", help="interaction collapse: outcome reward vs tool reward vs OFR vs both, on the tiny VLM",
        description="Train the tiny VLM from one cold-start SFT model under four arms (outcome reward; the "
                    "accumulative tool reward; OFR; both) with the same seeds on a task mixture where the tool "
                    "is needed, unneeded or fails; report tool calls, turns, accuracy and reward per update and "
                    "held-out accuracy with confidence intervals in OUT/report.html. The full run takes about "
                    "30-60 minutes on 2 cores; an interrupted run continues when given the same --out.")
    collapse.add_argument("--out", type=Path, default=Path("runs/collapse"),
                          help="experiment folder (default: %(default)s)")
    collapse.add_argument("--quick", action="store_true",
                          help="one update, one seed, a few episodes: checks the whole path in about a minute; "
                               "its numbers mean nothing")
    collapse.add_argument("--seeds", type=int, help="seeds per arm, 0..N-1 (default: 3)")
    collapse.add_argument("--updates", type=int, help="GRPO updates per run (default: 30)")
    collapse.add_argument("--workers", type=int, help="runs trained at once (default: 2)")
    collapse.add_argument("--arms", help="comma-separated arms (default: outcome,tool-reward,ofr,both)")
    collapse.set_defaults(handler=run_collapse_command)


def run_collapse_command(args: argparse.Namespace) -> int:
    """Handler of ``experiment collapse``: runs it and prints the verdicts and where the report is."""
    from .collapse import ARMS, FULL, QUICK, run_collapse

    settings = QUICK if args.quick else FULL
    changes = {key: value for key, value in (("updates", args.updates), ("workers", args.workers)) if value}
    if args.seeds:
        changes["seeds"] = tuple(range(args.seeds))
    arms = tuple(args.arms.split(",")) if args.arms else tuple(ARMS)
    try:
        results = run_collapse(args.out, dataclasses.replace(settings, **changes), arms)
    except ValueError as error:
        print(f"pyvision experiment collapse: {error}", file=sys.stderr)
        return 2
    for arm, text in results["verdicts"].items():
        print(f"{arm}: {text}")
    print(f"report: {args.out / 'report.html'}")
    return 0
