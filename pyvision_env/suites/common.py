"""Shared pieces of the built-in synthetic suites: the font, drawing helpers and the on-disk cache.

A suite is a :class:`SyntheticSuite`: a name, a version and ``make_task(rng, index)`` returning a task with
one in-memory image, or a ``(task, Clip)`` pair for a video task. :meth:`SyntheticSuite.load` generates the
tasks once (per-task RNGs seeded by ``(seed, index)``, as :func:`~pyvision_env.tasks.generate_tasks`), writes
them as PNG or MP4 files and a ``tasks.jsonl`` into the cache, and afterwards only reads that folder.

Example::

    from pyvision_env.suites import SUITES
    tasks = SUITES["zoom"].load(count=10, seed=0)
    tasks[0].images[0]
    # -> '/root/.cache/pyvision/suites/zoom/v1/seed0-n10/zoom-0000.png'
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..tasks import Region, Task, TaskSet, generate_tasks, load_jsonl
from ..video import write_video

CACHE_ENV = "PYVISION_CACHE"
"""Environment variable naming the cache folder (default ``~/.cache/pyvision``)."""

HELD_OUT_EVERY = 5
"""Task ``i`` is in the ``held-out`` split when ``i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1`` (20 %), else in
``train``; the split of a task never depends on how many tasks were generated."""

DIGITS = "0123456789"
CLEAR_CHARS = "23456789ACDEFGHJKLMNPRTUVWXY"
"""Digits and capitals without the look-alike pairs (0/O/Q, 1/I, 5/S, 8/B, 2/Z)."""

Box = tuple[int, int, int, int]


def cache_root() -> Path:
    """``$PYVISION_CACHE`` or ``~/.cache/pyvision``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "pyvision")


