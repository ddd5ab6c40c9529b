"""MathVista testmini (Lu et al. 2024): 1,000 visual math questions, read from either release::

    mathvista/
      data/testmini.json             GitHub lupantech/MathVista: {pid: record}, pids "1".."1000"
      data/images/<pid>.jpg          images.zip from Hugging Face, unpacked inside data/
      data/query.json                optional, GitHub: {pid: the authors' prompt}
    or
      data/testmini-*.parquet        Hugging Face AI4Math/MathVista: the same records as rows, plus
                                     ``decoded_image`` (PNG bytes) and ``query``

A record is ``{"pid": "540", "question": "What fraction of the shape is blue?", "image": "images/540.jpg",
"choices": ["3/11", "8/11", "6/11", "3/5"], "unit": null, "precision": null, "answer": "3/11",
"question_type": "multi_choice", "answer_type": "text", "metadata": {"category": "math-targeted-vqa",
"task": "math word problem", "context": "abstract scene", "grade": "elementary school", "skills": [...],
...}}``.
Multiple-choice answers are the option's text; the task's answer is its letter. Free-form answers
(``answer_type`` integer, float with ``precision`` decimals, or list) are kept as released.

The question is the authors' prompt (``query``: a hint on the answer format, the question and its unit)
without its choices, which the environment renders; when neither ``query.json`` nor a ``query`` column is
there it is built the same way.

Scoring follows ``evaluation/calculate_score.py``: the extracted answer is normalised by type and compared
exactly with the ground truth. Multiple choice: "(b)" or a bare letter selects that option, anything else the
option nearest by edit distance; integer: ``str(int(float(x)))``; float: ``str(round(float(x), precision))``;
list: the text as is. The authors extract the short answer with GPT; here the boxed answer is read by their
rule-based quick paths plus a rule stand-in for the model (an option letter, the last number, the last
``[...]``). An empty answer counts as wrong (the authors' ``--ignore_empty_extractions``; without it "" would
map to the shortest option). :func:`aggregate` gives the accuracy overall and per category, as the authors do.

Example::

    tasks = load_public_benchmark("mathvista", "/data/mathvista")
    task = tasks[tasks.index_of("540")]
    task.choices, task.answer    # -> (('3/11', '8/11', '6/11', '3/5'), 'A')
    task.metadata["context"]     # -> 'abstract scene'
    task.grade(r"\\boxed{A}").correct                     # -> True
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from statistics import fmean
from typing import Any

from pyvision_env.graders import GRADERS, Grade, answer_text, parse_number
from pyvision_env.tasks import Task, TaskSet

from .common import (
    accuracy_by,
    benchmark,
    cached_image,
    letters,
    public_benchmark,
    read_json,
    read_parquet,
    require,
    require_fields,
)

NAME = "mathvista"

FIELDS = ("pid", "question", "choices", "unit", "precision", "answer", "question_type", "answer_type",
          "metadata")
CATEGORY_FIELDS = ("category", "task", "context", "grade", "skills")
BREAKDOWN_FIELDS = ("question_type", "answer_type", "language", "source", "category", "task", "context",
                    "grade", "skills")
"""What the authors report accuracy by (an item counts toward each of its ``skills``)."""

HINTS = {
    ("text", None): "Please answer the question and provide the correct option letter, e.g., A, B, C, D, at "
                    "the end.",
    ("integer", None): "Please answer the question requiring an integer answer and provide the final value, "
                       "e.g., 1, 2, 3, at the end.",
    ("float", 1): "Please answer the question requiring a floating-point number with one decimal place and "
                  "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.",
    ("float", 2): "Please answer the question requiring a floating-point number with two decimal places and "
                  "provide the final value, e.g., 1.23, 1.34, 1.45, at the end.",
    ("list", None): "Please answer the question requiring a Python list as an answer and provide the final "
                    "list, e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}
"""The authors' hints by (answer_type, precision), as in their ``query``."""

QUICK_ANSWER = re.compile(r'The answer is "(.*)"\.')
CHOICE_IN_PARENS = re.compile(r"\(([a-zA-Z])\)")
LEADING_LETTER = re.compile(r"^\(?([A-Z])\)?(?:[.:)]|\s|$)")
NAMED_LETTER = re.compile(r"\b(?i:answer|option|choice)\s*(?:is)?\s*[:：]?\s*\(?([A-Z])\b")
LIST = re.compile(r"\[[^\[\]]*\]")


