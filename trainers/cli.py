"""``pyvision train CONFIG`` / ``pyvision sft CONFIG`` / ``pyvision train-demo``.

Settings come from the YAML file and ``--set key.sub=value`` overrides; ``--help-config`` lists every
setting with its default and meaning.

Example::

    pyvision train trainers/configs/demo_grpo.yaml --set model.path=runs/demo/sft/checkpoints/step-000048
    pyvision sft my_sft.yaml --set epochs=2 --set data.episodes=[runs/teacher]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, GRPOConfig, SFTConfig, describe, load_config

TRAINERS = {"train": GRPOConfig, "sft": SFTConfig}


def add_parsers(commands: Any) -> None:
    """Add ``train``, ``sft`` and ``train-demo`` to the ``pyvision`` command."""
    from . import demo

    for name, helptext in (("train", "multi-turn GRPO with OFR and the accumulative tool reward"),
                           ("sft", "supervised cold start on recorded trajectories or text chats")):
        parser = commands.add_parser(name, help=helptext, description=(TRAINERS[name].__doc__ or "").strip())
        parser.add_argument("config", type=Path, nargs="?", help="YAML settings (defaults for what it omits)")
        parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                            help="override a setting, e.g. --set algorithm.lr=1e-6 (repeatable)")
        parser.add_argument("--help-config", action="store_true", help="list every setting and exit")
    demo.add_parser(commands)


def run(args: argparse.Namespace) -> int:
    """Handler of ``train``, ``sft`` and ``train-demo``."""
    if args.command == "train-demo":
        from . import demo

        return demo.main(args)
    cls = TRAINERS[args.command]
    if args.help_config:
        print("\n".join(describe(cls)))
        return 0
    try:
        config = load_config(cls, args.config, args.overrides)
    except ConfigError as error:
        print(f"pyvision {args.command}: {error}", file=sys.stderr)
        return 2
    if args.command == "train":
        from .grpo import GRPOTrainer

        with GRPOTrainer(config) as trainer:
            result = trainer.train()
        print(f"final: {result}")
    else:
        from .sft import SFTTrainer

        with SFTTrainer(config) as trainer:
            result = trainer.train()
        print(f"final: {result}")
    return 0
