"""VSI-Bench ("Thinking in Space", Yang et al. 2024): spatial questions about indoor scan videos, read from the
Hugging Face release ``nyu-visionx/VSI-Bench`` with its three video zips unpacked in place::

    vsi-bench/
      test.jsonl                     (or test-00000-of-00001.parquet, the original release; one row a question)
      arkitscenes/41069025.mp4       (arkitscenes.zip, scannet.zip and scannetpp.zip unpacked here:
      scannet/scene0011_00.mp4        one <dataset>/<scene_name>.mp4 a scene)
      scannetpp/7b6477cb95.mp4

A row is ``{"id": 166, "dataset": "arkitscenes", "scene_name": "47430468", "question_type": "object_counting",
"question": "How many chair(s) are in this room?", "ground_truth": "4", "options": null}``; multiple-choice rows
have ``options`` like ``["A. left", "B. right"]`` and a letter as ``ground_truth``.

Two benchmarks are registered on the same files: ``vsi-bench`` (all 5,130 questions) and
``vsi-bench-debiased`` (the authors' 2025 Debiased subset, 2,362 questions, from ``test_debiased.parquet`` of
the revised release; point its folder at the same download, e.g. with a symlink).

Scoring follows the authors' lmms-eval code. The answer is the first space-separated word of the response
(trailing dots removed): multiple-choice questions score 1 when it equals the letter (case ignored), numeric
ones score the mean relative accuracy ``MRA = mean over t in 0.50, 0.55, ..., 0.95 of 1[|y' - y| / y <= 1 - t]``
(``<=`` as in the code; the paper writes ``<``), and 0 when the word is not a number. :func:`aggregate` gives
the authors' overall score. The question ends with the authors' instruction for its kind of answer.

Example::

    tasks = load_public_benchmark("vsi-bench", "/data/vsi-bench")
    tasks[0].videos, tasks[0].answer, tasks[0].metadata["question_type"]
    # -> (('/data/vsi-bench/arkitscenes/41069025.mp4',), '4', 'object_counting')
    tasks[0].grade("5 tables").score                   # -> 0.6 (MRA of 5 against 4)
    results = [{"task_id": task.id, "score": grade.score, "correct": grade.correct, "metadata": task.metadata}
               for task, grade in zip(tasks, grades)]
    aggregate(results)["overall"]                      # the mean of the eight task scores
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np

from pyvision_env.graders import GRADERS, Grade, answer_text
from pyvision_env.tasks import Task, TaskSet

from .common import (
    benchmark,
    letters,
    option_texts,
    public_benchmark,
    read_jsonl,
    read_parquet,
    require,
    require_fields,
)

MULTIPLE_CHOICE_TYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
                         "object_rel_distance", "route_planning", "obj_appearance_order")
NUMERIC_TYPES = ("object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation")
REL_DIRECTION_LEVELS = MULTIPLE_CHOICE_TYPES[:3]
TASKS = (*NUMERIC_TYPES, "object_rel_distance", "object_rel_direction", "route_planning", "obj_appearance_order")
"""The eight task scores the overall score averages (the three relative-direction levels make one)."""

CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
NUMERIC_INSTRUCTION = "Please answer the question using a single word or phrase."
"""The authors' post-prompts; their scoring reads only the response's first word."""

MRA_THRESHOLDS = np.linspace(0.50, 0.95, 10)
"""Built as in the authors' code, so answers on a threshold (4.4 for 4) fall on the same side."""

FIELDS = ("id", "dataset", "scene_name", "question_type", "question", "ground_truth")

VIDEOS_LAYOUT = """
    arkitscenes/<scene_name>.mp4    (arkitscenes.zip unpacked here)
    scannet/<scene_name>.mp4        (scannet.zip unpacked here)
    scannetpp/<scene_name>.mp4      (scannetpp.zip unpacked here)"""


# --- scoring -----------------------------------------------------------------------------------------------

def first_word(prediction: str) -> str:
    """The authors' answer extraction: the text before the first space, without trailing dots.

    >>> first_word("A. chair"), first_word("4.5 meters"), first_word("(A)")
    ('A', '4.5', '(A)')
    """
    return prediction.split(" ")[0].rstrip(".").strip()


def grade_choice(prediction: str, task: Task) -> Grade:
    """1 when the first word of the (unboxed) response is the answer letter, case ignored."""
    word = first_word(answer_text(prediction))
    correct = word.lower() == task.answer.lower()
    return Grade(float(correct), correct, word)


def relative_accuracy(value: float, expected: float) -> float:
    """The authors' MRA of ``value`` against ``expected`` (non-zero).

    >>> relative_accuracy(5, 4), relative_accuracy(6, 4), relative_accuracy(4.4, 4)
    (0.6, 0.1, 0.9)
    """
    return float(np.mean(abs(value - expected) / expected <= 1 - MRA_THRESHOLDS))


def grade_mra(prediction: str, task: Task) -> Grade:
    """MRA of the response's first word read as a number (0 when it is not one); correct when MRA >= 0.5, as
    :func:`pyvision_env.graders.mean_relative_accuracy` counts it."""
    word = first_word(answer_text(prediction))
    try:
        value = float(word)
    except ValueError:
        return Grade(0.0, False, word, "the first word is not a number")
    score = relative_accuracy(value, float(task.answer))
    return Grade(score, score >= 0.5, word)