# --- scoring -----------------------------------------------------------------------------------------------

def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions and substitutions cost 1).

    >>> edit_distance("kitten", "sitting")
    3
    """
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def extract_answer(text: str, choices: Sequence[str] | None, answer_type: str) -> str:
    """The short answer in ``text``: the authors' quick paths (an exact option, a plain number,
    ``The answer is "..."``), then a rule stand-in for their GPT extractor (an option letter, the last number,
    the last list).

    >>> extract_answer("The answer is B.", ["3", "4"], "text"), extract_answer("x = 1,250", None, "integer")
    ('B', '1250.0')
    """
    text = text.strip()
    if not text or (choices and text in choices):
        return text
    try:
        if answer_type == "integer":
            return str(int(text))
        if answer_type == "float":
            return str(float(text))
    except ValueError:
        pass
    if quick := QUICK_ANSWER.search(text):
        return quick.group(1)
    if choices:
        named = NAMED_LETTER.findall(text)
        leading = LEADING_LETTER.match(text)
        letter = named[-1] if named else leading.group(1) if leading else ""
        return letter if letter and letter in letters(len(choices)) else text
    if answer_type in ("integer", "float"):
        value = parse_number(text)
        return text if value is None else str(value)
    if answer_type == "list":
        lists = LIST.findall(text)
        return lists[-1] if lists else text
    return text


def normalize_answer(extraction: str, choices: Sequence[str] | None, answer_type: str,
                     precision: int | None) -> str | None:
    """The authors' normalisation (``normalize_extracted_answer``); None when it fails or the answer is empty.

    >>> options = ["3/11", "8/11"]
    >>> normalize_answer("(b) 8/11", options, "text", None), normalize_answer("8/1", options, "text", None)
    ('8/11', '8/11')
    >>> normalize_answer("3.7", None, "integer", None), normalize_answer("1.249", None, "float", 2)
    ('3', '1.25')
    """
    extraction = str(extraction).strip()
    if not extraction:
        return None
    if choices:
        if match := CHOICE_IN_PARENS.search(extraction):
            extraction = match.group(1).upper()
        options = letters(len(choices))
        if extraction in options:
            return choices[options.index(extraction)]
        return min(choices, key=lambda choice: edit_distance(extraction, choice))
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))  # type: ignore[arg-type]
    except (ValueError, TypeError, OverflowError):
        return None
    return extraction


def grade(prediction: str, task: Task) -> Grade:
    """MathVista's score for a response (its ``\\boxed{}`` content when present); registered as
    ``"mathvista"``."""
    answer_type, precision = task.metadata["answer_type"], task.metadata["precision"]
    extraction = extract_answer(answer_text(prediction), task.choices, answer_type)
    normalized = normalize_answer(extraction, task.choices, answer_type, precision)
    expected = task.choices[letters(len(task.choices)).index(task.answer)] if task.choices else task.answer
    correct = normalized == expected
    return Grade(float(correct), correct, normalized or "")


GRADERS[NAME] = grade


def aggregate(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The authors' report from per-question results (``correct`` and the task's ``metadata`` each):
    ``accuracy`` over all questions and, under ``by``, per value of each of :data:`BREAKDOWN_FIELDS`.
    Fractions in [0, 1]."""
    results = list(results)
    if not results:
        raise ValueError("no results to aggregate")
    accuracy = fmean(float(bool(result["correct"])) for result in results)
    return {"accuracy": accuracy, "questions": len(results),
            "by": {field: accuracy_by(results, field) for field in BREAKDOWN_FIELDS}}


# --- loading -----------------------------------------------------------------------------------------------

def prompt(record: dict[str, Any], query: str | None, answer_type: str, precision: int | None) -> str:
    """The authors' query without its "Choices:" block (built from the record when there is none)."""
    if query:
        return query.split("\nChoices:\n")[0]
    unit = f" (Unit: {record['unit']})" if record["unit"] else ""
    return f"Hint: {HINTS[answer_type, precision]}\nQuestion: {record['question']}{unit}"


