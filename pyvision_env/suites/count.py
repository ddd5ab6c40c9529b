"""``count``: how many shapes of one colour and kind are in a large image of small, clustered shapes.

Circles, squares and triangles 9-15 px across in five colours, in clusters where neighbours may be as close as
2 px: counting them at full resolution is exact, while in the downscaled first view (about 1.9x smaller)
small shapes lose their form and neighbours blur together.

Example::

    from pyvision_env.suites import SUITES
    task = SUITES["count"].load(count=5)[0]
    task.question, task.grader
    # -> ('How many purple squares are in the image? Answer with a number.', 'numeric')
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..tasks import Task
from .common import Box, SyntheticSuite, muted_color, overlaps, region

SIZE = (2000, 1500)
COLORS = {"red": (215, 35, 40), "orange": (240, 145, 25), "green": (35, 160, 60), "blue": (40, 80, 210),
          "purple": (140, 50, 190)}
SHAPES = ("circle", "square", "triangle")
GAP = 2
"""Pixels between neighbouring shapes in a cluster."""


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, color: tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box[0], box[1], box[2] - 1, box[3] - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=color)


def scatter(rng: np.random.Generator, count: int, clusters: int) -> list[Box]:
    """``count`` square boxes of 9-15 px, non-overlapping (``GAP`` apart), around ``clusters`` centres."""
    centres = rng.uniform((100, 100), (SIZE[0] - 100, SIZE[1] - 100), size=(clusters, 2))
    boxes: list[Box] = []
    while len(boxes) < count:
        side = int(rng.integers(9, 16))
        x, y = centres[rng.integers(clusters)] + rng.normal(0, 45, size=2)
        box = (int(x), int(y), int(x) + side, int(y) + side)
        inside = min(box[0], box[1]) >= 10 and box[2] <= SIZE[0] - 10 and box[3] <= SIZE[1] - 10
        if inside and not overlaps(box, boxes, GAP):
            boxes.append(box)
    return boxes


def make_task(rng: np.random.Generator, index: int) -> Task:
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    answer = int(rng.integers(8, 31))
    others = [(c, s) for c in COLORS for s in SHAPES if (c, s) != (color, shape)]
    kinds = [(color, shape)] * answer + [others[i] for i in rng.integers(len(others), size=int(rng.integers(90, 180)))]
    boxes = scatter(rng, len(kinds), clusters=int(rng.integers(12, 25)))
    image = Image.new("RGB", SIZE, muted_color(rng, 236, 250))
    draw = ImageDraw.Draw(image)
    for (kind_color, kind_shape), box in zip(kinds, boxes):
        draw_shape(draw, kind_shape, box, COLORS[kind_color])
    label = f"{color} {shape}"
    return Task(id=f"count-{index:04d}", question=f"How many {color} {shape}s are in the image? Answer with a number.",
                answer=str(answer), images=(image,), grader="numeric",
                regions=tuple(region(box, label) for box in boxes[:answer]),
                metadata={"required_ops": ["count"], "color": color, "shape": shape, "shapes": len(kinds)})


SUITE = SyntheticSuite("count", 1, make_task, tags=("synthetic", "count", "high-resolution"),
                       description="count the small shapes of one colour and kind among many")
