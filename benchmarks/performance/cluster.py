"""Environments on Ray actors against environments in this process, measured side by side in one run.

1. Vector env throughput: ``N`` sub-environments stepping a ``print`` cell for a fixed time, first on a local
   engine (the reference), then through a :class:`~pyvision_env.pools.ray_pool.RayEnvPool` of 1, 2, 4 workers
   (one machine: a local Ray instance; workers reserve fractional CPUs). The same stepping code runs on both.
2. One environment's step round trip (``print(1)``), local and through an actor: the per-call overhead.
3. What an observation costs to move: the pickled size of a reset observation (the 2000x1500 task image) and
   of a step that displays a 512x512 crop, against the same images as PNG.
4. Memory of one idle worker actor (its process, no kernel) and of Ray's own processes on the node.

Writes ``cluster.md``, ``cluster.json`` and ``cluster.png``; ``docs/scaling.md`` turns these figures into the
arithmetic for larger clusters.
"""

from __future__ import annotations

import io
import math
import pickle
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from pyvision_env.execution import Engine
from pyvision_env.pools import LocalEnvPool, PoolConfig
from pyvision_env.reporting import markdown_table, save_figure

from .engine import BENCH_LIMITS
from .env import ENV_OPTIONS, make_task_images, make_tasks
from .report import (
    LoadMonitor,
    Report,
    Run,
    check,
    load_summary,
    log,
    machine_summary,
    percentile,
    run_benchmark,
    timed,
)

NAME = "cluster"
DESCRIPTION = "environments on Ray actors vs in this process: vector steps/s by workers, round trip, bytes moved"
CELL = "print('hello world')"


@dataclass(frozen=True)
class Settings:
    envs: int
    workers: tuple[int, ...]
    seconds: float
    round_trips: int


FULL = Settings(envs=16, workers=(1, 2, 4), seconds=10.0, round_trips=60)
QUICK = Settings(envs=4, workers=(1, 2), seconds=2.0, round_trips=10)


def steps_per_second(envs: Any, seconds: float) -> dict[str, float]:
    """Reset every sub-environment, warm up, then vector-step ``CELL`` for ``seconds``; the env is closed."""
    try:
        reset_s, _ = timed(envs.reset, seed=0)
        actions = [envs.envs[0].unwrapped.protocol.render_action(code=CELL)] * envs.num_envs
        for _ in range(3):  # the first cells open the kernels and are slower
            envs.step(actions)
        latencies = []
        cpu_before = sum(psutil.Process().cpu_times()[:2])
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            elapsed, (*_, infos) = timed(envs.step, actions)
            check(not infos["tool_errors"].any(), infos)
            latencies.append(elapsed)
        wall = time.perf_counter() - started
        cpu = sum(psutil.Process().cpu_times()[:2]) - cpu_before
    finally:
        envs.close()
    steps = envs.num_envs * len(latencies)
    return {"steps_per_s": steps / wall, "vector_step_p50": percentile(latencies, 50), "reset_s": reset_s,
            "driver_cpu_ms_per_step": 1000 * cpu / steps}


def round_trips(env: Any, count: int) -> list[float]:
    env.reset(seed=0)
    action = env.unwrapped.protocol.render_action(code="print(1)")
    env.step(action)
    times = [timed(env.step, action)[0] for _ in range(count)]
    env.close()
    return times


def observation_bytes(env: Any) -> dict[str, int]:
    """Pickled sizes of a reset observation and of a step showing a 512x512 crop, and PNG sizes of the images."""
    observation, _ = env.reset(seed=0)
    shown, *_ = env.step(env.unwrapped.protocol.render_action(
        code="crop = image_clue_0.crop((0, 0, 512, 512)); display(crop)"))
    env.close()

    def png(images: list[Any]) -> int:
        total = 0
        for image in images:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            total += buffer.tell()
        return total

    reset_images = [image for message in observation for image in message.images]
    step_images = [image for message in shown for image in message.images]
    return {"reset_pickle": len(pickle.dumps(observation)), "reset_png": png(reset_images),
            "reset_pixels": sum(image.width * image.height for image in reset_images),
            "step_pickle": len(pickle.dumps(shown)), "step_png": png(step_images),
            "step_pixels": sum(image.width * image.height for image in step_images)}


