"""Tasks and task sources: JSONL, folders, generators, Hugging Face-style rows; splits; registry."""

import json

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from pyvision_env.registry import env_id_for, list_suites, load_suite, register_suite
from pyvision_env.tasks import (
    Task,
    TaskFormatError,
    TaskSet,
    generate_tasks,
    load_directory,
    load_hf_dataset,
    load_jsonl,
)


@pytest.fixture
def task_files(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (10, 10), "blue").save(tmp_path / "img" / "a.png")
    lines = [{"id": "a", "question": "Color?", "answer": "blue", "images": ["img/a.png"], "split": "train",
              "regions": [{"box": [1, 1, 5, 5]}]},
             {"id": "b", "question": "Sum?", "answer": "3", "grader": "numeric", "split": "held-out"}]
    path = tmp_path / "tasks.jsonl"
    path.write_text("# comment\n" + "\n".join(json.dumps(line) for line in lines) + "\n\n")
    return path


def test_jsonl_round_trip_and_splits(task_files):
    tasks = load_jsonl(task_files)
    assert len(tasks) == 2 and tasks[0].images[0].endswith("img/a.png") and tasks[0].regions[0].box[2] == 5.0
    assert [t.id for t in tasks.split("train")] == ["a"]
    assert Task.from_json(tasks[1].to_json()) == tasks[1]
    with pytest.raises(ValueError, match="no task with split 'dev'"):
        tasks.split("dev")


@pytest.mark.parametrize("line, message", [
    ("{not json", "tasks.jsonl:2"), ('{"id": "x", "question": "q"}', "missing required fields"),
    ('{"id": "x", "question": "q", "answer": 1, "colour": 2}', "unknown fields"), ("[1, 2]", "JSON object"),
    ('{"id": "x", "question": "q", "answer": 1, "grader": "fuzzy"}', "unknown grader"),
    ('{"id": "x", "question": "q", "answer": 1, "regions": [{"box": [5, 5, 1, 1]}]}', "x0 < x1"),
])
def test_malformed_jsonl_names_the_line(tmp_path, line, message):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"id": "ok", "question": "q", "answer": "a"}\n' + line + "\n")
    with pytest.raises(TaskFormatError, match=message):
        load_jsonl(path)


def test_missing_files_are_listed(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"id": "x", "question": "q", "answer": "a", "images": ["gone.png"]}))
    with pytest.raises(FileNotFoundError, match=r"1 media files are missing — x: .*gone\.png"):
        load_jsonl(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_jsonl(tmp_path / "nothing.jsonl")
    with pytest.raises(ValueError, match="duplicate task id"):
        TaskSet("d", [Task.minimal("1", id="x"), Task.minimal("2", id="x")])


def test_directory_of_task_files(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "q1.png")
    (tmp_path / "q1.json").write_text(json.dumps({"question": "What?", "answer": "black"}))
    tasks = load_directory(tmp_path)
    assert tasks[0].id == "q1" and tasks[0].images[0].endswith("q1.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TaskFormatError, match=r"neither tasks\.jsonl"):
        load_directory(tmp_path / "empty")


def test_generator_is_deterministic_per_index():
    def make(rng, index):
        return Task(id=f"g{index}", question="n?", answer=str(int(rng.integers(1000))))

    assert [t.answer for t in generate_tasks(make, 5, seed=1)] == [t.answer for t in generate_tasks(make, 5, 1)]
    assert generate_tasks(make, 3, seed=1)[2] == generate_tasks(make, 9, seed=1)[2]
    assert [t.answer for t in generate_tasks(make, 5, 1)] != [t.answer for t in generate_tasks(make, 5, 2)]


def test_held_out_split_is_stable_and_disjoint():
    tasks = TaskSet("n", [Task.minimal(str(i), id=f"t{i}") for i in range(200)])
    train, held = tasks.held_out_split(0.25, seed=3)
    assert {t.id for t in train}.isdisjoint({t.id for t in held}) and len(train) + len(held) == 200
    assert 30 < len(held) < 70
    assert [t.id for t in held] == [t.id for t in tasks.held_out_split(0.25, seed=3)[1]]


def test_hugging_face_rows():
    rows = [{"q": "Color?", "a": "red", "img": Image.new("RGB", (2, 2), "red"), "opts": ["red", "blue"]}]
    tasks = load_hf_dataset(rows, "hf", question="q", answer="a", image="img", choices="opts")
    assert isinstance(tasks[0].images[0], Image.Image) and tasks[0].choices == ("red", "blue")
    with pytest.raises(TaskFormatError, match="row 0 has no column"):
        load_hf_dataset(rows, "hf")


def test_hugging_face_datasets_object_when_installed():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"question": ["n?"], "answer": ["3"],
                                     "image": [Image.fromarray(np.zeros((3, 3, 3), np.uint8))]})
    assert load_hf_dataset(ds, "ds")[0].answer == "3"


def test_registry_names_and_errors(task_files):
    assert env_id_for("hr-bench_4k") == "PyVision/HrBench4k-v0"
    env_id = register_suite("test-colours", task_files, description="colours", replace=True)
    assert env_id == "PyVision/TestColours-v0" and env_id in gym.registry
    assert load_suite("test-colours")[0].id == "a" and "test-colours" in [s.name for s in list_suites()]
    with pytest.raises(ValueError, match="already registered"):
        register_suite("test-colours", task_files)
    with pytest.raises(KeyError, match="unknown suite"):
        load_suite("no-such-suite")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        register_suite("test-bad", "missing.jsonl")
    with pytest.raises(ValueError, match=r"must be a \.jsonl file"):
        register_suite("test-bad", task_files.parent / "img" / "a.png")
