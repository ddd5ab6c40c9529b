"""The trainers' commands: ``pyvision train CONFIG``, ``pyvision sft CONFIG`` and ``pyvision train-demo``.

Settings come from the YAML file and ``--set key.sub=value`` overrides; ``--help-config`` lists every
setting with its default and meaning. :func:`add_commands` is this package's entry in the ``pyvision.commands``
group (see :mod:`pyvision_env.cli`).

Example::

    pyvision train trainers/configs/demo_grpo.yaml --set model.path=runs/demo/sft/checkpoints/step-000048
    pyvision sft my_sft.yaml --set epochs=2 --set data.episodes=[runs/teacher]
    pyvision train trainers/configs/demo_grpo.yaml --nproc 2        # data-parallel, 2 processes (torchrun)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

TRAINERS = {"train": "multi-turn GRPO with OFR and the accumulative tool reward",
            "sft": "supervised cold start on recorded trajectories or text chats"}


def add_commands(commands: Any) -> None:
    """Add ``train``, ``sft`` and ``train-demo`` to the ``pyvision`` subparsers."""
    from .config import GRPOConfig, SFTConfig

    for name, config in (("train", GRPOConfig), ("sft", SFTConfig)):
        parser = commands.add_parser(name, help=TRAINERS[name], description=(config.__doc__ or "").strip())
        parser.add_argument("config", type=Path, nargs="?", help="YAML settings (defaults for what it omits)")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                            help="override a setting, e.g. --set algorithm.lr=1e-6 (repeatable)")
        parser.add_argument("--help-config", action="store_true", help="list every setting and exit")
        parser.set_defaults(handler=run_trainer, config_class=config)
    commands.choices["train"].add_argument(
        "--nproc", type=int, metavar="N",
        help="data-parallel over N processes on this machine (one per GPU; on CPU, gloo): starts torchrun "
             "(several machines: run `torchrun --nnodes ... -m pyvision_env.cli train CONFIG` on each)")

    demo = commands.add_parser(
        "train-demo", help="the CPU training demo: tiny VLM, cold-start SFT, RL with OFR and the tool reward",
        description="Build a tiny random Qwen2.5-VL, record cold-start episodes of a guessing teacher on the "
                    "'tally' suite, run SFT, then GRPO with OFR and the accumulative tool reward; evaluate "
                    "greedily on held-out tasks before and after RL and write report.html (see trainers/demo.py).")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"),
                      help="run folder, replaced (with --model-only: the model folder) (default: %(default)s)")
    demo.add_argument("--rl-steps", type=int, help="RL updates (default: the demo config's)")
    demo.add_argument("--teacher-episodes", type=int, default=200, help="cold-start episodes (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--model-only", action="store_true",
                      help="only build the demo's tiny model into --out (its tokenizer taught the demo's "
                           "conversations as phrases, weights of std 0.08)")
    demo.set_defaults(handler=run_demo)


def run_trainer(args: argparse.Namespace) -> int:
    """Handler of ``train`` and ``sft``."""
    from .config import ConfigError, describe, load_config

    if args.help_config:
        print("\n".join(describe(args.config_class)))
        return 0
    try:
        config = load_config(args.config_class, args.config, args.overrides)
    except ConfigError as error:
        print(f"pyvision {args.command}: {error}", file=sys.stderr)
        return 2
    if getattr(args, "nproc", None) is not None:
        return launch(args, config)
    if args.command == "train":
        from .grpo import GRPOTrainer as Trainer
    else:
        from .sft import SFTTrainer as Trainer
    with Trainer(config) as trainer:
        result = trainer.train()
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
        print(f"final: {result}")
    return 0


def launch(args: argparse.Namespace, config: Any) -> int:
    """``pyvision train CONFIG --nproc N``: the same command in N processes under torchrun on this machine. A
    rank that fails stops the run; the message says where it can resume from."""
    import subprocess

    from .checkpoint import latest_checkpoint

    if args.nproc < 1:
        print(f"pyvision {args.command}: --nproc must be at least 1, got {args.nproc}", file=sys.stderr)
        return 2
    if "WORLD_SIZE" in os.environ:
        print(f"pyvision {args.command}: --nproc inside a torchrun process; run it without --nproc", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
               "-m", "pyvision_env.cli", args.command]
    command += [str(args.config)] if args.config else []
    command += [f"--set={override}" for override in args.overrides]
    returncode = subprocess.call(command)
    if returncode != 0:
        checkpoint = latest_checkpoint(config.output_dir)
        where = f"its last checkpoint, {checkpoint}" if checkpoint else "the start (no checkpoint was written)"
        print(f"pyvision {args.command}: the run failed on at least one of its {args.nproc} processes (exit "
              f"{returncode}; torchrun's report above names the rank). Run the same command again to resume from "
              f"{where}.", file=sys.stderr)
    return returncode


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``train-demo``."""
    from . import demo

    if args.model_only:
        print(f"tiny demo model written to {demo.make_demo_model(args.out, seed=args.seed)}")
        return 0
    results = demo.run_demo(args.out, rl_steps=args.rl_steps, teacher_episodes=args.teacher_episodes,
                            seed=args.seed)
    before, after = results["before_rl"], results["after_rl"]
    print(f"held-out accuracy: {before['accuracy']:.1%} after SFT -> {after['accuracy']:.1%} after RL; "
          f"tool calls per episode {before['tool_calls']:.2f} -> {after['tool_calls']:.2f}")
    print(f"report: {args.out / 'report.html'}")
    return 0
