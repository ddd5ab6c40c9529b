"""Robustness variants of image suites (CodeVision's setting): every image rotated or flipped, the question
and the answer unchanged — a model that uses its tools turns the image back; one that cannot drops.

Ground-truth regions move with the pixels. Questions whose answer depends on orientation (left/right,
above/below) are not changed either, so leave such suites out or filter them first.

Example::

    from benchmarks.evaluation.robustness import register_robust_variant
    env_id = register_robust_variant("zoom", "rot90")      # -> "PyVision/ZoomRot90-v0"
    robust_variant(load_suite("vstar"), "hflip")           # -> TaskSet('vstar-hflip', 191 tasks)
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from pyvision_env import registry
from pyvision_env.suites.common import cache_root
from pyvision_env.tasks import Region, Task, TaskSet

Box = tuple[float, float, float, float]

TRANSFORMS: dict[str, tuple[Image.Transpose, Callable[[Box, int, int], Box]]] = {
    # name: (PIL transpose, box (x0, y0, x1, y1) in a w x h image -> the box in the transformed image)
    "rot90": (Image.Transpose.ROTATE_90, lambda b, w, h: (b[1], w - b[2], b[3], w - b[0])),
    "rot180": (Image.Transpose.ROTATE_180, lambda b, w, h: (w - b[2], h - b[3], w - b[0], h - b[1])),
    "rot270": (Image.Transpose.ROTATE_270, lambda b, w, h: (h - b[3], b[0], h - b[1], b[2])),
    "hflip": (Image.Transpose.FLIP_LEFT_RIGHT, lambda b, w, h: (w - b[2], b[1], w - b[0], b[3])),
    "vflip": (Image.Transpose.FLIP_TOP_BOTTOM, lambda b, w, h: (b[0], h - b[3], b[2], h - b[1])),
}
"""Rotations are counter-clockwise (``rot90`` turns the image a quarter turn to the left)."""


def robust_variant(tasks: TaskSet, transform: str) -> TaskSet:
    """``tasks`` with every image transformed by ``transform`` (a key of :data:`TRANSFORMS`), written once
    to ``$PYVISION_CACHE/robust/<suite>/<transform>/``; answers, questions and ids unchanged."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose from {', '.join(TRANSFORMS)}")
    folder = cache_root() / "robust" / tasks.name / transform
    return TaskSet(f"{tasks.name}-{transform}", [_transformed(task, transform, folder) for task in tasks],
                   description=f"{tasks.description or tasks.name}, images {transform}")


def register_robust_variant(suite: str, transform: str) -> str:
    """Register ``<suite>-<transform>`` (loaded on first use) as an environment; returns its Gymnasium id."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; choose from {', '.join(TRANSFORMS)}")
    return registry.register_suite(f"{suite}-{transform}",
                                   lambda: robust_variant(registry.load_suite(suite), transform),
                                   description=f"{suite} with every image {transform}", replace=True,
                                   tags=("robustness",))


def _transformed(task: Task, transform: str, folder: Path) -> Task:
    if task.videos:
        raise ValueError(f"task {task.id} has videos: robustness variants are for image suites")
    transpose, move = TRANSFORMS[transform]
    images, sizes = [], []
    for index, source in enumerate(task.images):
        image = source if isinstance(source, Image.Image) else Image.open(source)
        sizes.append(image.size)
        path = folder / f"{_safe(task.id)}-{index}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            image.transpose(transpose).save(partial, format="PNG")
            partial.replace(path)
        images.append(str(path))
    regions = tuple(Region(move(region.box, *sizes[region.image]), region.image, region.label)
                    for region in task.regions if region.image < len(sizes))
    return dataclasses.replace(task, images=tuple(images), regions=regions,
                               metadata={**task.metadata, "robustness": transform})


def _safe(task_id: str) -> str:
    """A file name for a task id (readable part plus a digest, so that distinct ids never collide)."""
    readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in task_id)[:60]
    return f"{readable}-{hashlib.sha1(task_id.encode()).hexdigest()[:8]}"
