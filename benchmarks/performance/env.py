"""Benchmark of :class:`~pyvision_env.env.PyVisionEnv` over the engine it runs on, and of the async vector env.

Everything runs in one process on one :class:`~pyvision_env.execution.Engine` (sandboxed kernels, pool of 2):

1. step overhead — the same cell through ``env.step(protocol.render_action(code=...))`` and through a bare
   ``Session.run(code)`` on the same engine, alternating in a shuffled order per iteration, for three cells:
   an assignment, a print, and a small matplotlib figure shown with ``plt.show()``; target: the env's p50
   at most 10 % above the bare p50;
2. reset latency — ``env.reset()`` of a task with a realistic 2000x1500 PNG (gradients, shapes, noise).
   A reset returns once this process has the first view of the image (cached per file); the kernel loads
   the original in the background and the first step waits for it. With a warm pool (``engine.warm_up()``
   before each sample): the reset of a task seen before, as in a GRPO group (target: p50 at most 60 ms),
   of a task not seen before (a new hard link of the image per sample; also as JPEG), and the reset until
   the kernel is usable (reset + a first step ``x = 1``, against the bare cell). Also back-to-back episodes
   (reset, first step, answer, no wait: the pool drains), the answer step that ends an episode (its kernel
   is killed in the background), and the parts of a reset measured on their own;
3. async vector env steps/s at 1, 8, 32 and 64 sub-environments, each stepping a ``print`` cell, for a fixed
   wall time per level; and its reset, until the first views and until every kernel is usable.

Run it with ``python -m benchmarks --only env [--quick] [--out DIR]``; it writes ``env.md``, ``env.json``
and ``env.png``.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from pyvision_env import PyVisionEnv, Task, TaskSet
from pyvision_env.execution import Engine
from pyvision_env.reporting import save_figure
from pyvision_env.vector import PyVisionVectorEnv
from pyvision_env.visual_tokens import VisualTokenRule

from .engine import BENCH_LIMITS
from .report import (
    LoadMonitor,
    Metric,
    Report,
    Run,
    check,
    load_summary,
    log,
    machine_summary,
    percentile,
    percentile_ms,
    progress,
    run_benchmark,
    timed,
)

NAME = "env"
DESCRIPTION = "PyVisionEnv step overhead over a bare engine cell, reset latency, async vector env steps/s"

CELLS = {
    "assignment": "x = 1",
    "print": "print('hello world')",
    "figure": "plt.figure(figsize=(3, 2)); plt.plot([0, 1], [1, 0]); plt.show()",
}
FIRST_CELL = CELLS["assignment"]
"""The first step after a reset: the time until the kernel is usable."""
VECTOR_CELL = "print('hello world')"
IMAGE_SIZE = (2000, 1500)
OVERHEAD_TARGET_PCT = 10.0
RESET_TARGET_MS = 60.0
SPARE_KERNELS = 2
ENV_OPTIONS = {"max_turns": 10**9, "max_images": None, "episode_timeout": None}
"""No episode budgets: one benchmark episode runs hundreds of steps."""


@dataclass(frozen=True)
class Settings:
    """How many samples of each measurement."""

    steps: int = 200
    """Per cell and side."""
    warmup_steps: int = 10
    resets: int = 30
    """Warm resets of a task seen before, each followed by a first step."""
    uncached_resets: int = 20
    """Warm resets of a task not seen before, per format."""
    back_to_back: int = 10
    parts: int = 15
    levels: tuple[int, ...] = (1, 8, 32, 64)
    vector_seconds: float = 5.0


FULL = Settings()
QUICK = Settings(steps=20, warmup_steps=3, resets=3, uncached_resets=2, back_to_back=3, parts=1, levels=(1, 4),
                 vector_seconds=1.5)


def make_task_images(directory: Path) -> dict[str, Path]:
    """A photo-like 2000x1500 image (gradients, 200 filled shapes, mild noise) as PNG and as JPEG (q=90)."""
    rng = np.random.default_rng(0)
    width, height = IMAGE_SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 255 // (width + height)], -1)
    image = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(200):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x, y, x + int(rng.integers(10, 200)), y + int(rng.integers(10, 200))]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-8, 9, (height, width, 3))
    image = Image.fromarray(noisy.clip(0, 255).astype(np.uint8))
    paths = {"png": directory / "task.png", "jpeg": directory / "task.jpg"}
    image.save(paths["png"])
    image.save(paths["jpeg"], quality=90)
    return paths


def make_tasks(images: Sequence[Path]) -> TaskSet:
    """One task per image file, all with the same question and answer."""
    return TaskSet("bench", [Task(id=f"bench-{i}", question="How many shapes are there?", answer="200",
                                  images=(str(image),), grader="numeric") for i, image in enumerate(images)])


def _new_names(image: Path, count: int) -> list[Path]:
    """``count`` hard links of ``image``: files whose first view is not cached yet."""
    paths = [image.with_name(f"{image.stem}-{i}{image.suffix}") for i in range(count)]
    for path in paths:
        os.link(image, path)
    return paths


# --- measurements -----------------------------------------------------------------------------------

def _step_overhead(engine: Engine, tasks: TaskSet, settings: Settings) -> dict[str, dict[str, list[float]]]:
    """Per cell: wall times of env steps and bare session runs (interleaved), and the time inside each."""
    env = PyVisionEnv(tasks, engine=engine, **ENV_OPTIONS)
    rng = random.Random(0)
    results: dict[str, dict[str, list[float]]] = {}
    env.reset()
    session = engine.session()
    try:
        for name, cell in CELLS.items():
            action = env.protocol.render_action(code=cell)
            samples: dict[str, list[float]] = {"env": [], "bare": [], "env_execute": [], "bare_cell": []}

            def env_once(action: str = action, samples: dict = samples) -> None:
                elapsed, (_, _, _, _, info) = timed(env.step, action)
                check(info["tool_errors"] == 0 and info["end_reason"] is None, info)
                samples["env"].append(elapsed)
                samples["env_execute"].append(env.timings["execute_ms"] / 1000)

            def bare_once(cell: str = cell, samples: dict = samples) -> None:
                elapsed, result = timed(session.run, cell)
                check(result.ok, result)
                samples["bare"].append(elapsed)
                samples["bare_cell"].append(result.duration)

            total = settings.warmup_steps + settings.steps
            with progress(NAME, total, f"step overhead ({name})") as bar:
                for _ in range(total):
                    pair = [env_once, bare_once]
                    rng.shuffle(pair)
                    for once in pair:
                        once()
                    bar.update()
            results[name] = {key: values[settings.warmup_steps:] for key, values in samples.items()}
    finally:
        session.close()
        env.close()
    return results


def _episodes(engine: Engine, tasks: TaskSet, count: int, *, warm: bool, first_step: bool,
              desc: str) -> dict[str, list[float]]:
    """``count`` episodes on the tasks in turn: reset, a first step ``x = 1`` if ``first_step`` (it waits for
    the kernel), an answer step (ends the episode; the kernel is killed in the background). ``warm``: a full
    pool before each reset."""
    env = PyVisionEnv(tasks, engine=engine, **ENV_OPTIONS)
    first = env.protocol.render_action(code=FIRST_CELL)
    answer = env.protocol.render_action(answer="200")
    samples: dict[str, list[float]] = {"reset": [], "reset_inside": [], "first_step": [], "answer_step": []}
    try:
        with progress(NAME, count, desc) as bar:
            for i in range(count):
                if warm:
                    engine.warm_up()
                elapsed, _ = timed(env.reset, options={"task_index": i % len(tasks)})
                samples["reset"].append(elapsed)
                samples["reset_inside"].append(env.timings["total_ms"] / 1000)
                if first_step:
                    stepped, (*_, step_info) = timed(env.step, first)
                    check(step_info["tool_errors"] == 0 and step_info["end_reason"] is None, step_info)
                    samples["first_step"].append(stepped)
                answered, (_, reward, terminated, _, info) = timed(env.step, answer)
                check(terminated and reward == 1.0, info)
                samples["answer_step"].append(answered)
                bar.update()
    finally:
        env.close()
    return samples


def _reset_parts(engine: Engine, rule: VisualTokenRule, image: Path, count: int) -> dict[str, list[float]]:
    """The parts of a reset on their own, each done as the reset does it."""
    samples: dict[str, list[float]] = {key: [] for key in (
        "verify", "open_session_empty", "open_session_image", "close_session", "decode", "resize", "cached_view")}

    def verify() -> None:
        with Image.open(image) as opened:
            opened.verify()

    def decode() -> Image.Image:
        with Image.open(image) as opened:
            opened.load()
            return opened.copy() if opened.mode in ("RGB", "L") else opened.convert("RGB")

    with progress(NAME, count, "reset parts") as bar:
        for _ in range(count):
            engine.warm_up()  # no kernel starting while this process works
            samples["verify"].append(timed(verify)[0])
            elapsed, decoded = timed(decode)
            samples["decode"].append(elapsed)
            size = rule.resized_size(*decoded.size)
            elapsed, view = timed(decoded.resize, size, Image.Resampling.BICUBIC, reducing_gap=3.0)
            samples["resize"].append(elapsed)
            samples["cached_view"].append(timed(lambda view=view: (os.stat(image), view.copy()))[0])
            elapsed, session = timed(engine.session, images={"image_clue_0": str(image)})
            samples["open_session_image"].append(elapsed)
            samples["close_session"].append(timed(session.close)[0])
            engine.warm_up()
            elapsed, session = timed(engine.session)
            samples["open_session_empty"].append(elapsed)
            session.close()
            bar.update()
    return samples


def _vector(engine: Engine, tasks: TaskSet, settings: Settings) -> dict[int, dict[str, Any]]:
    """Per level: reset N envs at once, warm up, vector steps for a fixed wall time, close (episodes open)."""
    levels = {}
    for level in settings.levels:
        log(NAME, f"vector env with {level} sub-environments")
        envs = PyVisionVectorEnv(level, tasks, engine=engine, **ENV_OPTIONS)
        try:
            reset_s, _ = timed(envs.reset)
            actions = [envs.envs[0].unwrapped.protocol.render_action(code=VECTOR_CELL)] * level
            first_s, _ = timed(envs.step, actions)  # waits until every sub-environment's kernel is open
            for _ in range(2):  # the first cells of a fresh kernel are slower
                envs.step(actions)
            latencies = []
            stop_at = time.perf_counter() + settings.vector_seconds
            started = time.perf_counter()
            while time.perf_counter() < stop_at:
                elapsed, (_, _, _, _, infos) = timed(envs.step, actions)
                check(not infos["tool_errors"].any(), infos)
                latencies.append(elapsed)
            wall = time.perf_counter() - started
        finally:
            close_s, _ = timed(envs.close)
        levels[level] = {"envs": level, "vector_steps": len(latencies), "elapsed": wall,
                         "steps_per_s": level * len(latencies) / wall, "reset_s": reset_s,
                         "reset_to_first_result_s": reset_s + first_s, "close_s": close_s,
                         "step_p50": percentile(latencies, 50), "step_p90": percentile(latencies, 90)}
        engine.warm_up()
    return levels


def _measure(settings: Settings, monitor: LoadMonitor) -> tuple[dict[str, Any], dict[str, Any]]:
    raw: dict[str, Any] = {}
    directory = Path(tempfile.mkdtemp(prefix="pvbench-env-"))
    engine = Engine(limits=BENCH_LIMITS, spare_kernels=SPARE_KERNELS, max_kernels=max(settings.levels) + SPARE_KERNELS + 2)
    try:
        images = make_task_images(directory)
        raw["image_bytes"] = {kind: path.stat().st_size for kind, path in images.items()}
        png_tasks = make_tasks([images["png"]])  # its first view is cached from the step overhead phase on
        engine.warm_up()
        status = asdict(engine.status())
        monitor.phase("step overhead")
        raw["steps"] = _step_overhead(engine, png_tasks, settings)
        engine.warm_up()
        monitor.phase("warm resets")
        raw["reset_warm"] = _episodes(engine, png_tasks, settings.resets, warm=True, first_step=True,
                                      desc="resets (warm pool, first view cached)")
        for kind in ("png", "jpeg"):
            new_tasks = make_tasks(_new_names(images[kind], settings.uncached_resets))
            raw[f"reset_uncached_{kind}"] = _episodes(engine, new_tasks, settings.uncached_resets, warm=True,
                                                      first_step=False, desc=f"resets (warm pool, new {kind})")
        monitor.phase("parts of a reset")
        rule = PyVisionEnv(png_tasks, engine=engine).token_rule
        raw["reset_parts"] = _reset_parts(engine, rule, images["png"], settings.parts)
        monitor.phase("back-to-back episodes")
        engine.warm_up()
        raw["reset_back_to_back"] = _episodes(engine, png_tasks, settings.back_to_back, warm=False,
                                              first_step=True, desc="episodes (back to back)")
        engine.warm_up()
        monitor.phase("async vector env")
        raw["vector"] = _vector(engine, png_tasks, settings)
    finally:
        engine.close()
        shutil.rmtree(directory, ignore_errors=True)
    return raw, status


# --- report -----------------------------------------------------------------------------------------

def _until_usable(samples: dict[str, list[float]]) -> list[float]:
    """Per episode: the reset plus its first step, i.e. until the first cell's result."""
    return list(np.add(samples["reset"], samples["first_step"]))


