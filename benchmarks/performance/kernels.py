"""Benchmark of how kernels are made: forked by the engine's kernel factory, against a new interpreter per kernel
and against a bare jupyter kernel, side by side in one run.

1. machine CPU per trivial episode — start a kernel, run ``x = 1``, close it; sequential, no spare kernels, so
   every episode pays its kernel's start. The CPU is the whole machine's (every process: the engine, the
   factory, bubblewrap, the kernels), from ``/proc/stat``, over rounds in which the three kinds alternate in a
   shuffled order. The bare jupyter kernel (``AsyncKernelManager``, no sandbox, nothing imported) is the
   reference of the goal: forked episodes at least 10 times cheaper;
2. 64 environments ready — a :class:`~pyvision_env.vector.PyVisionVectorEnv` of 64 sub-environments on an
   engine that is started (two spare kernels): ``reset()`` plus the first vector step, until every kernel ran
   its cell (goal: 4 s);
3. memory per idle kernel — PSS summed over each kernel's processes (forked: init and kernel;
   new interpreter: bubblewrap and the kernel) after a cell ran (goal: 25 MiB); the factory itself (once per
   engine) on its own row;
4. a GRPO group — 8 sessions on one task with a 2000x1500 PNG, each running ``x = 1``: its kernels forked from
   the task's input template (images decoded once, shared), against kernels that each decode the image;
5. episode fork — ``session.fork()`` of a live episode after a few cells: the new kernel's acquisition and
   inputs, and the replay of the recorded cells, against running the same cells again in a new episode (goal:
   50 ms plus the replayed cells' own time).

Run it with ``python -m benchmarks --only kernels [--quick] [--out DIR]``; it writes ``kernels.md``,
``kernels.json`` and ``kernels.png``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import zmq.asyncio
from PIL import Image

from pyvision_env.execution import Engine, SandboxConfig
from pyvision_env.reporting import save_figure
from pyvision_env.vector import PyVisionVectorEnv

from .engine import BENCH_LIMITS, BareKernel, tree_memory
from .env import ENV_OPTIONS, make_task_images, make_tasks
from .report import (
    LoadMonitor,
    Metric,
    Report,
    Run,
    check,
    load_summary,
    log,
    machine_busy_seconds,
    machine_summary,
    percentile,
    progress,
    run_benchmark,
)

NAME = "kernels"
DESCRIPTION = "kernels forked by the factory vs a new interpreter vs a bare jupyter kernel: CPU, readiness, memory"

KINDS = ("forked", "new interpreter", "bare jupyter")
CPU_RATIO_GOAL = 10.0
READY_GOAL_S = 4.0
PSS_GOAL_MIB = 25.0
FORK_GOAL_MS = 50.0
GROUP_SIZE = 8
FORK_CELLS = ("a = np.arange(10**5)", "b = a.reshape(100, -1).sum(0)", "c = Image.new('RGB', (64, 64))",
              "d = {'total': int(b.sum())}")
"""The episode a fork copies: four cells that build state of different kinds."""


@dataclass(frozen=True)
class Settings:
    rounds: int = 5
    episodes_per_round: int = 8
    """Trivial episodes of each kind per round (the kinds alternate, shuffled, round after round)."""
    environments: int = 64
    idle_kernels: int = 16
    groups: int = 4
    forks: int = 20


FULL = Settings()
QUICK = Settings(rounds=2, episodes_per_round=2, environments=8, idle_kernels=3, groups=1, forks=3)


def _engine(kind: str, spare_kernels: int, max_kernels: int = 64) -> Engine:
    start = {"forked": "fork", "new interpreter": "exec"}[kind]
    engine = Engine(limits=BENCH_LIMITS, sandbox=SandboxConfig(start_method=start), spare_kernels=spare_kernels,
                    max_kernels=max_kernels)
    check(engine.status().start_method == start, engine.status())
    return engine


def _engine_episodes(engine: Engine, count: int) -> None:
    for _ in range(count):
        with engine.session() as session:
            check(session.run("x = 1").ok, "a trivial cell failed")
    deadline = time.monotonic() + 30  # the last kernel's kill is part of its episode
    while engine.status().live_kernels and time.monotonic() < deadline:
        time.sleep(0.01)


async def _bare_episodes(count: int, root: Path) -> None:
    context = zmq.asyncio.Context()
    try:
        for _ in range(count):
            kernel = await BareKernel.start(context, root)
            try:
                check((await kernel.run("x = 1"))["status"] == "ok", "a trivial cell failed")
            finally:
                await kernel.close()
    finally:
        context.destroy(linger=0)


def _trivial_episodes(settings: Settings, root: Path) -> dict[str, dict[str, float]]:
    """Machine CPU seconds and wall seconds per trivial episode, per kind."""
    engines = {kind: _engine(kind, spare_kernels=0) for kind in KINDS[:2]}
    runners: dict[str, Callable[[int], None]] = {
        "forked": lambda n: _engine_episodes(engines["forked"], n),
        "new interpreter": lambda n: _engine_episodes(engines["new interpreter"], n),
        "bare jupyter": lambda n: asyncio.run(_bare_episodes(n, root)),
    }
    totals = {kind: {"cpu_s": 0.0, "wall_s": 0.0, "episodes": 0} for kind in KINDS}
    try:
        for runner in runners.values():
            runner(1)  # warm the file cache; not counted
        bar = progress(NAME, settings.rounds * len(KINDS), "trivial episodes (rounds x kinds)")
        order = list(KINDS)
        for _ in range(settings.rounds):
            random.shuffle(order)
            for kind in order:
                busy, started = machine_busy_seconds(), time.perf_counter()
                runners[kind](settings.episodes_per_round)
                totals[kind]["wall_s"] += time.perf_counter() - started
                totals[kind]["cpu_s"] += machine_busy_seconds() - busy
                totals[kind]["episodes"] += settings.episodes_per_round
                bar.update()
        bar.close()
    finally:
        for engine in engines.values():
            engine.close()
    return {kind: {"cpu_per_episode_s": t["cpu_s"] / t["episodes"], "wall_per_episode_s": t["wall_s"] / t["episodes"],
                   "episodes": t["episodes"]} for kind, t in totals.items()}


def _environments_ready(settings: Settings, directory: Path) -> dict[str, dict[str, float]]:
    """Seconds from ``reset()`` to the end of the first vector step, per engine kind."""
    image = directory / "small.png"
    Image.new("RGB", (320, 240), "gray").save(image)
    tasks = make_tasks([image])
    results = {}
    for kind in KINDS[:2]:
        log(NAME, f"{settings.environments} environments, kernels {kind}")
        engine = _engine(kind, spare_kernels=2, max_kernels=settings.environments + 4)
        try:
            engine.warm_up()
            envs = PyVisionVectorEnv(settings.environments, tasks, engine=engine, **ENV_OPTIONS)
            try:
                busy, started = machine_busy_seconds(), time.perf_counter()
                envs.reset()
                action = envs.envs[0].unwrapped.protocol.render_action(code="x = 1")
                _, _, _, _, infos = envs.step([action] * settings.environments)
                elapsed = time.perf_counter() - started
                check(not infos["tool_errors"].any(), infos)
                results[kind] = {"ready_s": elapsed, "cpu_s": machine_busy_seconds() - busy}
            finally:
                envs.close()
        finally:
            engine.close()
    return results


def _kernel_root(engine: Engine, kernel: Any) -> int:
    """The process whose tree is the whole kernel: its init (forked) or its bubblewrap (new interpreter)."""
    if engine.status().start_method == "fork":
        return psutil.Process(kernel.process.pid).parent().pid
    return kernel.process.pid


def _idle_memory(settings: Settings) -> dict[str, Any]:
    """PSS (MiB) per idle kernel that ran a cell, per kind; and the factory's own."""
    results: dict[str, Any] = {}
    for kind in KINDS[:2]:
        log(NAME, f"memory of {settings.idle_kernels} idle kernels, {kind}")
        engine = _engine(kind, spare_kernels=0)
        sessions = []
        try:
            for _ in range(settings.idle_kernels):
                sessions.append(engine.session())
                check(sessions[-1].run("x = 1").ok, "a trivial cell failed")
            time.sleep(1.0)
            kernels = [session._session._kernel for session in sessions]
            results[kind] = [tree_memory(_kernel_root(engine, kernel))["pss"] / 2**20 for kernel in kernels]
            if kind == "forked":
                results["factory"] = psutil.Process(engine.core._factory.pid).memory_full_info().pss / 2**20
        finally:
            for session in sessions:
                session.close()
            engine.close()
    return results


