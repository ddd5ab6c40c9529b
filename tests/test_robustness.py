"""Robustness variants: images rotated/flipped with their regions, questions and answers unchanged."""

from __future__ import annotations

import os

import pytest
from PIL import Image

from benchmarks.evaluation.robustness import TRANSFORMS, register_robust_variant, robust_variant
from pyvision_env import registry
from pyvision_env.suites import SUITES
from pyvision_env.tasks import Task, TaskSet


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("PYVISION_CACHE", str(tmp_path / "cache"))
    return SUITES["count"].load(count=3, seed=5)


@pytest.mark.parametrize("transform", sorted(TRANSFORMS))
def test_pixels_and_regions_move_together(tasks, transform):
    variant = robust_variant(tasks, transform)
    assert variant.name == f"count-{transform}" and len(variant) == len(tasks)
    transpose = TRANSFORMS[transform][0]
    for before, after in zip(tasks, variant):
        assert (after.id, after.question, after.answer, after.grader) == (before.id, before.question,
                                                                          before.answer, before.grader)
        assert after.metadata["robustness"] == transform and before.regions
        original, turned = Image.open(before.images[0]).convert("RGB"), Image.open(after.images[0]).convert("RGB")
        assert turned.tobytes() == original.transpose(transpose).tobytes()
        for old, new in zip(before.regions, after.regions, strict=True):
            crop_then_turn = original.crop(tuple(map(round, old.box))).transpose(transpose)
            assert turned.crop(tuple(map(round, new.box))).tobytes() == crop_then_turn.tobytes()


def test_images_are_written_once_and_variants_register_as_environments(tasks):
    registry.register_suite("count-small", tasks, replace=True)
    env_id = register_robust_variant("count-small", "rot90")
    assert env_id == "PyVision/CountSmallRot90-v0"
    first = registry.load_suite("count-small-rot90")[0].images[0]
    written = os.stat(first).st_mtime_ns
    assert robust_variant(tasks, "rot90")[0].images[0] == first and os.stat(first).st_mtime_ns == written
    width, height = Image.open(tasks[0].images[0]).size
    assert Image.open(first).size == (height, width)


def test_bad_transforms_and_video_tasks_are_refused(tasks, tmp_path):
    with pytest.raises(ValueError, match=r"unknown transform 'rot45'.*rot90"):
        robust_variant(tasks, "rot45")
    with pytest.raises(ValueError, match="unknown transform"):
        register_robust_variant("count", "mirror")
    video = TaskSet("clips", [Task(id="v1", question="?", answer="1", videos=(str(tmp_path / "a.mp4"),))])
    with pytest.raises(ValueError, match="task v1 has videos"):
        robust_variant(video, "hflip")
