"""MathVerse loader: testmini.json with its three image folders and the optional Text Only file, the
rule-based scorer (letters, plain numbers with units, LaTeX expressions), the per-version report and layout
errors, on tiny generated fixtures."""

import json

import pytest
from PIL import Image

from benchmarks.evaluation.public import load_public_benchmark
from benchmarks.evaluation.public.common import LayoutError
from benchmarks.evaluation.public.mathverse import aggregate
from pyvision_env.graders import get_grader
from pyvision_env.tasks import Task

VERSIONS = ("Text Dominant", "Text Lite", "Vision Intensive", "Vision Dominant", "Vision Only")
FOLDERS = ("images_version_1-4",) * 3 + ("images_version_5", "images_version_6")
COT_FREE = ("Please first conduct reasoning, and then answer the question and provide the final value, "
            "e.g., 1, 2.5, 300, at the end.\nQuestion: ")
COT_CHOICE = ("Please first conduct reasoning, and then answer the question and provide the correct option "
              "letter, e.g., A, B, C, D, at the end.\nQuestion: ")
COT_IMAGE = ("According to the question shown in the image, please first conduct reasoning, and then answer "
             "the question and provide the final value, e.g., 1, 2.5, 300, at the end.")
CAN = "A soft drink can has a height of 13 cm and a radius of 3 cm. Find L, rounded down to the nearest cm."
ANGLE = ("In triangle ABC, DE is parallel to BC. Then the size of angle CED is ()\n"
         "Choices:\nA:40°\nB:60°\nC:120°\nD:140°")


def record(problem, version, question, answer, question_type, image, sample, subject, subfield, source):
    cot = COT_CHOICE if question_type == "multi-choice" else COT_FREE
    return {"sample_index": str(sample), "problem_index": str(problem), "problem_version": version,
            "question": question, "image": image, "answer": answer, "question_type": question_type,
            "metadata": {"split": "testmini", "source": source, "subject": subject, "subfield": subfield},
            "query_wo": "...", "query_cot": COT_IMAGE if version == "Vision Only" else cot + question}


def main_records():
    can = [record(685, version, "" if version == "Vision Only" else CAN, "14", "free-form",
                  f"{folder}/image_685.png", 3420 + k, "Solid Geometry", "Length", "Geo3D_collected")
           for k, (version, folder) in enumerate(zip(VERSIONS, FOLDERS), 1)]
    angle = [record(1, version, ANGLE, "D", "multi-choice", f"{folder}/image_1.png", k, "Plane Geometry",
                    "Angle", "GeoQA") for k, (version, folder) in enumerate(zip(VERSIONS[:2], FOLDERS), 1)]
    return angle + can


def text_only():
    return [record(1, "Text Only", ANGLE, "D", "multi-choice", "", 1, "Plane Geometry", "Angle", "GeoQA"),
            record(685, "Text Only", CAN, "14", "free-form", "", 685, "Solid Geometry", "Length",
                   "Geo3D_collected")]


pytestmark = pytest.mark.usefixtures("private_cache")


def release(root, records=None, with_text_only=True):
    """The Hugging Face files; images.zip unpacked into images/, except version 6 left at the top level."""
    for folder, problem in {("images_version_1-4", 1), ("images_version_1-4", 685), ("images_version_5", 685),
                            ("images_version_6", 685)}:
        parent = root if folder == "images_version_6" else root / "images"
        (parent / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), "gray").save(parent / folder / f"image_{problem}.png")
    (root / "testmini.json").write_text(json.dumps(records if records is not None else main_records()))
    if with_text_only:
        (root / "testmini_text_only.json").write_text(json.dumps(text_only()))
    return root


@pytest.fixture
def tasks(tmp_path):
    return load_public_benchmark("mathverse", release(tmp_path / "mathverse"))


def test_reads_versions_prompts_images_and_text_only(tasks, tmp_path):
    assert [task.id for task in tasks] == ["1", "2", "3421", "3422", "3423", "3424", "3425", "text-only-1",
                                           "text-only-685"]
    vision_only = tasks[tasks.index_of("3425")]
    assert vision_only.question == COT_IMAGE and vision_only.answer == "14" and vision_only.choices is None
    assert vision_only.images == (str(tmp_path / "mathverse" / "images_version_6" / "image_685.png"),)
    assert vision_only.metadata == {"split": "testmini", "source": "Geo3D_collected",
                                    "subject": "Solid Geometry", "subfield": "Length", "problem_index": "685",
                                    "problem_version": "Vision Only", "question_type": "free-form"}
    text_dominant = tasks[tasks.index_of("1")]
    assert text_dominant.question == COT_CHOICE + ANGLE and text_dominant.answer == "D"
    images = tmp_path / "mathverse" / "images"
    assert text_dominant.images == (str(images / "images_version_1-4" / "image_1.png"),)
    assert tasks[tasks.index_of("3424")].images[0].endswith("images_version_5/image_685.png")
    assert tasks[tasks.index_of("text-only-685")].images == ()
    assert tasks[tasks.index_of("text-only-1")].metadata["problem_version"] == "Text Only"
    for task in tasks:
        for path in task.images:
            with Image.open(path) as image:
                assert image.size == (8, 6)


