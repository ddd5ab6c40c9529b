"""``zoom``: a small number on a red-bordered tag somewhere in a large cluttered image (a V*-style needle).

The tag's digits are 10-13 px tall in a 2000x1500 image: legible at full size, a grey smudge in the first
view (downscaled about 1.9x). Tags with blue, green and orange borders carry other numbers.

Example::

    from pyvision_env.suites import SUITES
    task = SUITES["zoom"].load(count=5)[0]
    task.question, task.regions[0].label
    # -> ('What number is written on the small tag with the red border? ...', 'needle')
"""

from __future__ import annotations

import numpy as np
from PIL import ImageDraw

from ..tasks import Task
from .common import SyntheticSuite, clutter, draw_text, place_boxes, random_number, region, text_extent

SIZE = (2000, 1500)
NEEDLE_COLOR = (210, 30, 35)
DECOY_COLORS = ((40, 70, 200), (30, 150, 60), (235, 140, 20))
QUESTION = ("What number is written on the small tag with the red border? Answer with the digits only.")


def tag_size(text: str, size: int) -> tuple[int, int]:
    width, height = text_extent(text, size)
    pad = max(4, size // 2)
    return width + 2 * pad, height + 2 * pad


def draw_tag(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], text: str, size: int,
             border: tuple[int, int, int]) -> None:
    """A white tag with a 3 px coloured border and dark text centred in it."""
    draw.rectangle(box, fill=(250, 250, 250), outline=border, width=3)
    width, height = text_extent(text, size)
    x = (box[0] + box[2] - width) // 2
    y = (box[1] + box[3] - height) // 2
    draw_text(draw, (x, y), text, size, (25, 25, 25))


def make_task(rng: np.random.Generator, index: int) -> Task:
    image = clutter(rng, SIZE, shapes=90)
    draw = ImageDraw.Draw(image)
    size = int(rng.integers(15, 19))
    answer = random_number(rng, int(rng.integers(4, 7)))
    decoys = [random_number(rng, int(rng.integers(4, 7))) for _ in range(int(rng.integers(3, 7)))]
    texts = [answer, *decoys]
    boxes = place_boxes(rng, SIZE, [tag_size(text, size) for text in texts], gap=40, margin=40)
    for number, (text, box) in enumerate(zip(texts, boxes)):
        border = NEEDLE_COLOR if number == 0 else DECOY_COLORS[number % len(DECOY_COLORS)]
        draw_tag(draw, (box[0], box[1], box[2] - 1, box[3] - 1), text, size, border)
    return Task(id=f"zoom-{index:04d}", question=QUESTION, answer=answer, images=(image,), grader="exact",
                regions=(region(boxes[0], "needle"),),
                metadata={"required_ops": ["crop"], "font_size": size, "decoys": len(boxes) - 1})


SUITE = SyntheticSuite("zoom", 1, make_task, tags=("synthetic", "zoom", "high-resolution"),
                       description="read a small number on a red-bordered tag in a large cluttered image")
