"""DynaMath loader: the GitHub trial folders and the Hugging Face variant Parquet files, the authors' per-type
matching (float tolerance, option letters, text containment), average- and worst-case accuracy and layout
errors, on tiny generated fixtures."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from benchmarks.evaluation.public import load_public_benchmark
from benchmarks.evaluation.public.common import LayoutError
from benchmarks.evaluation.public.dynamath import INSTRUCTIONS, aggregate

PERIOD = ("What is the period of this function y = a*sin(b*x), where both a and b are integers? Answer the "
          "question with a floating-point number.")
COLORS = "Is Dark Magenta greater than Rosy Brown? Choices: (A) yes (B) no"
MONTH = "Which month has the highest sales?"


def trial(variant):
    """One variant of three seeds: a float, a multiple-choice and a text question."""
    return {
        "1": {"question": PERIOD, "answer": ("2.0944", "6.2832")[variant % 2], "image": "image/image1.png",
              "answer_type": "float", "subject": "analytic geometry", "level": "high school"},
        "5": {"question": COLORS, "answer": "AB"[variant % 2], "image": "image/image5.png",
              "answer_type": "multiple choice", "subject": "statistics", "level": "elementary school"},
        "7": {"question": MONTH, "answer": ("Sep", "Mar")[variant % 2], "image": "image/image7.png",
              "answer_type": "text", "subject": "statistics", "level": "high school"},
    }


pytestmark = pytest.mark.usefixtures("private_cache")


def github_release(root, variants=(1, 2), base=".", change=None):
    for variant in variants:
        folder = root / base / f"trial{variant}"
        (folder / "image").mkdir(parents=True)
        questions = trial(variant)
        if change and variant == 2:
            change(questions["5"])
        for seed in questions:
            Image.new("RGB", (8, 6), (variant * 50, 0, 0)).save(folder / "image" / f"image{seed}.png")
        (folder / "dataset.json").write_text(json.dumps(questions))
    return root


def png_bytes(color):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, format="PNG")
    return buffer.getvalue()


def hugging_face_release(root, variants=(1, 2)):
    (root / "data").mkdir(parents=True)
    for variant in variants:
        rows = [{"id": seed, "question": record["question"], "image": record["image"],
                 "decoded_image": {"bytes": png_bytes((0, variant * 50, 0)), "path": None},
                 "ground_truth": record["answer"], "answer_type": record["answer_type"],
                 "subject": record["subject"], "knowledge_level": record["level"]}
                for seed, record in trial(variant).items()]
        pq.write_table(pa.Table.from_pylist(rows), root / "data" / f"sample{variant}-00000-of-00001.parquet")
    return root


@pytest.fixture
def tasks(tmp_path):
    return load_public_benchmark("dynamath", github_release(tmp_path / "dynamath"))


def test_reads_trial_folders_with_seeds_variants_and_images(tasks):
    assert [task.id for task in tasks] == ["Q1-v1", "Q5-v1", "Q7-v1", "Q1-v2", "Q5-v2", "Q7-v2"]
    period = tasks[tasks.index_of("Q1-v1")]
    assert period.question == f"{PERIOD}\n{INSTRUCTIONS['float']}" and period.answer == "6.2832"
    assert period.metadata == {"seed": "1", "variant": 1, "answer_type": "float",
                               "subject": "analytic geometry", "level": "high school"}
    colors = tasks[tasks.index_of("Q5-v2")]
    assert colors.question == f"{COLORS}\n{INSTRUCTIONS['multiple choice']}" and colors.answer == "A"
    assert colors.choices is None  # the options stay inline, as released
    assert tasks[tasks.index_of("Q7-v2")].question == MONTH and tasks[tasks.index_of("Q7-v2")].answer == "Sep"
    for task in tasks:
        with Image.open(task.images[0]) as image:
            assert image.getpixel((0, 0)) == (task.metadata["variant"] * 50, 0, 0)


def test_reads_trials_left_in_the_repository_folder(tmp_path):
    root = github_release(tmp_path, (1, 2, 3), "samples and result/10trials")
    tasks = load_public_benchmark("dynamath", root)
    assert len(tasks) == 9 and {task.metadata["variant"] for task in tasks} == {1, 2, 3}
    assert "samples and result/10trials/trial3/image/image7.png" in tasks[-1].images[0]


def test_reads_hugging_face_variant_splits(tmp_path):
    tasks = load_public_benchmark("dynamath", hugging_face_release(tmp_path / "dynamath", (1, 2, 10)))
    assert [task.id for task in tasks][-3:] == ["Q1-v10", "Q5-v10", "Q7-v10"]
    assert tasks[0].answer == "6.2832" and tasks[0].metadata["level"] == "high school"
    assert tasks[0].metadata["seed"] == "1" and tasks[0].metadata["variant"] == 1
    with Image.open(tasks[3].images[0]) as image:
        assert image.getpixel((0, 0)) == (0, 100, 0)
    assert tasks[3].images[0].startswith(str(tmp_path / "cache"))


@pytest.mark.parametrize("task_id, response, correct", [
    ("Q1-v2", "2.094", True), ("Q1-v2", r"\boxed{2.094}", True), ("Q1-v2", "2.0944 radians", True),
    ("Q1-v2", '{"solution": "b = 3", "short answer": "2.094"}', True),  # the JSON reply the authors ask for
    ("Q1-v2", "2.09", False),  # 0.0044 off: beyond the 0.001 tolerance
    ("Q1-v2", "about 2.094", False),  # only the first word counts
    ("Q1-v1", "2π", True), ("Q1-v1", "π", False), ("Q1-v1", "", False),
    ("Q5-v1", "B", True), ("Q5-v1", "(B) no", True), ("Q5-v1", "B.", True), ("Q5-v1", "b", False),
    ("Q5-v1", "A", False), ("Q5-v1", "The answer is B", False),
    ("Q7-v2", "Sep", True), ("Q7-v2", "Sep.", True), ("Q7-v2", "September", True), ("Q7-v2", "sep", False),
    ("Q7-v2", "Mar", False),
])
def test_authors_matching(tasks, task_id, response, correct):
    assert tasks[tasks.index_of(task_id)].grade(response).correct is correct


def test_average_and_worst_case_accuracy(tasks):
    right = {"Q1-v1", "Q1-v2", "Q5-v1", "Q7-v1"}  # seed 1 right in both variants, 5 and 7 in one
    results = [{"task_id": task.id, "score": float(task.id in right), "correct": task.id in right,
                "metadata": task.metadata} for task in tasks]
    report = aggregate(results)
    assert report["average"] == pytest.approx(4 / 6) and report["worst"] == pytest.approx(1 / 3)
    assert report["robustness"] == pytest.approx(0.5) and report["seeds"] == 3 and report["questions"] == 6
    assert report["by_variant"] == {"1": 1.0, "2": pytest.approx(1 / 3)}
    assert report["by_subject"] == {"analytic geometry": {"average": 1.0, "worst": 1.0},
                                    "statistics": {"average": 0.5, "worst": 0.0}}
    assert report["by_level"]["elementary school"] == {"average": 0.5, "worst": 0.0}
    with pytest.raises(ValueError):
        aggregate([])


def test_missing_files_raise_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match=r"neither trial<k>/ folders(.|\n)*data/sample<k>-\*\.parquet"):
        load_public_benchmark("dynamath", tmp_path)
    root = github_release(tmp_path / "dynamath")
    (root / "trial2" / "image" / "image7.png").unlink()
    with pytest.raises(LayoutError, match=r"trial2/image/image7\.png not found"):
        load_public_benchmark("dynamath", root)
    (root / "trial2" / "dataset.json").unlink()
    with pytest.raises(LayoutError, match=r"trial2/dataset\.json not found"):
        load_public_benchmark("dynamath", root)


def test_malformed_files_raise_layout_errors(tmp_path):
    root = github_release(tmp_path / "dynamath")
    (root / "trial1" / "dataset.json").write_text('{"1": ')
    with pytest.raises(LayoutError, match="not readable JSON"):
        load_public_benchmark("dynamath", root)
    (root / "trial1" / "dataset.json").write_text(json.dumps(list(trial(1).values())))
    with pytest.raises(LayoutError, match="not a non-empty object keyed by seed"):
        load_public_benchmark("dynamath", root)
    parquet = hugging_face_release(tmp_path / "hf")
    bad_rows = pa.Table.from_pylist([{"id": "1", "question": "?"}])
    pq.write_table(bad_rows, parquet / "data" / "sample2-x.parquet")
    with pytest.raises(LayoutError, match=r"sample2-x\.parquet row 1 lacks the field\(s\) decoded_image"):
        load_public_benchmark("dynamath", parquet)


@pytest.mark.parametrize("change, message", [
    (lambda record: record.pop("level"), "trial2/dataset.json seed 5 lacks the field.s. level"),
    (lambda record: record.update(answer="yes"), "multiple-choice answer 'yes' is not a letter"),
    (lambda record: record.update(answer_type="float"), "float answer 'A' is not a number"),
])
def test_bad_records_raise_layout_errors(tmp_path, change, message):
    with pytest.raises(LayoutError, match=message):
        load_public_benchmark("dynamath", github_release(tmp_path / "dynamath", change=change))
