"""We-Math loader: testmini.json with its step images (including the "3stpes" misspelling), the authors'
letter extraction, the four-dimensional metrics on hand-computed results and layout errors, on tiny generated
fixtures."""

import json

import pytest
from PIL import Image

from benchmarks.evaluation.public import load_public_benchmark
from benchmarks.evaluation.public.common import LayoutError
from benchmarks.evaluation.public.wemath import aggregate, extract_letter

OPTIONS = "A. 300, 400;B. 400, 300;C. 3000, 4000;D. 4000, 3000; E. No correct answer"


def record(problem_id, key, answer, image, number, option=OPTIONS):
    return {"ID": problem_id, "split": "testmini", "knowledge concept": f"concept of {key}",
            "question": f"According to the diagram: OA = ( ) m ({key})", "option": option, "answer": answer,
            "image_path": image, "key": key, "question number": number,
            "knowledge concept description": "1 kilometer (km) = 1000 meters (m)"}


def records():
    two = [record("2steps_1", "2steps_1", "C", "2steps/image/1-1.png", 1),
           record("2steps_1", "2steps_2", "A", "2steps/image/1-2.png", 361,
                  "A. left;B. right;C. No correct answer"),
           record("2steps_1", "2steps_multi", "A", "2steps/image/1-multi.png", 721)]
    three = [record("3stpes_1", f"3steps_{step}", "B", f"3steps/image/1-{step}.png", number)  # HF spelling
             for step, number in (("1", 1081), ("2", 1246), ("3", 1411), ("multi", 1576))]
    return two + three


pytestmark = pytest.mark.usefixtures("private_cache")


def release(root, data=None, folder="."):
    """testmini.json and the images, in ``root/folder`` (``data`` for the GitHub repo)."""
    base = root / folder
    for entry in records():
        (base / entry["image_path"]).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 6), "white").save(base / entry["image_path"])
    (base / "testmini.json").write_text(json.dumps(data if data is not None else records()))
    return root


@pytest.fixture
def tasks(tmp_path):
    return load_public_benchmark("wemath", release(tmp_path / "wemath"))


def test_reads_steps_choices_letters_and_images(tasks):
    assert [task.id for task in tasks] == ["2steps_1-1", "2steps_1-2", "2steps_1-multi", "3steps_1-1",
                                           "3steps_1-2", "3steps_1-3", "3steps_1-multi"]
    first = tasks[0]
    assert first.choices == ("300, 400", "400, 300", "3000, 4000", "4000, 3000", "No correct answer")
    assert first.answer == "C" and first.question == "According to the diagram: OA = ( ) m (2steps_1)"
    assert first.metadata == {"problem_id": "2steps_1", "step": "1", "steps": 2,
                              "knowledge_concept": "concept of 2steps_1", "question_number": 1}
    assert tasks[1].choices == ("left", "right", "No correct answer") and tasks[1].answer == "A"
    assert tasks[6].metadata["problem_id"] == "3steps_1" and tasks[6].metadata["step"] == "multi"
    for task in tasks:
        with Image.open(task.images[0]) as image:
            assert image.size == (8, 6)


def test_reads_the_github_repo_layout(tmp_path):
    tasks = load_public_benchmark("wemath", release(tmp_path / "We-Math", folder="data"))
    assert len(tasks) == 7 and tasks[0].images[0].endswith("data/2steps/image/1-1.png")


@pytest.mark.parametrize("response, letter", [
    ("<Thought process>: 1 km = 1000 m ... <Answer>: <<C>>", "C"), (r"\boxed{C}", "C"), ("Answer: C.", "C"),
    ("C", "C"), ("<Answer>: <<B>>", "B"),
    ("Answer: (C)", None),  # "(" is not stripped: unparsable, as in the authors' code
    ("I think it is C", None),  # no "Answer": only the first character counts
    ("answer: C", None),  # "Answer" is matched case-sensitively
    ("", None),
])
def test_authors_letter_extraction(tasks, response, letter):
    assert extract_letter(response) == letter or response.startswith("\\boxed")
    grade = tasks[0].grade(response)  # the boxed content when there is one
    assert (grade.correct, grade.extracted) == (letter == "C", letter or "")