def test_text_only_file_is_optional(tmp_path):
    tasks = load_public_benchmark("mathverse", release(tmp_path / "mathverse", with_text_only=False))
    assert len(tasks) == 7 and {task.metadata["problem_version"] for task in tasks} == set(VERSIONS)


def grade(response, answer, question_type):
    task = Task(id="t", question="?", answer=answer, grader="mathverse",
                metadata={"question_type": question_type})
    return task.grade(response).correct


@pytest.mark.parametrize("response, correct", [
    ("D", True), ("(D)", True), ("D:140°", True), ("Answer: D", True), (r"\boxed{D}", True),
    ("The answer is D.", True), ("C", False), ("140°", False), ("Dunno", False), ("", False),
])
def test_multiple_choice_letters(response, correct):
    assert grade(response, "D", "multi-choice") is correct
    assert grade(response, "(D)", "multi-choice") is correct  # a few answers are released as "(C)"


@pytest.mark.parametrize("response, answer, correct", [
    ("14", "14", True), ("14 cm", "14", True), ("L = 14", "14", True), (r"\boxed{14.0}", "14", True),
    ("13", "14", False), ("about fourteen", "14", False),
    ("2191.7", "2191.7 metres", True), ("2191.7 m", "2191.7 metres", True), ("2191", "2191.7 metres", False),
    ("60°", "60^\\circ", True), ("$60^{\\circ}$", "60^\\circ", True), ("60", "60^\\circ", True),
    ("12 cm^2", "12", True),
    ("$4\\sqrt{6}$", "4\\sqrt{6}", True), ("4 \\sqrt{6}", "4\\sqrt{6}", True), ("9.8", "4\\sqrt{6}", False),
    ("S 23.5° W", "S 23.5 ^\\circ W", True), ("S 24° W", "S 23.5 ^\\circ W", False),
    ("False", "False", True),  # a multiple-choice answer that is no letter is compared as text
])
def test_free_form_answers(response, answer, correct):
    assert grade(response, answer, "multi-choice" if answer == "False" else "free-form") is correct


def test_rule_scorer_reads_named_values_but_under_counts_equivalent_forms():
    assert grade("50.27 cm", "Circumference $=50.27 \\mathrm{~cm}$", "free-form")
    assert not grade("2.74", "\\frac{\\sqrt{30}}{2}", "free-form")  # a GPT judge would accept this
    assert not grade("0.5 m", "50 cm", "free-form")
    assert get_grader("mathverse")("14", Task(id="t", question="?", answer="14", grader="mathverse",
                                              metadata={"question_type": "free-form"})).correct


def test_aggregate_reports_main_versions_apart_from_text_only(tasks):
    right = {"1", "3421", "3422", "text-only-1", "text-only-685"}
    results = [{"task_id": task.id, "score": float(task.id in right), "correct": task.id in right,
                "metadata": task.metadata} for task in tasks]
    report = aggregate(results)
    assert report["accuracy"] == 3 / 7 and report["questions"] == 7 and report["text_only"] == 1.0
    assert report["by"]["problem_version"] == {"Text Dominant": 1.0, "Text Lite": 0.5,
                                               "Vision Intensive": 0.0, "Vision Dominant": 0.0,
                                               "Vision Only": 0.0, "Text Only": 1.0}
    assert report["by"]["subject"] == {"Plane Geometry": 0.5, "Solid Geometry": 0.4}
    assert report["by"]["subfield"] == {"Angle": 0.5, "Length": 0.4}
    with pytest.raises(ValueError):
        aggregate([])


def test_missing_files_raise_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match=r"testmini.json not found(.|\n)*images_version_1-4"):
        load_public_benchmark("mathverse", tmp_path)
    root = release(tmp_path / "mathverse")
    (root / "images" / "images_version_5" / "image_685.png").unlink()
    with pytest.raises(LayoutError, match=r"images_version_5/image_685\.png not found"):
        load_public_benchmark("mathverse", root)


def test_malformed_files_raise_layout_errors(tmp_path):
    root = release(tmp_path / "mathverse")
    (root / "testmini.json").write_text("[{")
    with pytest.raises(LayoutError, match="not readable JSON"):
        load_public_benchmark("mathverse", root)
    (root / "testmini.json").write_text(json.dumps({"1": main_records()[0]}))
    with pytest.raises(LayoutError, match="not a non-empty list"):
        load_public_benchmark("mathverse", root)


@pytest.mark.parametrize("change, message", [
    (lambda record: record.pop("query_cot"), "record 3 lacks the field.s. query_cot"),
    (lambda record: record["metadata"].pop("subfield"), "record 3 metadata lacks the field.s. subfield"),
    (lambda record: record.update(question_type="essay"), "unknown question_type 'essay'"),
    (lambda record: record.update(image=""), "a Text Dominant question needs an image path"),
])
def test_bad_records_raise_layout_errors(tmp_path, change, message):
    records = main_records()
    change(records[2])
    with pytest.raises(LayoutError, match=message):
        load_public_benchmark("mathverse", release(tmp_path / "mathverse", records))
