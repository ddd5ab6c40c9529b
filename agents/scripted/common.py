"""What every scripted policy shares: the analysis routines the kernel receives as source, reading questions and
printed results, and :class:`ScriptedPolicy`, the base that runs a script of responses.

The analysis routines are plain functions: the kernel gets their source (:data:`HELPER_SOURCE`), and
:mod:`agents.baselines` calls them directly on the downscaled first view. Text is read by template matching
against glyphs rendered with Pillow's bundled font, the font the suites are drawn with.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pyvision_env.messages import Message
from pyvision_env.protocols import Protocol, get_protocol

from ..base import Policy

# --- analysis routines (sent to the kernel as source: they use only np, Image, ImageDraw, ImageFilter, math
# and functools) -------------------------------------------------------------------------------------------


def ink_mask(image, level=128):
    """Dark, unsaturated pixels (ink) of an image as a boolean array; coloured pixels are never ink."""
    red, green, blue = (np.asarray(channel) for channel in image.convert("RGB").split())
    high = np.maximum(np.maximum(red, green), blue)
    return (high < level) & (high - np.minimum(np.minimum(red, green), blue) < 80)


def color_mask(image, name, tolerance=12):
    """Pixels of a strong colour named ``"red"``, ``"orange"``, ``"green"``, ``"blue"`` or ``"purple"``."""
    hue = {"red": 0, "orange": 21, "green": 85, "blue": 165, "purple": 200}[name]
    hsv = np.asarray(image.convert("HSV"), dtype=np.int16)
    distance = np.abs(hsv[..., 0] - hue)
    return (np.minimum(distance, 256 - distance) <= tolerance) & (hsv[..., 1] > 120) & (hsv[..., 2] > 90)


def enhance_faint(image, smooth=2, background=30):
    """Faint dark ink made black on white: smooth the noise, subtract the slowly varying paper, and stretch
    so that ink more than 3 noise levels (at least 1.5 grey levels) below the paper comes out darker than
    mid-grey."""
    gray = image.convert("L")
    detail = (np.asarray(gray.filter(ImageFilter.GaussianBlur(smooth)), dtype=float)
              - np.asarray(gray.filter(ImageFilter.GaussianBlur(background)), dtype=float))
    centre = np.median(detail)
    spread = max(1.4826 * np.median(np.abs(detail - centre)), 0.5)
    return Image.fromarray(np.uint8(255 * np.clip((detail - centre + 6 * spread) / (6 * spread), 0, 1)))


def components(mask):
    """8-connected components of a boolean mask, as rows (x0, y0, x1, y1, area), x1 and y1 exclusive."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return np.zeros((0, 5), dtype=np.int64)
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[ys, xs] = np.arange(len(ys))
    first, second = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):
        ny, nx = ys + dy, xs + dx
        inside = np.nonzero((ny < mask.shape[0]) & (nx >= 0) & (nx < mask.shape[1]))[0]
        other = index[ny[inside], nx[inside]]
        first.append(inside[other >= 0])
        second.append(other[other >= 0])
    first, second = np.concatenate(first), np.concatenate(second)
    labels = np.arange(len(ys))
    while True:  # hook each pixel and its root to the smaller neighbouring label, then jump pointers
        low = np.minimum(labels[first], labels[second])
        updated = labels.copy()
        for ends in (first, second, labels[first], labels[second]):
            np.minimum.at(updated, ends, low)
        updated = updated[updated]
        if np.array_equal(updated, labels):
            break
        labels = updated
    _, label = np.unique(labels, return_inverse=True)
    count = label.max() + 1
    rows = np.zeros((count, 5), dtype=np.int64)
    rows[:, 0], rows[:, 1] = mask.shape[1], mask.shape[0]
    np.minimum.at(rows[:, 0], label, xs)
    np.minimum.at(rows[:, 1], label, ys)
    np.maximum.at(rows[:, 2], label, xs + 1)
    np.maximum.at(rows[:, 3], label, ys + 1)
    rows[:, 4] = np.bincount(label, minlength=count)
    return rows


def shape_of(row):
    """``"square"``, ``"circle"`` or ``"triangle"``: how much of its box a component (x0, y0, x1, y1, area)
    fills (1, pi/4 or 1/2)."""
    x0, y0, x1, y1, area = row
    fill = area / ((x1 - x0) * (y1 - y0))
    return "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"


def find_shapes(image, color, shape, min_area=12):
    """Boxes (x0, y0, x1, y1) of the separate blobs of a colour that have the given shape."""
    rows = components(color_mask(image, color))
    return [tuple(int(v) for v in row[:4]) for row in rows if row[4] >= min_area and shape_of(row) == shape]


