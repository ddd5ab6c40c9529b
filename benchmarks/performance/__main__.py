"""Run the benchmarks: ``python -m benchmarks [--quick] [--out DIR] [--only NAME]``.

Each benchmark prints its Markdown table to stdout (progress goes to stderr) and writes its report
files into the output directory; ``report.md`` there then collects them all, with the machine they ran on
and their plots. Performance targets are reported as pass/fail in the tables; the exit status only says
whether every benchmark ran (0) or one failed to run (1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from pyvision_env.reporting import markdown_table

from .report import machine_description

PERFORMANCE_BENCHMARKS = {
    "cluster": "benchmarks.performance.cluster",
    "collapse": "benchmarks.experiments.collapse",
    "distributed": "benchmarks.performance.distributed",
    "engine": "benchmarks.performance.engine",
    "env": "benchmarks.performance.env",
    "kernels": "benchmarks.performance.kernels",
    "ofr": "benchmarks.performance.ofr",
    "trainer": "benchmarks.performance.trainer",
    "video": "benchmarks.performance.video",
}
"""Benchmark name -> module with ``NAME``, ``DESCRIPTION`` and ``run(out_dir, quick) -> str``."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and shorter runs (for tests and CI; well under a minute)")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                        help="directory for the reports (default: bench-results/)")
    parser.add_argument("--only", choices=sorted(PERFORMANCE_BENCHMARKS), metavar="NAME",
                        help=f"run one benchmark only: {', '.join(sorted(PERFORMANCE_BENCHMARKS))}")
    args = parser.parse_args(argv)

    names = [args.only] if args.only else list(PERFORMANCE_BENCHMARKS)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    sections: list[Section] = []
    started = time.perf_counter()
    for name in names:
        module = importlib.import_module(PERFORMANCE_BENCHMARKS[name])
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
        sections.append(Section(name, module.DESCRIPTION, markdown, time.perf_counter() - began))
    duration = time.perf_counter() - started
    report = write_report(args.out, sections, failed, quick=args.quick, duration=duration)
    print(f"benchmarks done in {duration:.0f} s; report: {report}"
          + (f"; FAILED to run: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


@dataclass(frozen=True)
class Section:
    name: str
    description: str
    markdown: str
    seconds: float


MACHINE_COLUMNS = [("cpu_model", "CPU", "{}"), ("cores", "logical (physical) cores", "{}"),
                   ("ram_gib", "RAM", "{:.0f} GiB"), ("gpu", "GPU", "{}"), ("platform", "platform", "{}"),
                   ("python", "Python", "{}"), ("torch", "torch", "{}")]


def write_report(out: Path, sections: list[Section], failed: list[str], *, quick: bool, duration: float) -> Path:
    """``out/report.md``: the machine, then each benchmark's table with the plots it wrote (``<name>*.png``)."""
    machine = machine_description()
    gpu = "none"
    try:
        import torch

        torch_version = torch.__version__
        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        torch_version = "not installed"
    lines = ["# PyVision-RL performance report", "",
             f"{time.strftime('%Y-%m-%d %H:%M %Z')}, {'quick' if quick else 'full'} mode, {duration:.0f} s in all. "
             "Every ratio compares figures measured side by side in this run.", "", "## Machine", "",
             markdown_table([{**machine, "cores": f"{machine['cpu_count']} ({machine['cpu_count_physical']})",
                              "gpu": gpu, "torch": torch_version}], MACHINE_COLUMNS)]
    for section in sections:
        lines += ["", f"## {section.name}: {section.description}", "", section.markdown.strip(), "",
                  f"({section.seconds:.0f} s; details in `{section.name}.md` and `{section.name}.json`)"]
        lines += [f"\n![{plot.stem}]({plot.name})" for plot in sorted(out.glob(f"{section.name}*.png"))]
    if failed:
        lines += ["", "## Failed to run", "", *(f"- {name} (see the traceback on stderr)" for name in failed)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
