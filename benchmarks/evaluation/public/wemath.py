"""We-Math testmini (Qiao et al. 2024): 525 composite visual math problems (360 two-step, 165 three-step),
each asked whole and as its one-step sub-problems, 1,740 multiple-choice questions in all, read from the
release::

    wemath/
      testmini.json                  a list of records (data/testmini.json in the GitHub repo We-Math/We-Math)
      2steps/image/<n>-1.png, <n>-2.png, <n>-multi.png
      3steps/image/<n>-1.png, <n>-2.png, <n>-3.png, <n>-multi.png

A record is ``{"ID": "2steps_1", "split": "testmini", "knowledge concept": "Conversion Rates and ...",
"question": "... OA = ( ) m, AB = ( ) m", "option": "A. 300, 400;B. 400, 300;C. 3000, 4000;D. 4000, 3000;
E. No correct answer", "answer": "C", "image_path": "2steps/image/1-1.png", "key": "2steps_1",
"question number": 1, "knowledge concept description": "..."}``. ``ID`` names the composite problem and
``key`` the step (``2steps_1``, ``2steps_2``, ``2steps_multi``, ``3steps_1`` ... ``3steps_multi``); the
Hugging Face copy of testmini.json spells three-step ids ``3stpes_<n>``, read here as ``3steps_<n>``. Task
ids are ``<ID>-<step>`` (``2steps_1-1``, ``2steps_1-multi``); the options become ``choices`` and the answer
stays a letter.

Scoring follows ``evaluation/four_dimensional_metrics.py``: the answer is the text after the last "Answer"
(case-sensitive) with ``<``, ``>``, ``:`` and ``.`` removed, counted only when its first character is a letter
A-H (so "<Answer>: <<B>>" gives B and "Answer: (B)" gives nothing). Here it is read from the ``\\boxed{}``
content when there is one. :func:`aggregate` gives the four-dimensional metrics (IK, IG, CM, RM), the scores
and the one-, two- and three-step accuracies.

Example::

    tasks = load_public_benchmark("wemath", "/data/wemath")
    task = tasks[tasks.index_of("2steps_1-1")]
    task.choices[:2], task.answer, task.metadata["step"]   # -> (('300, 400', '400, 300'), 'C', '1')
    task.grade("<Thought process>: ... <Answer>: <<C>>").correct   # -> True
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from statistics import fmean
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

NAME = "wemath"

FIELDS = ("ID", "knowledge concept", "question", "option", "answer", "image_path", "key", "question number")
PROBLEM_ID = re.compile(r"([23])st(?:ep|pe)s_(\d+)")  # "3stpes_<n>" in the Hugging Face copy
STEP_KEY = re.compile(r"([23])st(?:ep|pe)s_(1|2|3|multi)")
OPTION_START = re.compile(r"\s*;\s*(?=[A-H]\.)")
ANSWER_LETTERS = "ABCDEFGH"


# --- scoring -----------------------------------------------------------------------------------------------

def extract_letter(response: str) -> str | None:
    """The authors' answer extraction.

    >>> extract_letter("<Thought process>: ... <Answer>: <<B>>"), extract_letter("Answer: (B)")
    ('B', None)
    """
    text = re.sub(r"[<>:.]", "", response.split("Answer")[-1].strip()).strip()
    return text[0] if text and text[0] in ANSWER_LETTERS else None


def grade(prediction: str, task: Task) -> Grade:
    """1 when the extracted letter is the answer; registered as ``"wemath"``."""
    return letter_grade(extract_letter(answer_text(prediction)), task)


GRADERS[NAME] = grade


def aggregate(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The authors' metrics from per-question results (``correct`` and the task's ``metadata`` each).

    Per composite problem, with s_i its sub-problems' correctness and m its own:

    * IK (insufficient knowledge): some s_i wrong and m wrong;
    * IG (inadequate generalisation): all s_i right and m wrong;
    * CM (complete mastery): m right and all s_i right (strict) or some s_i right (loose);
    * RM (rote memorisation): m right and some s_i wrong (strict) or all s_i wrong (loose).

    IK, IG and CM are shares of the problems, RM is ``RM / (CM + RM)``, and the score is
    ``(N - 0.5 IG - RM - IK) / N`` with counts (``score_strict`` with strict RM, ``score_loose`` with loose),
    N the number of problems whose questions are all in ``results`` (525 on a full run; the authors hard-code
    525; ``incomplete`` counts the others, which are left out). ``S1`` is the accuracy on all one-step
    questions, ``S2`` and ``S3`` on the two- and three-step composite questions. Fractions in [0, 1].
    """
    outcomes: dict[str, dict[str, bool]] = defaultdict(dict)
    sizes: dict[str, int] = {}
    by_level: dict[str, list[float]] = defaultdict(list)
    for result in results:
        metadata = result["metadata"]
        problem, step, steps = metadata["problem_id"], metadata["step"], metadata["steps"]
        outcomes[problem][step] = bool(result["correct"])
        sizes[problem] = steps
        by_level["S1" if step != "multi" else f"S{steps}"].append(float(bool(result["correct"])))
    complete = {problem: outcome for problem, outcome in outcomes.items()
                if set(outcome) == {*(str(i) for i in range(1, sizes[problem] + 1)), "multi"}}
    if not complete:
        raise ValueError("no composite problem has all its questions in the results")
    counts = dict.fromkeys(("IK", "IG", "CM_strict", "RM_strict", "CM_loose", "RM_loose"), 0)
    for outcome in complete.values():
        steps_right = [right for step, right in outcome.items() if step != "multi"]
        all_right, any_right = all(steps_right), any(steps_right)
        if outcome["multi"]:
            counts["CM_strict" if all_right else "RM_strict"] += 1
            counts["CM_loose" if any_right else "RM_loose"] += 1
        else:
            counts["IG" if all_right else "IK"] += 1
    total = len(complete)
    report: dict[str, Any] = {"problems": total, "incomplete": len(outcomes) - total, "counts": counts,
                              "IK": counts["IK"] / total, "IG": counts["IG"] / total}
    for kind in ("strict", "loose"):
        mastered, memorised = counts[f"CM_{kind}"], counts[f"RM_{kind}"]
        report[f"CM_{kind}"] = mastered / total
        report[f"RM_{kind}"] = memorised / (mastered + memorised) if mastered + memorised else 0.0
        report[f"score_{kind}"] = (total - 0.5 * counts["IG"] - memorised - counts["IK"]) / total
    report.update({level: fmean(scores) for level, scores in sorted(by_level.items())})
    return report


