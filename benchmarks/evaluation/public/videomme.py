"""Video-MME (Fu et al., CVPR 2025): 2,700 four-option questions about 900 videos of short (< 2 min), medium
(4-15 min) and long (30-60 min) duration, read from the Hugging Face release ``lmms-lab/Video-MME`` with its
zips unpacked in place::

    video-mme/
      videomme/test-00000-of-00001.parquet   (one row a question)
      data/fFjv93ACGo8.mp4                   (videos_chunked_01..20.zip unpacked here: data/<videoID>.mp4;
                                              videos/<videoID>.mp4, .MP4 and .mkv are accepted too)
      subtitle/fFjv93ACGo8.srt               (optional: subtitle.zip unpacked here; 744 of the 900 videos)

A row is ``{"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity &
History", "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8", "question_id":
"001-1", "task_type": "Counting Problem", "question": "...", "options": ["A. Apples.", "B. Candles.", ...],
"answer": "C"}``.

The question starts with the authors' instruction (the official prompt without subtitles; the options follow
it as the task's ``choices``). Subtitles stay out of the question: the official protocol gives only the lines
at the sampled frames' times, which only the policy knows, so the ``.srt`` path is in ``metadata["subtitle"]``
(None when the video has none).

Scoring follows the authors' evaluation script: the answer is the first capital A, B, C or D left in the
response after a few answer phrases are deleted (:func:`official_letter`). A response without one is left out
of the accuracy, not counted wrong; :func:`aggregate` gives the authors' breakdowns.

Example::

    tasks = load_public_benchmark("video-mme", "/data/video-mme")
    tasks[0].id, tasks[0].choices[2], tasks[0].answer, tasks[0].metadata["duration"]
    # -> ('001-1', 'Berries.', 'C', 'short')
    tasks[0].grade("The best answer is C").correct    # -> True
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
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
    read_parquet,
    require,
    require_fields,
)

NAME = "video-mme"
INSTRUCTION = ("Select the best answer to the following multiple-choice question based on the video. Respond "
               "with only the letter (A, B, C, or D) of the correct option.")
FIELDS = ("video_id", "duration", "domain", "sub_category", "videoID", "question_id", "task_type", "question",
          "options", "answer")
VIDEO_FOLDERS = ("data", "videos")
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv")
"""lmms-eval also tries .MP4 and .mkv; whether the release has such files is unconfirmed."""

ANSWER_PHRASES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                  "The best option isThe correct option is", "Best answer:Best option:", "Answer:", "Option:",
                  "The correct answer", "The correct option")
"""Deleted from a response, in this order, by the authors' script. Two entries are joined because of missing
commas there, so "The best option is" and "Best answer:" on their own stay (and their B counts)."""

BREAKDOWNS = ("domain", "sub_category", "task_type")


# --- scoring -----------------------------------------------------------------------------------------------

def official_letter(response: str) -> str:
    """The authors' answer extraction: the first capital A-D after deleting :data:`ANSWER_PHRASES`, or "" (their
    script's extra "over 10 words and no A-D" check gives "" in the same cases).

    >>> official_letter("The best answer is C."), official_letter("(b)"), official_letter("Based on it, C")
    ('C', '', 'B')
    """
    text = response.strip()
    for phrase in ANSWER_PHRASES:
        text = text.replace(phrase, "")
    found = re.search("[ABCD]", text)
    return found.group(0) if found else ""


def grade(prediction: str, task: Task) -> Grade:
    """1 when the official letter of the (unboxed) response is the answer; an empty ``extracted`` marks a
    response the authors leave out of the accuracy."""
    return letter_grade(official_letter(answer_text(prediction)), task, unread="no capital A-D in the response")


def accuracy(results: Sequence[Mapping[str, Any]]) -> float:
    """Correct over answered, 0 when none is answered (the authors' rule)."""
    answered = [result for result in results if result["answered"]]
    return sum(bool(result["correct"]) for result in answered) / len(answered) if answered else 0.0


def breakdown(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Overall accuracy and accuracy per domain, sub-category and task type."""
    table: dict[str, Any] = {"overall": accuracy(results)}
    for key in BREAKDOWNS:
        groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for result in results:
            groups[result["metadata"][key]].append(result)
        table[key] = {group: accuracy(members) for group, members in sorted(groups.items())}
    return table


GRADERS["video-mme"] = grade


def aggregate(results: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The authors' accuracies from per-question results (``correct`` and the task's ``metadata`` each).

    A result may carry ``extracted`` (the grade's letter) or ``response`` (the answer the grader was given);
    when the letter is empty the question is unanswered and, as in the authors' script, left out of every
    denominator. A result with neither counts as answered. Returns fractions in [0, 1] (the authors print them
    times 100): ``overall`` and per ``domain`` / ``sub_category`` / ``task_type`` over all durations (pooled
    over questions), the same per duration under ``duration``, the counts ``questions``, ``answered`` and
    ``unanswered``, and ``overall_all_questions`` (correct over all questions: lmms-eval's number, where an
    unanswered question is wrong).
    """
    marked = []
    for result in results:
        if "extracted" in result:
            answered = bool(result["extracted"])
        elif "response" in result:
            answered = bool(official_letter(answer_text(str(result["response"]))))
        else:
            answered = True
        marked.append({**result, "answered": answered})
    if not marked:
        raise ValueError("no results to aggregate")
    durations: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for result in marked:
        durations[result["metadata"]["duration"]].append(result)
    order = {"short": 0, "medium": 1, "long": 2}
    answered = sum(result["answered"] for result in marked)
    return {**breakdown(marked),
            "duration": {duration: breakdown(durations[duration])
                         for duration in sorted(durations, key=lambda d: (order.get(d, 3), d))},
            "overall_all_questions": sum(bool(result["correct"]) for result in marked) / len(marked),
            "questions": len(marked), "answered": answered, "unanswered": len(marked) - answered}


# --- loading -----------------------------------------------------------------------------------------------

def find_video(root: Path, video: str, question: str) -> Path:
    for folder in VIDEO_FOLDERS:
        for suffix in VIDEO_SUFFIXES:
            if (path := root / folder / f"{video}{suffix}").is_file():
                return path
    raise benchmark(NAME).error(f"the video data/{video}.mp4 of question {question} is missing (looked for "
                                f"{' / '.join(VIDEO_FOLDERS)} x {' / '.join(VIDEO_SUFFIXES)})", root)


def make_task(root: Path, record: dict[str, Any], where: str, videos: dict[str, Path]) -> Task:
    require_fields(NAME, root, record, FIELDS, where)
    options, answer = record["options"], str(record["answer"]).strip()
    if not isinstance(options, Sequence) or isinstance(options, str) or len(options) < 2:
        raise benchmark(NAME).error(f"{where}: options is not a list of options ({options!r})", root)
    if answer not in letters(len(options)):
        raise benchmark(NAME).error(f"{where}: answer {answer!r} is not one of the option letters", root)
    if not isinstance(record["question"], str):
        raise benchmark(NAME).error(f"{where}: the question is not text", root)
    question_id, video_key = str(record["question_id"]), str(record["videoID"])
    if video_key not in videos:
        videos[video_key] = find_video(root, video_key, question_id)
    subtitle = root / "subtitle" / f"{video_key}.srt"
    metadata = {key: record[key] for key in ("duration", "domain", "sub_category", "task_type", "video_id")}
    metadata.update(youtube_id=video_key, url=record.get("url"),
                    subtitle=str(subtitle) if subtitle.is_file() else None)
    return Task(id=question_id, question=f"{INSTRUCTION}\n{record['question']}", answer=answer,
                videos=(str(videos[video_key]),), grader="video-mme", choices=option_texts(options), split="test",
                metadata=metadata)


@public_benchmark(NAME, "Video-MME", video=True, layout="""
    videomme/test-00000-of-00001.parquet   (the questions)
    data/<videoID>.mp4                     (videos_chunked_*.zip unpacked here; videos/<videoID>.mp4 also read)
    subtitle/<videoID>.srt                 (optional: subtitle.zip unpacked here)""")
def load(root: Path) -> TaskSet:
    """All Video-MME questions, in the file's order."""
    path = require(NAME, root, "videomme/test-00000-of-00001.parquet")
    videos: dict[str, Path] = {}
    tasks = [make_task(root, record, f"{path.name} row {number}", videos)
             for number, record in enumerate(read_parquet(NAME, root, path), 1)]
    if not tasks:
        raise benchmark(NAME).error(f"{path} holds no questions", root)
    return TaskSet(NAME, tasks, benchmark(NAME).description)
