"""What the performance benchmarks share: measuring helpers, the machine they ran on and the load other
processes put on it, the comparison rows of their tables, and writing their report files.

:func:`run_benchmark` runs a benchmark that measures the engine (``engine``, ``env``, ``cluster``): it
describes the machine, watches its load, times ``measure(settings, monitor)`` and writes ``<name>.md``,
``<name>.json`` and the plots; the benchmark gives it a ``render(run) -> Report`` and a ``plot(raw, out_dir)``.
The others write their files with :func:`save_report`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq
from tqdm import tqdm

from pyvision_env.execution import WeakIsolationWarning
from pyvision_env.reporting import markdown_table

BUSY_WARNING_PCT = 10.0
"""Share of the CPUs (%) other processes may use in a phase before the report warns."""


# --- measuring --------------------------------------------------------------------------------------

def log(benchmark: str, message: str) -> None:
    print(f"[{benchmark} {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress(benchmark: str, total: int, desc: str) -> tqdm:
    """A progress bar on stderr (none when stderr is not a terminal)."""
    return tqdm(total=total, desc=f"{benchmark}: {desc}", unit="it", leave=False, file=sys.stderr, disable=None,
                dynamic_ncols=True)


def timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Seconds ``call(*args, **kwargs)`` took, and its result."""
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - started, result


def check(ok: bool, what: object) -> None:
    """Stop the benchmark when a measured operation went wrong (``what``: its result)."""
    if not ok:
        raise RuntimeError(f"unexpected result during the benchmark: {what!r}")


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else math.nan