def build_rows(raw: dict[str, Any]) -> list[Metric]:
    ms = percentile_ms
    rows = []
    for name, samples in raw["steps"].items():
        env50, bare50 = ms(samples["env"], 50), ms(samples["bare"], 50)
        rows += [Metric(f"step_{name}_p50", f"step `{CELLS[name]}`, p50", "ms", env50, bare50,
                        target=f"<= +{OVERHEAD_TARGET_PCT:g} %",
                        passed=env50 <= bare50 * (1 + OVERHEAD_TARGET_PCT / 100)),
                 Metric(f"step_{name}_p90", f"step `{CELLS[name]}`, p90", "ms", ms(samples["env"], 90),
                        ms(samples["bare"], 90))]
    warm, back = raw["reset_warm"], raw["reset_back_to_back"]
    reset50 = ms(warm["reset"], 50)
    cached = "reset, warm pool, first view cached (task seen before, as in a GRPO group)"
    uncached = raw["reset_uncached_png"]["reset"]
    rows += [
        Metric("reset_warm_p50", f"{cached}, p50", "ms", reset50, target=f"<= {RESET_TARGET_MS:g} ms",
               passed=reset50 <= RESET_TARGET_MS),
        Metric("reset_warm_p90", f"{cached}, p90", "ms", ms(warm["reset"], 90)),
        Metric("reset_uncached_p50", "reset, warm pool, first view not cached (new task), p50", "ms",
               ms(uncached, 50)),
        Metric("reset_uncached_p90", "reset, warm pool, first view not cached (new task), p90", "ms",
               ms(uncached, 90)),
        Metric("reset_uncached_jpeg_p50", "reset, warm pool, first view not cached, same image as JPEG, p50", "ms",
               ms(raw["reset_uncached_jpeg"]["reset"], 50)),
        Metric("reset_to_first_result_p50",
               f"reset + first step `{FIRST_CELL}` (until the kernel is usable), warm pool, cached, p50", "ms",
               ms(_until_usable(warm), 50), ms(raw["steps"]["assignment"]["bare"], 50)),
        Metric("reset_back_to_back_p50", "reset, back to back (pool drained), p50", "ms", ms(back["reset"], 50)),
        Metric("reset_back_to_back_p90", "reset, back to back (pool drained), p90", "ms", ms(back["reset"], 90)),
        Metric("reset_back_to_back_to_first_result_p50",
               f"reset + first step `{FIRST_CELL}`, back to back (pool drained), p50", "ms",
               ms(_until_usable(back), 50)),
        Metric("answer_step_p50", "answer step (grades; the kernel is killed in the background), p50", "ms",
               ms(warm["answer_step"], 50)),
    ]
    parts = raw["reset_parts"]
    for key, label in (("verify", "input check of the PNG (`verify`, on the event loop)"),
                       ("open_session_empty", "open_session without inputs (pool acquire)"),
                       ("open_session_image", "open_session with the PNG (kernel loads it; in the background)"),
                       ("cached_view", "first view from the cache (stat + copy)"),
                       ("decode", "decode the PNG in this process"),
                       ("resize", "resize to the first view (BICUBIC, reducing_gap=3.0)"),
                       ("close_session", "close a session (kill its kernel; in the background)")):
        rows.append(Metric(f"reset_part_{key}_p50", f"part: {label}, p50", "ms", ms(parts[key], 50)))
    for level, result in raw["vector"].items():
        noun = "env" if level == 1 else "envs"
        rows += [Metric(f"vector_steps_per_s_n{level}", f"async vector env, {level} {noun}: steps/s", "steps/s",
                        result["steps_per_s"]),
                 Metric(f"vector_step_p50_n{level}", f"async vector env, {level} {noun}: vector step p50", "ms",
                        result["step_p50"] * 1000)]
    most = max(raw["vector"])
    largest = raw["vector"][most]
    rows += [Metric("vector_reset", f"async vector env, reset of {most} envs at once", "s", largest["reset_s"]),
             Metric("vector_reset_to_first_result", f"async vector env, reset of {most} envs + first vector step",
                    "s", largest["reset_to_first_result_s"]),
             Metric("vector_close", f"async vector env, close of {most} envs (episodes open)", "s",
                    largest["close_s"])]
    return rows