GRADERS["vsi-bench-choice"] = grade_choice
GRADERS["vsi-bench-mra"] = grade_mra


def aggregate(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The authors' scores from per-question results (``score`` and ``metadata["question_type"]`` each).

    ``question_types``: the mean score of each question type; ``tasks``: the same with the three
    relative-direction levels replaced by their unweighted mean (``object_rel_direction``); ``overall``: the
    unweighted mean of the task scores (the authors' number, printed by them times 100); ``micro``: the mean
    over questions (what the authors' later Debiased paper reports). Fractions in [0, 1]. On a partial run
    only the types present count (the authors' code would count a missing direction level as 0).
    """
    scores: dict[str, list[float]] = defaultdict(list)
    for result in results:
        question_type = result["metadata"]["question_type"]
        if question_type not in (*MULTIPLE_CHOICE_TYPES, *NUMERIC_TYPES):
            raise ValueError(f"result {result['task_id']}: unknown VSI-Bench question type {question_type!r}")
        scores[question_type].append(float(result["score"]))
    if not scores:
        raise ValueError("no results to aggregate")
    by_type = {kind: fmean(scores[kind]) for kind in (*NUMERIC_TYPES, *MULTIPLE_CHOICE_TYPES) if kind in scores}
    levels = [by_type[level] for level in REL_DIRECTION_LEVELS if level in by_type]
    merged = {**by_type, **({"object_rel_direction": fmean(levels)} if levels else {})}
    tasks = {task: merged[task] for task in TASKS if task in merged}
    return {"overall": fmean(tasks.values()), "tasks": tasks, "question_types": by_type,
            "micro": fmean(score for values in scores.values() for score in values),
            "questions": sum(len(values) for values in scores.values())}


# --- loading -----------------------------------------------------------------------------------------------

def rows(name: str, root: Path, path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, record)`` for each question of a JSONL or Parquet annotation file."""
    if path.suffix == ".jsonl":
        for number, record in read_jsonl(name, root, path):
            yield f"{path.name} line {number}", record
    else:
        for number, record in enumerate(read_parquet(name, root, path), 1):
            yield f"{path.name} row {number}", record


def make_task(name: str, root: Path, record: dict[str, Any], where: str) -> Task:
    require_fields(name, root, record, FIELDS, where)
    question_type, truth = record["question_type"], str(record["ground_truth"]).strip()
    if not isinstance(record["question"], str):
        raise benchmark(name).error(f"{where}: the question is not text", root)
    if question_type in MULTIPLE_CHOICE_TYPES:
        options = record.get("options")
        if not isinstance(options, Sequence) or isinstance(options, str) or len(options) < 2:
            raise benchmark(name).error(f"{where}: a {question_type} question needs a list of options, got "
                                        f"{options!r}", root)
        if truth.upper() not in letters(len(options)):
            raise benchmark(name).error(f"{where}: ground_truth {truth!r} is not one of the option letters", root)
        choices, answer, grader = option_texts(options), truth.upper(), "vsi-bench-choice"
        question = f"{record['question']}\n{CHOICE_INSTRUCTION}"
    elif question_type in NUMERIC_TYPES:
        try:
            value = float(truth)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value == 0:
            raise benchmark(name).error(f"{where}: ground_truth {truth!r} is not a non-zero number", root)
        choices, answer, grader = None, truth, "vsi-bench-mra"
        question = f"{record['question']}\n{NUMERIC_INSTRUCTION}"
    else:
        raise benchmark(name).error(f"{where}: unknown question_type {question_type!r}", root)
    dataset, scene = str(record["dataset"]), str(record["scene_name"])
    video = root / dataset / f"{scene}.mp4"
    if not video.is_file():
        raise benchmark(name).error(f"{where}: the video {dataset}/{scene}.mp4 ({video}) is missing", root)
    metadata = {"question_type": question_type, "dataset": dataset, "scene_name": scene}
    if "pruned" in record:  # the revised release marks the questions left out of the Debiased subset
        metadata["pruned"] = bool(record["pruned"])
    return Task(id=str(record["id"]), question=question, answer=answer, videos=(str(video),), grader=grader,
                choices=choices, split="test", metadata=metadata)


def load_questions(name: str, root: Path, path: Path) -> TaskSet:
    tasks = [make_task(name, root, record, where) for where, record in rows(name, root, path)]
    if not tasks:
        raise benchmark(name).error(f"{path} holds no questions", root)
    return TaskSet(name, tasks, benchmark(name).description)


@public_benchmark("vsi-bench", "VSI-Bench", video=True, layout="""
    test.jsonl  or  test-00000-of-00001.parquet   (the questions)""" + VIDEOS_LAYOUT)
def load(root: Path) -> TaskSet:
    """All VSI-Bench questions (``test.jsonl`` when present, else the original Parquet file)."""
    return load_questions("vsi-bench", root, require("vsi-bench", root, "test.jsonl", "test-00000-of-00001.parquet"))


@public_benchmark("vsi-bench-debiased", "VSI-Bench (Debiased)", video=True, layout="""
    test_debiased.parquet   (the questions of the Debiased subset)""" + VIDEOS_LAYOUT)
def load_debiased(root: Path) -> TaskSet:
    """The Debiased subset (the questions the authors kept after removing those answerable without video)."""
    return load_questions("vsi-bench-debiased", root, require("vsi-bench-debiased", root, "test_debiased.parquet"))
