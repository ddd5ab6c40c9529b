"""Faithfulness of tool use: does a policy's answer rest on the evidence its tools gave it?

``pyvision eval --faithfulness blackout,swap,no-tools`` plays, after the run, counterfactual episodes of each
scored episode that called tools, and reports per suite and category the accuracy under each counterfactual
and the drop from the accuracy as run (:func:`faithfulness_columns`), beside the share of episodes whose crops
contain the task's ground-truth regions (:func:`crops_contain_regions`).

The *decisive step* is the turn that gives the answer: the policy's answer given the evidence its tool calls
returned. A :class:`~agents.base.Policy` keeps its own conversation and cannot be set down at a recorded point
of an episode, so a counterfactual plays the episode again from its reset (same task, policy and settings),
changing only the evidence that step rests on:

* ``blackout`` — the regions the episode cropped (its kernel's operation record, local crops only) are filled
  black in the original images; the first view and every tool output come from those images.
* ``swap`` — the first view is the task's own, but the code runs on the images of another task of the suite
  (the next one with another answer): every tool output, text and images, is the other task's. ``follows``
  says whether the answer is the other task's answer.
* ``no-tools`` — every code action is refused with a tool error (``ToolsDisabled``) in the protocol's format;
  the policy answers from the question and the first view.
* ``replay`` — nothing changed: the noise floor of the drops for a sampling policy.

An episode without tool calls (or failed, or without a local crop for ``blackout``) is not played again: it
keeps its outcome, and its line says why. Counterfactual episodes run on a local pool and are not recorded.

Example::

    evaluation = Evaluation(["zoom"], scripted, "runs/f", limit=4, faithfulness="blackout,swap,no-tools")
    row = evaluation.run()["suites"][0]
    row["accuracy"], row["accuracy_blackout"], row["drop_swap"], row["crop_contains_region"]
    # -> (1.0, 0.0, 1.0, 1.0)
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
from PIL import Image, ImageDraw

from agents.base import Policy
from agents.episodes import EpisodeResult
from pyvision_env.execution import CellResult, CellStatus
from pyvision_env.messages import Message
from pyvision_env.protocols import Protocol, ToolOutput
from pyvision_env.tasks import Task, TaskSet
from pyvision_env.wrappers import PyVisionWrapper
from pyvision_env.wrappers.core import StepResult

MODES = ("blackout", "swap", "no-tools", "replay")
COUNTERFACTUALS = "faithfulness.jsonl"
"""One line per (scored episode, mode) in the run folder: the counterfactual outcome, or why there is none."""
LOCAL_CROP = 0.5
"""A crop counts (blacked out, or containing a region) when it covers at most this share of its image: a crop
of most of the image says nothing about where the policy looked, and blacking it out removes the image."""
CONTAINED = 0.9
"""A region is inside a crop when at least this share of its area is."""
REFUSAL = CellResult(status=CellStatus.ERROR, error_name="ToolsDisabled",
                     error_value="code execution is turned off for this question: answer from what you see")


def parse_modes(modes: str | Sequence[str]) -> tuple[str, ...]:
    """The modes of a comma-separated string (or a sequence), checked.

    >>> parse_modes("swap,blackout")
    ('swap', 'blackout')
    """
    names = [name.strip() for name in (modes.split(",") if isinstance(modes, str) else modes) if name.strip()]
    unknown = [name for name in names if name not in MODES]
    if unknown:
        raise ValueError(f"unknown faithfulness mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    return tuple(dict.fromkeys(names))


def mode_key(mode: str) -> str:
    """The mode as it appears in summary keys: ``no-tools`` -> ``no_tools``."""
    return mode.replace("-", "_")


class CropRecord(PyVisionWrapper):
    """``crops``: the crops of input images the kernel recorded in the episode so far, as ``[image, x0, y0, x1,
    y1]`` in input pixels, each once (needs ``trace_operations=True``)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.crops: list[list[float]] = []

    def after_reset(self, observation: list[Message], info: dict[str, Any], seed: int | None
                    ) -> tuple[list[Message], dict[str, Any]]:
        self.crops = []
        return observation, info

    def after_fork(self) -> None:
        self.crops = list(self.crops)

    def after_step(self, action: str, observation: list[Message], reward: float, terminated: bool,
                   truncated: bool, info: dict[str, Any]) -> StepResult:
        if info.get("operations") is None:
            raise ValueError("CropRecord needs an environment made with trace_operations=True")
        for operation in info["operations"]:
            crop = [operation["image"], *operation["box"]] if "box" in operation else None
            if operation["op"] == "crop" and crop is not None and crop not in self.crops:
                self.crops.append(crop)
        return observation, reward, terminated, truncated, info