def render(run: Run) -> Report:
    """The metrics table and the notes on the machine, the engine and how each figure was taken."""
    raw, settings, status = run.raw, run.settings, run.engine_status
    inside = []
    for name, samples in raw["steps"].items():
        env_outside = np.median(np.asarray(samples["env"]) - np.asarray(samples["env_execute"])) * 1e3
        paired = np.median(np.asarray(samples["env"]) - np.asarray(samples["bare"])) * 1e3
        inside.append(f"`{name}` {paired:+.2f} ms paired (env − bare, same iteration), {env_outside:.2f} ms of the "
                      "env's step outside its cell execution")
    parts = {key: percentile_ms(values, 50) for key, values in raw["reset_parts"].items()}
    warm = raw["reset_warm"]
    counts = (f"{settings.steps} steps per cell and side, {settings.resets} warm resets of a seen task, "
              f"{settings.uncached_resets} of a new task per format, {settings.back_to_back} back-to-back "
              f"episodes, {settings.parts} samples of each reset part, {settings.vector_seconds:g} s per vector "
              "level")
    notes = [
        f"Machine: {machine_summary(run.machine)}; Python {run.machine['python']}. Engine: isolation "
        f"{status['isolation']}, cgroups {status['cgroups']}, pool of {SPARE_KERNELS}. Mode: {run.mode} ({counts}); "
        f"total {run.duration:.0f} s.",
        load_summary(run.machine),
        "",
        "- Step: env = `env.step(render_action(code=cell))` (sync API); bare = `Session.run(cell)` on the same "
        "engine (sync facade), alternating in a shuffled order. " + "; ".join(inside) + ".",
        f"- Reset: task image {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, PNG {raw['image_bytes']['png'] / 2**20:.1f} MiB, "
        f"JPEG {raw['image_bytes']['jpeg'] / 2**20:.1f} MiB. Warm: `engine.warm_up()` (pool full) before each "
        "`reset()`. Cached: the same task every episode (its first view is in the process-wide cache), "
        f"reset, first step `{FIRST_CELL}`, answer; not cached: a new hard link of the image per episode, "
        "reset, answer. `reset()` returns before the kernel is usable: the first step waits for the rest of "
        f"the kernel's opening (its bare-engine figure is the bare `{FIRST_CELL}` cell of the step rows). Back "
        f"to back: reset, first step and answer with no wait, so after {SPARE_KERNELS} episodes each first step "
        "waits for a kernel start.",
        f"- Where a warm reset's time goes (parts measured alone, p50): `reset()` waits for the first view, "
        f"made on a worker thread — from the cache (stat + copy, {parts['cached_view']:.1f} ms) for a task seen "
        f"before, else decode ({parts['decode']:.0f} ms) + resize ({parts['resize']:.0f} ms) — and for the "
        "kernel opening's first slice on the engine's event loop: the input check (`verify` of the PNG, "
        f"{parts['verify']:.1f} ms) and the pool acquire (an opening without inputs takes "
        f"{parts['open_session_empty']:.1f} ms). Of a cached reset, {percentile_ms(warm['reset_inside'], 50):.1f} "
        "ms (p50) are inside `areset`; the rest is the return to the calling thread, which shares the GIL with "
        "the pool's refill that the acquire starts (a kernel launch on the spawner thread). The rest of the "
        f"opening (hard link, the kernel decoding the PNG: {parts['open_session_image']:.0f} ms in all) runs in "
        f"the background; the first step waits for it ({percentile_ms(warm['first_step'], 50):.0f} ms p50 after a "
        f"cached reset). The kernel kill ({parts['close_session']:.0f} ms) runs in the background after the step "
        "that ends an episode; `env.close()` waits for it.",
        f"- Vector env: every sub-environment steps `{VECTOR_CELL}` each vector step; steps/s counts "
        "sub-environment steps. Its reset returns after the first views; the first vector step waits for "
        "every sub-environment's kernel. All kernels share the machine's CPUs with this process.",
    ]
    return Report.of_metrics(build_rows(raw), ("env", "bare engine", "overhead"), notes)


