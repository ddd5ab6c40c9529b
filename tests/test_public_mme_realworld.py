"""MME-RealWorld (full and Lite) loaders on tiny fixtures: tasks, the official letter extraction, the official
report with Avg-C, and layout errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from benchmarks.evaluation.public import load_public_benchmark, mme_realworld
from benchmarks.evaluation.public.common import LayoutError

POSITION = ["(A) In the upper right area of the picture", "(B) In the upper left area of the picture",
            "(C) In the lower right area of the picture", "(D) In the lower left area of the picture",
            "(E) This image doesn't feature the position."]

FULL = [
    {"Question_id": "perception/diagram_and_table/diagram/0558", "Image": "diagram_and_table/cons9.jpg",
     "Text": "What is the value of the tallest bar?", "Question Type": "Multiple Choice",
     "Answer choices": ["(A) 12", "(B) 15", "(C) 18", "(D) 21", "(E) All the above answers are wrong."],
     "Ground truth": "C", "Category": "diagram", "Subtask": "Diagram and Table", "Task": "Perception"},
    {"Question_id": "Perception/Autonomous_Driving/Objects_Identify/0000",
     "Image": "AutonomousDriving/nuScenes/n008__CAM_FRONT__1526915269912465.jpg",
     "Text": "Which object is closest to the ego car?", "Question type": "Multiple Choice",
     "Answer choices": ["(A) A truck", "(B) A pedestrian", "(C) A cone", "(D) A bus",
                        "(E) None of the above"],
     "Ground truth": "B", "Category": "Objects_Identify", "Subtask": "Autonomous_Driving",
     "Task": "Perception",
     "Dataset": "nuScenes"},
    {"Question_id": "reasoning/monitoring/vehicle/attribute/0007",
     "Image": "monitoring_images/9999998_00382.png",
     "Text": "What color is the car that is about to turn?", "Question Type": "Multiple Choice",
     "Answer choices": ["(A) Red", "(B) White", "(C) Black", "(D) Blue", "(E) There is no such car."],
     "Ground truth": "E", "Category": "Vehicle/attribute/color", "Subtask": "Monitoring",
     "Task": "Reasoning"},
]

LITE = [{"Question_id": "perception/remote_sensing/position/2527",
         "Image": "dota_v2_dota_v2_dota_v2_P7036.png",
         "Text": "Where is the yellow crane in the picture?", "Question Type": "Multiple Choice",
         "Answer choices": POSITION, "Ground truth": "A", "Category": "position", "Subtask": "Remote Sensing",
         "Task": "Perception"}]


pytestmark = pytest.mark.usefixtures("private_cache")


def write_set(json_path, records, image_folder):
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(records, indent=2))
    for record in records:
        image = image_folder / record["Image"]
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (36, 20), "gray").save(image)


def full_release(tmp_path):
    root = tmp_path / "mme-realworld"
    write_set(root / "MME_RealWorld.json", FULL, root)
    return root


def lite_task(tmp_path):
    root = tmp_path / "mme-realworld-lite"
    write_set(root / "MME-RealWorld-Lite.json", LITE, root / "imgs")
    return load_public_benchmark("mme-realworld-lite", root)[0]


def test_full_set_records_become_tasks(tmp_path):
    tasks = load_public_benchmark("mme-realworld", full_release(tmp_path))
    assert [t.id for t in tasks] == [r["Question_id"] for r in FULL]
    diagram, driving, monitoring = tasks
    assert diagram.question == "What is the value of the tallest bar?"
    assert diagram.choices == ("12", "15", "18", "21", "All the above answers are wrong.")
    assert diagram.answer == "C" and diagram.grader == "mme-realworld"
    assert diagram.metadata == {"task": "Perception", "subtask": "Diagram and Table", "category": "diagram",
                                "image": "diagram_and_table/cons9.jpg", "question_type": "Multiple Choice"}
    assert driving.metadata["question_type"] == "Multiple Choice"  # spelled "Question type" in the record
    assert driving.metadata["dataset"] == "nuScenes" and driving.choices[1] == "A pedestrian"
    assert monitoring.metadata["category"] == "Vehicle/attribute/color" and monitoring.answer == "E"
    for task in tasks:
        with Image.open(task.images[0]) as image:
            assert image.size == (36, 20)


@pytest.mark.parametrize("json_name", ["MME-RealWorld-Lite.json", "MME_RealWorld_Lite.json",
                                       "data/MME-RealWorld-Lite.json"])
def test_lite_set_reads_bare_image_names_from_imgs(tmp_path, json_name):
    root = tmp_path / "mme-realworld-lite"
    write_set(root / json_name, LITE, (root / json_name).parent / "imgs")
    (task,) = load_public_benchmark("mme-realworld-lite", root)
    assert task.id == "perception/remote_sensing/position/2527"
    assert task.choices[0] == "In the upper right area of the picture" and len(task.choices) == 5
    assert task.answer == "A" and task.metadata["subtask"] == "Remote Sensing"
    assert task.images[0] == str((root / json_name).parent / "imgs" / "dota_v2_dota_v2_dota_v2_P7036.png")


@pytest.mark.parametrize(("reply", "read"), [
    ("A", "A"), ("(B)", "B"), ("The best answer is B", "B"), ("The answer is (D).", "D"), ("\\boxed{E}", "E"),
    ("According to the picture, B", "A"),  # the first capital A-E counts, as in the official scorer
    ("(b) in the upper left area", "B"),  # no capital: the reply found inside "(B) In the upper left ..."
    ("in the lower left", "D"),
    ("it is hard to say where it is in this picture, to be honest", ""),  # > 10 words, no capital A-E
    ("somewhere", ""), ("", ""),
])
def test_official_letter_extraction(tmp_path, reply, read):
    task = lite_task(tmp_path)
    assert mme_realworld.extract_letter(reply, task.choices) == read
    grade = task.grade(reply)
    assert grade.correct is (read == "A") and grade.score == float(read == "A")


def result(task, subtask, category, correct):
    return {"task_id": f"{task}/{subtask}/{category}", "score": float(correct), "correct": correct,
            "metadata": {"task": task, "subtask": subtask, "category": category}}


def test_aggregate_gives_the_official_report_and_avg_c():
    assert mme_realworld.category_group("Vehicle/attribute/color") == "vehicle/attribute"
    assert mme_realworld.category_group("Objects_Identify") == "objects_identify"
    report = mme_realworld.aggregate([
        result("Perception", "Monitoring", "counting", True),
        result("Perception", "Monitoring", "Counting", False),
        result("Perception", "Monitoring", "Vehicle/attribute/color", True),
        result("Perception", "Remote Sensing", "position", False),
        result("Reasoning", "Diagram and Table", "diagram", True)])
    assert (report["accuracy"], report["count"]) == (0.6, 5)
    perception = report["tasks"]["Perception"]
    assert (perception["accuracy"], perception["count"]) == (0.5, 4)
    assert perception["avg_c"] == pytest.approx((2 / 3 + 0) / 2)  # unweighted mean of the subtasks
    monitoring = perception["subtasks"]["Monitoring"]
    assert monitoring["accuracy"] == pytest.approx(2 / 3)
    assert monitoring["categories"] == {"counting": {"accuracy": 0.5, "count": 2},
                                        "vehicle/attribute": {"accuracy": 1.0, "count": 1}}
    assert perception["subtasks"]["Remote Sensing"] == {
        "accuracy": 0.0, "count": 1, "categories": {"position": {"accuracy": 0.0, "count": 1}}}
    assert report["tasks"]["Reasoning"]["accuracy"] == 1.0 and report["tasks"]["Reasoning"]["avg_c"] == 1.0


def test_layout_errors(tmp_path):
    root = tmp_path / "mme-realworld"
    root.mkdir()
    with pytest.raises(LayoutError, match=r"MME_RealWorld.json or MME_ReadWorld.json not found(.|\n)*"
                                           r"Expected layout(.|\n)*Ground truth"):
        load_public_benchmark("mme-realworld", root)
    full_release(tmp_path)
    json_path = root / "MME_RealWorld.json"
    json_path.write_text('[{"Question_id": ')
    with pytest.raises(LayoutError, match=r"is not readable JSON"):
        load_public_benchmark("mme-realworld", root)
    json_path.write_text(json.dumps({"records": FULL}))
    with pytest.raises(LayoutError, match=r"is not a JSON array of records"):
        load_public_benchmark("mme-realworld", root)
    json_path.write_text(json.dumps([FULL[0], {k: v for k, v in FULL[1].items() if k != "Ground truth"}]))
    with pytest.raises(LayoutError, match=r"record 2 lacks the field\(s\) Ground truth"):
        load_public_benchmark("mme-realworld", root)
    json_path.write_text(json.dumps([{**FULL[0], "Ground truth": "F"}]))
    with pytest.raises(LayoutError, match=r"Ground truth 'F' is not one of the options' letters"):
        load_public_benchmark("mme-realworld", root)
    json_path.write_text(json.dumps([{**FULL[0], "Answer choices": "(A) 12 (B) 15"}]))
    with pytest.raises(LayoutError, match=r"Answer choices is not a list"):
        load_public_benchmark("mme-realworld", root)
    json_path.write_text(json.dumps([FULL[0], FULL[0]]))
    with pytest.raises(LayoutError, match=r"duplicate task id"):
        load_public_benchmark("mme-realworld", root)
    json_path.write_text(json.dumps(FULL))
    (root / "diagram_and_table" / "cons9.jpg").unlink()
    with pytest.raises(LayoutError, match=r"1 of 3 images not found \(e.g. .*cons9.jpg"):
        load_public_benchmark("mme-realworld", root)
