"""DynaMath (Zou et al. 2025): 501 seed questions, each a program that draws variants with other numbers and
images, evaluated on the authors' sample of 10 variants per seed (5,010 questions), read from either release::

    dynamath/
      trial1/dataset.json ... trial10/dataset.json    GitHub DynaMath/DynaMath, "samples and result/10trials"
      trial1/image/image<seed>.png ...                   (the trial folders may also stay under
                                                          "samples and result/10trials/")
    or
      data/sample1-*.parquet ... data/sample10-*.parquet Hugging Face DynaMath/DynaMath_Sample, splits
                                                         sample_variant1..10 (images embedded)

A trial's ``dataset.json`` maps the seed number to ``{"question": "What is the period of this function ...?
Answer the question with a floating-point number.", "answer": "2.0944", "image": "image/image1.png",
"answer_type": "float", "subject": "analytic geometry", "level": "high school"}``; the Parquet rows have the
columns ``id`` (read as the seed), ``question``, ``decoded_image``, ``ground_truth``, ``answer_type``,
``subject`` and ``knowledge_level``. Answer types are ``float``, ``multiple choice`` (the options are inline
in the question, "Choices: (A) yes (B) no", and the answer is a letter) and ``text``. Task ids are
``Q<seed>-v<variant>``; the seed and the variant number are in ``metadata``. The question ends with the
authors' instruction for floats or option letters.

Scoring follows the authors' ``evaluation/*_json_eval.py`` on the short answer (the ``\\boxed{}`` content, or
the ``"short answer"`` of a JSON reply as the authors ask for): floats are correct within 0.001 of the answer
(only the first space-separated word counts; "2π" is read as 2·π), multiple choice when a one-character answer
equals the letter or the letter is among the first three characters ("(B) no"), text when the answer contains
the ground truth (case-sensitive). :func:`aggregate` gives the average-case and worst-case accuracy.

Example::

    tasks = load_public_benchmark("dynamath", "/data/dynamath")
    task = tasks[tasks.index_of("Q1-v1")]
    task.answer, task.metadata["seed"], task.metadata["variant"]   # -> ('2.0944', '1', 1)
    task.grade(r"\\boxed{2.094}").correct                            # -> True
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from statistics import fmean
from typing import Any

from pyvision_env.graders import GRADERS, Grade, answer_text
from pyvision_env.tasks import Task, TaskSet

from .common import (
    accuracy_by,
    benchmark,
    cached_image,
    public_benchmark,
    read_json,
    read_parquet,
    require,
    require_fields,
)

NAME = "dynamath"

GITHUB_FIELDS = ("question", "answer", "image", "answer_type", "subject", "level")
PARQUET_FIELDS = ("id", "question", "decoded_image", "ground_truth", "answer_type", "subject",
                  "knowledge_level")
TRIAL_FOLDERS = ("", "samples and result/10trials")
TRIAL = re.compile(r"trial(\d+)")
SAMPLE_FILE = re.compile(r"sample(?:_variant)?(\d+)-.*\.parquet")  # mirrors name them sample_variant<k>-*
LETTER = re.compile(r"[A-Z]")
TOLERANCE = 0.001

INSTRUCTIONS = {
    "float": "Please answer in a floating-point number. Format the answer as a three-digit floating-point "
             "number.",
    "multiple choice": "Answer with the corresponding choice option, such as 'A', 'B', 'C', or 'D'.",
}
"""The authors' instructions for the short answer (from their prompt and its JSON guide), by answer type."""


# --- scoring -----------------------------------------------------------------------------------------------

def short_answer(response: str) -> str:
    """The boxed content (else the response), or the ``"short answer"`` of a JSON object in it.

    >>> short_answer(r"\\boxed{B}"), short_answer('{"solution": "...", "short answer": "3.142"}')
    ('B', '3.142')
    """
    text = answer_text(response)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        try:
            reply = json.loads(text[start:end + 1].replace("\\", ""), strict=False)
        except json.JSONDecodeError:
            return text
        if isinstance(reply, dict) and "short answer" in reply:
            return str(reply["short answer"])
    return text


def float_value(answer: str) -> float:
    """The authors' reading of a float answer: its first space-separated word, ``kπ`` as k·π.

    >>> float_value("2.094 radians"), round(float_value("2π"), 4)
    (2.094, 6.2832)
    """
    if not answer.isdigit():
        answer = answer.split(" ")[0]
    if "π" in answer:
        return float(answer.split("π")[0]) * math.pi
    return float(answer)


def matches(answer: str, truth: str, answer_type: str) -> bool:
    """The authors' per-type comparison of a short answer with the ground truth."""
    if answer_type == "float":
        try:
            return abs(float_value(answer) - float(truth)) <= TOLERANCE
        except ValueError:
            return False
    if answer_type == "multiple choice":
        return answer == truth if len(answer) == 1 else truth in answer[:3]
    return truth in answer


def grade(prediction: str, task: Task) -> Grade:
    """DynaMath's score for a response; registered as ``"dynamath"``."""
    answer = short_answer(prediction)
    correct = matches(answer, task.answer, task.metadata["answer_type"])
    return Grade(float(correct), correct, answer)


GRADERS[NAME] = grade


def average_and_worst(results: list[Mapping[str, Any]]) -> dict[str, float]:
    """``average``: the share of questions answered right; ``worst``: the share of seeds answered right in
    every variant there is."""
    by_seed: dict[str, list[bool]] = defaultdict(list)
    for result in results:
        by_seed[str(result["metadata"]["seed"])].append(bool(result["correct"]))
    return {"average": fmean(right for outcomes in by_seed.values() for right in outcomes),
            "worst": fmean(all(outcomes) for outcomes in by_seed.values())}


