"""Graders: score a model's final answer against a task's reference answer.

A grader is any callable ``grader(prediction: str, task) -> Grade``. The built-ins are named so a JSONL task
file can pick one (``"grader": "numeric"`` or ``{"name": "numeric", "rel_tol": 0.05}``):

===============  ================================================================================
``exact``        normalised exact match (case, spaces, punctuation, articles ignored; aliases allowed)
``choice``       multiple-choice letter (``B``, ``(B)``, ``B. cat``, or the option's text)
``numeric``      number within an absolute / relative tolerance
``mra``          mean relative accuracy over thresholds 0.50..0.95 (VSI-Bench numeric answers)
``llm-judge``    an OpenAI-compatible model judges equivalence (:class:`LLMJudge`)
===============  ================================================================================

Every grader first extracts the answer from ``\\boxed{...}`` when the prediction has one.

Example:
    >>> from pyvision_env.tasks import Task
    >>> grade = get_grader("numeric")("The count is \\\\boxed{12}", Task.minimal(answer="12"))
    >>> grade.correct, grade.score
    (True, 1.0)
"""

from __future__ import annotations

import inspect
import json
import math
import re
import string
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from typing import Protocol as Interface


class GradedTask(Interface):
    """What a grader reads of a task (a :class:`~pyvision_env.tasks.Task` has it all)."""

    id: str
    question: str
    answer: str
    choices: tuple[str, ...] | None
    metadata: Mapping[str, Any]


@dataclass(frozen=True)
class Grade:
    """``score`` in [0, 1]; ``correct`` is the binary outcome used by accuracy and the tool bonus."""

    score: float
    correct: bool
    extracted: str
    """The answer as the grader read it (after boxed extraction and normalisation)."""
    detail: str = ""


Grader = Callable[[str, GradedTask], Grade]


# --- answer extraction -----------------------------------------------------------------------------

def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None.

    >>> extract_boxed(r"so \\boxed{\\frac{1}{2}} and \\boxed{B}")
    'B'
    """
    found = None
    start = 0
    while (index := text.find("\\boxed{", start)) != -1:
        depth, position = 1, index + len("\\boxed{")
        while position < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[position], 0)
            position += 1
        if depth == 0:
            found = text[index + len("\\boxed{"):position - 1]
        start = index + 1
    return found


def answer_text(prediction: str) -> str:
    """The boxed content when there is one, else the prediction, stripped."""
    boxed = extract_boxed(prediction)
    return (boxed if boxed is not None else prediction).strip()


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation.replace(".", "").replace("-", ""))
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


def normalize(text: str) -> str:
    """Lower case, no LaTeX text wrappers, punctuation (except . and -), articles or extra spaces.

    >>> normalize("  The  RED sign! ")
    'red sign'
    """
    text = _LATEX_TEXT.sub(r"\1", str(text)).lower().translate(_PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split()).strip(". ")


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")


def parse_number(text: str) -> float | None:
    """The last number in the text (thousands separators, %, simple fractions ``a/b``), or None.

    >>> parse_number("about 1,250.5 px"), parse_number("3/4"), parse_number("none")
    (1250.5, 0.75, None)
    """
    text = str(text).replace("\\%", "%")
    fraction = re.search(r"([-+]?\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$", text.strip())
    if fraction and float(fraction.group(2)) != 0:
        return float(fraction.group(1)) / float(fraction.group(2))
    matches = _NUMBER.findall(text)
    if not matches:
        return None
    try:
        value = float(matches[-1].replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --- built-in graders ------------------------------------------------------------------------------

def exact_match(prediction: str, task: GradedTask) -> Grade:
    """Normalised exact match against the answer or any alias in ``task.metadata["aliases"]``."""
    got = normalize(answer_text(prediction))
    accepted = [task.answer, *task.metadata.get("aliases", [])]
    correct = any(got == normalize(str(option)) for option in accepted)
    return Grade(float(correct), correct, got)


_LETTER = re.compile(r"^\(?([A-Za-z])(?:[).:]|\s|$)")


def multiple_choice(prediction: str, task: GradedTask) -> Grade:
    """The chosen letter: ``B``, ``(B)``, ``B.``, ``B) text``, ``Answer: B``, or the exact option text."""
    got = answer_text(prediction)
    got = re.sub(r"^(?:the\s+)?(?:answer|option|choice)\s*(?:is)?\s*[:：]?\s*", "", got, flags=re.I).strip()
    letters = [chr(ord("A") + i) for i in range(len(task.choices or ()))]
    letter = None
    if match := _LETTER.match(got):
        letter = match.group(1).upper()
    elif task.choices:
        by_text = {normalize(option): letters[i] for i, option in enumerate(task.choices)}
        letter = by_text.get(normalize(got))
    expected = str(task.answer).strip().upper()
    if expected not in letters and task.choices:  # the answer was given as the option's text
        expected = {normalize(option): letters[i] for i, option in enumerate(task.choices)}.get(
            normalize(str(task.answer)), expected)
    correct = letter is not None and letter == expected
    return Grade(float(correct), correct, letter or got)


def numeric(prediction: str, task: GradedTask, abs_tol: float = 1e-6, rel_tol: float = 0.0) -> Grade:
    """Correct when ``|pred - answer| <= max(abs_tol, rel_tol * |answer|)``."""
    value, expected = parse_number(answer_text(prediction)), parse_number(str(task.answer))
    if expected is None:
        raise ValueError(f"task {task.id}: numeric grader needs a numeric answer, got {task.answer!r}")
    if value is None:
        return Grade(0.0, False, "", "no number in the answer")
    correct = abs(value - expected) <= max(abs_tol, rel_tol * abs(expected))
    return Grade(float(correct), correct, f"{value:g}")


MRA_THRESHOLDS = tuple(0.50 + 0.05 * i for i in range(10))


def mean_relative_accuracy(prediction: str, task: GradedTask) -> Grade:
    """VSI-Bench's MRA: mean over thresholds t of ``1[|pred - gt| / |gt| < 1 - t]``; correct when >= 0.5."""
    value, expected = parse_number(answer_text(prediction)), parse_number(str(task.answer))
    if expected is None or expected == 0:
        raise ValueError(f"task {task.id}: MRA needs a non-zero numeric answer, got {task.answer!r}")
    if value is None:
        return Grade(0.0, False, "", "no number in the answer")
    error = abs(value - expected) / abs(expected)
    score = sum(error < 1 - t for t in MRA_THRESHOLDS) / len(MRA_THRESHOLDS)
    return Grade(score, score >= 0.5, f"{value:g}")


