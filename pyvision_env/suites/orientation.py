"""``orientation``: a card with a printed code, photographed rotated by 90/180/270 degrees or mirrored.

Reading the code means undoing the transform (CodeVision's brittleness setting). Codes use only characters
that no rotation or mirror turns into another valid character, so exactly one orientation reads well.

Example::

    from pyvision_env.suites import SUITES
    task = SUITES["orientation"].load(count=5)[0]
    task.metadata["transform"], task.metadata["required_ops"]
    # -> ('mirror', ['flip'])
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..tasks import Task
from .common import SyntheticSuite, draw_text, muted_color, random_text, region, text_extent

CODE_CHARS = "2457GJPR"
"""Characters whose rotations and mirror images match no character (measured with the reader's matcher)."""

TRANSFORMS = {
    "rotate90": Image.Transpose.ROTATE_90, "rotate180": Image.Transpose.ROTATE_180,
    "rotate270": Image.Transpose.ROTATE_270, "mirror": Image.Transpose.FLIP_LEFT_RIGHT,
    "flip": Image.Transpose.FLIP_TOP_BOTTOM,
}
"""Name -> PIL transpose (rotations are counter-clockwise, as ``Image.rotate``)."""

QUESTION = ("This photo of a card may be rotated or mirrored. What code is printed on the card? The code is "
            "made of capital letters and digits.")


def make_task(rng: np.random.Generator, index: int) -> Task:
    size = int(rng.integers(56, 90))
    answer = random_text(rng, CODE_CHARS, int(rng.integers(4, 7)))
    width, height = text_extent(answer, size)
    card_w = width + int(rng.integers(2, 5)) * size
    card_h = height + int(rng.integers(3, 6)) * size
    card = Image.new("RGB", (card_w, card_h), muted_color(rng, 238, 252))
    draw = ImageDraw.Draw(card)
    draw.rectangle((0, 0, card_w - 1, size // 2), fill=(int(rng.integers(150, 200)), 190, 235))
    x = int(rng.integers(size // 2, card_w - width - size // 2))
    y = int(rng.integers(size, card_h - height - size // 2))
    text_box = draw_text(draw, (x, y), answer, size, (20, 20, 30))
    name = list(TRANSFORMS)[int(rng.integers(len(TRANSFORMS)))]
    marker = Image.new("1", card.size, 0)
    ImageDraw.Draw(marker).rectangle((text_box[0], text_box[1], text_box[2] - 1, text_box[3] - 1), fill=1)
    box = marker.transpose(TRANSFORMS[name]).getbbox()
    return Task(id=f"orientation-{index:04d}", question=QUESTION, answer=answer,
                images=(card.transpose(TRANSFORMS[name]),), grader="exact", regions=(region(box, "text"),),
                metadata={"transform": name, "required_ops": ["flip" if name in ("mirror", "flip") else "rotate"],
                          "font_size": size})


SUITE = SyntheticSuite("orientation", 1, make_task, tags=("synthetic", "orientation", "ocr"),
                       description="read a code on a card that is rotated by 90/180/270 degrees or mirrored")
