"""``tally``: how many squares of one colour are in a small image — the trainer's CPU demo task.

A 96x96 image holds 8x8 squares in pure red, green and blue on a white ground, 1-9 of the asked colour and
2-10 of the others, on a grid with gaps. One short numpy cell counts them exactly (pixels of the colour /
64); the answer is then read off the printed number. The task is built for models far too small to count by
eye (``pyvision make-tiny-model``): what they can learn is *when* to call the tool, *which* code the question
asks for (the colour's RGB triple) and to copy the result — exactly the behaviours RL with a tool reward
acts on. Larger models can of course count the squares directly.

Example::

    from pyvision_env.suites import SUITES
    task = SUITES["tally"].load(count=5)[0]
    task.question, task.grader
    # -> ('How many red squares are in the image?', 'numeric')
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..tasks import Task
from .common import SyntheticSuite, region

SIZE = 96
SQUARE = 8
CELL = 12
"""Squares sit in 12 px cells of an 8x8 grid: at least 4 px apart."""
COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


def make_task(rng: np.random.Generator, index: int) -> Task:
    color = list(COLORS)[int(rng.integers(len(COLORS)))]
    answer = int(rng.integers(1, 10))
    others = [c for c in COLORS if c != color]
    kinds = [color] * answer + [others[i] for i in rng.integers(len(others), size=int(rng.integers(2, 11)))]
    cells = rng.choice((SIZE // CELL) ** 2, size=len(kinds), replace=False)
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    boxes = []
    for kind, cell in zip(kinds, cells):
        x, y = int(cell % (SIZE // CELL)) * CELL + 2, int(cell // (SIZE // CELL)) * CELL + 2
        draw.rectangle((x, y, x + SQUARE - 1, y + SQUARE - 1), fill=COLORS[kind])
        boxes.append((x, y, x + SQUARE, y + SQUARE))
    return Task(id=f"tally-{index:04d}", question=f"How many {color} squares are in the image?",
                answer=str(answer), images=(image,), grader="numeric",
                regions=tuple(region(box, color) for box in boxes[:answer]),
                metadata={"required_ops": ["count"], "color": color})


SUITE = SyntheticSuite("tally", 1, make_task, tags=("synthetic", "count", "demo"), default_count=500,
                       description="count the squares of one colour in a small image (the trainer's demo task)")
