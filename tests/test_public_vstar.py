"""V* Bench loader on tiny fixtures in both released formats: tasks, regions, scoring, aggregate and layout
errors."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from benchmarks.evaluation.public import load_public_benchmark, vstar
from benchmarks.evaluation.public.common import LayoutError

INSTRUCTION = "Answer with the option's letter from the given choices directly."

ANNOTATIONS = {
    "direct_attributes/sa_4690": {
        "target_object": ["glove"], "bbox": [[10, 5, 20, 15]],
        "question": "What is the material of the glove?",
        "options": ["The material of the glove is rubber.", "The material of the glove is cotton.",
                    "The material of the glove is kevlar.", "The material of the glove is leather."]},
    "direct_attributes/sa_86101": {
        "target_object": ["dustpan"], "bbox": [[0, 0, 8, 8]], "question": "What is the color of the dustpan?",
        "options": ["The color of the dustpan is blue.", "The color of the dustpan is purple.",
                    "The color of the dustpan is red.", "The color of the dustpan is white."]},
    "relative_position/sa_79958": {
        "target_object": ["steel ladder", "wagon"], "bbox": [[1, 2, 3, 4], [20, 10, 10, 10]],
        "question": "Is the steel ladder on the left or right side of the wagon?",
        "options": ["The steel ladder is on the left side of the wagon.",
                    "The steel ladder is on the right side of the wagon."]},
}

QUESTIONS = [
    {"image": "direct_attributes/sa_4690.jpg",
     "text": "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n"
             + INSTRUCTION,
     "category": "direct_attributes", "question_id": "0", "label": "A"},
    {"image": "direct_attributes/sa_86101.jpg",
     "text": f"What is the color of the dustpan?\n(A) purple\n(B) red\n(C) blue\n(D) white\n{INSTRUCTION}",
     "category": "direct_attributes", "question_id": "1", "label": "C"},
    {"image": "relative_position/sa_79958.jpg",
     "text": "Is the steel ladder on the left or right side of the wagon?\n(A) right\n(B) left\n"
             + INSTRUCTION,
     "category": "relative_position", "question_id": "2", "label": "B"},
]


pytestmark = pytest.mark.usefixtures("private_cache")


def write_release(root, questions=True):
    """The Hugging Face layout: per-image annotations, the extra OCR folder, and test_questions.jsonl."""
    for stem, annotation in ANNOTATIONS.items():
        (root / stem).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), "orange").save(root / f"{stem}.jpg")
        (root / f"{stem}.json").write_text(json.dumps(annotation))
    (root / "OCR").mkdir()
    (root / "OCR" / "notes.json").write_text("not read")
    if questions:
        (root / "test_questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return root


def test_questions_file_gives_letter_tasks_with_regions_from_the_annotations(tmp_path):
    tasks = load_public_benchmark("vstar", write_release(tmp_path))
    assert [t.id for t in tasks] == ["0", "1", "2"]
    dustpan = tasks[1]
    assert dustpan.question == "What is the color of the dustpan?"
    assert dustpan.choices == ("purple", "red", "blue", "white")
    assert dustpan.answer == "C"
    assert dustpan.grader == "choice" and dustpan.split == "test"
    assert dustpan.metadata == {"category": "direct_attributes", "image": "direct_attributes/sa_86101.jpg"}
    ladder = tasks[2]
    assert ladder.choices == ("right", "left") and ladder.answer == "B"
    assert ladder.metadata["category"] == "relative_position"
    assert [(r.box, r.label) for r in ladder.regions] == [((1, 2, 4, 6), "steel ladder"),
                                                         ((20, 10, 30, 20), "wagon")]
    for task in tasks:
        with Image.open(task.images[0]) as image:
            assert image.size == (40, 30)


def test_annotations_alone_give_a_fixed_shuffled_option_order(tmp_path):
    tasks = load_public_benchmark("vstar", write_release(tmp_path, questions=False))
    assert [t.id for t in tasks] == ["direct_attributes/sa_4690", "direct_attributes/sa_86101",
                                     "relative_position/sa_79958"]
    for task in tasks:
        options = ANNOTATIONS[task.id]["options"]
        order = vstar.shuffled_order(task.id, len(options))
        assert task.choices == tuple(options[i] for i in order)
        assert task.choices["ABCD".index(task.answer)] == options[0]  # the first option is the correct one
        assert task.question == ANNOTATIONS[task.id]["question"]
        assert task.metadata["category"] == task.id.split("/")[0]
    assert tasks[0].regions[0].box == (10, 5, 30, 20) and tasks[0].regions[0].label == "glove"
    again = load_public_benchmark("vstar", tmp_path)
    assert [t.choices for t in again] == [t.choices for t in tasks]
    # the correct option lands on every position across questions, not always on A
    assert {vstar.shuffled_order(f"direct_attributes/sa_{i}", 4).index(0) for i in range(40)} == {0, 1, 2, 3}


@pytest.mark.parametrize(("reply", "correct"), [
    ("C", True), ("(C)", True), ("C. blue", True), ("\\boxed{C}", True), ("The answer is C", True),
    ("blue", True), ("A", False), ("red", False), ("I cannot tell from this image", False), ("", False),
])
def test_letter_scoring(tmp_path, reply, correct):
    dustpan = load_public_benchmark("vstar", write_release(tmp_path))[1]
    assert dustpan.grade(reply).correct is correct


def test_aggregate_reports_accuracy_overall_and_per_category():
    def result(task_id, category, correct):
        return {"task_id": task_id, "score": float(correct), "correct": correct,
                "metadata": {"category": category}}

    results = [result("0", "direct_attributes", True), result("1", "direct_attributes", True),
               result("2", "direct_attributes", False), result("3", "relative_position", False)]
    assert vstar.aggregate(results) == {
        "overall": 0.5, "categories": {"direct_attributes": pytest.approx(2 / 3), "relative_position": 0.0}}


def test_missing_files_raise_layout_errors_naming_the_layout(tmp_path):
    with pytest.raises(LayoutError, match=r"test_questions.jsonl or direct_attributes or relative_position "
                                          r"not found(.|\n)*"
                                          r"Expected layout(.|\n)*relative_position/<stem>.jpg"):
        load_public_benchmark("vstar", tmp_path)
    write_release(tmp_path, questions=False)
    (tmp_path / "relative_position" / "sa_79958.json").unlink()
    with pytest.raises(LayoutError, match=r"sa_79958.json \(the annotation of sa_79958.jpg\) not found"):
        load_public_benchmark("vstar", tmp_path)


def test_malformed_files_and_fields_raise_layout_errors(tmp_path):
    root = write_release(tmp_path)
    lines = (root / "test_questions.jsonl").read_text().splitlines()

    def rewrite(*changed):
        (root / "test_questions.jsonl").write_text("\n".join(changed) + "\n")

    rewrite(lines[0], "{not json")
    with pytest.raises(LayoutError, match=r"line 2 is not JSON"):
        load_public_benchmark("vstar", root)
    rewrite(json.dumps({k: v for k, v in QUESTIONS[0].items() if k != "label"}))
    with pytest.raises(LayoutError, match=r"line 1 lacks the field\(s\) label"):
        load_public_benchmark("vstar", root)
    rewrite(json.dumps({**QUESTIONS[0], "label": "E"}))
    with pytest.raises(LayoutError, match=r"label 'E' is not one of the options' letters"):
        load_public_benchmark("vstar", root)
    rewrite(json.dumps({**QUESTIONS[0], "text": "What is the material of the glove? rubber or cotton"}))
    with pytest.raises(LayoutError, match=r"not a question followed by"):
        load_public_benchmark("vstar", root)
    rewrite(json.dumps({**QUESTIONS[0], "image": "direct_attributes/missing.jpg"}))
    with pytest.raises(LayoutError, match=r"image direct_attributes/missing.jpg not found"):
        load_public_benchmark("vstar", root)
    rewrite(lines[0], lines[0])
    with pytest.raises(LayoutError, match=r"duplicate task id '0'"):
        load_public_benchmark("vstar", root)

    (root / "test_questions.jsonl").unlink()
    spec = root / "direct_attributes" / "sa_4690.json"
    spec.write_text(json.dumps({**ANNOTATIONS["direct_attributes/sa_4690"], "bbox": [[1, 2, 3]]}))
    with pytest.raises(LayoutError, match=r"bbox is not a list of"):
        load_public_benchmark("vstar", root)
    spec.write_text(json.dumps({k: v for k, v in ANNOTATIONS["direct_attributes/sa_4690"].items()
                                if k != "options"}))
    with pytest.raises(LayoutError, match=r"sa_4690.json lacks the field\(s\) options"):
        load_public_benchmark("vstar", root)
    spec.write_text("[1, 2]")
    with pytest.raises(LayoutError, match=r"sa_4690.json is not a JSON object"):
        load_public_benchmark("vstar", root)