def image_sizes(task: Task) -> list[tuple[int, int]]:
    """The sizes of a task's input images (files are opened, not decoded)."""
    sizes = []
    for media in task.images:
        if isinstance(media, Image.Image):
            sizes.append(media.size)
            continue
        with Image.open(media) as image:
            sizes.append(image.size)
    return sizes


def local_crops(crops: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]]) -> list[list[float]]:
    """The crops clipped to their image, without those of more than :data:`LOCAL_CROP` of it.

    >>> local_crops([[0, -5, 0, 10, 10], [0, 0, 0, 100, 80]], [(100, 100)])
    [[0, 0, 0, 10, 10]]
    """
    kept = []
    for image, x0, y0, x1, y1 in crops:
        if not 0 <= image < len(sizes):
            continue
        width, height = sizes[int(image)]
        box = [max(0, x0), max(0, y0), min(width, x1), min(height, y1)]
        area = (box[2] - box[0]) * (box[3] - box[1])
        if box[0] < box[2] and box[1] < box[3] and area <= LOCAL_CROP * width * height:
            kept.append([image, *box])
    return kept


def coverage(region: Sequence[float], box: Sequence[float]) -> float:
    """The share of ``region``'s area (x0, y0, x1, y1) inside ``box``.

    >>> coverage((0, 0, 10, 10), (5, 0, 40, 40))
    0.5
    """
    width = min(region[2], box[2]) - max(region[0], box[0])
    height = min(region[3], box[3]) - max(region[1], box[1])
    return max(0.0, width) * max(0.0, height) / ((region[2] - region[0]) * (region[3] - region[1]))


def crops_contain_regions(crops: Sequence[Sequence[float]], task: Task) -> bool | None:
    """Whether every ground-truth region of ``task`` is inside one local crop of its image (see
    :data:`CONTAINED`, :data:`LOCAL_CROP`); ``None`` for a task without regions."""
    if not task.regions:
        return None
    kept = local_crops(crops, image_sizes(task))
    return all(any(crop[0] == region.image and coverage(region.box, crop[1:]) >= CONTAINED for crop in kept)
               for region in task.regions)


def blacked_out(task: Task, crops: Sequence[Sequence[float]]) -> tuple[Task, list[list[float]]] | None:
    """``task`` with its local crops filled black in its original images, and those crops; ``None`` when there is
    no local crop."""
    kept = local_crops(crops, image_sizes(task))
    if not kept:
        return None
    images = list(task.images)
    for index in sorted({int(crop[0]) for crop in kept}):
        media = images[index]
        if isinstance(media, Image.Image):
            image = media.convert("RGB")
        else:
            with Image.open(media) as opened:
                image = opened.convert("RGB")
        draw = ImageDraw.Draw(image)
        for _, x0, y0, x1, y1 in (crop for crop in kept if crop[0] == index):
            draw.rectangle((math.floor(x0), math.floor(y0), math.ceil(x1) - 1, math.ceil(y1) - 1), fill=(0, 0, 0))
        images[index] = image
    return dataclasses.replace(task, images=tuple(images)), kept