def join_columns(boxes):
    """Join component boxes at most 2 px apart vertically that overlap in x by more than half the narrower
    one (the pieces of a glyph that thresholding broke)."""
    joined = []
    for box in boxes[np.argsort(boxes[:, 0], kind="stable")]:
        if joined:
            last = joined[-1]
            overlap = min(last[2], box[2]) - max(last[0], box[0])
            gap = max(last[1], box[1]) - min(last[3], box[3])
            if gap <= 2 and overlap > 0.5 * min(last[2] - last[0], box[2] - box[0]):
                joined[-1] = [min(last[0], box[0]), min(last[1], box[1]), max(last[2], box[2]),
                              max(last[3], box[3]), last[4] + box[4]]
                continue
        joined.append(list(box))
    return np.array(joined, dtype=np.int64).reshape(-1, 5)


def glyph_vector(darkness):
    """A glyph's darkness (cut to its box) as a zero-mean unit vector on a 16x24 grid, and its aspect."""
    height, width = darkness.shape
    grid = Image.fromarray(np.uint8(np.clip(darkness, 0, 1) * 255)).resize((16, 24), Image.BILINEAR)
    vector = np.asarray(grid, dtype=float).ravel()
    vector = vector - vector.mean()
    return vector / (np.linalg.norm(vector) + 1e-9), width / height


@functools.lru_cache(maxsize=64)
def glyph_templates(size, alphabet):
    """Glyph vectors of ``alphabet`` drawn with Pillow's bundled font at ``size`` px (capitals are about
    0.71 of it)."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=size)
    templates = {}
    for char in alphabet:
        canvas = Image.new("L", (size * 2, size * 2), 255)
        ImageDraw.Draw(canvas).text((size // 2, size // 2), char, font=font, fill=0)
        darkness = 1 - np.asarray(canvas, dtype=float) / 255
        ys, xs = np.nonzero(darkness > 0.5)
        templates[char] = glyph_vector(darkness[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    return templates


def match_glyph(darkness, templates):
    """The template that best matches a glyph's darkness (trimmed here to its ink): (char, score)."""
    ys, xs = np.nonzero(darkness > 0.5)
    if len(ys) < 3:
        return "", 0.0
    vector, aspect = glyph_vector(darkness[ys.min():ys.max() + 1, xs.min():xs.max() + 1])
    scores = {char: float(vector @ t_vector) - 0.5 * abs(math.log(aspect / t_aspect))
              for char, (t_vector, t_aspect) in templates.items()}
    best = max(scores, key=scores.get)
    return best, scores[best]


def match_segment(darkness, templates, height):
    """The glyphs in one ink segment as [(char, score)]. A segment that matches no glyph well may be glyphs
    that touch: it is cut at thin columns, choosing the cuts whose pieces match best (each piece must
    score above 0.75 to pay for itself)."""
    single = match_glyph(darkness, templates)
    width = darkness.shape[1]
    if single[1] >= 0.6 and width < 1.4 * height:
        return [single]
    ink = (darkness > 0.5).sum(axis=0)
    cuts = [0] + [c for c in range(2, width - 2)
                  if ink[c] <= max(2, 0.25 * height) and ink[c] <= ink[c - 1] and ink[c] <= ink[c + 1]] + [width]
    best = {0: (0.0, [])}
    for end in range(1, len(cuts)):
        options = [(best[start][0] + glyph[1] - 0.75, best[start][1] + [glyph])
                   for start in best if cuts[end] - cuts[start] >= 0.2 * height
                   for glyph in [match_glyph(darkness[:, cuts[start]:cuts[end]], templates)]]
        if options:
            best[end] = max(options, key=lambda option: option[0])
    return best.get(len(cuts) - 1, (0.0, [single]))[1]


def read_text(image, alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", level=128, max_height=28):
    """Read one line of dark text; returns (text, readability in [0, 1]).

    Glyphs are the ink components of the line's height (touching ones are cut apart); each is matched
    against the font's glyphs. The readability is the mean match over all glyph-sized components, so text
    that is rotated, mirrored or not on one line scores low. Text taller than ``max_height`` px is first
    scaled down to it (faster, and as reliable).
    """
    darkness = 1 - np.asarray(image.convert("L"), dtype=float) / 255
    boxes = components(ink_mask(image, level))
    boxes = join_columns(boxes[boxes[:, 4] >= 2])
    boxes = boxes[boxes[:, 4] >= 6]
    if len(boxes) == 0:
        return "", 0.0
    heights = boxes[:, 3] - boxes[:, 1]
    boxes = boxes[heights >= 0.5 * heights.max()]
    height = np.median(boxes[:, 3] - boxes[:, 1])
    if height > max_height:
        scale = max_height / height
        smaller = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                               Image.LANCZOS)
        return read_text(smaller, alphabet, level, max_height=math.inf)
    middle = np.median((boxes[:, 1] + boxes[:, 3]) / 2)
    on_line = np.abs((boxes[:, 1] + boxes[:, 3]) / 2 - middle) < 0.3 * height
    templates = glyph_templates(max(6, round(height / 0.71)), alphabet)
    glyphs = []
    for x0, y0, x1, y1, _ in boxes[on_line]:
        glyphs += match_segment(darkness[y0:y1, x0:x1], templates, height)
    text = "".join(char for char, _ in glyphs)
    readability = sum(max(score, 0.0) for _, score in glyphs) / (len(glyphs) + int((~on_line).sum()))
    return text, readability


