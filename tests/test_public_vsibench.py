"""VSI-Bench loader on generated copies of the release (test.jsonl, the original and Debiased Parquet files, real
tiny mp4 videos): tasks, the authors' first-word scoring and MRA, the macro overall score, layout errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.evaluation.public.common import LayoutError, benchmark
from benchmarks.evaluation.public.vsibench import (
    CHOICE_INSTRUCTION,
    NUMERIC_INSTRUCTION,
    aggregate,
    first_word,
    relative_accuracy,
)
from pyvision_env.video import PyAVVideoReader, write_video

RECORDS = [
    {"id": 0, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_counting",
     "question": "How many table(s) are in this room?", "ground_truth": "4", "options": None},
    {"id": 7, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "room_size_estimation",
     "question": "What is the size of this room (in square meters)?", "ground_truth": "30.9", "options": None},
    {"id": 1234, "dataset": "scannetpp", "scene_name": "7b6477cb95", "question_type": "obj_appearance_order",
     "question": "What will be the first-time appearance order of the following categories in the video: "
                 "laptop, bed, basket, shoes?", "ground_truth": "C",
     "options": ["A. basket, laptop, bed, shoes", "B. basket, bed, laptop, shoes", "C. bed, shoes, laptop, basket",
                 "D. laptop, bed, basket, shoes"]},
    {"id": 2001, "dataset": "scannet", "scene_name": "scene0011_00", "question_type": "object_rel_direction_easy",
     "question": "If I am standing by the stove and facing the tv, is the sofa to my left or right?",
     "ground_truth": "B", "options": ["A. left", "B. right"]},
]


def write_release(root, records=RECORDS, annotations="test.jsonl"):
    """The unpacked release: the annotation file and one 3-frame 32x24 video per scene."""
    root.mkdir(parents=True, exist_ok=True)
    if annotations.endswith(".jsonl"):
        (root / annotations).write_text("".join(json.dumps(record) + "\n" for record in records))
    else:
        pq.write_table(pa.Table.from_pylist(records), root / annotations)
    for record in records:
        video = root / record["dataset"] / f"{record['scene_name']}.mp4"
        if not video.exists():
            write_video(video, (np.full((24, 32, 3), 60 * i, np.uint8) for i in range(3)), fps=2)
    return root


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture
def tasks(tmp_path):
    return benchmark("vsi-bench").load(write_release(tmp_path / "vsi-bench"))


def test_jsonl_release_becomes_tasks(tasks, tmp_path):
    assert tasks.name == "vsi-bench" and [t.id for t in tasks] == ["0", "7", "1234", "2001"]
    counting, room, order, direction = tasks
    assert counting.question == f"How many table(s) are in this room?\n{NUMERIC_INSTRUCTION}"
    assert counting.answer == "4" and counting.choices is None
    assert room.answer == "30.9"
    assert order.choices == ("basket, laptop, bed, shoes", "basket, bed, laptop, shoes",
                             "bed, shoes, laptop, basket", "laptop, bed, basket, shoes")
    assert order.answer == "C" and order.question.endswith(f"shoes?\n{CHOICE_INSTRUCTION}")
    assert "A." not in order.question and direction.choices == ("left", "right") and direction.answer == "B"
    assert counting.metadata == {"question_type": "object_counting", "dataset": "arkitscenes",
                                 "scene_name": "41069025"}
    assert direction.videos == (str(tmp_path / "vsi-bench" / "scannet" / "scene0011_00.mp4"),)
    reader = PyAVVideoReader(order.videos[0])
    assert (reader.info().frames, reader.info().width) == (3, 32)
    reader.close()


def test_original_parquet_and_debiased_subset(tmp_path):
    original = benchmark("vsi-bench").load(write_release(tmp_path / "a", annotations="test-00000-of-00001.parquet"))
    assert [t.id for t in original] == ["0", "7", "1234", "2001"] and original[2].answer == "C"
    kept = [{**record, "pruned": False} for record in RECORDS[1:3]]
    debiased = benchmark("vsi-bench-debiased").load(
        write_release(tmp_path / "b", kept, annotations="test_debiased.parquet"))
    assert debiased.name == "vsi-bench-debiased" and [t.id for t in debiased] == ["7", "1234"]
    assert debiased[1].metadata["pruned"] is False and debiased[1].choices[0] == "basket, laptop, bed, shoes"


def test_multiple_choice_scoring_reads_the_first_word(tasks):
    order = tasks[2]
    for response in ("C", "c", "C.", "C. bed, shoes, laptop, basket", "\\boxed{C}"):
        assert order.grade(response).correct, response
    for response in ("(C)", "The answer is C", "B", ""):
        grade = order.grade(response)
        assert (grade.correct, grade.score) == (False, 0.0), response
    assert first_word("(C) bed") == "(C)"


@pytest.mark.parametrize(("response", "score"), [
    ("4", 1.0), ("4 tables", 1.0), ("5", 0.6), ("3", 0.6), ("6", 0.1), ("4.4", 0.9), ("3.6", 0.9), ("8", 0.0),
    ("four", 0.0), ("1.2m", 0.0), ("There are 4", 0.0), ("", 0.0), ("\\boxed{5}", 0.6)])
def test_numeric_scoring_is_mean_relative_accuracy(tasks, response, score):
    grade = tasks[0].grade(response)
    assert grade.score == pytest.approx(score) and grade.correct == (score >= 0.5)


def test_mra_counts_answers_on_a_threshold_as_the_authors_code_does():
    assert relative_accuracy(4.4, 4) == pytest.approx(0.9)  # error 0.1 passes t = 0.90 (<=, float as in numpy)
    assert relative_accuracy(5, 4) == pytest.approx(0.6)   # error 0.25 passes t = 0.75 (the paper's < gives 0.5)
    assert relative_accuracy(30.9 * 1.05, 30.9) == pytest.approx(0.9)


def test_aggregate_merges_direction_levels_then_averages_tasks():
    def result(number, question_type, score):
        return {"task_id": str(number), "score": score, "correct": score >= 0.5,
                "metadata": {"question_type": question_type}}

    results = [result(1, "object_counting", 1.0), result(2, "object_counting", 0.5),
               result(3, "object_rel_direction_easy", 1.0), result(4, "object_rel_direction_easy", 0.0),
               result(5, "object_rel_direction_medium", 1.0), result(6, "object_rel_direction_hard", 0.0),
               result(7, "route_planning", 1.0)]
    scores = aggregate(results)
    assert scores["question_types"]["object_rel_direction_easy"] == 0.5
    assert scores["tasks"] == {"object_counting": 0.75, "object_rel_direction": 0.5, "route_planning": 1.0}
    assert scores["overall"] == pytest.approx(0.75)          # (0.75 + (0.5 + 1 + 0) / 3 + 1) / 3
    assert scores["micro"] == pytest.approx(4.5 / 7) and scores["questions"] == 7
    with pytest.raises(ValueError, match="unknown VSI-Bench question type"):
        aggregate([result(8, "object_colour", 1.0)])


def test_layout_errors_name_the_problem(tmp_path):
    load = benchmark("vsi-bench").load
    root = tmp_path / "vsi"
    root.mkdir()
    with pytest.raises(LayoutError, match=r"test.jsonl or test-00000-of-00001.parquet not found(.|\n)*scannetpp/"):
        load(root)
    write_release(root)
    (root / "scannetpp" / "7b6477cb95.mp4").unlink()
    with pytest.raises(LayoutError, match=r"line 3: the video scannetpp/7b6477cb95.mp4 .* is missing"):
        load(root)
    (root / "test.jsonl").write_text(json.dumps(RECORDS[0]) + "\n{not json\n")
    with pytest.raises(LayoutError, match="line 2 is not JSON"):
        load(root)
    (root / "test.jsonl").write_text(json.dumps({k: v for k, v in RECORDS[0].items() if k != "scene_name"}))
    with pytest.raises(LayoutError, match=r"line 1 lacks the field\(s\) scene_name"):
        load(root)
    for change, message in (({"ground_truth": "E"}, "'E' is not one of the option letters"),
                            ({"options": None}, "needs a list of options"),
                            ({"question_type": "object_colour"}, "unknown question_type 'object_colour'")):
        (root / "test.jsonl").write_text(json.dumps({**RECORDS[3], **change}))
        with pytest.raises(LayoutError, match=message):
            load(root)
    (root / "test.jsonl").write_text(json.dumps({**RECORDS[0], "ground_truth": "four"}))
    with pytest.raises(LayoutError, match="'four' is not a non-zero number"):
        load(root)
    (root / "test.jsonl").unlink()
    (root / "test-00000-of-00001.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(LayoutError, match="not a readable Parquet file"):
        load(root)
    with pytest.raises(LayoutError, match=r"test_debiased\.parquet not found"):
        benchmark("vsi-bench-debiased").load(root)
