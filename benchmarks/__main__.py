"""Run the benchmarks: ``python -m benchmarks [--quick] [--out DIR] [--only NAME]``.

Each benchmark prints its Markdown table to stdout (progress goes to stderr) and writes its report
files into the output directory. Performance targets are reported as pass/fail in the tables; the exit
status only says whether every benchmark ran (0) or one failed to run (1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

BENCHMARKS = {
    "engine": "benchmarks.engine",
    "env": "benchmarks.env",
    "ofr": "benchmarks.ofr",
    "trainer": "benchmarks.trainer",
    "video": "benchmarks.video",
}
"""Benchmark name -> module with ``NAME``, ``DESCRIPTION`` and ``run(out_dir, quick) -> str``."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and shorter runs (for tests and CI; well under a minute)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                        help="directory for the reports (default: bench-results/)")
    parser.add_argument("--only", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=f"run one benchmark only: {', '.join(sorted(BENCHMARKS))}")
    args = parser.parse_args(argv)

    names = [args.only] if args.only else list(BENCHMARKS)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        print(f"## {name}: {module.DESCRIPTION}\n", flush=True)
        began = time.perf_counter()
        try:
            markdown = module.run(args.out, quick=args.quick)
        except Exception:  # noqa: BLE001 - report and go on with the other benchmarks
            traceback.print_exc()
            failed.append(name)
            continue
        print(markdown, flush=True)
        print(f"({name} took {time.perf_counter() - began:.0f} s; reports in {args.out}/)\n", flush=True)
    print(f"benchmarks done in {time.perf_counter() - started:.0f} s"
          + (f"; FAILED to run: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