@dataclass(frozen=True)
class CallableGrader:
    """Wrap ``fn(answer_text, task) -> bool | float`` as a grader (a float is the score; correct >= 0.5)."""

    fn: Callable[[str, Any], bool | float]

    def __call__(self, prediction: str, task: GradedTask) -> Grade:
        got = answer_text(prediction)
        value = self.fn(got, task)
        score = float(value)
        if not 0.0 <= score <= 1.0:
            raise ValueError(f"grader {self.fn!r} returned {value!r}; expected a bool or a score in [0, 1]")
        return Grade(score, score >= 0.5 if not isinstance(value, bool) else value, got)


@dataclass(frozen=True)
class LLMJudge:
    """Ask a model on any OpenAI-compatible endpoint whether the answer matches the reference.

    The judge must reply with ``CORRECT`` or ``INCORRECT``; anything else is an error (never a silent 0).
    ``base_url`` is e.g. ``http://127.0.0.1:8000/v1``; the API key is read from ``api_key`` when given.
    """

    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    prompt: str = ("You grade answers to visual questions. Question: {question}\nReference answer: {answer}\n"
                   "Candidate answer: {prediction}\nReply with exactly one word: CORRECT if the candidate "
                   "means the same as the reference, otherwise INCORRECT.")

    def __call__(self, prediction: str, task: GradedTask) -> Grade:
        got = answer_text(prediction)
        body = json.dumps({"model": self.model, "temperature": 0.0, "max_tokens": 8, "messages": [
            {"role": "user", "content": self.prompt.format(question=task.question, answer=task.answer,
                                                           prediction=got)}]}).encode()
        request = urllib.request.Request(self.base_url.rstrip("/") + "/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                reply = json.load(response)["choices"][0]["message"]["content"] or ""
        except (urllib.error.URLError, OSError, KeyError, IndexError, ValueError) as error:
            raise RuntimeError(f"LLM judge at {self.base_url} failed: {error}") from error
        verdict = reply.strip().upper().strip(".")
        if verdict not in ("CORRECT", "INCORRECT"):
            raise RuntimeError(f"LLM judge replied {reply!r}; expected CORRECT or INCORRECT")
        correct = verdict == "CORRECT"
        return Grade(float(correct), correct, got, f"judge: {reply.strip()}")


# --- lookup by name ---------------------------------------------------------------------------------

GRADERS: dict[str, Callable[..., Any]] = {
    "exact": exact_match, "choice": multiple_choice, "numeric": numeric, "mra": mean_relative_accuracy,
    "llm-judge": LLMJudge,
}


def get_grader(spec: str | Mapping[str, Any] | Callable | None) -> Grader:
    """A grader from a name, a ``{"name": ..., **params}`` mapping, or a callable (returned as is).

    >>> from pyvision_env.tasks import Task
    >>> get_grader({"name": "numeric", "rel_tol": 0.1})("9.5", Task.minimal(answer="10")).correct
    True
    """
    if spec is None:
        return exact_match
    if callable(spec):
        return spec
    if isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping) and "name" in spec:
        params = dict(spec)
        name = params.pop("name")
    else:
        raise ValueError(f"a grader is a name, a mapping with 'name', or a callable; got {spec!r}")
    if name not in GRADERS:
        raise ValueError(f"unknown grader {name!r}; known: {sorted(GRADERS)}")
    factory = GRADERS[name]
    try:
        inspect.signature(factory).bind(*(() if name == "llm-judge" else ("", None)), **params)
    except TypeError as error:
        raise ValueError(f"bad parameters for grader {name!r}: {error}") from None
    if name == "llm-judge":
        return factory(**params)
    if not params:
        return factory
    return lambda prediction, task: factory(prediction, task, **params)

