"""HR-Bench 4K and 8K (Wang et al., "Divide, Conquer and Combine: A Training-Free Framework for
High-Resolution Image Perception in MLLMs", AAAI 2025). Each has 200 multiple-choice questions on 4K or 8K
images: 100 FSP (fine-grained single-instance perception, ``category`` ``single``) and 100 FCP
(cross-instance, ``cross``). Each question is asked once per ``cycle_category`` (option order), which gives
800 rows per file.

Released layout (Hugging Face ``DreamMr/HR-Bench``), one folder per benchmark::

    hr-bench-4k/hr_bench_4k.tsv      or hr_bench_4k.parquet (the same rows)
    hr-bench-8k/hr_bench_8k.tsv      or hr_bench_8k.parquet

Columns: ``index, question, answer, category, A, B, C, D, cycle_category, image``. ``answer`` is the correct
letter and ``image`` holds the base64 image bytes. A TSV row::

    17  What is the color of the umbrella?  B  single  Red  Blue  Green  Yellow  cycle1  /9j/4AAQ...

How rows become tasks: the task id is ``index``. Each image is decoded once into the cache. ``choices`` are
the columns A-D and ``answer`` is the letter. ``metadata`` holds ``category`` and ``cycle_category``.

Scoring. The authors' repository asks a local LLM whether the answer is right (yes/no). That needs a model, so
it is not reproduced here. The ``hr-bench`` grader instead uses VLMEvalKit's exact matching for HR-Bench, the
rule most papers report (see :func:`infer_choice`). :func:`aggregate` averages the authors' way: accuracy is
computed per ``cycle_category`` group, then the groups are averaged without weights.

Example::

    tasks = load_public_benchmark("hr-bench-4k", "/data/benchmarks/hr-bench-4k")
    tasks[0].choices, tasks[0].answer, tasks[0].metadata
    # -> ('Red', 'Blue', 'Green', 'Yellow'), 'B', {'category': 'single', 'cycle_category': 'cycle1'}
"""

from __future__ import annotations

import functools
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pyvision_env.graders import GRADERS, Grade, answer_text
from pyvision_env.tasks import Task, TaskSet

from .common import (
    benchmark,
    cached_image,
    letter_grade,
    letters,
    public_benchmark,
    read_parquet,
    read_tsv,
    require,
    require_fields,
)

VERSIONS = {"hr-bench-4k": ("HR-Bench 4K", "hr_bench_4k"), "hr-bench-8k": ("HR-Bench 8K", "hr_bench_8k")}
"""Benchmark name -> (title, file stem)."""

OPTIONS = ("A", "B", "C", "D")
FIELDS = ("index", "question", "answer", "category", *OPTIONS, "cycle_category", "image")
GRADER = "hr-bench"

LAYOUT = """
    {stem}.tsv (or {stem}.parquet): one row per question with the columns index, question,
        answer (A-D), category (single/cross), A, B, C, D, cycle_category, image (base64)"""


def load(name: str, stem: str, root: Path) -> TaskSet:
    """HR-Bench rows from ``<stem>.tsv`` (or ``<stem>.parquet``) as tasks of benchmark ``name``."""
    path = require(name, root, f"{stem}.tsv", f"{stem}.parquet")
    rows = read_tsv(name, root, path) if path.suffix == ".tsv" else read_parquet(name, root, path)
    tasks = [_task(name, root, row, f"{path.name} row {number}") for number, row in enumerate(rows, 1)]
    try:
        return TaskSet(name, tasks, benchmark(name).description)
    except ValueError as error:  # duplicate indices, or no row at all
        raise benchmark(name).error(str(error), root) from None


for _name, (_title, _stem) in VERSIONS.items():
    public_benchmark(_name, _title, layout=LAYOUT.format(stem=_stem))(functools.partial(load, _name, _stem))