def swap_donor(task: Task, tasks: TaskSet) -> Task | None:
    """The next task of ``tasks`` after ``task`` (cycling) whose answer is another; ``None`` if there is none."""
    start = tasks.index_of(task.id)
    for step in range(1, len(tasks)):
        other = tasks[(start + step) % len(tasks)]
        if other.answer != task.answer:
            return other
    return None


def play_counterfactual(env: gym.Env, policy: Policy, *, task_index: int = 0, shown_index: int | None = None,
                        tools: bool = True) -> tuple[EpisodeResult, int]:
    """:func:`~agents.episodes.play_episode` of task ``task_index`` with its evidence changed; returns the result
    and the number of refused code actions.

    ``shown_index``: the policy sees that task's first observation instead (the kernel keeps ``task_index``'s
    inputs; make the env with ``kernel_start="first-call"``). Without ``tools`` each code action is refused: the
    policy gets :data:`REFUSAL` for each of its calls, and the env counts the turn as an empty response (its turn
    and time limits hold; the format error this counts is taken back)."""
    started = time.perf_counter()
    shown = env.reset(options={"task_index": shown_index})[0] if shown_index is not None else None
    observation, info = env.reset(options={"task_index": task_index})
    observation = shown if shown is not None else observation
    protocol: Protocol = env.unwrapped.protocol
    total, refused, done = 0.0, 0, False
    while not done:
        response = policy.act(observation, info)
        action = protocol.parse(response)
        if not tools and action.kind == "code":
            refused += 1
            _, reward, terminated, truncated, info = env.step("")
            observation = protocol.tool_messages([ToolOutput(call, REFUSAL) for call in action.calls])
        else:
            observation, reward, terminated, truncated, info = env.step(response)
        total += float(reward)
        done = terminated or truncated
    result = EpisodeResult.from_info(info, total, time.perf_counter() - started)
    return dataclasses.replace(result, format_errors=result.format_errors - refused), refused


def counterfactual(mode: str, record: Mapping[str, Any], tasks: TaskSet,
                   make_env: Callable[..., gym.Env], policy_for: Callable[[Protocol], Policy]) -> dict[str, Any]:
    """The :data:`COUNTERFACTUALS` line of scored episode ``record`` (a ``results.jsonl`` line) under ``mode``.

    ``make_env(tasks, **options)`` makes an environment as the run's (the counterfactual adds options);
    ``policy_for(protocol)`` gives the policy. A policy or environment error scores 0 (``error`` says why)."""
    task = tasks[tasks.index_of(record["task_id"])]
    line = {"suite": record["suite"], "task_id": task.id, "sample": record["sample"], "mode": mode,
            "policy": record.get("policy"), "rerun": False, "reason": None}
    env_tasks, env_options, play_options = [task], {"kernel_start": "first-call"}, {}
    if record.get("error") is not None:
        line["reason"] = "the episode failed"
    elif not record["tool_calls"]:
        line["reason"] = "no tool calls"
    elif mode == "blackout" and "crops" not in record:
        line["reason"] = "no operation record (scored without --faithfulness)"
    elif mode == "blackout":
        blacked = blacked_out(task, record["crops"])
        if blacked is None:
            line["reason"] = "no local crop recorded"
        else:
            env_tasks, line["blacked"] = [blacked[0]], blacked[1]
    elif mode == "swap":
        donor = swap_donor(task, tasks)
        if donor is None:
            line["reason"] = "no other task with another answer"
        else:
            mixed = dataclasses.replace(task, id=f"{task.id}~{donor.id}", images=donor.images, videos=donor.videos)
            env_tasks, play_options, line["donor"] = [task, mixed], {"task_index": 1, "shown_index": 0}, donor.id
    elif mode == "no-tools":  # refused turns are stepped as empty responses (see play_counterfactual)
        env_options["on_format_error"], play_options["tools"] = "continue", False
    if line["reason"] is not None:
        return {**line, "correct": bool(record["correct"]), "score": float(record["score"])}
    started = time.time()
    env = make_env(env_tasks, **env_options)
    try:
        result, refused = play_counterfactual(env, policy_for(env.unwrapped.protocol), **play_options)
    except Exception as error:  # noqa: BLE001 - a failing policy scores 0 for this episode and the run goes on
        result, refused = EpisodeResult.failed(task.id, "policy_error", error, time.time() - started), 0
    finally:
        env.close()
    line.update(rerun=True, **{**result.to_json(), "task_id": task.id})
    if mode == "no-tools":
        line["refused"] = refused
    if mode == "swap":
        line["follows"] = result.answer is not None and donor.grade(result.answer).correct
    return {**line, "started": started, "ended": time.time()}