def _groups(settings: Settings, directory: Path) -> dict[str, dict[str, float]]:
    """Machine CPU and wall seconds per group of :data:`GROUP_SIZE` sessions on one new task, with and without
    input templates (alternating, one new task per group)."""
    image = make_task_images(directory)["png"]
    engines = {"template": Engine(limits=BENCH_LIMITS, spare_kernels=0),
               "no template": Engine(limits=BENCH_LIMITS, spare_kernels=0,
                                     sandbox=SandboxConfig(start_method="fork", input_templates=0))}
    totals = {kind: {"cpu_s": 0.0, "wall_s": 0.0} for kind in engines}
    try:
        bar = progress(NAME, settings.groups * len(engines), "groups (rounds x kinds)")
        for group in range(settings.groups):
            for kind in random.sample(list(engines), len(engines)):
                task_image = image.with_name(f"group-{kind.replace(' ', '-')}-{group}.png")
                os.link(image, task_image)  # a task not seen before
                busy, started = machine_busy_seconds(), time.perf_counter()
                sessions = [engines[kind].session(images={"image_clue_0": task_image}) for _ in range(GROUP_SIZE)]
                for session in sessions:
                    check(session.run("x = image_clue_0.size").ok, "a group's cell failed")
                    session.close()
                totals[kind]["wall_s"] += time.perf_counter() - started
                totals[kind]["cpu_s"] += machine_busy_seconds() - busy
                bar.update()
        bar.close()
    finally:
        for engine in engines.values():
            engine.close()
    return {kind: {"cpu_per_group_s": t["cpu_s"] / settings.groups, "wall_per_group_s": t["wall_s"] / settings.groups}
            for kind, t in totals.items()}


