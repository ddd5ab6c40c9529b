"""Video benchmark: on-demand context construction versus uniform 1 fps sampling, and frame-fetch latency.

For each built-in video suite, in one run on the same tasks: the on-demand scripted policy (metadata only at
reset; its code fetches frames and shows one) against the uniform baseline (one frame per second given at
reset, analysed perfectly by :class:`~agents.video_policies.UniformVideoPolicy`). Reported: accuracy, visual
tokens per episode (Qwen2.5-VL rule), frames decoded, and the token reduction — target: at least 80 % fewer
tokens at equal or better accuracy. Then the latency of fetching 8 random frames per backend (PyAV, decord)
for short and long keyframe intervals.

Writes ``video.md``, ``video.json`` and ``video.png``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from . import save_figure

NAME = "video"
DESCRIPTION = "on-demand video context vs uniform 1 fps: accuracy and visual tokens; frame-fetch latency"

TARGET_REDUCTION = 0.80


def run_suite(suite: str, tasks, context: str, engine) -> dict:
    from agents.scripted import scripted_policy
    from agents.video_policies import UniformVideoPolicy
    from pyvision_env import PyVisionEnv

    env = PyVisionEnv(tasks, video_context=context, video_fps=1.0, engine=engine, max_turns=6)
    policy = scripted_policy(suite, env.protocol) if context == "on-demand" else UniformVideoPolicy(env.protocol)
    infos = []
    for index in range(len(tasks)):
        observation, info = env.reset(options={"task_index": index})
        done = False
        while not done:
            observation, _, terminated, truncated, info = env.step(policy.act(observation, info))
            done = terminated or truncated
        infos.append(info)
        print(f"\r  {suite} {context}: {index + 1}/{len(tasks)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    env.close()
    return {"accuracy": float(np.mean([bool(i["correct"]) for i in infos])),
            "visual_tokens": float(np.mean([i["visual_tokens"] for i in infos])),
            "frames_decoded": float(np.mean([i["frames_fetched"] for i in infos])),
            "turns": float(np.mean([i["turn"] for i in infos])), "episodes": len(infos)}


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


def render_markdown(results: dict, latency: list[dict], count: int, duration: float) -> str:
    lines = ["| suite | mode | accuracy | visual tokens / episode | frames decoded | turns |",
             "|---|---|---|---|---|---|"]
    verdicts = []
    for suite, modes in results.items():
        for mode, row in modes.items():
            lines.append(f"| {suite} | {mode} | {row['accuracy']:.1%} | {row['visual_tokens']:.0f} | "
                         f"{row['frames_decoded']:.0f} | {row['turns']:.1f} |")
        reduction = 1 - modes["on-demand"]["visual_tokens"] / max(modes["uniform 1 fps"]["visual_tokens"], 1e-9)
        met = reduction >= TARGET_REDUCTION and modes["on-demand"]["accuracy"] >= modes["uniform 1 fps"]["accuracy"]
        verdicts.append(f"| {suite} | {reduction:.1%} | {modes['on-demand']['accuracy'] - modes['uniform 1 fps']['accuracy']:+.1%} "
                        f"| {'met' if met else 'NOT met'} |")
    lines += ["", "| suite | token reduction | accuracy difference | target (>= 80 % fewer, accuracy >=) |",
              "|---|---|---|---|", *verdicts]
    lines += ["", "| backend | keyframe interval | 8 random frames, median ms | p90 ms |", "|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['keyframe_interval']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} |"
              for r in latency]
    lines += ["", f"{count} tasks per suite (seed 0); visual tokens count every image the model received (the "
                  f"uniform frames at reset, the frames the code showed); frames decoded: by the code in the "
                  f"kernel (not shown unless displayed). Total {duration:.0f} s."]
    return "\n".join(lines) + "\n"


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
    markdown = render_markdown(results, latency, count, duration)
    (out_dir / "video.md").write_text(f"# Video benchmark\n\n{markdown}")
    (out_dir / "video.json").write_text(json.dumps({"benchmark": NAME, "quick": quick, "duration_s": duration,
                                                    "tasks_per_suite": count, "results": results,
                                                    "fetch_latency": latency}, indent=1))
    plot(results, out_dir)
    return markdown