def make_task(root: Path, record: Any, image: str, query: str | None, where: str) -> Task:
    error = benchmark(NAME).error
    if not isinstance(record, dict):
        raise error(f"{where} is not a JSON object", root)
    require_fields(NAME, root, record, FIELDS, where)
    metadata = record["metadata"]
    if not isinstance(metadata, dict):
        raise error(f"{where}: metadata is not an object", root)
    require_fields(NAME, root, metadata, CATEGORY_FIELDS, f"{where} metadata")
    question_type, answer_type, choices = record["question_type"], record["answer_type"], record["choices"]
    try:
        precision = None if record["precision"] is None else int(record["precision"])  # HF stores 2.0
    except (TypeError, ValueError):
        raise error(f"{where}: precision {record['precision']!r} is not a number", root) from None
    if ((answer_type, precision if answer_type == "float" else None) not in HINTS
            or (answer_type == "text") != (question_type == "multi_choice")):
        raise error(f"{where}: answer_type {answer_type!r} (precision {precision!r}) does not fit "
                    f"question_type {question_type!r}", root)
    if question_type == "multi_choice":
        if not isinstance(choices, list) or len(choices) < 2 or record["answer"] not in choices:
            raise error(f"{where}: a multi_choice question needs a list of choices holding its answer", root)
        choices = tuple(str(choice) for choice in choices)
        answer = letters(len(choices))[choices.index(record["answer"])]
    elif question_type == "free_form":
        choices, answer = None, str(record["answer"])
    else:
        raise error(f"{where}: unknown question_type {question_type!r}", root)
    return Task(id=str(record["pid"]), question=prompt(record, query, answer_type, precision), answer=answer,
                images=(image,), grader=NAME, choices=choices, split="test",
                metadata={**metadata, "question_type": question_type, "answer_type": answer_type,
                          "precision": precision, "unit": record["unit"]})


def github_tasks(root: Path, path: Path) -> Iterator[Task]:
    problems = read_json(NAME, root, path)
    if not isinstance(problems, dict):
        raise benchmark(NAME).error(f"{path} is not an object keyed by pid", root)
    query_path = path.with_name("query.json")
    queries = read_json(NAME, root, query_path) if query_path.is_file() else {}
    if not isinstance(queries, dict):
        raise benchmark(NAME).error(f"{query_path} is not an object keyed by pid", root)
    for pid, record in problems.items():
        where = f"{path.name} pid {pid}"
        if not isinstance(record, dict) or not isinstance(record.get("image"), str) or not record["image"]:
            raise benchmark(NAME).error(f"{where} lacks the field image", root)
        image = require(NAME, root, str((path.parent / record["image"]).relative_to(root)))
        yield make_task(root, record, str(image), queries.get(pid), where)


def parquet_tasks(root: Path, paths: Sequence[Path]) -> Iterator[Task]:
    for path in paths:
        for number, record in enumerate(read_parquet(NAME, root, path), 1):
            where = f"{path.name} row {number}"
            require_fields(NAME, root, record, ("decoded_image",), where)
            yield make_task(root, record, cached_image(NAME, root, record["decoded_image"], where),
                            record.get("query"), where)


@public_benchmark(NAME, "MathVista (testmini)", layout="""
    data/testmini.json          {pid: record} (GitHub lupantech/MathVista)
    data/images/<pid>.jpg       (images.zip from Hugging Face, unpacked inside data/)
    data/query.json             optional: {pid: prompt}
  or
    data/testmini-*.parquet     (Hugging Face AI4Math/MathVista, images embedded)""")
def load(root: Path) -> TaskSet:
    """The 1,000 testmini questions (``data/testmini.json`` when present, else the Parquet files)."""
    parquet = sorted((root / "data").glob("testmini-*.parquet"))
    if parquet and not (root / "data" / "testmini.json").is_file():
        tasks = list(parquet_tasks(root, parquet))
    else:
        tasks = list(github_tasks(root, require(NAME, root, "data/testmini.json")))
    if not tasks:
        raise benchmark(NAME).error("the annotation file holds no questions", root)
    return TaskSet(NAME, tasks, benchmark(NAME).description)