def _episode_forks(settings: Settings) -> dict[str, list[float]]:
    """Seconds of ``session.fork()`` after :data:`FORK_CELLS`, and of the same cells run in a new episode."""
    engine = _engine("forked", spare_kernels=2)
    samples: dict[str, list[float]] = {"fork": [], "cells_again": []}
    try:
        with engine.session() as original:
            for cell in FORK_CELLS:
                check(original.run(cell).ok, cell)
            bar = progress(NAME, settings.forks, "episode forks")
            for _ in range(settings.forks):
                engine.warm_up()
                started = time.perf_counter()
                fork = original.fork()
                samples["fork"].append(time.perf_counter() - started)
                check(fork.run("print(d['total'])").stdout == original.run("print(d['total'])").stdout, "fork")
                fork.close()
                engine.warm_up()
                with engine.session() as again:
                    started = time.perf_counter()
                    for cell in FORK_CELLS:
                        again.run(cell)
                    samples["cells_again"].append(time.perf_counter() - started)
                bar.update()
            bar.close()
    finally:
        engine.close()
    return samples


def _measure(settings: Settings, monitor: LoadMonitor) -> tuple[dict[str, Any], dict[str, Any]]:
    raw: dict[str, Any] = {}
    directory = Path(tempfile.mkdtemp(prefix="pvbench-k-"))  # short: IPC socket paths must stay under 108 bytes
    try:
        status_engine = _engine("forked", spare_kernels=0)
        status = asdict(status_engine.status())
        status_engine.close()
        monitor.phase("trivial episodes")
        raw["episodes"] = _trivial_episodes(settings, directory)
        monitor.phase("environments ready")
        raw["environments"] = _environments_ready(settings, directory)
        monitor.phase("idle memory")
        raw["memory"] = _idle_memory(settings)
        monitor.phase("groups")
        raw["groups"] = _groups(settings, directory)
        monitor.phase("episode forks")
        raw["forks"] = _episode_forks(settings)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return raw, status


# --- report -----------------------------------------------------------------------------------------

def build_rows(raw: dict[str, Any], environments: int) -> list[Metric]:
    cpu = {kind: raw["episodes"][kind]["cpu_per_episode_s"] * 1000 for kind in KINDS}
    wall = {kind: raw["episodes"][kind]["wall_per_episode_s"] * 1000 for kind in KINDS}
    ratio = cpu["bare jupyter"] / cpu["forked"]
    ready = raw["environments"]
    memory = raw["memory"]
    pss = float(np.mean(memory["forked"]))
    forks = raw["forks"]
    fork_ms, again_ms = percentile(forks["fork"], 50) * 1000, percentile(forks["cells_again"], 50) * 1000
    return [
        Metric("cpu_vs_bare", "machine CPU per trivial episode: forked vs bare jupyter kernel", "ms", cpu["forked"],
               cpu["bare jupyter"], "ratio", f">= {CPU_RATIO_GOAL:g}x less", ratio >= CPU_RATIO_GOAL),
        Metric("cpu_vs_exec", "machine CPU per trivial episode: forked vs new interpreter", "ms", cpu["forked"],
               cpu["new interpreter"], "ratio"),
        Metric("wall_vs_exec", "wall time per trivial episode: forked vs new interpreter", "ms", wall["forked"],
               wall["new interpreter"], "ratio"),
        Metric("ready", f"{environments} environments: reset + first step (forked vs new interpreter)", "s",
               ready["forked"]["ready_s"], ready["new interpreter"]["ready_s"], "ratio",
               f"<= {READY_GOAL_S:g} s" if environments == 64 else "", ready["forked"]["ready_s"] <= READY_GOAL_S
               if environments == 64 else None),
        Metric("pss", "PSS per idle kernel (forked vs new interpreter)", "MiB", pss,
               float(np.mean(memory["new interpreter"])), "ratio", f"<= {PSS_GOAL_MIB:g} MiB", pss <= PSS_GOAL_MIB),
        Metric("factory_pss", "PSS of the factory process (once per engine)", "MiB", memory["factory"]),
        Metric("group_cpu", f"machine CPU per group of {GROUP_SIZE} episodes on one task with a 2000x1500 PNG "
               "(input template vs each kernel decoding)", "ms", raw["groups"]["template"]["cpu_per_group_s"] * 1000,
               raw["groups"]["no template"]["cpu_per_group_s"] * 1000, "ratio"),
        Metric("fork", f"episode fork after {len(FORK_CELLS)} cells, p50 (vs the cells again in a new episode)",
               "ms", fork_ms, again_ms, "overhead", f"<= {FORK_GOAL_MS:g} ms + cells",
               fork_ms <= FORK_GOAL_MS + again_ms),
    ]