def split_of(index: int) -> str:
    return "held-out" if index % HELD_OUT_EVERY == HELD_OUT_EVERY - 1 else "train"


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font (Aileron) at ``size`` px: the same on every machine."""
    return ImageFont.load_default(size=size)  # type: ignore[return-value]


def random_text(rng: np.random.Generator, alphabet: str, length: int) -> str:
    return "".join(alphabet[i] for i in rng.integers(len(alphabet), size=length))


def random_number(rng: np.random.Generator, digits: int) -> str:
    """A ``digits``-digit number without a leading zero."""
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, size: int,
              fill: int | tuple[int, ...]) -> Box:
    """Draw ``text`` with its ink's top-left corner at ``xy``; returns the ink's box (x1, y1 exclusive)."""
    left, top, _, _ = draw.textbbox((0, 0), text, font=font(size))
    origin = (xy[0] - left, xy[1] - top)
    draw.text(origin, text, font=font(size), fill=fill)
    return tuple(int(v) for v in draw.textbbox(origin, text, font=font(size)))  # type: ignore[return-value]


def text_extent(text: str, size: int) -> tuple[int, int]:
    """(width, height) of the ink of ``text`` at ``size``."""
    left, top, right, bottom = font(size).getbbox(text)
    return int(right - left), int(bottom - top)


def overlaps(box: Box, others: Sequence[Box], gap: int = 0) -> bool:
    return any(box[0] < o[2] + gap and o[0] < box[2] + gap and box[1] < o[3] + gap and o[1] < box[3] + gap
               for o in others)


def place_boxes(rng: np.random.Generator, canvas: tuple[int, int], sizes: Sequence[tuple[int, int]],
                gap: int, taken: Sequence[Box] = (), margin: int = 8, tries: int = 500) -> list[Box]:
    """Non-overlapping boxes of the given (width, height) at random places within ``margin`` of the canvas,
    at least ``gap`` px apart from each other and from ``taken``; one box per size, in order."""
    placed: list[Box] = list(taken)
    new: list[Box] = []
    for width, height in sizes:
        for _ in range(tries):
            x = int(rng.integers(margin, canvas[0] - width - margin))
            y = int(rng.integers(margin, canvas[1] - height - margin))
            box = (x, y, x + width, y + height)
            if not overlaps(box, placed, gap):
                break
        else:
            raise ValueError(f"no room for a {width}x{height} box on a {canvas[0]}x{canvas[1]} canvas")
        placed.append(box)
        new.append(box)
    return new


def muted_color(rng: np.random.Generator, low: int = 90, high: int = 235) -> tuple[int, int, int]:
    """A greyish colour: channels within 40 of each other, so it is never taken for a saturated one."""
    base = int(rng.integers(low, high))
    return tuple(int(np.clip(base + rng.integers(-20, 21), 0, 255)) for _ in range(3))  # type: ignore[return-value]


def clutter(rng: np.random.Generator, size: tuple[int, int], shapes: int) -> Image.Image:
    """A light background with a soft gradient and ``shapes`` muted rectangles, ellipses and lines."""
    width, height = size
    start, end = np.array(muted_color(rng, 200, 245)), np.array(muted_color(rng, 190, 240))
    ramp = np.linspace(0.0, 1.0, width)[None, :, None]
    row = (start * (1 - ramp) + end * ramp).astype(np.uint8)
    image = Image.fromarray(np.repeat(row, height, axis=0))
    draw = ImageDraw.Draw(image)
    for _ in range(shapes):
        w, h = (int(v) for v in rng.integers(20, max(21, min(size) // 5), size=2))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        kind = int(rng.integers(3))
        color = muted_color(rng)
        if kind == 0:
            draw.rectangle((x, y, x + w, y + h), fill=color)
        elif kind == 1:
            draw.ellipse((x, y, x + w, y + h), fill=color)
        else:
            draw.line((x, y, x + w, y + h), fill=color, width=int(rng.integers(2, 8)))
    return image


def region(box: Sequence[float], label: str | None = None) -> Region:
    return Region(box=tuple(float(v) for v in box), label=label)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class Clip:
    """A video to encode for a task: RGB frames (even width and height), their rate and the keyframe interval
    (short, so that random access is cheap)."""

    frames: Iterable[np.ndarray]
    fps: float
    keyframe_interval: int = 8


@dataclasses.dataclass(frozen=True)
class SyntheticSuite:
    """A generated suite: ``make_task(rng, index)`` returns a task whose one image is in memory, or a
    ``(task, Clip)`` pair for a video task.

    Bump ``version`` whenever generation changes: it is part of the cache folder's name.
    """

    name: str
    version: int
    make_task: Callable[[np.random.Generator, int], Task | tuple[Task, Clip]]
    description: str
    tags: tuple[str, ...] = ()
    default_count: int = 100
    """How many tasks the registered suite holds."""

    def folder(self, count: int, seed: int) -> Path:
        return cache_root() / "suites" / self.name / f"v{self.version}" / f"seed{seed}-n{count}"

    def load(self, count: int | None = None, seed: int = 0) -> TaskSet:
        """The suite's ``count`` tasks (default :attr:`default_count`) for ``seed``, generated into the cache
        on first use."""
        count = self.default_count if count is None else count
        folder = self.folder(count, seed)
        if not (folder / "tasks.jsonl").is_file():
            self._generate(folder, count, seed)
        return load_jsonl(folder / "tasks.jsonl", self.name)

    def _generate(self, folder: Path, count: int, seed: int) -> None:
        """Write into a private temporary folder, then rename it into place: a reader never sees a partial
        folder, and of two processes generating at once the second one's rename fails and it uses the
        first one's files."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            def make_and_save(rng: np.random.Generator, index: int) -> Task:
                made = self.make_task(rng, index)
                if isinstance(made, Task):
                    (image,) = made.images
                    image.save(staging / f"{made.id}.png", format="PNG", compress_level=1)
                    return dataclasses.replace(made, images=(f"{made.id}.png",), split=split_of(index))
                task, clip = made
                write_video(staging / f"{task.id}.mp4", clip.frames, fps=clip.fps,
                            keyframe_interval=clip.keyframe_interval)
                return dataclasses.replace(task, videos=(f"{task.id}.mp4",), split=split_of(index))

            tasks = generate_tasks(make_and_save, count, seed, self.name)
            with (staging / "tasks.jsonl").open("w", encoding="utf-8") as handle:
                for task in tasks:
                    handle.write(json.dumps(task.to_json(), sort_keys=True) + "\n")
            try:
                os.rename(staging, folder)
            except OSError:
                if not (folder / "tasks.jsonl").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