def faithfulness_columns(results: Sequence[Mapping[str, Any]],
                         counterfactuals: Mapping[tuple[str, str, int, str], Mapping[str, Any]]) -> dict[str, Any]:
    """Per mode, over the episodes of ``results`` that have a counterfactual line (``counterfactuals`` by
    (suite, task id, sample, mode)): ``accuracy_<mode>``, ``drop_<mode>`` (the accuracy as run of those
    episodes minus it), ``rerun_<mode>`` (episodes played again); ``swap_follows`` (the share of re-run swap
    episodes that gave the other task's answer); and ``crop_contains_region`` with ``region_episodes`` (scored
    episodes of tasks with regions, with the operation record).

    >>> run = [{"suite": "s", "task_id": "a", "sample": 0, "correct": True}]
    >>> faithfulness_columns(run, {("s", "a", 0, "swap"): {"correct": False, "rerun": True, "follows": True}})
    {'accuracy_swap': 0.0, 'drop_swap': 1.0, 'rerun_swap': 1, 'swap_follows': 1.0}
    """
    columns: dict[str, Any] = {}
    for mode in MODES:
        pairs = [(result, line) for result in results
                 if (line := counterfactuals.get((result["suite"], result["task_id"], result["sample"], mode)))]
        if not pairs:
            continue
        key = mode_key(mode)
        columns[f"accuracy_{key}"] = statistics.fmean(float(line["correct"]) for _, line in pairs)
        columns[f"drop_{key}"] = statistics.fmean(float(result["correct"]) for result, _ in pairs) \
            - columns[f"accuracy_{key}"]
        columns[f"rerun_{key}"] = sum(bool(line["rerun"]) for _, line in pairs)
        if mode == "swap":
            follows = [float(line["follows"]) for _, line in pairs if line.get("follows") is not None]
            columns["swap_follows"] = statistics.fmean(follows) if follows else None
    contained = [float(result["region_contained"]) for result in results
                 if result.get("region_contained") is not None]
    if contained:
        columns["crop_contains_region"] = statistics.fmean(contained)
        columns["region_episodes"] = len(contained)
    return columns


def faithfulness_table_columns(rows: Sequence[Mapping[str, Any]], first: Sequence[tuple[str, str, str]],
                               counts: bool = True) -> list[tuple[str, str, str]]:
    """The Markdown columns ``(key, title, format)`` of the faithfulness values ``rows`` have, after ``first``;
    without ``counts``, only the accuracies, drops and the crop share.

    >>> [key for key, _, _ in faithfulness_table_columns([{"accuracy_swap": 0.5}], (), counts=False)]
    ['accuracy_swap', 'drop_swap']
    """
    columns = list(first)
    for mode in MODES:
        key = mode_key(mode)
        if any(f"accuracy_{key}" in row for row in rows):
            columns += [(f"accuracy_{key}", f"{mode} acc.", "{:.1%}"), (f"drop_{key}", f"{mode} drop", "{:+.1%}")]
            columns += [(f"rerun_{key}", f"{mode} re-run", "{}")] if counts else []
            columns += [("swap_follows", "swap follows", "{:.1%}")] if mode == "swap" and counts else []
    if any("crop_contains_region" in row for row in rows):
        columns.append(("crop_contains_region", "crop ⊇ region", "{:.1%}"))
        columns += [("region_episodes", "with regions", "{}")] if counts else []
    return columns