def render(run: Run) -> Report:
    raw, settings, status = run.raw, run.settings, run.engine_status
    episodes = raw["episodes"]
    notes = [
        f"Machine: {machine_summary(run.machine)}. Kernels: {status['start_method']} "
        f"({status['start_method_reason']}), isolation {status['isolation']}, cgroups {status['cgroups']}.",
        f"Mode: {run.mode} ({settings.rounds} rounds of {settings.episodes_per_round} episodes per kind, "
        f"{settings.environments} environments, {settings.idle_kernels} idle kernels per kind, {settings.groups} "
        f"groups per kind, {settings.forks} forks); total {run.duration:.0f} s.",
        load_summary(run.machine),
        "",
        "- Machine CPU is every process's, from /proc/stat, including the benchmark's own client work and any "
        "background load (see above). Per episode: " + ", ".join(
            f"{kind} {episodes[kind]['cpu_per_episode_s'] * 1000:.0f} ms CPU / "
            f"{episodes[kind]['wall_per_episode_s'] * 1000:.0f} ms wall" for kind in KINDS) + ".",
        "- The bare jupyter kernel imports nothing and has no sandbox; the engine's kernels import numpy, PIL "
        "and matplotlib, install the display hooks and run in their own namespaces.",
        f"- {settings.environments} environments, machine CPU during reset + first step: " + ", ".join(
            f"{kind} {raw['environments'][kind]['cpu_s']:.1f} s" for kind in KINDS[:2]) + ".",
        "- PSS splits each shared page among the processes that map it: forked kernels share the factory's "
        "imported pages, so their PSS falls as more kernels are alive.",
        "- Groups: " + ", ".join(f"{kind} {values['cpu_per_group_s'] * 1000:.0f} ms CPU / "
                                 f"{values['wall_per_group_s'] * 1000:.0f} ms wall per group"
                                 for kind, values in raw["groups"].items()) + ".",
        "- An episode fork replays the episode's recorded cells in a new kernel (with the same seeds); its time "
        "is compared with running the same cells in a new episode.",
    ]
    return Report.of_metrics(build_rows(raw, settings.environments), ("forked", "reference", "ratio/overhead"),
                             notes)


def plot(raw: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cpu, memory) = plt.subplots(1, 2, figsize=(11, 4))
    values = [raw["episodes"][kind]["cpu_per_episode_s"] * 1000 for kind in KINDS]
    bars = cpu.bar(KINDS, values, color=["tab:green", "tab:orange", "tab:gray"])
    cpu.bar_label(bars, fmt="%.0f ms")
    cpu.set(ylabel="machine CPU per trivial episode (ms)", title="Start, one cell, close")
    kinds = list(KINDS[:2])
    memory.boxplot([raw["memory"][kind] for kind in kinds], tick_labels=kinds)
    memory.axhline(PSS_GOAL_MIB, color="tab:red", linestyle="--", label=f"goal {PSS_GOAL_MIB:g} MiB")
    memory.set(ylabel="PSS per idle kernel (MiB)", title="Memory", ylim=(0, None))
    memory.legend()
    return save_figure(fig, out_dir / "kernels.png")


def run(out_dir: Path, quick: bool = False) -> str:
    """Measure, write ``kernels.md``, ``kernels.json`` and ``kernels.png`` into ``out_dir``; return the Markdown."""
    return run_benchmark(out_dir, quick, NAME, "Kernel start benchmark", (FULL, QUICK), measure=_measure,
                         render=render, plot=plot)
