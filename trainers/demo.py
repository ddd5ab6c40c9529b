"""The CPU demo (``make demo`` / ``pyvision train-demo``): cold start, then RL that makes a tiny VLM use its tool.

1. **Model** — a tiny random Qwen2.5-VL (:func:`agents.tiny_model.make_tiny_model`), its tokenizer taught
   the demo's conversations as phrases (:data:`TINY_MODEL`).
2. **Cold-start data** — the ``tally`` suite's scripted policy (one numpy cell counting the asked colour's
   pixels, then the printed number as the answer) played on training tasks, recorded; in half of the episodes
   the teacher skips the tool and guesses (:class:`agents.baselines.GuessingMixture`), like cold-start data
   distilled from a model that often answers directly.
3. **SFT** — the tiny model imitates the teacher, guesses included (:mod:`trainers.sft`).
4. **RL** — multi-turn GRPO with OFR and the accumulative tool reward (:mod:`trainers.grpo`), evaluated
   greedily on held-out tasks before the first and after the last update.
5. **Report** — ``report.html`` with the numbers, the training curves and sample trajectories.

The model cannot count the squares by eye and a guess is right one time in nine; after SFT it can use the
tool (the colour's RGB triple and the copied count are learned from the teacher) but, like its teacher, often
answers directly instead, and its greedy answer is a guess. Held-out accuracy rises only if RL teaches it
that the tool pays — learned from the reward, nothing is scripted into the RL stage.

Example::

    run_demo(Path("runs/demo"))          # about a minute on 2 CPU cores
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import GRPOConfig, SFTConfig, load_config
from .rollout import Trajectory
from .tokens import ChatTokenizer

if TYPE_CHECKING:
    from agents.baselines import GuessingMixture
    from pyvision_env.tasks import Task

CONFIGS = Path(__file__).parent / "configs"
TINY_MODEL = {"phrase_tokens": True, "init_std": 0.08}
"""The demo model's options (:func:`agents.tiny_model.make_tiny_model`): the demo's fixed phrases as single
tokens (a tool episode is about 90 tokens instead of 310) and larger random weights, from which the tiny model
learns to copy the tool's printed count within a few hundred SFT steps (from transformers' 0.02, not within
1500 in text-only runs with the same token layout)."""


def system_prompt() -> str:
    """The demo's short system prompt (from ``configs/demo_grpo.yaml``; the tiny model's context is small and
    its tokenizer is taught this text)."""
    return load_config(GRPOConfig, CONFIGS / "demo_grpo.yaml").env.system_prompt or ""


def tokenizer_corpus(tasks: Sequence[Task] | None = None) -> list[str]:
    """The demo's conversations as the chat template renders them (with and without the tool, every colour and
    count, on training tasks — by default the first 30 of ``tally``'s, or ``tasks``), so that the tiny tokenizer
    gives them few tokens."""
    import jinja2

    from agents.hf import template_messages
    from agents.scripted import TallyScriptedPolicy
    from agents.tiny_model import CHAT_TEMPLATE
    from pyvision_env.execution.records import CellResult, CellStatus
    from pyvision_env.protocols import get_protocol
    from pyvision_env.protocols.base import EpisodeInputs, ToolCall, ToolOutput
    from pyvision_env.suites import SUITES

    protocol = get_protocol("pyvision", system_prompt=system_prompt())
    template = jinja2.Template(CHAT_TEMPLATE)
    texts = []
    for task in tasks if tasks is not None else SUITES["tally"].load().split("train")[:30]:
        images = [_read_image(path) for path in task.images]
        question = protocol.initial_messages(EpisodeInputs(task, images, [image.size for image in images]))
        rgb = TallyScriptedPolicy.RGB[task.metadata["color"]]
        code = f"print((np.asarray(image_clue_0) == {rgb}).all(-1).sum() // 64)"
        shown = ToolOutput(ToolCall(code), CellResult(CellStatus.OK, stdout=f"{task.answer}\n"))
        with_tool = [*question, protocol.assistant_message(protocol.render_action(code=code)),
                     *protocol.tool_messages([shown])]
        for messages in (question, with_tool):
            answer = protocol.assistant_message(protocol.render_action(answer=task.answer))
            texts.append(template.render(messages=template_messages([*messages, answer])))
    return texts * 4


def _read_image(path: str) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy()


def make_demo_model(out: Path, seed: int = 0, tasks: Sequence[Task] | None = None) -> Path:
    """The demo's tiny model in ``out`` (:data:`TINY_MODEL`, its tokenizer taught :func:`tokenizer_corpus` of
    ``tasks``)."""
    from agents.tiny_model import make_tiny_model

    return make_tiny_model(out, corpus=tokenizer_corpus(tasks), seed=seed, **TINY_MODEL)


def record_teacher(out: Path, episodes: int, guess_rate: float, seed: int, *, suite: str = "tally",
                   teacher: type[GuessingMixture] | None = None, on_tool_error: str = "continue") -> dict[str, Any]:
    """Play the guessing teacher (``teacher``: a :class:`~agents.baselines.GuessingMixture` class around the
    suite's scripted policy) on ``suite``'s training tasks in order, recording every episode under ``out``;
    returns its numbers (episodes, accuracy, tool calls and turns per episode, seconds)."""
    from tqdm.auto import tqdm

    from agents.baselines import GuessingMixture
    from agents.episodes import play_episode
    from agents.scripted import scripted_policy
    from pyvision_env.env import PyVisionEnv
    from pyvision_env.execution import Engine
    from pyvision_env.wrappers.recording import RecordEpisodes

    started = time.perf_counter()
    with Engine(spare_kernels=2) as engine:
        env = RecordEpisodes(PyVisionEnv(suite, split="train", system_prompt=system_prompt(), max_turns=3,
                                         kernel_start="first-call", on_tool_error=on_tool_error, engine=engine),
                             out)
        try:
            policy = (teacher or GuessingMixture)(scripted_policy("tally", env.unwrapped.protocol),
                                                  [str(n) for n in range(1, 10)], guess_rate, seed=seed)
            tasks = len(env.unwrapped.tasks)
            results = [play_episode(env, policy, options={"task_index": number % tasks})
                       for number in tqdm(range(episodes), desc="teacher", unit="ep")]
        finally:
            env.close()
    return {"episodes": len(results), "accuracy": statistics.fmean(r.correct for r in results),
            "tool_calls": statistics.fmean(r.tool_calls for r in results),
            "turns": statistics.fmean(r.turns for r in results), "wall_s": time.perf_counter() - started}


def trajectory_sample(trajectory: Trajectory, chat: ChatTokenizer, title: str) -> Any:
    """A report sample of a trajectory: its token segments decoded (image placeholders shown as ``[image]``),
    assistant turns where the loss mask is 1, with the images of each observation."""
    from .report import Sample, Turn

    turns: list[Turn] = []
    images = iter(trajectory.images)
    start = 0
    ids, mask = trajectory.ids, trajectory.loss_mask
    while start < len(ids):
        end = start
        while end < len(ids) and mask[end] == mask[start]:
            end += 1
        text = chat.tokenizer.decode(ids[start:end], skip_special_tokens=False)
        count = len(re.findall(r"(?:<\|image_pad\|>)+", text))
        text = re.sub(r"(?:<\|image_pad\|>)+", "[image]", text)
        role = "assistant" if mask[start] else ("user" if start == 0 else "tool")
        turns.append(Turn(role, text, [next(images) for _ in range(count)]))
        start = end
    return Sample(title, trajectory.task_id, trajectory.correct, trajectory.reward, turns)


def run_demo(out: Path, *, rl_steps: int | None = None, teacher_episodes: int = 200,
             guess_rate: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """Run the whole demo into ``out`` (replaced); returns the before/after numbers."""
    from .checkpoint import latest_checkpoint
    from .grpo import GRPOTrainer
    from .metrics import plot_run
    from .report import write_report
    from .sft import SFTTrainer

    started = time.perf_counter()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    model_path = make_demo_model(out / "tiny-model", seed=seed)
    timings["model"] = time.perf_counter() - clock

    clock = time.perf_counter()
    teacher = record_teacher(out / "teacher", teacher_episodes, guess_rate, seed)
    timings["teacher"] = time.perf_counter() - clock

    clock = time.perf_counter()
    sft_config = load_config(SFTConfig, CONFIGS / "demo_sft.yaml", [
        f"output_dir={out / 'sft'}", f"model.path={model_path}", f"data.episodes=[{out / 'teacher'}]",
        f"seed={seed}"])
    with SFTTrainer(sft_config) as sft:
        sft_metrics = sft.train()
    sft_model = latest_checkpoint(out / "sft")
    timings["sft"] = time.perf_counter() - clock

    clock = time.perf_counter()
    overrides = [f"output_dir={out / 'rl'}", f"model.path={sft_model}", f"seed={seed}"]
    if rl_steps is not None:
        overrides += [f"steps={rl_steps}", f"eval.every={rl_steps}"]
    rl_config: GRPOConfig = load_config(GRPOConfig, CONFIGS / "demo_grpo.yaml", overrides)
    with GRPOTrainer(rl_config) as trainer:
        trainer.train()
        evaluations = trainer.logger.history("eval")
        samples = [trajectory_sample(t, trainer.chat, f"held-out task {t.task_id}, after RL")
                   for t in trainer.last_eval[:4]]
    timings["rl"] = time.perf_counter() - clock

    before, after = evaluations[0], evaluations[-1]
    keys = ("accuracy", "tool_calls", "turns", "reward/mean", "visual_tokens", "response_tokens")
    results = {"before_rl": {k: before.get(k) for k in keys}, "after_rl": {k: after.get(k) for k in keys},
               "teacher": teacher, "sft_final_loss": sft_metrics.get("loss"), "timings_s": timings}
    timings["total"] = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(results, indent=2))
    train_rows = trainer.logger.history("train")
    write_report(
        out / "report.html", title="PyVision-RL CPU demo: tiny VLM, SFT then RL with a tool reward",
        intro=_intro(rl_config, teacher, before, after, train_rows, timings),
        tables=[("Held-out evaluation (greedy)", [{"model": "after SFT (before RL)", **results["before_rl"]},
                                                  {"model": "after RL", **results["after_rl"]}]),
                ("Cold-start teacher", [teacher]),
                ("Time (seconds)", [{k: round(v, 1) for k, v in timings.items()}])],
        plots=plot_run(out / "rl"), samples=samples)
    return results


def _intro(config: GRPOConfig, teacher: dict[str, Any], before: dict[str, Any], after: dict[str, Any],
           train_rows: list[dict[str, Any]], timings: dict[str, float]) -> str:
    tools = [row.get("tool_calls") for row in train_rows if row.get("tool_calls") is not None]
    curve = ", ".join(f"{value:.2f}" for value in tools)
    return (f"A tiny random Qwen2.5-VL learned the 'tally' task on CPU in {timings['total'] / 60:.1f} minutes. "
            f"The cold-start teacher used the tool in about half of its {teacher['episodes']} episodes and guessed "
            f"in the rest (teacher accuracy {teacher['accuracy']:.0%}); SFT imitated it, guesses included.\n\n"
            f"Held-out accuracy (greedy, {config.eval.episodes} tasks): {before['accuracy']:.1%} after SFT, "
            f"{after['accuracy']:.1%} after {config.steps} RL updates; tool calls per episode "
            f"{before['tool_calls']:.2f} -> {after['tool_calls']:.2f}.\n\n"
            f"Tool calls per episode during RL (sampled rollouts, per update): {curve}.")
