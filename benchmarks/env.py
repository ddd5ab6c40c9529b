"""Benchmark of :class:`~pyvision_env.env.PyVisionEnv` over the engine it runs on, and of the async vector env.

Everything runs in one process on one :class:`~pyvision_env.execution.Engine` (sandboxed kernels, pool of 2):

1. step overhead — the same cell through ``env.step(protocol.render_action(code=...))`` and through a bare
   ``Session.run(code)`` on the same engine, alternating in a shuffled order per iteration, for three cells:
   an assignment, a print, and a small matplotlib figure shown with ``plt.show()``; target: the env's p50
   at most 10 % above the bare p50;
2. reset latency — ``env.reset()`` of a task with a realistic 2000x1500 PNG (gradients, shapes, noise),
   with a warm pool (``engine.warm_up()`` waits until the pool is full again before each sample; each
   episode ends with an answer step, as in training); target: p50 at most 60 ms. Also the same image as
   JPEG, back-to-back resets (no wait: the pool drains and resets wait for kernel starts), and the parts of
   a reset measured on their own (the kernel side, the parent side, the kill of the last kernel);
3. async vector env steps/s at 1, 8 and 32 sub-environments, each stepping a ``print`` cell, for a fixed
   wall time per level.

Run it with ``python -m benchmarks --only env [--quick] [--out DIR]``; it writes ``env.md``, ``env.json``
and ``env.png``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image, ImageDraw
from tqdm import tqdm

from pyvision_env import PyVisionEnv, Task, TaskSet
from pyvision_env.execution import Engine, WeakIsolationWarning
from pyvision_env.vector import PyVisionVectorEnv

from .engine import BENCH_LIMITS, LoadMonitor, _fmt, _json_default, _ms, _percentile, machine_description

NAME = "env"
DESCRIPTION = "PyVisionEnv step overhead over a bare engine cell, reset latency, async vector env steps/s"

CELLS = {
    "assignment": "x = 1",
    "print": "print('hello world')",
    "figure": "plt.figure(figsize=(3, 2)); plt.plot([0, 1], [1, 0]); plt.show()",
}
VECTOR_CELL = "print('hello world')"
IMAGE_SIZE = (2000, 1500)
OVERHEAD_TARGET_PCT = 10.0
RESET_TARGET_MS = 60.0
POOL_SIZE = 2
ENV_OPTIONS = {"max_turns": 10**9, "max_images": None, "episode_timeout": None}
"""No episode budgets: one benchmark episode runs hundreds of steps."""


@dataclass(frozen=True)
class Settings:
    """How many samples of each measurement."""

    steps: int = 200
    """Per cell and side."""
    warmup_steps: int = 10
    resets: int = 30
    back_to_back: int = 10
    parts: int = 15
    levels: tuple[int, ...] = (1, 8, 32)
    vector_seconds: float = 5.0


FULL = Settings()
QUICK = Settings(steps=30, warmup_steps=3, resets=3, back_to_back=3, parts=2, levels=(1, 4), vector_seconds=1.5)


def _log(message: str) -> None:
    print(f"[env {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=f"env: {desc}", unit="it", leave=False, file=sys.stderr, disable=None,
                dynamic_ncols=True)


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


def _tasks(image: Path) -> TaskSet:
    return TaskSet("bench", [Task(id="bench", question="How many shapes are there?", answer="200",
                                  images=(str(image),), grader="numeric")])


def _timed(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """Seconds ``call(*args, **kwargs)`` took, and its result."""
    started = time.perf_counter()
    result = call(*args, **kwargs)
    return time.perf_counter() - started, result


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
                elapsed, (_, _, _, _, info) = _timed(env.step, action)
                _check(info["tool_errors"] == 0 and info["end_reason"] is None, info)
                samples["env"].append(elapsed)
                samples["env_execute"].append(info["timings"]["execute_ms"] / 1000)

            def bare_once(cell: str = cell, samples: dict = samples) -> None:
                elapsed, result = _timed(session.run, cell)
                _check(result.ok, result)
                samples["bare"].append(elapsed)
                samples["bare_cell"].append(result.duration)

            total = settings.warmup_steps + settings.steps
            with _progress(total, f"step overhead ({name})") as bar:
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


def _resets(engine: Engine, tasks: TaskSet, count: int, warm: bool, desc: str) -> dict[str, list[float]]:
    """``reset()`` then an answer step (which ends the episode and kills its kernel), ``count`` times."""
    env = PyVisionEnv(tasks, engine=engine, **ENV_OPTIONS)
    answer = env.protocol.render_action(answer="200")
    samples: dict[str, list[float]] = {"reset": [], "reset_inside": [], "answer_step": []}
    try:
        with _progress(count + 1, desc) as bar:
            for i in range(count + 1):  # the first is not counted (file cache, first use of the code paths)
                if warm:
                    engine.warm_up()
                elapsed, (_, info) = _timed(env.reset)
                answered, (_, reward, terminated, _, _) = _timed(env.step, answer)
                _check(terminated and reward == 1.0, info)
                if i:
                    samples["reset"].append(elapsed)
                    samples["reset_inside"].append(info["timings"]["total_ms"] / 1000)
                    samples["answer_step"].append(answered)
                bar.update()
    finally:
        env.close()
    return samples


def _reset_parts(engine: Engine, env: PyVisionEnv, image: Path, count: int) -> dict[str, list[float]]:
    """The parts of a reset on their own: what the kernel side and the parent side each take."""
    samples: dict[str, list[float]] = {key: [] for key in ("open_session_image", "open_session_empty",
                                                           "close_session", "decode", "first_view")}
    with _progress(count, "reset parts") as bar:
        for _ in range(count):
            engine.warm_up()
            elapsed, session = _timed(engine.session, images={"image_clue_0": str(image)})
            samples["open_session_image"].append(elapsed)
            samples["close_session"].append(_timed(session.close)[0])
            engine.warm_up()
            elapsed, session = _timed(engine.session)
            samples["open_session_empty"].append(elapsed)
            session.close()

            def decode() -> Image.Image:
                with Image.open(image) as opened:
                    opened.load()
                    return opened.copy()

            elapsed, decoded = _timed(decode)
            samples["decode"].append(elapsed)
            size = env.token_rule.resized_size(*decoded.size)
            samples["first_view"].append(_timed(decoded.resize, size, Image.Resampling.BICUBIC)[0])
            bar.update()
    return samples


def _vector(engine: Engine, tasks: TaskSet, settings: Settings) -> dict[int, dict[str, Any]]:
    """Per level: reset N envs at once, warm up, vector steps for a fixed wall time, close (episodes open)."""
    levels = {}
    for level in settings.levels:
        _log(f"vector env with {level} sub-environments")
        envs = PyVisionVectorEnv(level, tasks, engine=engine, **ENV_OPTIONS)
        try:
            reset_s, _ = _timed(envs.reset)
            actions = [envs.envs[0].protocol.render_action(code=VECTOR_CELL)] * level
            for _ in range(3):  # the first cells of a fresh kernel are slower
                envs.step(actions)
            latencies = []
            stop_at = time.perf_counter() + settings.vector_seconds
            started = time.perf_counter()
            while time.perf_counter() < stop_at:
                elapsed, (_, _, _, _, infos) = _timed(envs.step, actions)
                _check(not infos["tool_errors"].any(), infos)
                latencies.append(elapsed)
            wall = time.perf_counter() - started
        finally:
            close_s, _ = _timed(envs.close)
        levels[level] = {"envs": level, "vector_steps": len(latencies), "elapsed": wall,
                         "steps_per_s": level * len(latencies) / wall, "reset_s": reset_s, "close_s": close_s,
                         "step_p50": _percentile(latencies, 50), "step_p90": _percentile(latencies, 90)}
        engine.warm_up()
    return levels


def _check(ok: bool, what: object) -> None:
    if not ok:
        raise RuntimeError(f"unexpected result during the benchmark: {what!r}")


def _measure(settings: Settings, monitor: LoadMonitor) -> tuple[dict[str, Any], dict[str, Any]]:
    def phase(name: str) -> None:
        _log(name)
        monitor.phases.append((time.perf_counter(), name))

    raw: dict[str, Any] = {}
    directory = Path(tempfile.mkdtemp(prefix="pvbench-env-"))
    engine = Engine(limits=BENCH_LIMITS, pool_size=POOL_SIZE, max_kernels=max(settings.levels) + POOL_SIZE + 2)
    try:
        images = make_task_images(directory)
        raw["image_bytes"] = {kind: path.stat().st_size for kind, path in images.items()}
        png_tasks = _tasks(images["png"])
        engine.warm_up()
        status = asdict(engine.status())
        phase("step overhead")
        raw["steps"] = _step_overhead(engine, png_tasks, settings)
        engine.warm_up()
        phase("resets with a warm pool")
        raw["reset_warm"] = _resets(engine, png_tasks, settings.resets, True, "resets (warm pool, PNG)")
        raw["reset_warm_jpeg"] = _resets(engine, _tasks(images["jpeg"]), settings.resets, True,
                                         "resets (warm pool, JPEG)")
        phase("parts of a reset")
        raw["reset_parts"] = _reset_parts(engine, PyVisionEnv(png_tasks, engine=engine), images["png"],
                                          settings.parts)
        phase("back-to-back resets")
        engine.warm_up()
        raw["reset_back_to_back"] = _resets(engine, png_tasks, settings.back_to_back, False,
                                            "resets (back to back)")
        engine.warm_up()
        phase("async vector env")
        raw["vector"] = _vector(engine, png_tasks, settings)
    finally:
        engine.close()
        shutil.rmtree(directory, ignore_errors=True)
    return raw, status


# --- report -----------------------------------------------------------------------------------------

@dataclass
class Row:
    """One line of the report table. ``reference``: the bare engine's figure, where there is one."""

    id: str
    metric: str
    unit: str
    value: float
    reference: float | None = None
    target: str = ""
    passed: bool | None = None

    def cells(self) -> list[str]:
        reference = "—" if self.reference is None else _fmt(self.reference, self.unit)
        compared = "—" if not self.reference else f"{(self.value / self.reference - 1) * 100:+.1f} %"
        verdict = "info" if self.passed is None else ("pass" if self.passed else "FAIL")
        return [self.metric, _fmt(self.value, self.unit), reference, compared, self.target or "—", verdict]