KERNEL_HELPERS = (ink_mask, color_mask, enhance_faint, components, shape_of, find_shapes, join_columns,
                  glyph_vector, glyph_templates, match_glyph, match_segment, read_text)
HELPER_SOURCE = "import functools\n\n\n" + "\n\n".join(inspect.getsource(helper) for helper in KERNEL_HELPERS)
"""The analysis routines as the kernel receives them (defined once per episode, or with every stateless
CodeVision call)."""

ALPHANUMERIC = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
COLORS = ("red", "orange", "green", "blue", "purple")
SHAPES = ("circle", "square", "triangle")


# --- reading questions and printed results ------------------------------------------------------------


def asked_word(question: str, words: Sequence[str]) -> str | None:
    """The first of ``words`` the question mentions (as a word or its plural)."""
    found = [(match.start(), word) for word in words
             if (match := re.search(rf"\b{word}s?\b", question, re.IGNORECASE))]
    return min(found)[1] if found else None


def asked_alphabet(question: str) -> str:
    """Digits when the question asks for a number (and mentions no letters), else digits and capitals."""
    digits = re.search(r"\b(number|digits)\b", question, re.IGNORECASE)
    return "0123456789" if digits and not re.search(r"\bletters\b", question, re.IGNORECASE) else ALPHANUMERIC


def printed(pattern: str, text: str) -> re.Match | None:
    """The last match of ``pattern`` in the text a tool call printed."""
    matches = list(re.finditer(pattern, text))
    return matches[-1] if matches else None


READ_PATTERN = r"reads '([0-9A-Z]*)' \(readability ([0-9.]+)\)"
"""What the read steps print: ``reads 'K7RF4' (readability 0.93)``."""


def kernel_code(protocol: Protocol, code: str, helpers: bool = False) -> str:
    """``code`` (which works on ``image``, the first input image at full size, and leaves the picture to show
    in ``result``) as ``protocol`` runs it: a stateless CodeVision call binds ``image`` and shows ``result``
    itself; in a kernel session ``image = image_clue_0`` comes first and ``display(result)`` last.
    ``helpers`` puts :data:`HELPER_SOURCE` in front."""
    stateless = protocol.name == "codevision"
    parts = [HELPER_SOURCE] if helpers else []
    parts += [code] if stateless else ["image = image_clue_0", code, "display(result)"]
    return "\n\n".join(parts)


# --- the base policy ---------------------------------------------------------------------------------


class _Steps:
    """The running script of an episode. A copy starts empty: :meth:`Policy.act_batch` copies a policy for a
    new slot, whose first call starts a new episode anyway (and generators cannot be copied)."""

    def __init__(self, steps: Generator[str, str, None] | None = None) -> None:
        self.steps = steps

    def __deepcopy__(self, memo: dict) -> _Steps:
        return _Steps()


class ScriptedPolicy(Policy):
    """Base class: :meth:`script` is a generator that yields responses and receives the text of each
    observation. :meth:`run` sends code through :func:`kernel_code`, with the helpers in the first call of an
    episode (in every call under the stateless CodeVision protocol)."""

    name = "scripted"

    def __init__(self, protocol: Protocol | str = "pyvision") -> None:
        self.protocol = get_protocol(protocol)
        self._steps = _Steps()
        self._calls = 0

    def act(self, observation: list[Message], info: dict[str, Any]) -> str:
        text = "\n".join(message.plain_text for message in observation if message.role != "system")
        if info.get("turn") == 0 or self._steps.steps is None:
            self._calls = 0
            self._steps = _Steps(self.script(text))
            return next(self._steps.steps)
        try:
            return self._steps.steps.send(text)
        except StopIteration:
            return self.answer("", "I have no answer.")

    def script(self, question: str) -> Generator[str, str, None]:
        """Yield responses; each ``yield`` returns the text of the next observation."""
        raise NotImplementedError

    def run(self, code: str, thought: str) -> str:
        helpers = self.protocol.name == "codevision" or self._calls == 0
        self._calls += 1
        return self.protocol.render_action(thought=thought, code=kernel_code(self.protocol, code, helpers),
                                           image_index=0, call_id=f"call_{self._calls}")

    def answer(self, value: str, thought: str) -> str:
        return self.protocol.render_action(thought=thought, answer=value)