def result(problem, step, steps, correct):
    return {"task_id": f"{problem}-{step}", "score": float(correct), "correct": correct,
            "metadata": {"problem_id": problem, "step": step, "steps": steps}}


def composite(problem, steps, sub_results, multi):
    return [*(result(problem, str(i), steps, right) for i, right in enumerate(sub_results, 1)),
            result(problem, "multi", steps, multi)]


def test_four_dimensional_metrics_on_hand_computed_results():
    results = [*composite("2steps_1", 2, (True, True), True),          # CM strict and loose
               *composite("2steps_2", 2, (True, False), True),         # RM strict, CM loose
               *composite("2steps_3", 2, (False, False), True),        # RM strict and loose
               *composite("3steps_1", 3, (True, True, True), False),   # IG
               *composite("3steps_2", 3, (True, False, False), False),  # IK
               result("2steps_4", "1", 2, True)]                        # incomplete: only in S1
    report = aggregate(results)
    assert report["problems"] == 5 and report["incomplete"] == 1
    assert report["counts"] == {"IK": 1, "IG": 1, "CM_strict": 1, "RM_strict": 2, "CM_loose": 2,
                                "RM_loose": 1}
    assert report["IK"] == 0.2 and report["IG"] == 0.2
    assert report["CM_strict"] == 0.2 and report["RM_strict"] == pytest.approx(2 / 3)
    assert report["CM_loose"] == 0.4 and report["RM_loose"] == pytest.approx(1 / 3)
    assert report["score_strict"] == pytest.approx((5 - 0.5 - 2 - 1) / 5)
    assert report["score_loose"] == pytest.approx((5 - 0.5 - 1 - 1) / 5)
    assert report["S1"] == pytest.approx(8 / 13) and report["S2"] == 1.0 and report["S3"] == 0.0
    with pytest.raises(ValueError, match="no composite problem"):
        aggregate([result("2steps_4", "1", 2, True)])


def test_aggregate_reads_results_of_loaded_tasks(tasks):
    results = [{"task_id": task.id, "score": 1.0, "correct": True, "metadata": task.metadata}
               for task in tasks]
    report = aggregate(results)
    assert report["problems"] == 2 and report["CM_strict"] == 1.0 and report["score_strict"] == 1.0


def test_missing_files_raise_layout_errors(tmp_path):
    with pytest.raises(LayoutError, match=r"testmini\.json or data/testmini\.json not found(.|\n)*2steps/"):
        load_public_benchmark("wemath", tmp_path)
    root = release(tmp_path / "wemath")
    (root / "3steps" / "image" / "1-multi.png").unlink()
    with pytest.raises(LayoutError, match=r"3steps/image/1-multi\.png not found"):
        load_public_benchmark("wemath", root)


def test_malformed_files_raise_layout_errors(tmp_path):
    root = release(tmp_path / "wemath")
    (root / "testmini.json").write_text("[{]")
    with pytest.raises(LayoutError, match="not readable JSON"):
        load_public_benchmark("wemath", root)
    (root / "testmini.json").write_text(json.dumps({"records": records()}))
    with pytest.raises(LayoutError, match="not a non-empty list"):
        load_public_benchmark("wemath", root)


@pytest.mark.parametrize("change, message", [
    (lambda entry: entry.pop("key"), "record 4 lacks the field.s. key"),
    (lambda entry: entry.update(option="300, 400 or 400, 300"), "cannot read the options"),
    (lambda entry: entry.update(answer="F"), "answer 'F' is not one of the option letters"),
    (lambda entry: entry.update(ID="2steps_1"), "do not name a step"),
    (lambda entry: entry.update(key="3steps_4"), "do not name a step"),
])
def test_bad_records_raise_layout_errors(tmp_path, change, message):
    data = records()
    change(data[3])
    with pytest.raises(LayoutError, match=message):
        load_public_benchmark("wemath", release(tmp_path / "wemath", data))