def build_rows(raw: dict[str, Any]) -> list[Row]:
    rows = []
    for name, samples in raw["steps"].items():
        env50, bare50 = _ms(samples["env"], 50), _ms(samples["bare"], 50)
        rows.append(Row(f"step_{name}_p50", f"step `{CELLS[name]}`, p50", "ms", env50, bare50,
                        f"<= +{OVERHEAD_TARGET_PCT:g} %", env50 <= bare50 * (1 + OVERHEAD_TARGET_PCT / 100)))
        rows.append(Row(f"step_{name}_p90", f"step `{CELLS[name]}`, p90", "ms", _ms(samples["env"], 90),
                        _ms(samples["bare"], 90)))
    warm = raw["reset_warm"]["reset"]
    reset50 = _ms(warm, 50)
    rows.append(Row("reset_warm_p50", "reset, warm pool, 2000x1500 PNG, p50", "ms", reset50,
                    target=f"<= {RESET_TARGET_MS:g} ms", passed=reset50 <= RESET_TARGET_MS))
    rows.append(Row("reset_warm_p90", "reset, warm pool, 2000x1500 PNG, p90", "ms", _ms(warm, 90)))
    rows.append(Row("reset_warm_jpeg_p50", "reset, warm pool, same image as JPEG, p50", "ms",
                    _ms(raw["reset_warm_jpeg"]["reset"], 50)))
    back = raw["reset_back_to_back"]["reset"]
    rows.append(Row("reset_back_to_back_p50", "reset, back to back (pool drained), PNG, p50", "ms", _ms(back, 50)))
    rows.append(Row("reset_back_to_back_p90", "reset, back to back (pool drained), PNG, p90", "ms", _ms(back, 90)))
    rows.append(Row("answer_step_p50", "answer step (grades, kills the kernel), p50", "ms",
                    _ms(raw["reset_warm"]["answer_step"], 50)))
    parts = raw["reset_parts"]
    for key, label in (("open_session_image", "part: open_session with the PNG (kernel decodes it), p50"),
                       ("open_session_empty", "part: open_session without inputs (pool acquire), p50"),
                       ("decode", "part: decode the PNG in this process, p50"),
                       ("first_view", "part: resize to the first view (BICUBIC), p50"),
                       ("close_session", "part: close a session (kill its kernel), p50")):
        rows.append(Row(f"reset_part_{key}_p50", label, "ms", _ms(parts[key], 50)))
    for level, result in raw["vector"].items():
        noun = "env" if level == 1 else "envs"
        rows.append(Row(f"vector_steps_per_s_n{level}", f"async vector env, {level} {noun}: steps/s", "steps/s",
                        result["steps_per_s"]))
        rows.append(Row(f"vector_step_p50_n{level}", f"async vector env, {level} {noun}: vector step p50", "ms",
                        result["step_p50"] * 1000))
    most = max(raw["vector"])
    rows.append(Row("vector_reset", f"async vector env, reset of {most} envs at once", "s",
                    raw["vector"][most]["reset_s"]))
    rows.append(Row("vector_close", f"async vector env, close of {most} envs (episodes open)", "s",
                    raw["vector"][most]["close_s"]))
    return rows


