"""The built-in synthetic suites: deterministic, generated once into the cache, loadable as JSONL, valid."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import gymnasium as gym
import pytest
from PIL import Image

import pyvision_env
from pyvision_env import load_jsonl
from pyvision_env.registry import env_id_for
from pyvision_env.suites import CACHE_ENV, SUITES, VIDEO_SUITES, register_builtin_suites
from pyvision_env.suites.common import split_of

COUNT = 5
REQUIRED_OPS = {"zoom": [["crop"]], "orientation": [["rotate"], ["flip"]], "count": [["count"]],
                "contrast": [["enhance"]], "tally": [["count"]]}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    return tmp_path


def png_bytes(tasks) -> list[bytes]:
    return [Path(task.images[0]).read_bytes() for task in tasks]


@pytest.mark.parametrize("name", SUITES)
def test_same_seed_same_tasks_other_seed_other_tasks(name, tmp_path, monkeypatch):
    loaded = {}
    for label, seed in (("first", 3), ("again", 3), ("other", 4)):
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / label))
        loaded[label] = SUITES[name].load(count=COUNT, seed=seed)
    first, again, other = loaded["first"], loaded["again"], loaded["other"]
    assert [t.to_json() | {"images": None} for t in first] == [t.to_json() | {"images": None} for t in again]
    assert png_bytes(first) == png_bytes(again)
    assert [t.answer for t in first] != [t.answer for t in other]
    assert all(a != b for a, b in zip(png_bytes(first), png_bytes(other)))


@pytest.mark.parametrize("name", SUITES)
def test_tasks_are_complete_and_regions_lie_inside_their_image(name, cache):
    tasks = SUITES[name].load(count=COUNT, seed=0)
    assert len(tasks) == COUNT and len({t.id for t in tasks}) == COUNT
    for index, task in enumerate(tasks):
        assert task.question and task.answer and task.split == split_of(index)
        assert task.metadata["required_ops"] in REQUIRED_OPS[name]
        assert task.grade(f"\\boxed{{{task.answer}}}").correct
        with Image.open(task.images[0]) as image:
            width, height = image.size
        assert task.regions
        for region in task.regions:
            x0, y0, x1, y1 = region.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height, (task.id, region.box, (width, height))
    assert [split_of(i) for i in range(10)].count("held-out") == 2


def test_orientation_metadata_names_the_transform(cache):
    tasks = SUITES["orientation"].load(count=20, seed=0)
    transforms = {task.metadata["transform"] for task in tasks}
    assert transforms == {"rotate90", "rotate180", "rotate270", "mirror", "flip"}


def test_cache_is_written_once_and_reused(cache):
    suite = SUITES["count"]
    tasks = suite.load(count=2, seed=1)
    folder = suite.folder(2, 1)
    assert folder.is_relative_to(cache) and Path(tasks[0].images[0]).parent == folder
    assert sorted(p.name for p in folder.iterdir()) == ["count-0000.png", "count-0001.png", "tasks.jsonl"]

    def must_not_generate(rng, index):
        raise AssertionError("the cached suite was generated again")

    reloaded = dataclasses.replace(suite, make_task=must_not_generate).load(count=2, seed=1)
    assert [t.to_json() for t in reloaded] == [t.to_json() for t in tasks]
    assert suite.folder(3, 1) != folder and suite.folder(2, 2) != folder


def test_tasks_jsonl_loads_with_load_jsonl(cache):
    tasks = SUITES["contrast"].load(count=3, seed=0)
    again = load_jsonl(SUITES["contrast"].folder(3, 0) / "tasks.jsonl")
    assert [t.to_json() for t in again] == [t.to_json() for t in tasks]


def test_concurrent_generation_yields_one_complete_folder(cache):
    suite = SUITES["orientation"]
    results, errors = [], []

    def load():
        try:
            results.append([t.to_json() for t in suite.load(count=4, seed=9)])
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 3 and results[0] == results[1] == results[2]
    folder = suite.folder(4, 9)
    suite._generate(folder, 4, 9)  # a process that loses the race keeps the winner's folder
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]
    assert len(list(folder.glob("*.png"))) == 4 and len(load_jsonl(folder / "tasks.jsonl")) == 4


def test_builtin_suites_are_registered_once():
    ids = register_builtin_suites()
    assert ids == ["PyVision/Zoom-v0", "PyVision/Orientation-v0", "PyVision/Count-v0", "PyVision/Contrast-v0",
                   "PyVision/Tally-v0", "PyVision/VideoEvent-v0", "PyVision/VideoCount-v0", "PyVision/VideoMeasure-v0",
                   "PyVision/VideoNeedle-v0"]
    assert register_builtin_suites() == ids
    for name, env_id in zip([*SUITES, *VIDEO_SUITES], ids):
        assert env_id_for(name) == env_id and gym.spec(env_id).kwargs["suite"] == name
    registered = {suite.name: suite for suite in pyvision_env.list_suites()}
    assert registered["zoom"].description == SUITES["zoom"].description
    assert set(registered["count"].tags) >= {"synthetic", "count"}
    assert set(registered["video-needle"].tags) >= {"video", "long-video"}
