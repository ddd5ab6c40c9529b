"""The environment layer's commands: ``pyvision exec``, ``doctor``, ``tasks``, ``view`` and ``sandbox-demo``.

:func:`add_commands` is this package's entry in the ``pyvision.commands`` group (see :mod:`pyvision_env.cli`).
Handlers import what they need when they run, so ``pyvision --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from .deprecation import REMOVED_IN


def add_commands(commands: Any) -> None:
    """Add this layer's commands to the ``pyvision`` subparsers."""
    from .viewer import add_view_parser

    demo = commands.add_parser(
        "sandbox-demo", aliases=["demo"],
        help="a short demonstration of sandboxed code cells on a generated image",
        description="Start the execution engine, open one episode with a generated image as `image_clue_0`, "
                    "and run cells the way a model would: inspect, crop and zoom, show figures, keep state, "
                    "recover from an error, a timeout and a crash. Shown images are saved to --out. (`pyvision "
                    f"demo` is its old name, accepted until {REMOVED_IN}; the training demo is `pyvision "
                    "train-demo`.)")
    demo.add_argument("--out", type=Path, default=Path("runs/sandbox-demo"),
                      help="where shown images are saved (default: %(default)s)")
    demo.set_defaults(handler=run_sandbox_demo)

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
    run_file.set_defaults(handler=run_exec)

    doctor = commands.add_parser("doctor", help="report the isolation, cgroups and limits available on this machine",
                                 description="Probe bubblewrap and cgroups, start one kernel, and print what the "
                                             "engine can enforce here.")
    doctor.set_defaults(handler=run_doctor)

    tasks = commands.add_parser(
        "tasks", help="list the registered suites",
        description="List every registered suite with its Gymnasium id and description, those that installed "
                    "packages register included (the public benchmarks found under $PYVISION_BENCHMARKS).")
    tasks.add_argument("--details", action="store_true",
                       help="also load each suite and show its size and splits (generates built-in suites)")
    tasks.set_defaults(handler=run_tasks)

    add_view_parser(commands)


def run_sandbox_demo(args: argparse.Namespace) -> int:
    from .sandbox_demo import run_demo

    if args.command == "demo":
        warnings.warn(f"`pyvision demo` is now `pyvision sandbox-demo` (the old name goes in {REMOVED_IN}); the "
                      "training demo is `pyvision train-demo`", DeprecationWarning, stacklevel=1)
    return run_demo(args.out)


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
                print(result.describe(), end="")
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
    print(f"kernels   : {status.start_method} ({status.start_method_reason})")
    print(f"kernel    : {'started and ran a cell' if probe.ok else 'FAILED: ' + probe.error_value}"
          f" (pid and interfaces inside: {probe.stdout.strip()})")
    print(f"limits    : cell {limits.cell_timeout:g} s, memory {limits.memory_bytes >> 20} MiB, "
          f"disk {limits.disk_bytes >> 20} MiB, processes {limits.max_processes}, "
          f"output {limits.max_output_bytes >> 20} MiB per cell")
    if status.weak:
        print("WARNING: kernels are not sandboxed here; install bubblewrap (apt-get install bubblewrap).")
    if status.start_method != "fork":
        print("NOTE: each kernel starts a new interpreter here (about a second of CPU per episode) instead of being "
              "forked by the kernel factory.")
    return 0 if probe.ok and not status.weak else 1


def run_tasks(args: argparse.Namespace) -> int:
    from .registry import list_suites, register_installed_suites

    problems = register_installed_suites()
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
    for problem in problems:
        print(f"pyvision tasks: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _save_images(images: list[Any], directory: Path | None, stem: str) -> list[str]:
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
