"""``contrast``: a code printed in ink only a few grey levels darker than its noisy, uneven paper.

The text is large but nearly invisible: reading it needs contrast enhancement (smoothing, flattening the
background, stretching), not zooming.

Example::

    from pyvision_env.suites import SUITES
    task = SUITES["contrast"].load(count=5)[0]
    task.metadata["required_ops"], task.metadata["ink_contrast"]
    # -> (['enhance'], 5)
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..tasks import Task
from .common import CLEAR_CHARS, SyntheticSuite, draw_text, random_text, region, text_extent

SIZE = (1000, 640)
QUESTION = ("The label on this faded sheet is very faint. What code is printed on it? The code is made of "
            "capital letters and digits.")


def make_task(rng: np.random.Generator, index: int) -> Task:
    size = int(rng.integers(56, 84))
    answer = random_text(rng, CLEAR_CHARS, int(rng.integers(4, 7)))
    paper = int(rng.integers(150, 215))
    contrast = int(rng.integers(5, 10))
    ink = Image.new("L", SIZE, 0)
    width, height = text_extent(answer, size)
    x = int(rng.integers(40, SIZE[0] - width - 40))
    y = int(rng.integers(40, SIZE[1] - height - 40))
    box = draw_text(ImageDraw.Draw(ink), (x, y), answer, size, 255)
    ramp_x, ramp_y = rng.uniform(-10, 10, size=2)
    gradient = (ramp_x * np.linspace(-1, 1, SIZE[0])[None, :] + ramp_y * np.linspace(-1, 1, SIZE[1])[:, None])
    noise = rng.normal(0, 1.5, size=(SIZE[1], SIZE[0]))
    pixels = paper + gradient + noise - contrast * np.asarray(ink, dtype=float) / 255
    image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    return Task(id=f"contrast-{index:04d}", question=QUESTION, answer=answer, images=(image,), grader="exact",
                regions=(region(box, "text"),),
                metadata={"required_ops": ["enhance"], "ink_contrast": contrast, "paper": paper,
                          "font_size": size})


SUITE = SyntheticSuite("contrast", 1, make_task, tags=("synthetic", "contrast", "ocr"),
                       description="read a code printed in ink barely darker than its noisy paper")