def render_markdown(rows: list[Row], raw: dict[str, Any], machine: dict[str, Any], status: dict[str, Any],
                    settings: Settings, quick: bool, duration: float) -> str:
    header = ["metric", "env", "bare engine", "overhead", "target", "pass/fail"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    inside = []
    for name, samples in raw["steps"].items():
        env_outside = np.median(np.asarray(samples["env"]) - np.asarray(samples["env_execute"])) * 1e3
        paired = np.median(np.asarray(samples["env"]) - np.asarray(samples["bare"])) * 1e3
        inside.append(f"`{name}` {paired:+.2f} ms paired (env − bare, same iteration), {env_outside:.2f} ms of the "
                      "env's step outside its cell execution")
    parts = raw["reset_parts"]
    background = machine["background_load"]
    counts = (f"{settings.steps} steps per cell and side, {settings.resets} warm resets per format, "
              f"{settings.back_to_back} back-to-back resets, {settings.parts} samples of each reset part, "
              f"{settings.vector_seconds:g} s per vector level")
    notes = [
        "",
        f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs, {machine['ram_gib']:.1f} GiB RAM; Python "
        f"{machine['python']}. Engine: isolation {status['isolation']}, cgroups {status['cgroups']}, pool of "
        f"{POOL_SIZE}. Mode: {'quick' if quick else 'full'} ({counts}); total {duration:.0f} s.",
        f"Other processes used {background['others_mean_pct']:.1f} % of the CPUs on average during the run (max "
        f"{background['others_max_pct']:.0f} % in a 1-s window).",
        "",
        "- Step: env = `env.step(render_action(code=cell))` (sync API); bare = `Session.run(cell)` on the same "
        "engine (sync facade), alternating in a shuffled order. " + "; ".join(inside) + ".",
        f"- Reset: task image {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, PNG {raw['image_bytes']['png'] / 2**20:.1f} MiB, "
        f"JPEG {raw['image_bytes']['jpeg'] / 2**20:.1f} MiB. Warm: `engine.warm_up()` (pool full) before each "
        "`reset()`; every episode ends with an answer step, which closes its kernel. Back to back: no wait, so "
        f"after {POOL_SIZE} resets each one waits for a kernel start.",
        f"- Where a warm reset's time goes: the kernel side (acquire + hard-link + the kernel decoding the PNG) "
        f"{_ms(parts['open_session_image'], 50):.0f} ms, of which the acquire is "
        f"{_ms(parts['open_session_empty'], 50):.1f} ms; in parallel, this process decodes the PNG "
        f"({_ms(parts['decode'], 50):.0f} ms) and resizes it to the first view "
        f"({_ms(parts['first_view'], 50):.0f} ms). The kernel kill ({_ms(parts['close_session'], 50):.0f} ms) is "
        "paid by the answer step, not by the reset.",
        f"- Vector env: every sub-environment steps `{VECTOR_CELL}` each vector step; steps/s counts "
        "sub-environment steps. All kernels share the machine's CPUs with this process.",
    ]
    if background["others_mean_pct"] > 10:
        notes.insert(1, f"**Warning: the machine was not idle (other processes used "
                        f"{background['others_mean_pct']:.0f} % of the CPUs on average); figures are inflated.**")
    return "\n".join(lines + notes) + "\n"


def plot(raw: dict[str, Any], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, (steps, vector) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = list(raw["steps"])
    positions = np.arange(len(names))
    for offset, (side, label) in zip((-0.2, 0.2), (("env", "env.step"), ("bare", "bare Session.run"))):
        p50 = [_ms(raw["steps"][name][side], 50) for name in names]
        p90 = [_ms(raw["steps"][name][side], 90) for name in names]
        steps.bar(positions + offset, p50, width=0.4, label=f"{label} (p50; whisker p90)",
                  yerr=[np.zeros(len(names)), np.subtract(p90, p50)], capsize=3)
    steps.set_xticks(positions)
    steps.set_xticklabels(names)
    steps.set(ylabel="ms", title="Same cell: env step vs bare engine cell", yscale="log")
    steps.legend(fontsize=8)
    steps.grid(True, axis="y", alpha=0.3)

    levels = sorted(raw["vector"])
    vector.plot(levels, [raw["vector"][n]["steps_per_s"] for n in levels], marker="o")
    vector.set(xlabel="sub-environments", ylabel="steps per second (all sub-environments)", xscale="log",
               title=f"Async vector env on {os.cpu_count()} CPUs (`{VECTOR_CELL}`)")
    vector.set_xticks(levels)
    vector.set_xticklabels([str(n) for n in levels])
    vector.xaxis.set_minor_formatter(NullFormatter())
    vector.set_ylim(bottom=0)
    vector.grid(True, alpha=0.3)
    fig.tight_layout()
    path = out_dir / "env.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(out_dir: Path, quick: bool = False) -> str:
    """Measure, write ``env.md``, ``env.json`` and ``env.png`` into ``out_dir``; return the Markdown."""
    settings = QUICK if quick else FULL
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_description()
    machine["cpu_busy_before_pct"] = psutil.cpu_percent(interval=1.0)
    started = time.perf_counter()
    with warnings.catch_warnings(), LoadMonitor() as monitor:
        warnings.simplefilter("ignore", WeakIsolationWarning)
        raw, status = _measure(settings, monitor)
    duration = time.perf_counter() - started
    machine["background_load"] = monitor.summary()
    rows = build_rows(raw)
    markdown = render_markdown(rows, raw, machine, status, settings, quick, duration)
    (out_dir / "env.md").write_text(f"# Env benchmark\n\n{markdown}")
    report = {"benchmark": NAME, "quick": quick, "duration_s": duration, "settings": asdict(settings),
              "machine": machine, "engine_status": status, "metrics": [asdict(row) for row in rows], "raw": raw}
    (out_dir / "env.json").write_text(json.dumps(report, indent=1, default=_json_default))
    plot(raw, out_dir)
    return markdown
