"""The built-in synthetic video suites: short clips where the answer sits in a few frames.

=================  =============================  ========================================================
``video-event``    ``PyVision/VideoEvent-v0``     when (to the nearest second) a grey lamp turns green
``video-count``    ``PyVision/VideoCount-v0``     how many times a lamp flashes yellow (flashes under 1 s)
``video-measure``  ``PyVision/VideoMeasure-v0``   how wide a pulsing blue bar is at a given half second
``video-needle``   ``PyVision/VideoNeedle-v0``    the number on a card shown for 2 s in a 2-3 minute video
=================  =============================  ========================================================

Clips are 160x120 at 8 fps (the needle: 128x96 at 4 fps), H.264 with a keyframe every 8 frames, over a
background of slowly drifting muted shapes. Each is built so that the frames that matter are few and
short: a uniform 1 fps sample misses the exact switch time, short flashes and the asked half second, while
code that fetches the right frames reads them exactly.

Example::

    from pyvision_env.suites import VIDEO_SUITES
    task = VIDEO_SUITES["video-event"].load(count=5)[0]
    task.videos, task.answer
    # -> (('/root/.cache/pyvision/suites/video-event/v1/seed0-n5/video-event-0000.mp4',), '17')
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw

from ..tasks import Task
from .common import Clip, SyntheticSuite, draw_text, muted_color, random_number, text_extent

SIZE = (160, 120)
FPS = 8
LAMP = 16
"""Side of the lamp square, in pixels."""
GREY, GREEN, YELLOW, BLUE = (120, 120, 120), (40, 190, 60), (245, 205, 30), (40, 80, 210)


def backdrop(rng: np.random.Generator, size: tuple[int, int], shapes: int = 6
             ) -> Callable[[float], Image.Image]:
    """``frame_at(seconds)``: a light background with muted shapes drifting slowly across it."""
    base = muted_color(rng, 205, 240)
    kinds = [(int(rng.integers(2)), muted_color(rng, 140, 200), rng.uniform((0, 0), size),
              rng.uniform(-6, 6, size=2), int(rng.integers(8, 24))) for _ in range(shapes)]

    def frame_at(seconds: float) -> Image.Image:
        image = Image.new("RGB", size, base)
        draw = ImageDraw.Draw(image)
        for kind, color, start, velocity, side in kinds:
            x, y = (start + velocity * seconds) % size
            box = (x - side / 2, y - side / 2, x + side / 2, y + side / 2)
            (draw.ellipse if kind else draw.rectangle)(box, fill=color)
        return image

    return frame_at


def lamp_video(rng: np.random.Generator, seconds: float, color_at: Callable[[float], tuple[int, int, int]]
               ) -> Iterator[np.ndarray]:
    """Frames of a lamp at a random place over the backdrop, its colour ``color_at(t)``."""
    frame_at = backdrop(rng, SIZE)
    x, y = (int(v) for v in rng.integers((8, 8), (SIZE[0] - LAMP - 8, SIZE[1] - LAMP - 8)))
    for number in range(round(seconds * FPS)):
        t = number / FPS
        image = frame_at(t)
        ImageDraw.Draw(image).rectangle((x, y, x + LAMP - 1, y + LAMP - 1), fill=color_at(t), outline=(40, 40, 40))
        yield np.asarray(image)


def make_event(rng: np.random.Generator, index: int) -> tuple[Task, Clip]:
    seconds = float(rng.integers(20, 41))
    while True:  # keep the switch away from half seconds, so the rounded answer is unambiguous
        switch = float(rng.uniform(3, seconds - 3))
        if abs(switch % 1 - 0.5) > 0.2:
            break
    task = Task(id=f"video-event-{index:04d}", grader="numeric", answer=str(round(switch)),
                question="A grey lamp in this video turns green once and then stays green. At what time does it "
                         "turn green? Answer in seconds, rounded to the nearest second.",
                metadata={"required_ops": ["temporal-search"], "switch_seconds": switch, "seconds": seconds})
    return task, Clip(lamp_video(rng, seconds, lambda t: GREEN if t >= switch else GREY), FPS)


def make_count(rng: np.random.Generator, index: int) -> tuple[Task, Clip]:
    seconds = float(rng.integers(20, 41))
    flashes: list[tuple[float, float]] = []
    wanted = int(rng.integers(2, 10))
    for _ in range(500):
        if len(flashes) == wanted:
            break
        start, length = float(rng.uniform(1, seconds - 2)), int(rng.integers(3, 7)) / FPS
        if all(start + length + 1.5 < other or other_end + 1.5 < start for other, other_end in flashes):
            flashes.append((start, start + length))
    flashes.sort()
    task = Task(id=f"video-count-{index:04d}", grader="numeric", answer=str(len(flashes)),
                question="A lamp in this video flashes yellow several times, each flash shorter than a second. "
                         "How many times does it flash? Answer with a number.",
                metadata={"required_ops": ["temporal-scan"], "flashes": flashes, "seconds": seconds})
    return task, Clip(lamp_video(rng, seconds, lambda t: YELLOW if any(a <= t < b for a, b in flashes) else GREY),
                      FPS)


def make_measure(rng: np.random.Generator, index: int) -> tuple[Task, Clip]:
    seconds = float(rng.integers(16, 31))
    frequencies, phases = rng.uniform(0.3, 0.9, size=2), rng.uniform(0, 2 * np.pi, size=2)

    def width_at(t: float) -> int:
        wave = np.sin(2 * np.pi * frequencies * t + phases)
        return round(float(80 + 30 * wave[0] + 20 * wave[1]))

    asked = int(rng.integers(2, int(seconds) - 2)) + 0.5
    x, y = int(rng.integers(6, 14)), int(rng.integers(20, SIZE[1] - 20))
    frame_at = backdrop(rng, SIZE)

    def frames() -> Iterator[np.ndarray]:
        for number in range(round(seconds * FPS)):
            image = frame_at(number / FPS)
            ImageDraw.Draw(image).rectangle((x, y, x + width_at(number / FPS) - 1, y + 9), fill=BLUE)
            yield np.asarray(image)

    task = Task(id=f"video-measure-{index:04d}", answer=str(width_at(asked)),
                grader={"name": "numeric", "abs_tol": 2},
                question=f"A blue bar in this video grows and shrinks. How many pixels wide is it at {asked:.1f} "
                         "seconds, in the video's own pixels? Answer with a number.",
                metadata={"required_ops": ["temporal-seek", "measure"], "asked_seconds": asked})
    return task, Clip(frames(), FPS)


NEEDLE_SIZE, NEEDLE_FPS = (128, 96), 4


def make_needle(rng: np.random.Generator, index: int) -> tuple[Task, Clip]:
    seconds = float(rng.integers(120, 181))
    shown = float(rng.uniform(0.1, 0.9) * seconds)
    number = random_number(rng, 2)
    width, height = text_extent(number, 36)
    card = (int(rng.integers(4, NEEDLE_SIZE[0] - width - 20)), int(rng.integers(4, NEEDLE_SIZE[1] - height - 20)))
    frame_at = backdrop(rng, NEEDLE_SIZE, shapes=4)

    def frames() -> Iterator[np.ndarray]:
        for frame in range(round(seconds * NEEDLE_FPS)):
            t = frame / NEEDLE_FPS
            image = frame_at(t)
            if shown <= t < shown + 2:
                draw = ImageDraw.Draw(image)
                draw.rectangle((*card, card[0] + width + 15, card[1] + height + 15), fill=(255, 255, 255))
                draw_text(draw, (card[0] + 8, card[1] + 8), number, 36, (0, 0, 0))
            yield np.asarray(image)

    task = Task(id=f"video-needle-{index:04d}", answer=number, grader="exact",
                question="Somewhere in this long video a white card with a number appears for two seconds. What "
                         "number is on the card? Answer with the number.",
                metadata={"required_ops": ["temporal-search", "read"], "shown_seconds": shown, "seconds": seconds})
    return task, Clip(frames(), NEEDLE_FPS, keyframe_interval=8)


VIDEO_SUITES: dict[str, SyntheticSuite] = {suite.name: suite for suite in (
    SyntheticSuite("video-event", 1, make_event, "when a grey lamp turns green, to the nearest second",
                   ("synthetic", "video", "temporal-localisation"), default_count=40),
    SyntheticSuite("video-count", 1, make_count, "how many times a lamp flashes yellow (flashes under 1 s)",
                   ("synthetic", "video", "counting"), default_count=40),
    SyntheticSuite("video-measure", 1, make_measure, "how wide a pulsing blue bar is at a given moment",
                   ("synthetic", "video", "spatial"), default_count=40),
    SyntheticSuite("video-needle", 1, make_needle, "the number on a card shown for 2 s in a 2-3 minute video",
                   ("synthetic", "video", "needle", "long-video"), default_count=20),
)}