def _task(name: str, root: Path, row: dict[str, Any], where: str) -> Task:
    require_fields(name, root, row, FIELDS, where)
    options = tuple(_cell(row[column]) for column in OPTIONS)
    if not all(options):
        raise benchmark(name).error(f"{where}: an option (columns A-D) is empty", root)
    answer = _cell(row["answer"])
    if answer not in OPTIONS:
        raise benchmark(name).error(f"{where}: answer {answer!r} is not one of A-D", root)
    if not isinstance(row["image"], (str, bytes, dict)) or not row["image"]:
        raise benchmark(name).error(f"{where}: the image cell is empty", root)
    return Task(id=_cell(row["index"]), question=_cell(row["question"]), answer=answer,
                images=(cached_image(name, root, row["image"], where),), grader=GRADER, choices=options,
                split="test",
                metadata={"category": _cell(row["category"]), "cycle_category": _cell(row["cycle_category"])})


def _cell(value: Any) -> str:
    """A TSV or Parquet cell as stripped text (``""`` for a missing value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


# --- scoring -----------------------------------------------------------------------------------------------

_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
             "I'm sorry, but without the image provided", "Cannot determine the answer")
_SEPARATORS = re.compile(r"[.()\[\],:;!*#{}]")


def infer_choice(response: str, options: Sequence[str]) -> str | None:
    """The option letter in ``response`` by VLMEvalKit's exact matching (``can_infer``), or None.

    The rule, in order:

    1. A known refusal reads as no answer.
    2. Punctuation ``.()[],:;!*#{}`` becomes spaces. If exactly one option letter is then a word, that letter
       is the answer. The exception is ``A`` in a reply of more than 3 words, where it may be the article.
    3. If no option letter is a word but ``Z`` is, the reply reads as no answer.
    4. Otherwise, if exactly one option's text occurs in the reply (ignoring case), that option is the answer.

    >>> infer_choice("(B) Blue", ["Red", "Blue"]), infer_choice("It is blue.", ["Red", "Blue"])
    ('B', 'B')
    """
    if any(refusal in response for refusal in _REFUSALS):
        return None
    words = _SEPARATORS.sub(" ", response).split()
    named = [letter for letter in letters(len(options)) if letter in words]
    if len(named) == 1 and not ("A" in words and len(words) > 3):
        return named[0]
    if not named and "Z" in words:
        return None
    lowered = response.lower()
    found = [letter for letter, option in zip(letters(len(options)), options)
             if str(option).lower() in lowered]
    return found[0] if len(found) == 1 else None


def grade(prediction: str, task: Task) -> Grade:
    """The ``hr-bench`` grader: correct when :func:`infer_choice` reads the task's answer letter."""
    got = answer_text(prediction)
    return letter_grade(infer_choice(got, task.choices or ()), task, shown=got, unread="no option could be read")


GRADERS[GRADER] = grade


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """HR-Bench's report from result dicts with ``correct`` and the task's ``metadata``.

    For each ``cycle_category`` group it computes the accuracy over all rows (``all``) and per ``category``.
    ``average`` is each of these summed over the groups and divided by the number of groups. A category that
    is missing from a group counts as 0 there, as in the authors' code. The result looks like
    ``{"average": {"all": .., "cross": .., "single": ..}, "cycles": {cycle: {"all": .., ...}}}``, with
    fractions in [0, 1].
    """
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for result in results:
        metadata, hit = result["metadata"], bool(result["correct"])
        groups[metadata["cycle_category"]]["all"].append(hit)
        groups[metadata["cycle_category"]][metadata["category"]].append(hit)
    cycles = {cycle: {kind: sum(hits) / len(hits) for kind, hits in sorted(kinds.items())}
              for cycle, kinds in sorted(groups.items())}
    kinds = sorted({kind for accuracies in cycles.values() for kind in accuracies})
    average = {kind: sum(accuracies.get(kind, 0.0) for accuracies in cycles.values()) / len(cycles)
               for kind in kinds}
    return {"average": average, "cycles": cycles}
