"""HR-Bench 4K/8K loaders on tiny TSV and Parquet fixtures: tasks, cached images, the exact-matching grader,
per-cycle averaging and layout errors."""

from __future__ import annotations

import base64
import csv
import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.evaluation.public import hrbench, load_public_benchmark
from benchmarks.evaluation.public.common import LayoutError

COLUMNS = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]


def encoded_image(color, fmt="JPEG"):
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), color).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def rows():
    """Two questions (one FSP, one FCP), each asked in two option orders, as in the release."""
    umbrella, signs = encoded_image("red"), encoded_image("blue", "PNG")
    question = "What is the color of the umbrella held by the woman?"
    compare = "Which sign is larger, the left one or the right one?"
    return [
        {"index": 0, "question": question, "answer": "B", "category": "single", "A": "Red", "B": "Blue",
         "C": "Green", "D": "Yellow", "cycle_category": "cycle1", "image": umbrella},
        {"index": 1, "question": compare, "answer": "A", "category": "cross", "A": "The left one",
         "B": "The right one", "C": "Same size", "D": "There is no sign", "cycle_category": "cycle1",
         "image": signs},
        {"index": 2, "question": question, "answer": "A", "category": "single", "A": "Blue", "B": "Green",
         "C": "Yellow", "D": "Red", "cycle_category": "cycle2", "image": umbrella},
        {"index": 3, "question": compare, "answer": "D", "category": "cross", "A": "The right one",
         "B": "Same size", "C": "There is no sign", "D": "The left one", "cycle_category": "cycle2",
         "image": signs},
    ]


def write_tsv(path, records, columns=COLUMNS):
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)


pytestmark = pytest.mark.usefixtures("private_cache")


def test_tsv_rows_become_tasks_with_cached_images(tmp_path, private_cache):
    root = tmp_path / "hr-bench-4k"
    root.mkdir()
    write_tsv(root / "hr_bench_4k.tsv", rows())
    tasks = load_public_benchmark("hr-bench-4k", root)
    assert tasks.name == "hr-bench-4k" and [t.id for t in tasks] == ["0", "1", "2", "3"]
    first = tasks[0]
    assert first.question == "What is the color of the umbrella held by the woman?"
    assert first.choices == ("Red", "Blue", "Green", "Yellow") and first.answer == "B"
    assert first.metadata == {"category": "single", "cycle_category": "cycle1"}
    assert first.grader == "hr-bench"
    assert tasks[3].choices[3] == "The left one" and tasks[3].answer == "D"
    assert tasks[0].images == tasks[2].images  # the same image in two cycles is decoded once
    for task in tasks:
        assert task.images[0].startswith(str(private_cache / "public" / "hr-bench-4k"))
        with Image.open(task.images[0]) as image:
            assert image.size == (48, 32)


def test_parquet_release_is_read_for_8k(tmp_path):
    root = tmp_path / "hr-bench-8k"
    root.mkdir()
    pq.write_table(pa.Table.from_pylist(rows()), root / "hr_bench_8k.parquet")
    tasks = load_public_benchmark("hr-bench-8k", root)
    assert [t.id for t in tasks] == ["0", "1", "2", "3"]
    assert tasks[1].metadata == {"category": "cross", "cycle_category": "cycle1"}
    assert tasks[1].choices[0] == "The left one" and tasks[1].answer == "A"
    with Image.open(tasks[1].images[0]) as image:
        assert image.getpixel((0, 0)) == (0, 0, 255)


@pytest.mark.parametrize(("reply", "read", "correct"), [
    ("B", "B", True), ("(B) Blue", "B", True), ("The answer is B.", "B", True), ("\\boxed{B}", "B", True),
    ("It is blue.", "B", True),
    ("A woman holds a blue umbrella", "B", True),  # "A" in a long reply may be the article: the text decides
    ("A", "A", False), ("Red", "A", False),
    ("B or C", None, False),  # two letters and no option text
    ("Z", None, False), ("Cannot determine the answer", None, False), ("I am not sure", None, False),
])
def test_exact_matching_grader(tmp_path, reply, read, correct):
    root = tmp_path / "hr-bench-4k"
    root.mkdir()
    write_tsv(root / "hr_bench_4k.tsv", rows()[:1])
    task = load_public_benchmark("hr-bench-4k", root)[0]
    assert hrbench.infer_choice(reply, task.choices) == read
    grade = task.grade(reply)
    assert grade.correct is correct and grade.score == float(correct)


def result(cycle, category, correct):
    return {"task_id": f"{cycle}-{category}", "score": float(correct), "correct": correct,
            "metadata": {"category": category, "cycle_category": cycle}}


def test_aggregate_averages_the_per_cycle_accuracies():
    results = [result("cycle1", "single", True), result("cycle1", "single", False),
               result("cycle1", "cross", True), result("cycle2", "single", True),
               result("cycle2", "single", True), result("cycle2", "cross", False)]
    report = hrbench.aggregate(results)
    assert report["cycles"] == {"cycle1": {"all": pytest.approx(2 / 3), "cross": 1.0, "single": 0.5},
                                "cycle2": {"all": pytest.approx(2 / 3), "cross": 0.0, "single": 1.0}}
    assert report["average"] == {"all": pytest.approx(2 / 3), "cross": 0.5, "single": 0.75}
    # a category missing from a cycle counts 0 there (the authors divide by the number of cycles)
    lopsided = hrbench.aggregate([result("cycle1", "cross", True), result("cycle2", "single", True)])
    assert lopsided["average"] == {"all": 1.0, "cross": 0.5, "single": 0.5}


def test_layout_errors(tmp_path):
    root = tmp_path / "hr-bench-4k"
    root.mkdir()
    with pytest.raises(LayoutError,
                       match=r"hr_bench_4k.tsv or hr_bench_4k.parquet not found(.|\n)*Expected layout"):
        load_public_benchmark("hr-bench-4k", root)
    write_tsv(root / "hr_bench_4k.tsv", rows(), [c for c in COLUMNS if c != "cycle_category"])
    with pytest.raises(LayoutError, match=r"row 1 lacks the field\(s\) cycle_category"):
        load_public_benchmark("hr-bench-4k", root)
    write_tsv(root / "hr_bench_4k.tsv", [{**rows()[0], "image": "not base64!"}])
    with pytest.raises(LayoutError, match=r"row 1: the image is not valid base64"):
        load_public_benchmark("hr-bench-4k", root)
    write_tsv(root / "hr_bench_4k.tsv", [{**rows()[0], "answer": "E"}])
    with pytest.raises(LayoutError, match=r"answer 'E' is not one of A-D"):
        load_public_benchmark("hr-bench-4k", root)
    write_tsv(root / "hr_bench_4k.tsv", [rows()[0], rows()[0]])
    with pytest.raises(LayoutError, match=r"duplicate task id '0'"):
        load_public_benchmark("hr-bench-4k", root)
    (root / "hr_bench_4k.tsv").unlink()
    (root / "hr_bench_4k.parquet").write_bytes(b"this is not parquet")
    with pytest.raises(LayoutError, match=r"not a readable Parquet file"):
        load_public_benchmark("hr-bench-4k", root)
    pq.write_table(pa.Table.from_pylist([{**rows()[0], "image": None}]), root / "hr_bench_4k.parquet")
    with pytest.raises(LayoutError, match=r"row 1: the image cell is empty"):
        load_public_benchmark("hr-bench-4k", root)
