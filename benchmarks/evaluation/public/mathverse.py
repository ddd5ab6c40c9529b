"""MathVerse testmini (Zhang et al. 2024): 788 diagram math problems, each in five versions that move
information from the text into the diagram, read from the Hugging Face release ``AI4Math/MathVerse``::

    mathverse/
      testmini.json                  3,940 records (788 problems x 5 versions)
      images/images_version_1-4/image_<problem_index>.png   (images.zip unpacked here; the images_version_*
      images/images_version_5/...                            folders may also sit directly in mathverse/)
      images/images_version_6/...
      testmini_text_only.json        optional: the "Text Only" version (788 records, no image)

A record is ``{"sample_index": "3425", "problem_index": "685", "problem_version": "Vision Only",
"question": "", "image": "images_version_6/image_685.png", "answer": "14", "question_type": "free-form",
"metadata": {"split": "testmini", "source": "Geo3D_collected", "subject": "Solid Geometry",
"subfield": "Length"}, "query_wo": "...", "query_cot": "According to the question shown in the image, please
first conduct reasoning, ..."}``. Multiple-choice questions carry their options in the text (or, in the
vision-heavy versions, only in the image), so tasks have no ``choices``: the answer is the released letter.
The question is the authors' CoT prompt ``query_cot`` (``question`` is empty in the Vision Only version).
Task ids are the ``sample_index`` (``text-only-<sample_index>`` for the Text Only file, whose indices repeat
those of testmini.json).

Scoring. The authors extract the answer with GPT and let GPT judge it against the ground truth (their only
rule path, ``--quick_match``, is exact string equality after that extraction). This module's grader is a
rule-based stand-in and **under-counts relative to the GPT judge**, mainly on free-form answers with units,
LaTeX or expressions:

* multiple choice with a letter answer ("B", "(C)"): the response's leading letter ("B", "(B)", "B:60°") after
  any "Answer:" must equal it;
* an answer that is a plain number, optionally with a unit or degree sign ("14", "2191.7 metres", "60°"):
  the response must be the same number (with or without a unit, optionally after "x ="), within 1e-6 relative;
* anything else: equality after removing LaTeX wrappers, ``$``, spaces and case ("4\\sqrt{6}").

:func:`aggregate` gives the authors' report: accuracy over the five main versions, and per version, subject
and subfield.

Example::

    tasks = load_public_benchmark("mathverse", "/data/mathverse")
    task = tasks[tasks.index_of("3425")]
    task.metadata["problem_version"], task.answer        # -> ('Vision Only', '14')
    task.grade(r"\\boxed{14}").correct                   # -> True
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import fmean
from typing import Any

from pyvision_env.graders import GRADERS, Grade, answer_text
from pyvision_env.tasks import Task, TaskSet

from .common import accuracy_by, benchmark, public_benchmark, read_json, require, require_fields

NAME = "mathverse"

FIELDS = ("sample_index", "problem_index", "problem_version", "question", "image", "answer", "question_type",
          "metadata", "query_cot")
CATEGORY_FIELDS = ("source", "subject", "subfield")
QUESTION_TYPES = ("multi-choice", "free-form")
TEXT_ONLY = "Text Only"
"""The ablation version, reported apart from the five main versions."""

LETTER_ANSWER = re.compile(r"\(?([A-Z])\)?")
LEADING_LETTER = re.compile(r"\(?([A-Z])\)?(?=$|[\s:.)：])")
ANSWER_LABEL = re.compile(r"\b(?i:answer)\b\s*(?:is)?\s*[:：]?")
LATEX_WRAPPER = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
DEGREE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|掳")  # 掳 is how the release garbles ° in places
LATEX_NOISE = re.compile(r"\$|\\left|\\right|\\[,!;]|~")
NAMED_VALUE = re.compile(r"^[A-Za-z]\w*\s*=\s*")
NUMBER_WITH_UNIT = re.compile(r"([-+]?\d+(?:\.\d+)?)\s*(?:°|%|[A-Za-z]+(?:\s*(?:\^\s*\{?[23]\}?|[²³]))?)?")


# --- scoring -----------------------------------------------------------------------------------------------

def clean(text: str) -> str:
    """Without LaTeX text wrappers, ``$``, spacing commands or ``\\left``/``\\right``; degrees written "°".

    >>> clean(r"$60^{\\circ}$"), clean(r"50.27 \\mathrm{~cm}")
    ('60°', '50.27 cm')
    """
    text = DEGREE.sub("°", LATEX_WRAPPER.sub(r"\1", text))
    return LATEX_NOISE.sub("", text).replace("\\dfrac", "\\frac").strip()


def plain_number(text: str) -> float | None:
    """The number when ``text`` is just a number, maybe with a unit or degree sign (and a leading ``x =``).

    >>> plain_number("2191.7 metres"), plain_number("60°"), plain_number("x = 14")
    (2191.7, 60.0, 14.0)
    >>> plain_number(r"4\\sqrt{6}") is None
    True
    """
    match = NUMBER_WITH_UNIT.fullmatch(NAMED_VALUE.sub("", clean(text)))
    return float(match.group(1)) if match else None


def final_answer(response: str) -> str:
    """The boxed content, else the text after the last "Answer:"/"answer is", without a final full stop."""
    return ANSWER_LABEL.split(answer_text(response))[-1].strip().rstrip(".").strip()


def grade(prediction: str, task: Task) -> Grade:
    """The rule-based MathVerse score (see the module docstring); registered as ``"mathverse"``."""
    got = final_answer(prediction)
    letter_answer = LETTER_ANSWER.fullmatch(task.answer.strip())
    if task.metadata["question_type"] == "multi-choice" and letter_answer:
        leading = LEADING_LETTER.match(got)
        got = leading.group(1) if leading else got
        correct = got == letter_answer.group(1)
    elif (expected := plain_number(task.answer)) is not None:
        value = plain_number(got)
        correct = value is not None and math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9)
    else:
        correct = "".join(clean(got).split()).casefold() == "".join(clean(task.answer).split()).casefold()
    return Grade(float(correct), correct, got)


GRADERS[NAME] = grade


def aggregate(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The authors' report from per-question results (``correct`` and the task's ``metadata`` each):
    ``accuracy`` over the five main versions (their "overall"), ``text_only`` when Text Only results are
    there, and under ``by`` the accuracy per ``problem_version`` (all results) and per ``subject`` and
    ``subfield`` (main versions). Fractions in [0, 1]."""
    results = list(results)
    if not results:
        raise ValueError("no results to aggregate")
    main = [result for result in results if result["metadata"]["problem_version"] != TEXT_ONLY]
    text_only = [result for result in results if result["metadata"]["problem_version"] == TEXT_ONLY]
    report: dict[str, Any] = {"questions": len(main)}
    if main:
        report["accuracy"] = fmean(float(bool(result["correct"])) for result in main)
    if text_only:
        report["text_only"] = fmean(float(bool(result["correct"])) for result in text_only)
    report["by"] = {"problem_version": accuracy_by(results, "problem_version"),
                    **{field: accuracy_by(main, field) for field in ("subject", "subfield")}}
    return report