def aggregate(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The authors' metrics from per-question results (``correct`` and the task's ``metadata`` each).

    ``average`` (A_avg): accuracy over all questions; ``worst`` (A_wst): the share of seeds whose variants
    are all right; ``robustness``: A_wst / A_avg (the paper's reasoning robustness, taken from the paper's
    description, not from released code); ``by_variant``: the accuracy of each variant; ``by_subject`` and
    ``by_level``: average and worst per category. Fractions in [0, 1]. On a partial run a seed's worst case is
    over the variants present.
    """
    results = list(results)
    if not results:
        raise ValueError("no results to aggregate")
    overall = average_and_worst(results)
    groups: dict[str, dict[str, list]] = {"subject": defaultdict(list), "level": defaultdict(list)}
    for result in results:
        for field, members in groups.items():
            members[str(result["metadata"][field])].append(result)
    return {**overall, "robustness": overall["worst"] / overall["average"] if overall["average"] else 0.0,
            "questions": len(results), "seeds": len({str(result["metadata"]["seed"]) for result in results}),
            "by_variant": accuracy_by(results, "variant"),
            **{f"by_{field}": {value: average_and_worst(group) for value, group in sorted(members.items())}
               for field, members in groups.items()}}


# --- loading -----------------------------------------------------------------------------------------------

def make_task(root: Path, seed: str, variant: int, record: dict[str, Any], image: str, where: str) -> Task:
    error = benchmark(NAME).error
    answer_type, truth = record["answer_type"], str(record["answer"]).strip()
    if answer_type == "float":
        try:
            float(truth)
        except ValueError:
            raise error(f"{where}: the float answer {truth!r} is not a number", root) from None
    if answer_type == "multiple choice" and not LETTER.fullmatch(truth):
        raise error(f"{where}: the multiple-choice answer {truth!r} is not a letter", root)
    if not isinstance(record["question"], str):
        raise error(f"{where}: the question is not text", root)
    instruction = INSTRUCTIONS.get(answer_type)
    question = f"{record['question']}\n{instruction}" if instruction else record["question"]
    return Task(id=f"Q{seed}-v{variant}", question=question, answer=truth, images=(image,), grader=NAME,
                split="test", metadata={"seed": seed, "variant": variant, "answer_type": answer_type,
                                        "subject": record["subject"], "level": record["level"]})


def trial_tasks(root: Path, folders: dict[int, Path]) -> Iterator[Task]:
    for variant, folder in folders.items():
        path = require(NAME, root, str((folder / "dataset.json").relative_to(root)))
        questions = read_json(NAME, root, path)
        if not isinstance(questions, dict) or not questions:
            raise benchmark(NAME).error(f"{path} is not a non-empty object keyed by seed", root)
        for seed, record in questions.items():
            where = f"{folder.name}/dataset.json seed {seed}"
            if not isinstance(record, dict):
                raise benchmark(NAME).error(f"{where} is not a JSON object", root)
            require_fields(NAME, root, record, GITHUB_FIELDS, where)
            image = require(NAME, root, str((folder / str(record["image"])).relative_to(root)))
            yield make_task(root, str(seed), variant, record, str(image), where)


def parquet_tasks(root: Path, files: dict[int, list[Path]]) -> Iterator[Task]:
    for variant, paths in files.items():
        for path in paths:
            for number, row in enumerate(read_parquet(NAME, root, path), 1):
                where = f"{path.name} row {number}"
                require_fields(NAME, root, row, PARQUET_FIELDS, where)
                record = {**row, "answer": row["ground_truth"], "level": row["knowledge_level"]}
                image = cached_image(NAME, root, row["decoded_image"], where)
                yield make_task(root, str(row["id"]), variant, record, image, where)


def trial_folders(root: Path) -> dict[int, Path]:
    """``{variant: trial<k> folder}`` from the first place that has any."""
    for base in TRIAL_FOLDERS:
        found = {int(match.group(1)): path for path in (root / base).glob("trial*")
                 if path.is_dir() and (match := TRIAL.fullmatch(path.name))}
        if found:
            return dict(sorted(found.items()))
    return {}


def sample_files(root: Path) -> dict[int, list[Path]]:
    """``{variant: its Parquet files}`` under ``data/``."""
    found: dict[int, list[Path]] = defaultdict(list)
    for path in sorted((root / "data").glob("sample*.parquet")):
        if match := SAMPLE_FILE.fullmatch(path.name):
            found[int(match.group(1))].append(path)
    return dict(sorted(found.items()))


@public_benchmark(NAME, "DynaMath (10 variants)", layout="""
    trial<k>/dataset.json + trial<k>/image/image<seed>.png, k = 1..10
        (GitHub DynaMath/DynaMath; also accepted under "samples and result/10trials/")
  or
    data/sample<k>-*.parquet, k = 1..10   (Hugging Face DynaMath/DynaMath_Sample, images embedded)""")
def load(root: Path) -> TaskSet:
    """Every variant found (the trial folders when present, else the Parquet files)."""
    if folders := trial_folders(root):
        tasks = list(trial_tasks(root, folders))
    elif files := sample_files(root):
        tasks = list(parquet_tasks(root, files))
    else:
        raise benchmark(NAME).error("found neither trial<k>/ folders nor data/sample<k>-*.parquet", root)
    return TaskSet(NAME, tasks, benchmark(NAME).description)
