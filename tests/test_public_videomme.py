"""Video-MME loader on a generated copy of the release (the Parquet file, real tiny mp4 videos, an .srt file):
tasks, the authors' letter extraction, breakdowns that leave unanswered questions out, layout errors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.evaluation.public.common import LayoutError, benchmark
from benchmarks.evaluation.public.videomme import INSTRUCTION, aggregate, official_letter
from pyvision_env.video import PyAVVideoReader, write_video

QUESTIONS = "videomme/test-00000-of-00001.parquet"


def row(video_id, number, youtube_id, duration, domain, sub_category, task_type, question, options, answer):
    return {"video_id": video_id, "duration": duration, "domain": domain, "sub_category": sub_category,
            "url": f"https://www.youtube.com/watch?v={youtube_id}", "videoID": youtube_id,
            "question_id": f"{video_id}-{number}", "task_type": task_type, "question": question,
            "options": options, "answer": answer}


ROWS = [
    row("001", 1, "fFjv93ACGo8", "short", "Knowledge", "Humanity & History", "Counting Problem",
        "Which kind of the decoration has the largest number?",
        ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three kinds are of the same number."], "C"),
    row("001", 2, "fFjv93ACGo8", "short", "Knowledge", "Humanity & History", "OCR Problems",
        "What year is written on the sign?", ["A. 1605.", "B. 1705.", "C. 1805.", "D. 1905."], "A"),
    row("601", 1, "Xy_-z0123ab", "long", "Sports Competition", "Football", "Action Reasoning",
        "Why does the referee stop the game?",
        ["A. A foul.", "B. An injury.", "C. A goal.", "D. Half time."], "B"),
]


def write_release(root, rows=ROWS):
    """The unpacked release: the Parquet file, one video under data/ and one under videos/, one subtitle."""
    (root / "videomme").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / QUESTIONS)
    for folder, youtube_id in (("data", "fFjv93ACGo8"), ("videos", "Xy_-z0123ab")):
        write_video(root / folder / f"{youtube_id}.mp4", (np.full((24, 32, 3), 50 * i, np.uint8) for i in range(4)),
                    fps=2)
    (root / "subtitle").mkdir()
    (root / "subtitle" / "Xy_-z0123ab.srt").write_text(
        '1\n00:00:00,000 --> 00:00:01,500\n<font color="white" size=".72c">Kick off!</font>\n\n')
    return root


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def tasks(tmp_path):
    return benchmark("video-mme").load(write_release(tmp_path / "video-mme"))


def test_release_becomes_tasks(tasks, tmp_path):
    root = tmp_path / "video-mme"
    assert tasks.name == "video-mme" and [t.id for t in tasks] == ["001-1", "001-2", "601-1"]
    first, _, football = tasks
    assert first.question == f"{INSTRUCTION}\nWhich kind of the decoration has the largest number?"
    assert "Apples" not in first.question and "Kick off" not in football.question
    assert first.choices == ("Apples.", "Candles.", "Berries.", "The three kinds are of the same number.")
    assert [t.answer for t in tasks] == ["C", "A", "B"]
    assert first.metadata == {"duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
                              "task_type": "Counting Problem", "video_id": "001", "youtube_id": "fFjv93ACGo8",
                              "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "subtitle": None}
    assert football.metadata["subtitle"] == str(root / "subtitle" / "Xy_-z0123ab.srt")
    assert first.videos == (str(root / "data" / "fFjv93ACGo8.mp4"),)
    assert football.videos == (str(root / "videos" / "Xy_-z0123ab.mp4"),)
    for task in (first, football):
        reader = PyAVVideoReader(task.videos[0])
        assert (reader.info().frames, reader.info().height) == (4, 24)
        reader.close()


@pytest.mark.parametrize(("response", "letter", "correct"), [
    ("C", "C", True), ("C. Berries.", "C", True), ("The best answer is C", "C", True), ("Answer: C", "C", True),
    ("\\boxed{C}", "C", True), ("I think it is C", "C", True), ("A", "A", False),
    ("Based on the video, C", "B", False),   # the first capital A-D anywhere: the B of "Based"
    ("Best answer: C", "B", False),          # "Best answer:" alone is not deleted (a missing comma there)
    ("(c) berries", "", False), ("none of them", "", False), ("", "", False)])
def test_official_letter_extraction(tasks, response, letter, correct):
    grade = tasks[0].grade(response)
    assert (grade.extracted, grade.correct, grade.score) == (letter, correct, float(correct))
    assert official_letter(response) == letter
    assert bool(grade.detail) == (letter == "")


def test_aggregate_leaves_unanswered_questions_out(tasks):
    def result(task, response):
        grade = task.grade(response)
        return {"task_id": task.id, "score": grade.score, "correct": grade.correct, "metadata": task.metadata,
                "response": response}

    first, ocr, football = tasks
    results = [result(first, "C"), result(ocr, "B"), result(football, "B"), result(football, "no idea")]
    results[-1] = {**results[-1], "task_id": "601-2", "metadata": {**football.metadata, "task_type": "OCR Problems"}}
    scores = aggregate(results)
    assert (scores["questions"], scores["answered"], scores["unanswered"]) == (4, 3, 1)
    assert scores["overall"] == pytest.approx(2 / 3) and scores["overall_all_questions"] == 0.5
    assert scores["task_type"] == {"Action Reasoning": 1.0, "Counting Problem": 1.0, "OCR Problems": 0.0}
    assert scores["domain"] == {"Knowledge": 0.5, "Sports Competition": 1.0}
    assert scores["sub_category"] == {"Football": 1.0, "Humanity & History": 0.5}
    assert list(scores["duration"]) == ["short", "long"]
    assert scores["duration"]["short"]["overall"] == 0.5
    assert scores["duration"]["long"] == {"overall": 1.0, "domain": {"Sports Competition": 1.0},
                                          "sub_category": {"Football": 1.0},
                                          "task_type": {"Action Reasoning": 1.0, "OCR Problems": 0.0}}
    by_extracted = [{k: v for k, v in r.items() if k != "response"} | {"extracted": official_letter(r["response"])}
                    for r in results]
    assert aggregate(by_extracted) == scores
    without = aggregate([{k: v for k, v in r.items() if k != "response"} for r in results])
    assert without["answered"] == 4 and without["overall"] == 0.5   # nothing says a response was unparsable


def test_layout_errors_name_the_problem(tmp_path):
    load = benchmark("video-mme").load
    root = tmp_path / "vmme"
    root.mkdir()
    with pytest.raises(LayoutError, match=r"videomme/test-00000-of-00001.parquet not found(.|\n)*subtitle/"):
        load(root)
    write_release(root)
    (root / "videos" / "Xy_-z0123ab.mp4").unlink()
    with pytest.raises(LayoutError, match=r"the video data/Xy_-z0123ab\.mp4 of question 601-1 is missing"):
        load(root)
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in ROWS[0].items() if k != "task_type"}]), root / QUESTIONS)
    with pytest.raises(LayoutError, match=r"row 1 lacks the field\(s\) task_type"):
        load(root)
    for change, message in (({"answer": "E"}, "answer 'E' is not one of the option letters"),
                            ({"options": None}, "options is not a list")):
        pq.write_table(pa.Table.from_pylist([{**ROWS[0], **change}]), root / QUESTIONS)
        with pytest.raises(LayoutError, match=message):
            load(root)
    (root / QUESTIONS).write_bytes(b"PAR1 truncated")
    with pytest.raises(LayoutError, match="not a readable Parquet file"):
        load(root)