# --- loading -----------------------------------------------------------------------------------------------

def make_task(root: Path, record: Any, where: str, id_prefix: str) -> Task:
    error = benchmark(NAME).error
    if not isinstance(record, dict):
        raise error(f"{where} is not a JSON object", root)
    require_fields(NAME, root, record, FIELDS, where)
    metadata, version, image = record["metadata"], record["problem_version"], record["image"]
    if not isinstance(metadata, dict):
        raise error(f"{where}: metadata is not an object", root)
    require_fields(NAME, root, metadata, CATEGORY_FIELDS, f"{where} metadata")
    if record["question_type"] not in QUESTION_TYPES:
        raise error(f"{where}: unknown question_type {record['question_type']!r}", root)
    if not isinstance(record["query_cot"], str) or not record["query_cot"].strip():
        raise error(f"{where}: query_cot is empty", root)
    if not isinstance(image, str) or (not image and version != TEXT_ONLY):
        raise error(f"{where}: a {version} question needs an image path", root)
    images = (str(require(NAME, root, image, f"images/{image}")),) if image else ()
    return Task(id=f"{id_prefix}{record['sample_index']}", question=record["query_cot"],
                answer=str(record["answer"]).strip(), images=images, grader=NAME, split="test",
                metadata={**metadata, "problem_index": str(record["problem_index"]),
                          "problem_version": version, "question_type": record["question_type"]})


def records(root: Path, path: Path) -> list[Any]:
    data = read_json(NAME, root, path)
    if not isinstance(data, list) or not data:
        raise benchmark(NAME).error(f"{path} is not a non-empty list of records", root)
    return data


@public_benchmark(NAME, "MathVerse (testmini)", layout="""
    testmini.json                 list of records (Hugging Face AI4Math/MathVerse)
    images/images_version_1-4/    (images.zip unpacked here; the folders may also sit at the top)
    images/images_version_5/
    images/images_version_6/
    testmini_text_only.json       optional: the Text Only version""")
def load(root: Path) -> TaskSet:
    """The 3,940 testmini questions, and the 788 Text Only ones when ``testmini_text_only.json`` is there."""
    path = require(NAME, root, "testmini.json")
    tasks = [make_task(root, record, f"{path.name} record {number}", "")
             for number, record in enumerate(records(root, path), 1)]
    text_only = root / "testmini_text_only.json"
    if text_only.is_file():
        tasks += [make_task(root, record, f"{text_only.name} record {number}", "text-only-")
                  for number, record in enumerate(records(root, text_only), 1)]
    return TaskSet(NAME, tasks, benchmark(NAME).description)
