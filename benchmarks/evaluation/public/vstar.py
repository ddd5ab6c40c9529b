"""V* Bench (Wu & Xie, "V*: Guided Visual Search as a Core Mechanism in Multimodal LLMs"): 191 questions about
small details of high-resolution images, in two categories: ``direct_attributes`` (115 questions, 4 options)
and ``relative_position`` (76 questions, 2 options).

Released layout (Hugging Face ``craigwu/vstar_bench``)::

    test_questions.jsonl              format B, read when present
    direct_attributes/sa_4690.jpg     + sa_4690.json (format A)
    relative_position/sa_79958.jpg    + sa_79958.json
    OCR/, GPT4V-hard/                 not part of the benchmark (the authors' script skips them)

Format B has one question per line. ``label`` is the correct letter and ``question_id`` is a string::

    {"image": "direct_attributes/sa_4690.jpg",
     "text": "What is the material of the glove?\\n(A) rubber\\n(B) cotton\\n(C) kevlar\\n(D) leather\\n
              Answer with the option's letter from the given choices directly.",
     "category": "direct_attributes", "question_id": "0", "label": "A"}

Format A has one annotation per image. Boxes are ``[x, y, w, h]`` and the first option is the correct one::

    {"target_object": ["glove"], "bbox": [[564, 142, 155, 157]],
     "question": "What is the material of the glove?",
     "options": ["The material of the glove is rubber.", "The material of the glove is cotton.", ...]}

How records become tasks:

* Format B: the task id is ``question_id``. The question keeps the text before the ``(A)`` line and drops the
  "Answer with the option's letter ..." instruction, because the environment renders the options and asks for
  its own answer format. ``choices`` keep the file's order and ``answer`` is ``label``.
* Format A: the task id is ``<category>/<stem>``. The options are shuffled into a fixed order: they are sorted
  by the SHA-256 of ``"<task id>:<option index>"``. So the correct option is not always ``A``, and every load
  gives the same order.
* Both formats: the annotation's ``bbox`` boxes become ``regions`` ``(x, y, x + w, y + h)``, labelled with
  their target object. For format B this uses the annotation JSON beside the image when there is one.
  ``metadata`` holds ``category`` and ``image`` (the image's path in the release).

Scoring. The authors' script picks the option with the lowest loss, which a generated answer cannot use. Here
the answer is a letter read by the project's ``choice`` grader. For the usual answer forms (``B``, ``(B)``,
``B.``, ``B) cotton``, ``The answer is B``) it reads the same letter as lmms-eval's ``extract_answer_letter``.
It differs from lmms-eval in three ways:

* It also accepts the exact option text.
* It does not search long replies for a stray letter.
* It does not read a reply that merely starts with A-D (lmms-eval reads "Blue" as B and "Answer: B" as A).

:func:`aggregate` gives the authors' report: accuracy over all questions and per category.

Example::

    tasks = load_public_benchmark("vstar", "/data/benchmarks/vstar")
    tasks[0].id, tasks[0].choices, tasks[0].answer, tasks[0].metadata["category"]
    # -> ('0', ('rubber', 'cotton', 'kevlar', 'leather'), 'A', 'direct_attributes')
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from pyvision_env.tasks import IMAGE_SUFFIXES, Region, Task, TaskSet

from .common import benchmark, letters, public_benchmark, read_json, read_jsonl, require, require_fields

NAME = "vstar"
TITLE = "V* Bench"
CATEGORIES = ("direct_attributes", "relative_position")
QUESTIONS_FILE = "test_questions.jsonl"

_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s*(.*)$")


@public_benchmark(NAME, TITLE, layout="""
    test_questions.jsonl                         read when present; one JSON object per line with
                                                 image, text (question + "(A) ..." lines), category,
                                                 question_id, label (the correct letter)
    direct_attributes/<stem>.jpg + <stem>.json   otherwise; the JSON has question, options (the first one is
    relative_position/<stem>.jpg + <stem>.json   correct), bbox [[x, y, w, h], ...], target_object""")
def load(root: Path) -> TaskSet:
    """V* Bench from ``test_questions.jsonl`` when present, else from the per-image annotations."""
    if require(NAME, root, QUESTIONS_FILE, *CATEGORIES).name == QUESTIONS_FILE:
        tasks = _from_questions(root, root / QUESTIONS_FILE)
    else:
        tasks = [task for category in CATEGORIES for task in _from_annotations(root, category)]
    try:
        return TaskSet(NAME, tasks, TITLE)
    except ValueError as error:  # duplicate question ids, or no question at all
        raise benchmark(NAME).error(str(error), root) from None


def _from_questions(root: Path, path: Path) -> list[Task]:
    tasks = []
    for number, record in read_jsonl(NAME, root, path):
        where = f"{path.name} line {number}"
        require_fields(NAME, root, record, ("image", "text", "category", "question_id", "label"), where)
        question, options = _split_options(root, str(record["text"]), where)
        label = str(record["label"]).strip()
        if label not in letters(len(options)):
            raise benchmark(NAME).error(f"{where}: label {label!r} is not one of the options' letters", root)
        image = root / str(record["image"])
        if not image.is_file():
            raise benchmark(NAME).error(f"{where}: image {record['image']} not found", root)
        annotation = image.with_suffix(".json")
        regions = _regions_beside(root, annotation) if annotation.is_file() else ()
        tasks.append(Task(id=str(record["question_id"]), question=question, answer=label,
                          images=(str(image),), grader="choice", choices=options, regions=regions,
                          split="test",
                          metadata={"category": str(record["category"]), "image": str(record["image"])}))
    return tasks


def _split_options(root: Path, text: str, where: str) -> tuple[str, tuple[str, ...]]:
    """``"Q?\\n(A) x\\n(B) y\\nAnswer with ..."`` -> ``("Q?", ("x", "y"))``."""
    lines = text.split("\n")
    marked = [(index, match) for index, line in enumerate(lines)
              if (match := _OPTION_LINE.match(line.strip()))]
    found = "".join(match.group(1) for _, match in marked)
    question = "\n".join(lines[:marked[0][0]]).strip() if marked else ""
    if len(found) < 2 or found != letters(len(found)) or not question:
        raise benchmark(NAME).error(f"{where}: text is not a question followed by '(A) ...', '(B) ...' lines",
                                    root)
    return question, tuple(match.group(2).strip() for _, match in marked)


def _from_annotations(root: Path, category: str) -> list[Task]:
    folder = require(NAME, root, category)
    images = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise benchmark(NAME).error(f"{folder} holds no images", root)
    tasks = []
    for image in images:
        spec = image.with_suffix(".json")
        if not spec.is_file():
            raise benchmark(NAME).error(f"{spec} (the annotation of {image.name}) not found", root)
        record = _annotation(root, spec)
        require_fields(NAME, root, record, ("question", "options", "bbox"), str(spec))
        options = record["options"]
        if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
            raise benchmark(NAME).error(f"{spec}: options is not a list of at least two strings", root)
        task_id = f"{category}/{image.stem}"
        order = shuffled_order(task_id, len(options))
        tasks.append(Task(id=task_id, question=str(record["question"]).strip(),
                          answer=letters(len(options))[order.index(0)], images=(str(image),), grader="choice",
                          choices=tuple(options[i] for i in order), regions=_regions(root, record, str(spec)),
                          split="test", metadata={"category": category, "image": f"{category}/{image.name}"}))
    return tasks


def shuffled_order(task_id: str, count: int) -> list[int]:
    """The fixed order in which a format-A question shows its options: option indices sorted by the SHA-256 of
    ``"<task id>:<index>"``."""
    return sorted(range(count), key=lambda index: hashlib.sha256(f"{task_id}:{index}".encode()).digest())


def _annotation(root: Path, path: Path) -> dict[str, Any]:
    record = read_json(NAME, root, path)
    if not isinstance(record, dict):
        raise benchmark(NAME).error(f"{path} is not a JSON object", root)
    return record


def _regions_beside(root: Path, path: Path) -> tuple[Region, ...]:
    record = _annotation(root, path)
    return _regions(root, record, str(path)) if "bbox" in record else ()


def _regions(root: Path, record: dict[str, Any], where: str) -> tuple[Region, ...]:
    """``bbox`` ``[[x, y, w, h], ...]`` as regions, labelled with ``target_object`` when the counts agree."""
    boxes = record["bbox"]
    if not isinstance(boxes, list) or not all(
            isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            for box in boxes):
        raise benchmark(NAME).error(f"{where}: bbox is not a list of [x, y, w, h] boxes", root)
    targets = record.get("target_object")
    labels = targets if isinstance(targets, list) and len(targets) == len(boxes) else [None] * len(boxes)
    regions = []
    for (x, y, width, height), label in zip(boxes, labels):
        if width <= 0 or height <= 0:
            raise benchmark(NAME).error(f"{where}: bbox {[x, y, width, height]} has no area", root)
        regions.append(Region((x, y, x + width, y + height), label=None if label is None else str(label)))
    return tuple(regions)


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The authors' report: ``{"overall": accuracy over all questions, "categories": {category: accuracy}}``
    (fractions in [0, 1]) from result dicts with ``correct`` and the task's ``metadata``."""
    by_category: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        by_category[result["metadata"]["category"]].append(bool(result["correct"]))
    every = [hit for hits in by_category.values() for hit in hits]
    return {"overall": sum(every) / len(every) if every else 0.0,
            "categories": {category: sum(hits) / len(hits) for category, hits in sorted(by_category.items())}}
