"""MathVista loader: both releases (GitHub JSON + images, Hugging Face Parquet), the authors' normalisation
and exact-match scoring, the per-category report and layout errors, on tiny generated fixtures."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.evaluation.public import load_public_benchmark
from benchmarks.evaluation.public.common import LayoutError
from benchmarks.evaluation.public.mathvista import aggregate, edit_distance
from pyvision_env.graders import get_grader


def metadata(category, task, context, grade, skills, source="IconQA"):
    return {"split": "testmini", "language": "english", "img_width": 8, "img_height": 6, "source": source,
            "category": category, "task": task, "context": context, "grade": grade, "skills": skills}


RECORDS = {
    "1": {"question": "What is the spring constant?", "image": "images/1.jpg", "choices": None, "unit": None,
          "precision": 1, "answer": "1.2", "question_type": "free_form", "answer_type": "float", "pid": "1",
          "metadata": metadata("math-targeted-vqa", "textbook question answering", "scientific figure",
                               "college", ["scientific reasoning"], source="SciBench")},
    "540": {"question": "What fraction of the shape is blue?", "image": "images/540.jpg",
            "choices": ["3/11", "8/11", "6/11", "3/5"], "unit": None, "precision": None, "answer": "3/11",
            "question_type": "multi_choice", "answer_type": "text", "pid": "540",
            "metadata": metadata("math-targeted-vqa", "math word problem", "abstract scene",
                                 "elementary school", ["geometry reasoning", "arithmetic reasoning"])},
    "7": {"question": "How old is the tree?", "image": "images/7.jpg", "choices": None, "unit": "years",
          "precision": None, "answer": "27", "question_type": "free_form", "answer_type": "integer",
          "pid": "7",
          "metadata": metadata("general-vqa", "visual question answering", "natural image", "not applicable",
                               ["numeric commonsense", "arithmetic reasoning"], source="VQA2.0")},
    "225": {"question": "Which years had a deficit?", "image": "images/225.jpg", "choices": None,
            "unit": None, "precision": None, "answer": "[2014, 2016]", "question_type": "free_form",
            "answer_type": "list", "pid": "225",
            "metadata": metadata("general-vqa", "figure question answering", "bar chart", "not applicable",
                                 ["statistical reasoning"], source="ChartQA")},
}
QUERY_540 = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at "
             "the end.\nQuestion: What fraction of the shape is blue?\n"
             "Choices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5")
QUERY_1 = ("Hint: Please answer the question requiring a floating-point number with one decimal place and "
           "provide the final value, e.g., 1.2, 1.3, 1.4, at the end.\n"
           "Question: What is the spring constant?")


pytestmark = pytest.mark.usefixtures("private_cache")


def png_bytes(color):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, format="PNG")
    return buffer.getvalue()


def github_release(root, records=RECORDS, queries=None):
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "testmini.json").write_text(json.dumps(records))
    (data / "query.json").write_text(json.dumps(queries if queries is not None else {"540": QUERY_540,
                                                                                     "1": QUERY_1}))
    for pid in records:
        Image.new("RGB", (8, 6), "red").save(data / "images" / f"{pid}.jpg")
    return root


def test_github_release_reads_prompts_choices_letters_and_categories(tmp_path):
    tasks = load_public_benchmark("mathvista", github_release(tmp_path / "mathvista"))
    assert [task.id for task in tasks] == ["1", "540", "7", "225"]
    choice = tasks[tasks.index_of("540")]
    assert choice.choices == ("3/11", "8/11", "6/11", "3/5") and choice.answer == "A"
    assert choice.question == QUERY_540.split("\nChoices:")[0]  # the environment renders the options
    assert choice.metadata["context"] == "abstract scene" and choice.metadata["grade"] == "elementary school"
    assert choice.metadata["skills"] == ["geometry reasoning", "arithmetic reasoning"]
    assert choice.metadata["category"] == "math-targeted-vqa"
    assert choice.metadata["task"] == "math word problem"
    assert tasks[tasks.index_of("1")].question == QUERY_1
    integer = tasks[tasks.index_of("7")]  # no query for this pid: built the authors' way
    assert integer.question == ("Hint: Please answer the question requiring an integer answer and provide "
                                "the final value, e.g., 1, 2, 3, at the end.\nQuestion: How old is the tree? "
                                "(Unit: years)")
    assert integer.choices is None and integer.answer == "27" and integer.metadata["answer_type"] == "integer"
    assert tasks[tasks.index_of("225")].answer == "[2014, 2016]"
    assert tasks[tasks.index_of("1")].metadata["precision"] == 1
    for task in tasks:
        with Image.open(task.images[0]) as image:
            assert image.size == (8, 6)
        assert task.to_json()["grader"] == "mathvista"


def test_hugging_face_parquet_with_embedded_images(tmp_path):
    rows = [{**record, "precision": None if record["precision"] is None else float(record["precision"]),
             "decoded_image": {"bytes": png_bytes(color), "path": None},
             "query": QUERY_540 if pid == "540" else None}
            for (pid, record), color in zip(RECORDS.items(), ("red", "green", "blue", "white"))]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "testmini-00000-of-00001-725687bf.parquet")
    tasks = load_public_benchmark("mathvista", tmp_path)
    assert [task.id for task in tasks] == ["1", "540", "7", "225"]
    assert tasks[1].answer == "A" and tasks[1].question.endswith("What fraction of the shape is blue?")
    assert tasks[0].metadata["precision"] == 1 and tasks[0].grade("1.2").correct
    assert all(str(task.images[0]).startswith(str(tmp_path / "cache")) for task in tasks)
    with Image.open(tasks[2].images[0]) as image:
        assert image.getpixel((0, 0)) == (0, 0, 255)


@pytest.fixture
def tasks(tmp_path):
    return load_public_benchmark("mathvista", github_release(tmp_path / "mathvista"))


@pytest.mark.parametrize("pid, response, correct", [
    ("540", r"\boxed{A}", True), ("540", "(a) 3/11", True), ("540", "3/11", True),
    ("540", "The answer is A.", True),
    ("540", "3/12", True),  # not a letter: the nearest option by edit distance, as the authors map it
    ("540", "B", False), ("540", "8/11", False), ("540", "", False),
    ("1", "1.2", True), ("1", "1.24", True), ("1", r"\boxed{1.20}", True), ("1", "about 1.2 N/m", True),
    ("1", 'The answer is "1.2".', True), ("1", "1.3", False), ("1", "no idea", False),
    ("7", "27", True), ("7", "27.9", True),  # the authors truncate: int(float("27.9"))
    ("7", "x = 27", True), ("7", "28", False), ("7", "twenty-seven", False),
    ("225", "[2014, 2016]", True), ("225", "The years are [2014, 2016].", True),
    ("225", "[2014,2016]", False),  # lists are compared as written
    ("225", "2014 and 2016", False),
])
def test_authors_scoring(tasks, pid, response, correct):
    assert tasks[tasks.index_of(pid)].grade(response).correct is correct


def test_grader_is_registered_by_name(tasks):
    grade = get_grader("mathvista")("(C)", tasks[tasks.index_of("540")])
    assert (grade.correct, grade.extracted) == (False, "6/11")
    assert edit_distance("kitten", "sitting") == 3 and edit_distance("", "abc") == 3


def test_aggregate_reports_accuracy_per_category_and_per_skill(tasks):
    outcomes = {"1": True, "540": True, "7": False, "225": False}
    results = [{"task_id": task.id, "score": float(outcomes[task.id]), "correct": outcomes[task.id],
                "metadata": task.metadata} for task in tasks]
    report = aggregate(results)
    assert report["accuracy"] == 0.5 and report["questions"] == 4
    assert report["by"]["category"] == {"math-targeted-vqa": 1.0, "general-vqa": 0.0}
    assert report["by"]["question_type"] == {"free_form": 1 / 3, "multi_choice": 1.0}
    assert report["by"]["skills"]["arithmetic reasoning"] == 0.5  # pid 540 right, pid 7 wrong
    assert report["by"]["skills"]["scientific reasoning"] == 1.0
    assert report["by"]["grade"] == {"college": 1.0, "elementary school": 1.0, "not applicable": 0.0}
    with pytest.raises(ValueError):
        aggregate([])


def test_missing_files_raise_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match=r"data/testmini.json not found(.|\n)*testmini-\*\.parquet"):
        load_public_benchmark("mathvista", tmp_path)
    root = github_release(tmp_path / "mathvista")
    (root / "data" / "images" / "7.jpg").unlink()
    with pytest.raises(LayoutError, match=r"data/images/7\.jpg not found"):
        load_public_benchmark("mathvista", root)


def test_malformed_files_raise_layout_errors(tmp_path):
    root = github_release(tmp_path / "mathvista")
    (root / "data" / "testmini.json").write_text("{not json")
    with pytest.raises(LayoutError, match="not readable JSON"):
        load_public_benchmark("mathvista", root)
    (root / "data" / "testmini.json").write_text(json.dumps(list(RECORDS.values())))
    with pytest.raises(LayoutError, match="not an object keyed by pid"):
        load_public_benchmark("mathvista", root)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data").mkdir()
    (tmp_path / "bad" / "data" / "testmini-00000-of-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(LayoutError, match="not a readable Parquet file"):
        load_public_benchmark("mathvista", tmp_path / "bad")


@pytest.mark.parametrize("change, message", [
    (lambda record: record.pop("answer"), "pid 540 lacks the field.s. answer"),
    (lambda record: record["metadata"].pop("context"), "pid 540 metadata lacks the field.s. context"),
    (lambda record: record.update(answer="1/2"), "choices holding its answer"),
    (lambda record: record.update(question_type="essay"), "does not fit question_type 'essay'"),
])
def test_bad_records_raise_layout_errors(tmp_path, change, message):
    records = json.loads(json.dumps(RECORDS))
    change(records["540"])
    with pytest.raises(LayoutError, match=message):
        load_public_benchmark("mathvista", github_release(tmp_path / "mathvista", records))