def _pss_mib(pid: int) -> float:
    try:
        return psutil.Process(pid).memory_full_info().pss / 2**20
    except psutil.Error:
        return math.nan


def ray_process_memory() -> dict[str, float]:
    """PSS (MiB) of Ray's own processes under this driver (GCS, raylet, agents), not the workers."""
    total = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            line = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if any(name in line for name in ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env")):
            total += _pss_mib(process.pid)
    return {"ray_processes_pss_mib": total}


def measure(settings: Settings, monitor: LoadMonitor) -> tuple[dict[str, Any], dict[str, Any]]:
    """Local arm, then Ray arms; returns the raw figures and the status of the local engine."""
    import ray

    from pyvision_env.pools.ray_pool import RayEnvPool

    raw: dict[str, Any] = {"ray_version": ray.__version__}
    directory = Path(tempfile.mkdtemp(prefix="pvbench-cluster-"))
    tasks = make_tasks([make_task_images(directory)["png"]])
    cpus = psutil.cpu_count() or 1
    monitor.phase("local vector env")
    with Engine(limits=BENCH_LIMITS, spare_kernels=2, max_kernels=settings.envs + 4) as engine:
        status = asdict(engine.status())
        local = LocalEnvPool(engine=engine)
        raw["local"] = steps_per_second(local.vector_env(settings.envs, tasks, **ENV_OPTIONS), settings.seconds)
        raw["local_round_trips"] = round_trips(local.make_env(tasks, **ENV_OPTIONS), settings.round_trips)
        raw["bytes"] = observation_bytes(local.make_env(tasks, **ENV_OPTIONS))
    log(NAME, "starting a local Ray instance")
    raw["ray_init_s"], _ = timed(ray.init, address="local", num_cpus=cpus, include_dashboard=False,
                                  log_to_driver=False, configure_logging=False)
    try:
        raw["ray"] = {}
        for workers in settings.workers:
            monitor.phase(f"ray pool, {workers} workers")
            config = PoolConfig(backend="ray", workers=workers, envs_per_worker=-(-settings.envs // workers),
                                cpus_per_worker=cpus / workers / 2, call_timeout=120)
            start_s, pool = timed(RayEnvPool, config)
            with pool:
                figures = steps_per_second(pool.vector_env(settings.envs, tasks, **ENV_OPTIONS), settings.seconds)
                figures["pool_start_s"] = start_s
                if workers == settings.workers[0]:
                    raw["ray_round_trips"] = round_trips(pool.make_env(tasks, **ENV_OPTIONS), settings.round_trips)
                    raw["worker_pss_mib"] = _pss_mib(pool.status()["workers"][0]["pid"])
                    raw.update(ray_process_memory())
                raw["ray"][workers] = figures
    finally:
        ray.shutdown()
    return raw, status


def build_rows(raw: dict[str, Any], settings: Settings) -> list[dict[str, str]]:
    """Table rows: the local figure, the Ray one and how they compare, formatted."""
    local = raw["local"]["steps_per_s"]
    rows = [{"metric": f"vector steps/s, {settings.envs} envs, {workers} worker(s)", "local": f"{local:.0f}",
             "ray": f"{figures['steps_per_s']:.0f}", "ratio": f"×{figures['steps_per_s'] / local:.2f}"}
            for workers, figures in raw["ray"].items()]
    here_cpu = raw["local"]["driver_cpu_ms_per_step"]
    there_cpu = raw["ray"][min(raw["ray"])]["driver_cpu_ms_per_step"]
    rows.append({"metric": "CPU of this (driving) process per sub-environment step", "local": f"{here_cpu:.2f} ms",
                 "ray": f"{there_cpu:.2f} ms", "ratio": f"×{there_cpu / here_cpu:.2f}"})
    here, there = (percentile(raw[key], 50) * 1000 for key in ("local_round_trips", "ray_round_trips"))
    rows.append({"metric": "one env's step round trip (print(1)), p50", "local": f"{here:.1f} ms",
                 "ray": f"{there:.1f} ms", "ratio": f"+{there - here:.1f} ms"})
    sizes = raw["bytes"]
    for kind, title in (("reset", "reset observation (2000x1500 task image)"), ("step", "step showing a 512x512 crop")):
        rows.append({"metric": f"bytes moved per {title}", "local": f"PNG {sizes[f'{kind}_png'] / 2**10:.0f} KiB",
                     "ray": f"pickled {sizes[f'{kind}_pickle'] / 2**10:.0f} KiB",
                     "ratio": f"×{sizes[f'{kind}_pickle'] / max(1, sizes[f'{kind}_png']):.1f}"})
    rows += [{"metric": "memory of one idle worker actor (PSS, no kernel)", "local": "—",
              "ray": f"{raw['worker_pss_mib']:.0f} MiB", "ratio": "—"},
             {"metric": "memory of Ray's own processes on the node (PSS)", "local": "—",
              "ray": f"{raw['ray_processes_pss_mib']:.0f} MiB", "ratio": "—"}]
    return rows


COLUMNS = [("metric", "metric", "{}"), ("local", "local (this process)", "{}"), ("ray", "Ray actors", "{}"),
           ("ratio", "ratio", "{}")]


def render(run: Run) -> Report:
    """The table of local against Ray figures, and the notes on the machine and the settings."""
    raw, machine, settings = run.raw, run.machine, run.settings
    notes = [
        f"Machine: {machine_summary(machine)}; Ray {raw['ray_version']} (local instance started in "
        f"{raw['ray_init_s']:.1f} s). Every worker and the local engine run on this one machine, so added workers "
        "add no cores: the ratios show the cost of the actor hop, not a cluster's scaling (docs/scaling.md has "
        "the arithmetic for that).",
        f"Settings: {settings.envs} sub-environments, {settings.seconds:g} s of steps per arm, workers "
        f"reserving {machine['cpu_count']}/(2·workers) CPUs each; pool start (actors and their engines): "
        + ", ".join(f"{w} worker(s) {f['pool_start_s']:.1f} s" for w, f in raw["ray"].items())
        + f". Total {run.duration:.0f} s.",
        load_summary(machine),
        "Driver CPU: user+system time of this process (all its threads) over the timed steps; locally it includes "
        "the environments' own work (the engine runs in this process), through Ray only the proxies' (the first "
        "worker count's arm).",
        "Bytes: an observation goes from worker to driver pickled (PIL images as raw pixels); PNG is what a "
        "compressing transport would send (this run does not compress).",
    ]
    rows = build_rows(raw, settings)
    return Report(markdown_table(rows, COLUMNS), rows, notes)


def plot(raw: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(6.5, 4))
    workers = sorted(raw["ray"])
    axis.plot(workers, [raw["ray"][w]["steps_per_s"] for w in workers], marker="o", label="Ray actors")
    axis.axhline(raw["local"]["steps_per_s"], color="tab:gray", linestyle="--", label="local vector env")
    axis.set_xticks(workers)
    axis.set_xlabel("env worker actors (one machine)")
    axis.set_ylabel("sub-environment steps per second")
    axis.set_ylim(bottom=0)
    axis.set_title("vector env throughput through Ray actors")
    axis.legend()
    return save_figure(fig, out_dir / "cluster.png")


def run(out_dir: Path, quick: bool = False) -> str:
    """Measure, write ``cluster.md``, ``cluster.json`` and ``cluster.png`` into ``out_dir``; return the Markdown."""
    return run_benchmark(out_dir, quick, NAME, "Cluster benchmark", (FULL, QUICK), measure=measure, render=render,
                         plot=plot)