# --- loading -----------------------------------------------------------------------------------------------

def choices_of(root: Path, option: Any, where: str) -> tuple[str, ...]:
    """``"A. 300, 400;B. 400, 300; E. No ..."`` -> ``("300, 400", "400, 300", "No ...")``."""
    parts = OPTION_START.split(option.strip()) if isinstance(option, str) else []
    if len(parts) < 2 or [part[:2] for part in parts] != [f"{letter}." for letter in letters(len(parts))]:
        raise benchmark(NAME).error(f"{where}: cannot read the options {option!r} (expected 'A. ..;B. ..')",
                                    root)
    return option_texts(parts)


def make_task(root: Path, folder: Path, record: Any, where: str) -> Task:
    error = benchmark(NAME).error
    if not isinstance(record, dict):
        raise error(f"{where} is not a JSON object", root)
    require_fields(NAME, root, record, FIELDS, where)
    problem, key = PROBLEM_ID.fullmatch(str(record["ID"])), STEP_KEY.fullmatch(str(record["key"]))
    if not (problem and key and problem.group(1) == key.group(1)
            and (key.group(2) == "multi" or key.group(2) <= key.group(1))):
        raise error(f"{where}: ID {record['ID']!r} and key {record['key']!r} do not name a step of a 2- or "
                    "3-step problem", root)
    choices = choices_of(root, record["option"], where)
    if record["answer"] not in letters(len(choices)):
        raise error(f"{where}: the answer {record['answer']!r} is not one of the option letters", root)
    image = require(NAME, root, str((folder / str(record["image_path"])).relative_to(root)))
    steps, step = int(key.group(1)), key.group(2)
    problem_id = f"{steps}steps_{problem.group(2)}"
    return Task(id=f"{problem_id}-{step}", question=record["question"], answer=record["answer"],
                images=(str(image),), grader=NAME, choices=choices, split="test",
                metadata={"problem_id": problem_id, "step": step, "steps": steps,
                          "knowledge_concept": record["knowledge concept"],
                          "question_number": record["question number"]})


@public_benchmark(NAME, "We-Math (testmini)", layout="""
    testmini.json  or  data/testmini.json     list of records (We-Math/We-Math)
    2steps/image/<n>-1.png, <n>-2.png, <n>-multi.png              (next to testmini.json)
    3steps/image/<n>-1.png, <n>-2.png, <n>-3.png, <n>-multi.png""")
def load(root: Path) -> TaskSet:
    """The 1,740 testmini questions."""
    path = require(NAME, root, "testmini.json", "data/testmini.json")
    records = read_json(NAME, root, path)
    if not isinstance(records, list) or not records:
        raise benchmark(NAME).error(f"{path} is not a non-empty list of records", root)
    tasks = [make_task(root, path.parent, record, f"{path.name} record {number}")
             for number, record in enumerate(records, 1)]
    return TaskSet(NAME, tasks, benchmark(NAME).description)