def percentile_ms(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` in seconds, in milliseconds."""
    return percentile(values, q) * 1000


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy (every process, from ``/proc/stat``)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class LoadMonitor:
    """Samples once a second how much of the machine's CPU *other* processes use, per phase of the benchmark.

    Other = all busy CPU time of the machine minus that of this process and its descendants (the kernels).
    Other sessions on a shared machine inflate every figure; the report says when that happened.
    """

    def __init__(self, benchmark: str, interval: float = 1.0) -> None:
        self.benchmark = benchmark
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        """(``perf_counter`` time, others' share of all CPUs in % over the last interval)."""
        self.phases: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-load-monitor", daemon=True)

    def __enter__(self) -> LoadMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def phase(self, name: str) -> None:
        """Log that the phase ``name`` starts now; the samples from now on are its load."""
        log(self.benchmark, name)
        self.phases.append((time.perf_counter(), name))


    @staticmethod
    def _own_seconds() -> dict[int, float]:
        me = psutil.Process()
        seconds = {}
        for proc in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                seconds[proc.pid] = times.user + times.system
        return seconds

    def _run(self) -> None:
        cpus = psutil.cpu_count() or 1
        last_busy, last_own, last_at = machine_busy_seconds(), self._own_seconds(), time.perf_counter()
        while not self._stop.wait(self.interval):
            busy, own, now = machine_busy_seconds(), self._own_seconds(), time.perf_counter()
            ours = sum(max(0.0, value - last_own.get(pid, 0.0)) for pid, value in own.items())
            others = max(0.0, busy - last_busy - ours) / ((now - last_at) * cpus) * 100
            self.samples.append((now, min(others, 100.0)))
            last_busy, last_own, last_at = busy, own, now

    def summary(self) -> dict[str, Any]:
        values = [value for _, value in self.samples]
        phases = {}
        bounds = [*self.phases, (math.inf, "")]
        for (start, name), (end, _) in itertools.pairwise(bounds):
            inside = [value for at, value in self.samples if start <= at < end]
            phases[name] = float(np.mean(inside)) if inside else math.nan
        return {"others_mean_pct": float(np.mean(values)) if values else math.nan,
                "others_max_pct": max(values) if values else math.nan,
                "others_by_phase_pct": phases, "samples": self.samples}


# --- the machine ------------------------------------------------------------------------------------

def machine_description() -> dict[str, Any]:
    """CPU, memory, platform, versions of the packages that matter, bubblewrap, cgroups, load average."""
    cpu_model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in ("ipykernel", "jupyter_client", "pyzmq", "numpy", "pillow", "matplotlib", "psutil"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    bwrap = shutil.which("bwrap")
    bwrap_version = "not installed"
    if bwrap:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bwrap_version = subprocess.run([bwrap, "--version"], capture_output=True, text=True,
                                           timeout=10).stdout.strip()
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "ram_gib": psutil.virtual_memory().total / (1 << 30),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "libzmq": zmq.zmq_version(),
        "bubblewrap": bwrap_version,
        "load_average_before": os.getloadavg(),
        "cgroup_membership": _read("/proc/self/cgroup"),
        "cgroup2_mounted": Path("/sys/fs/cgroup/cgroup.controllers").exists(),
    }


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def machine_summary(machine: dict[str, Any]) -> str:
    """``"<CPU model>, <n> CPUs, <r> GiB RAM"``."""
    return f"{machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['ram_gib']:.1f} GiB RAM"


def load_summary(machine: dict[str, Any]) -> str:
    """The sentence on how busy other processes kept the machine before and during a :func:`run_benchmark`."""
    background = machine["background_load"]
    return (f"Other processes (not this benchmark or its kernels): {machine['cpu_busy_before_pct']:.0f} % of the "
            f"CPUs busy just before the run, {background['others_mean_pct']:.1f} % on average during it (max "
            f"{background['others_max_pct']:.0f} % in a 1-s window); load average before the run "
            f"{machine['load_average_before'][0]:.2f}.")


def busy_warning(machine: dict[str, Any]) -> str | None:
    """A warning naming the phases (or the time before the run) in which other processes were busy."""
    busy = {name: value for name, value in machine["background_load"]["others_by_phase_pct"].items()
            if value > BUSY_WARNING_PCT}
    if not busy and machine["cpu_busy_before_pct"] <= BUSY_WARNING_PCT:
        return None
    where = ", ".join(f"{name} {value:.0f} %" for name, value in busy.items()) or "before the run"
    return (f"**Warning: the machine was not idle — other processes used the CPUs during: {where}. Figures of "
            "those phases are inflated and their comparisons noisier.**")


# --- the report -------------------------------------------------------------------------------------

@dataclass
class Metric:
    """One row of a comparison table: ``value`` against ``reference`` (both in ``unit``; None: no reference)."""

    id: str
    metric: str
    unit: str
    value: float
    reference: float | None = None
    comparison: str = "overhead"
    """``overhead`` (value vs reference in %, for times), ``ratio`` (value / reference) or ``""`` (none)."""
    target: str = ""
    passed: bool | None = None

    def cells(self) -> dict[str, str]:
        if not self.reference or not self.comparison:
            compared = "—"
        elif self.comparison == "overhead":
            compared = f"{(self.value / self.reference - 1) * 100:+.1f} %"
        else:
            compared = f"×{self.value / self.reference:.2f}"
        return {"metric": self.metric, "value": _fmt(self.value, self.unit),
                "reference": "—" if self.reference is None else _fmt(self.reference, self.unit),
                "comparison": compared, "target": self.target or "—",
                "verdict": "info" if self.passed is None else ("pass" if self.passed else "FAIL")}


def _fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms" if value < 100 else f"{value:.1f} ms"
    if unit == "µs":
        return f"{value:.0f} µs"
    if unit == "MiB":
        return f"{value:.1f} MiB"
    if unit == "cells/s":
        return f"{value:.0f} cells/s"
    return f"{value:.4g} {unit}"


@dataclass(frozen=True)
class Report:
    """What a benchmark makes of a :class:`Run`: its Markdown table, the table's rows for ``<name>.json``
    (``metrics``) and the notes under the table."""

    table: str
    metrics: list[dict[str, Any]]
    notes: list[str]

    @classmethod
    def of_metrics(cls, rows: Sequence[Metric], titles: tuple[str, str, str], notes: list[str]) -> Report:
        """A table of ``rows`` with ``titles`` over their value, reference and comparison columns."""
        value, reference, comparison = titles
        columns = [("metric", "metric", "{}"), ("value", value, "{}"), ("reference", reference, "{}"),
                   ("comparison", comparison, "{}"), ("target", "target", "{}"), ("verdict", "pass/fail", "{}")]
        return cls(markdown_table([row.cells() for row in rows], columns), [asdict(row) for row in rows], notes)


@dataclass(frozen=True)
class Run:
    """One run of a benchmark: its settings and mode, the machine (:func:`machine_description`, the CPU load
    before the run and during it), its duration in seconds, the raw samples and the engine's status."""

    settings: Any
    quick: bool
    machine: dict[str, Any]
    duration: float
    raw: dict[str, Any]
    engine_status: dict[str, Any]

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"


def run_benchmark(out_dir: Path, quick: bool, name: str, title: str, settings: tuple[Any, Any], *,
                  measure: Callable[[Any, LoadMonitor], tuple[dict[str, Any], dict[str, Any]]],
                  render: Callable[[Run], Report], plot: Callable[[dict[str, Any], Path], object]) -> str:
    """Measure with the settings of the mode (``settings``: full, quick) while a :class:`LoadMonitor` watches
    (``measure`` returns the raw samples and the engine's status), then write ``<name>.md`` (the table under
    ``title``, a warning if the machine was busy, the notes), ``<name>.json`` and the plots; return the
    Markdown."""
    chosen = settings[1] if quick else settings[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    machine["cpu_busy_before_pct"] = psutil.cpu_percent(interval=1.0)  # nothing of ours runs yet
    started = time.perf_counter()
    with warnings.catch_warnings(), LoadMonitor(name) as monitor:
        warnings.simplefilter("ignore", WeakIsolationWarning)
        raw, status = measure(chosen, monitor)
    duration = time.perf_counter() - started
    machine["load_average_after"] = os.getloadavg()
    machine["background_load"] = monitor.summary()
    run = Run(chosen, quick, machine, duration, raw, status)
    report = render(run)
    warning = busy_warning(machine)
    markdown = "\n".join([report.table, "", *([warning] if warning else []), *report.notes]) + "\n"
    save_report(out_dir, name, title, markdown, quick, duration, settings=asdict(chosen), machine=machine,
                engine_status=status, metrics=report.metrics, raw=raw)
    plot(raw, out_dir)
    return markdown


def save_report(out_dir: Path, name: str, title: str, markdown: str, quick: bool, duration: float,
                **data: Any) -> str:
    """Write ``<name>.md`` (``markdown`` under the heading ``title``) and ``<name>.json`` (the benchmark's
    name, mode and duration, then ``data``); return ``markdown``."""
    (out_dir / f"{name}.md").write_text(f"# {title}\n\n{markdown}")
    report = {"benchmark": name, "quick": quick, "duration_s": duration, **data}
    (out_dir / f"{name}.json").write_text(json.dumps(report, indent=1, default=_json_default))
    return markdown


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