def plot(raw: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (steps, resets, vector) = plt.subplots(1, 3, figsize=(18, 4.5))
    names = list(raw["steps"])
    positions = np.arange(len(names))
    for offset, (side, label) in zip((-0.2, 0.2), (("env", "env.step"), ("bare", "bare Session.run"))):
        p50 = [percentile_ms(raw["steps"][name][side], 50) for name in names]
        p90 = [percentile_ms(raw["steps"][name][side], 90) for name in names]
        steps.bar(positions + offset, p50, width=0.4, label=f"{label} (p50; whisker p90)",
                  yerr=[np.zeros(len(names)), np.subtract(p90, p50)], capsize=3)
    steps.set_xticks(positions)
    steps.set_xticklabels(names)
    steps.set(ylabel="ms", title="Same cell: env step vs bare engine cell", yscale="log")
    steps.legend(fontsize=8)
    steps.grid(True, axis="y", alpha=0.3)

    bars = {"reset, cached": raw["reset_warm"]["reset"],
            "reset, new PNG": raw["reset_uncached_png"]["reset"],
            "reset, new JPEG": raw["reset_uncached_jpeg"]["reset"],
            f"reset + first step\n{FIRST_CELL}": _until_usable(raw["reset_warm"]),
            f"bare {FIRST_CELL} cell": raw["steps"]["assignment"]["bare"],
            "back to back: reset\n+ first step": _until_usable(raw["reset_back_to_back"])}
    heights = np.arange(len(bars))[::-1]
    p50 = [percentile_ms(values, 50) for values in bars.values()]
    resets.bar_label(resets.barh(heights, p50, color="tab:green"), fmt="%.1f ms", fontsize=8, padding=2)
    resets.axvline(RESET_TARGET_MS, color="tab:red", linestyle="--", label=f"reset target {RESET_TARGET_MS:g} ms")
    resets.set_yticks(heights)
    resets.set_yticklabels(list(bars), fontsize=8)
    resets.set(xlabel="ms (p50)", xscale="log", xlim=(min(p50) / 2, max(p50) * 2.5),  # room for the labels
               title="Reset (warm pool unless back to back)")
    resets.legend(fontsize=8)
    resets.grid(True, axis="x", alpha=0.3)

    levels = sorted(raw["vector"])
    vector.plot(levels, [raw["vector"][n]["steps_per_s"] for n in levels], marker="o")
    vector.set(xlabel="sub-environments", ylabel="steps per second (all sub-environments)", xscale="log",
               title=f"Async vector env on {os.cpu_count()} CPUs (`{VECTOR_CELL}`)")
    vector.set_xticks(levels)
    vector.set_xticklabels([str(n) for n in levels])
    vector.xaxis.set_minor_formatter(NullFormatter())
    vector.set_ylim(bottom=0)
    vector.grid(True, alpha=0.3)
    return save_figure(fig, out_dir / "env.png")


def run(out_dir: Path, quick: bool = False) -> str:
    """Measure, write ``env.md``, ``env.json`` and ``env.png`` into ``out_dir``; return the Markdown."""
    return run_benchmark(out_dir, quick, NAME, "Env benchmark", (FULL, QUICK), measure=_measure, render=render,
                         plot=plot)
