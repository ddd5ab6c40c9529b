"""The ``pyvision`` command: one entry point, composed of the command groups that installed packages declare.

Each layer of the project owns its commands and declares them in the entry-point group ``pyvision.commands``
(``setup.cfg``): ``pyvision_env.commands`` (exec, doctor, tasks, view, sandbox-demo), ``agents.commands``
(serve, make-tiny-model), ``trainers.commands`` (train, sft, train-demo), ``benchmarks.commands`` (run, eval,
compare). This module imports none of them: it loads the entry points, so any installed package — a user's
too — adds commands the same way::

    # pyproject.toml of your package
    [project.entry-points."pyvision.commands"]
    mine = "my_package.cli:add_commands"

    # my_package/cli.py
    def add_commands(commands):                 # argparse subparsers
        parser = commands.add_parser("hello", help="say hello")
        parser.set_defaults(handler=lambda args: print("hello") or 0)

A group whose commands cannot be loaded is reported on stderr; the other groups still work.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

ENTRY_POINT_GROUP = "pyvision.commands"
LAYER_ORDER = ("env", "agents", "trainers", "benchmarks")
"""The project's own groups, listed in the order of its layers; other packages' groups follow by name."""

DESCRIPTION = """\
PyVision-RL: train and evaluate agentic vision models — multimodal LLMs that answer visual
questions by writing Python that crops, zooms, rotates and enhances images, looking at the results
and trying again. Model-written code runs in sandboxed, stateful Jupyter kernels."""


def command_groups() -> list[metadata.EntryPoint]:
    """The installed command groups: the project's in the order of its layers, then the others by name."""
    def order(entry: metadata.EntryPoint) -> tuple[int, str]:
        rank = LAYER_ORDER.index(entry.name) if entry.name in LAYER_ORDER else len(LAYER_ORDER)
        return rank, entry.name

    return sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=order)


def build_parser(groups: Sequence[metadata.EntryPoint] | None = None) -> argparse.ArgumentParser:
    """The ``pyvision`` parser with every group's commands (a group that fails to load is left out, with a
    warning on stderr)."""
    parser = argparse.ArgumentParser(prog="pyvision", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in command_groups() if groups is None else groups:
        try:
            add_commands: Callable[[argparse._SubParsersAction], None] = group.load()
            add_commands(commands)
        except Exception as error:  # noqa: BLE001  (a broken plugin must not take the other commands down)
            print(f"pyvision: the commands of {group.name!r} ({group.value}) are not available: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    with warnings.catch_warnings():
        warnings.simplefilter("default", DeprecationWarning)  # a renamed command or option says so
        warnings.showwarning = _show_warning
        try:
            return args.handler(args)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    """Warnings as one line for the person at the terminal (no source line)."""
    print(f"pyvision: {category.__name__}: {message}", file=sys.stderr)


def _version() -> str:
    from . import __version__

    return __version__


if __name__ == "__main__":
    raise SystemExit(main())
