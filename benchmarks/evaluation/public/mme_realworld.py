"""MME-RealWorld and MME-RealWorld-Lite (Zhang et al., "MME-RealWorld: Could Your Multimodal LLM Challenge
High-Resolution Real-World Scenarios that are Difficult for Humans?", 2024).

These are multiple-choice questions on high-resolution images, with five options "(A) ..." to "(E) ...". The
last option is usually "none of the above". Questions are grouped by ``Task`` (Perception or Reasoning), then
``Subtask`` (Monitoring, OCR with Complex Context, Diagram and Table, Autonomous_Driving, Remote Sensing),
then ``Category``. The Lite set keeps at most 50 questions per category.

Released layout, one folder per benchmark::

    mme-realworld/MME_RealWorld.json          HF yifanzhang114/MME-RealWorld
    mme-realworld/<Image>                     the image tarballs unpacked into this folder, e.g.
                                              diagram_and_table/cons9.jpg, AutonomousDriving/nuScenes/...
    mme-realworld-lite/MME-RealWorld-Lite.json   HF yifanzhang114/MME-RealWorld-Lite (data.zip)
    mme-realworld-lite/imgs/<Image>              Image is a bare file name there

Each JSON file is an array of records like this one::

    {"Question_id": "perception/remote_sensing/position/2527", "Image": "dota_v2_dota_v2_dota_v2_P7036.png",
     "Text": "Where is the yellow crane in the picture?", "Question Type": "Multiple Choice",
     "Answer choices": ["(A) In the upper right area of the picture", ..., "(E) This image doesn't feature
     the position."], "Ground truth": "A", "Category": "position", "Subtask": "Remote Sensing",
     "Task": "Perception"}

Variants in the release that are all accepted:

* The full set's JSON was first named ``MME_ReadWorld.json``.
* The Lite JSON is named ``MME-RealWorld-Lite.json`` or ``MME_RealWorld_Lite.json``, and may sit in ``data/``
  as data.zip unpacks it.
* Records spell the key ``Question Type`` or ``Question type``. It is kept in ``metadata["question_type"]``
  when present.

How records become tasks: the task id is ``Question_id`` and the question is ``Text``. ``choices`` are the
options without their "(A) " prefixes and ``answer`` is ``Ground truth``. ``metadata`` holds ``task``,
``subtask``, ``category`` (also ``dataset`` when the record has one) and ``image``.

Scoring. The ``mme-realworld`` grader is the official letter extraction of ``evaluation/eval_your_results.py``
(see :func:`extract_letter`). :func:`aggregate` gives the official report: accuracy per category, subtask,
task and overall, plus the paper's Avg-C per task.

Example::

    tasks = load_public_benchmark("mme-realworld-lite", "/data/benchmarks/mme-realworld-lite")
    tasks[0].choices[0], tasks[0].answer, tasks[0].metadata["subtask"]
    # -> ('In the upper right area of the picture', 'A', 'Remote Sensing')
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyvision_env.graders import GRADERS, Grade, answer_text
from pyvision_env.tasks import Task, TaskSet

from .common import (
    benchmark,
    letter_grade,
    letters,
    option_texts,
    public_benchmark,
    read_json,
    require,
    require_fields,
)

RECORD = ("    a JSON array of records {Question_id, Image, Text, Question Type, Ground truth (A-E),\n"
          '    Answer choices ["(A) ...", ..., "(E) ..."], Task, Subtask, Category}')

VERSIONS = {
    "mme-realworld": (
        "MME-RealWorld", ("MME_RealWorld.json", "MME_ReadWorld.json"), ".",
        f"MME_RealWorld.json (or the early name MME_ReadWorld.json):\n{RECORD}\n"
        "<Image>: each record's image, relative to this folder (the image tarballs unpacked here:\n"
        "    AutonomousDriving/, diagram_and_table/, monitoring_images/, ...)"),
    "mme-realworld-lite": (
        "MME-RealWorld-Lite", ("MME-RealWorld-Lite.json", "MME_RealWorld_Lite.json",
                               "data/MME-RealWorld-Lite.json", "data/MME_RealWorld_Lite.json"), "imgs",
        f"MME-RealWorld-Lite.json (or MME_RealWorld_Lite.json; either may be in data/):\n{RECORD}\n"
        "imgs/<Image> beside the JSON: each record's image"),
}
"""Benchmark name -> (title, JSON file names to try, image folder relative to the JSON's folder, layout)."""

FIELDS = ("Question_id", "Image", "Text", "Answer choices", "Ground truth", "Task", "Subtask", "Category")
QUESTION_TYPE_KEYS = ("Question Type", "Question type")
"""Both spellings occur in the release (the official output template has a record with the second)."""
GRADER = "mme-realworld"


def load(name: str, root: Path) -> TaskSet:
    """The records of benchmark ``name``'s JSON file as tasks."""
    _, files, image_folder, _ = VERSIONS[name]
    path = require(name, root, *files)
    records = read_json(name, root, path)
    if not isinstance(records, list):
        raise benchmark(name).error(f"{path} is not a JSON array of records", root)
    images = path.parent / image_folder
    tasks = [_task(name, root, record, images, f"{path.name} record {number}")
             for number, record in enumerate(records, 1)]
    missing = [task for task in tasks if not Path(task.images[0]).is_file()]
    if missing:
        listed = ", ".join(str(task.images[0]) for task in missing[:3])
        raise benchmark(name).error(f"{len(missing)} of {len(tasks)} images not found (e.g. {listed})", root)
    try:
        return TaskSet(name, tasks, benchmark(name).description)
    except ValueError as error:  # duplicate question ids, or no record at all
        raise benchmark(name).error(str(error), root) from None


for _name, (_title, _, _, _layout) in VERSIONS.items():
    public_benchmark(_name, _title, layout=_layout)(functools.partial(load, _name))


def _task(name: str, root: Path, record: Any, images: Path, where: str) -> Task:
    if not isinstance(record, dict):
        raise benchmark(name).error(f"{where} is not a JSON object", root)
    require_fields(name, root, record, FIELDS, where)
    choices = record["Answer choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise benchmark(name).error(f"{where}: Answer choices is not a list of option strings", root)
    answer = str(record["Ground truth"]).strip()
    if answer not in letters(len(choices)):
        raise benchmark(name).error(f"{where}: Ground truth {answer!r} is not one of the options' letters",
                                    root)
    metadata = {"task": str(record["Task"]), "subtask": str(record["Subtask"]),
                "category": str(record["Category"]), "image": str(record["Image"])}
    question_type = next((record[key] for key in QUESTION_TYPE_KEYS if key in record), None)
    if question_type is not None:
        metadata["question_type"] = str(question_type)
    if "Dataset" in record:
        metadata["dataset"] = str(record["Dataset"])
    return Task(id=str(record["Question_id"]), question=str(record["Text"]).strip(), answer=answer,
                images=(str(images / str(record["Image"])),), grader=GRADER, choices=option_texts(choices),
                split="test", metadata=metadata)


# --- scoring -----------------------------------------------------------------------------------------------

_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
             "The best option isThe correct option is", "Best answer:Best option:")
"""The phrases the official scorer deletes. Its list lacks two commas, so Python joins the last four strings
into two, and they are kept joined here."""


def extract_letter(response: str, choices: Sequence[str]) -> str:
    """The official letter extraction (``extract_characters_regex``), or ``""`` when no letter can be read.

    1. The response is stripped and every phrase in ``_PREFIXES`` is deleted. The match is case-sensitive.
    2. The first capital A-E anywhere is the answer. So "According to the map, B" reads as A, as officially.
    3. If there is no capital A-E, a reply of more than 10 words reads as no answer.
    4. Otherwise the lower-cased reply is looked up in each lower-cased "(X) option". The first option that
       contains it gives the letter.

    The one deviation: an empty reply reads as no answer. The official code finds "" inside option (A) and
    answers A.

    >>> extract_letter("The answer is (C).", ["x", "y", "z"])
    'C'
    >>> extract_letter("upper left", ["upper left", "lower right"])
    'A'
    """
    text = response.strip()
    for prefix in _PREFIXES:
        text = text.replace(prefix, "")
    if found := re.search("[ABCDE]", text):
        return found.group()
    if len(text.split()) > 10 or not text.strip():
        return ""
    lowered = text.lower()
    return next((letter for letter, choice in zip(letters(len(choices)), choices)
                 if lowered in f"({letter}) {choice}".lower()), "")


def grade(prediction: str, task: Task) -> Grade:
    """The ``mme-realworld`` grader: correct when :func:`extract_letter` reads the ground-truth letter."""
    got = answer_text(prediction)
    return letter_grade(extract_letter(got, task.choices or ()), task, shown=got,
                        unread="no letter A-E could be read")


GRADERS[GRADER] = grade


def category_group(category: str) -> str:
    """The official scorer's group for a ``Category``. It is lower-cased, and any category containing
    "attribute" is folded into ``<first part>/attribute``, e.g. ``"Person/attribute/color"`` ->
    ``"person/attribute"``."""
    category = category.lower()
    return category.split("/")[0] + "/attribute" if "attribute" in category else category


def _accuracy(hits: list[bool]) -> dict[str, Any]:
    return {"accuracy": sum(hits) / len(hits) if hits else 0.0, "count": len(hits)}


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The official report from result dicts with ``correct`` and the task's ``metadata``.

    The result is nested by ``Task``, then ``Subtask``, then category group (:func:`category_group`)::

        {"accuracy": .., "count": .., "tasks": {"Perception": {"accuracy": .., "count": .., "avg_c": ..,
         "subtasks": {"Monitoring": {"accuracy": .., "count": .., "categories": {"counting": {...}}}}}}}

    Each ``accuracy`` is a micro average, i.e. correct answers over questions at that level, like the paper's
    "Avg". ``avg_c`` is the paper's "Avg-C": the unweighted mean of the task's subtask accuracies, over the
    subtasks present in ``results``. Accuracies are fractions in [0, 1].
    """
    tree: dict[str, dict[str, dict[str, list[bool]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for result in results:
        metadata = result["metadata"]
        tree[metadata["task"]][metadata["subtask"]][category_group(metadata["category"])].append(
            bool(result["correct"]))
    report: dict[str, Any] = {**_accuracy([bool(result["correct"]) for result in results]), "tasks": {}}
    for task, subtasks in sorted(tree.items()):
        subtask_reports = {
            subtask: {**_accuracy([hit for hits in categories.values() for hit in hits]),
                      "categories": {category: _accuracy(hits)
                                     for category, hits in sorted(categories.items())}}
            for subtask, categories in sorted(subtasks.items())}
        task_hits = [hit for categories in subtasks.values() for hits in categories.values() for hit in hits]
        report["tasks"][task] = {
            **_accuracy(task_hits),
            "avg_c": sum(sub["accuracy"] for sub in subtask_reports.values()) / len(subtask_reports),
            "subtasks": subtask_reports}
    return report
