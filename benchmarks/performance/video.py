"""Video benchmark: on-demand context construction versus uniform 1 fps sampling, and frame-fetch latency.

For each built-in video suite, in one run on the same tasks: the on-demand scripted policy (metadata only at
reset; its code fetches frames and shows one) against the uniform baseline (one frame per second given at
reset, analysed perfectly by :class:`~agents.baselines.UniformVideoPolicy`). Reported: accuracy, visual
tokens per episode (Qwen2.5-VL rule), frames decoded, and the token reduction — target: at least 80 % fewer
tokens at equal or better accuracy. Then the latency of fetching 8 random frames per backend (PyAV, decord)
for short and long keyframe intervals.

Writes ``video.md``, ``video.json`` and ``video.png``.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pyvision_env.reporting import markdown_table, save_figure

from .report import save_report

NAME = "video"
DESCRIPTION = "on-demand video context vs uniform 1 fps: accuracy and visual tokens; frame-fetch latency"

TARGET_REDUCTION = 0.80


def run_suite(suite: str, tasks, context: str, engine) -> dict:
    """Every task of ``suite`` once with the policy of ``context``; means over the episodes."""
    from agents.baselines import UniformVideoPolicy
    from agents.episodes import play_episode
    from agents.scripted import scripted_policy
    from pyvision_env import PyVisionEnv

    env = PyVisionEnv(tasks, video_context=context, video_fps=1.0, engine=engine, max_turns=6)
    policy = scripted_policy(suite, env.protocol) if context == "on-demand" else UniformVideoPolicy(env.protocol)
    results = []
    for index in range(len(tasks)):
        results.append(play_episode(env, policy, options={"task_index": index}))
        print(f"\r  {suite} {context}: {index + 1}/{len(tasks)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    env.close()
    return {"accuracy": float(np.mean([r.correct for r in results])),
            "visual_tokens": float(np.mean([r.visual_tokens for r in results])),
            "frames_decoded": float(np.mean([r.frames_fetched for r in results])),
            "turns": float(np.mean([r.turns for r in results])), "episodes": len(results)}


def fetch_latency(repeats: int) -> list[dict]:
    """Median ms to fetch 8 random frames of a 30 s 320x240 clip, per backend and keyframe interval."""
    from pyvision_env.video import available_backends, open_video, write_video

    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for interval in (8, 250):
            path = Path(folder) / f"clip-g{interval}.mp4"
            frames = (np.full((240, 320, 3), (i * 7) % 256, np.uint8) + rng.integers(0, 30, (240, 320, 3), np.uint8)
                      for i in range(300))
            write_video(path, frames, fps=10, keyframe_interval=interval)
            for backend in available_backends():
                reader = open_video(str(path), backend=backend)
                times = []
                for _ in range(repeats):
                    wanted = sorted(rng.choice(300, size=8, replace=False).tolist())
                    started = time.perf_counter()
                    reader.get_batch(wanted).asnumpy()
                    times.append((time.perf_counter() - started) * 1e3)
                rows.append({"backend": backend, "keyframe_interval": interval, "median_ms": statistics.median(times),
                             "p90_ms": float(np.percentile(times, 90))})
    return rows


MODE_COLUMNS = [("suite", "suite", "{}"), ("mode", "mode", "{}"), ("accuracy", "accuracy", "{:.1%}"),
                ("visual_tokens", "visual tokens / episode", "{:.0f}"), ("frames_decoded", "frames decoded", "{:.0f}"),
                ("turns", "turns", "{:.1f}")]
VERDICT_COLUMNS = [("suite", "suite", "{}"), ("reduction", "token reduction", "{:.1%}"),
                   ("accuracy_difference", "accuracy difference", "{:+.1%}"),
                   ("verdict", "target (>= 80 % fewer, accuracy >=)", "{}")]
LATENCY_COLUMNS = [("backend", "backend", "{}"), ("keyframe_interval", "keyframe interval", "{:d}"),
                   ("median_ms", "8 random frames, median ms", "{:.1f}"), ("p90_ms", "p90 ms", "{:.1f}")]


def render_markdown(results: dict, latency: list[dict], count: int, duration: float) -> str:
    modes = [{"suite": suite, "mode": mode, **row}
             for suite, by_mode in results.items() for mode, row in by_mode.items()]
    verdicts = []
    for suite, by_mode in results.items():
        on_demand, uniform = by_mode["on-demand"], by_mode["uniform 1 fps"]
        reduction = 1 - on_demand["visual_tokens"] / max(uniform["visual_tokens"], 1e-9)
        met = reduction >= TARGET_REDUCTION and on_demand["accuracy"] >= uniform["accuracy"]
        verdicts.append({"suite": suite, "reduction": reduction,
                         "accuracy_difference": on_demand["accuracy"] - uniform["accuracy"],
                         "verdict": "met" if met else "NOT met"})
    return "\n\n".join([
        markdown_table(modes, MODE_COLUMNS), markdown_table(verdicts, VERDICT_COLUMNS),
        markdown_table(latency, LATENCY_COLUMNS),
        f"{count} tasks per suite (seed 0); visual tokens count every image the model received (the uniform "
        "frames at reset, the frames the code showed); frames decoded: by the code in the kernel (not shown "
        f"unless displayed). Total {duration:.0f} s.",
    ]) + "\n"


def plot(results: dict, out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    suites = list(results)
    x = np.arange(len(suites))
    fig, (tokens, accuracy) = plt.subplots(1, 2, figsize=(12, 4.2))
    for offset, mode in ((-0.2, "uniform 1 fps"), (0.2, "on-demand")):
        tokens.bar(x + offset, [results[s][mode]["visual_tokens"] for s in suites], 0.4, label=mode)
        accuracy.bar(x + offset, [results[s][mode]["accuracy"] for s in suites], 0.4, label=mode)
    tokens.set(xticks=x, xticklabels=suites, ylabel="visual tokens per episode", yscale="log",
               title="Visual tokens (log scale)")
    accuracy.set(xticks=x, xticklabels=suites, ylabel="accuracy", ylim=(0, 1.05), title="Accuracy")
    for axis in (tokens, accuracy):
        axis.legend(fontsize=8)
        axis.grid(True, axis="y", alpha=0.3)
    return save_figure(fig, out_dir / "video.png")


def run(out_dir: Path, quick: bool = False) -> str:
    """Run both modes on every video suite, measure fetch latency, write the reports; return the Markdown."""
    from pyvision_env.execution import Engine
    from pyvision_env.suites import VIDEO_SUITES

    out_dir.mkdir(parents=True, exist_ok=True)
    count = 4 if quick else 20
    started = time.perf_counter()
    results = {}
    with Engine() as engine:
        for name, suite in VIDEO_SUITES.items():
            tasks = suite.load(count=count)
            results[name] = {"on-demand": run_suite(name, tasks, "on-demand", engine),
                             "uniform 1 fps": run_suite(name, tasks, "uniform", engine)}
    latency = fetch_latency(5 if quick else 30)
    duration = time.perf_counter() - started
    markdown = save_report(out_dir, NAME, "Video benchmark", render_markdown(results, latency, count, duration), quick,
                           duration, tasks_per_suite=count, results=results, fetch_latency=latency)
    plot(results, out_dir)
    return markdown
