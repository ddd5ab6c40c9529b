"""Visual-token accounting: how many tokens an image costs a given model family.

The default follows Qwen2.5-VL's processor: the image is resized so both sides are multiples of
``factor = patch_size * merge_size`` (14 * 2 = 28 px), keeping the aspect ratio, with the area brought
within ``[min_pixels, max_pixels]``; it then costs one token per ``factor x factor`` patch.

Example:
    >>> rule = VisualTokenRule.for_family("qwen2.5-vl")
    >>> rule.resized_size(640, 480)
    (644, 476)
    >>> rule.count(640, 480)
    391
    >>> VisualTokenRule.for_family("qwen2.5-vl", max_pixels=256 * 28 * 28).count(4000, 3000) <= 256
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MAX_ASPECT_RATIO = 200


@dataclass(frozen=True)
class VisualTokenRule:
    """Token cost of an image. ``fixed_tokens`` set means every image costs that many (e.g. LLaVA's 576)."""

    family: str = "qwen2.5-vl"
    patch_size: int = 14
    merge_size: int = 2
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    fixed_tokens: int | None = None

    FAMILIES = {
        "qwen2.5-vl": {"patch_size": 14, "merge_size": 2, "min_pixels": 4 * 28 * 28, "max_pixels": 16384 * 28 * 28},
        "qwen2-vl": {"patch_size": 14, "merge_size": 2, "min_pixels": 4 * 28 * 28, "max_pixels": 16384 * 28 * 28},
        "qwen3-vl": {"patch_size": 16, "merge_size": 2, "min_pixels": 4 * 32 * 32, "max_pixels": 16384 * 32 * 32},
        "llava-1.5": {"fixed_tokens": 576},
    }

    @classmethod
    def for_family(cls, family: str, **overrides: int) -> VisualTokenRule:
        """The rule of a known model family, with overrides (e.g. ``max_pixels``)."""
        if family not in cls.FAMILIES:
            raise ValueError(f"unknown model family {family!r}; known: {sorted(cls.FAMILIES)}")
        return replace(cls(family=family, **cls.FAMILIES[family]), **overrides)

    def __post_init__(self) -> None:
        if self.fixed_tokens is None and not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels} and {self.max_pixels}")

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the processor's resize; both multiples of :attr:`factor`."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
            raise ValueError(f"aspect ratio of {width}x{height} exceeds {MAX_ASPECT_RATIO}")
        f = self.factor
        h_bar = round(height / f) * f
        w_bar = round(width / f) * f
        if h_bar * w_bar > self.max_pixels:
            beta = math.sqrt(height * width / self.max_pixels)
            h_bar = max(f, math.floor(height / beta / f) * f)
            w_bar = max(f, math.floor(width / beta / f) * f)
        elif h_bar * w_bar < self.min_pixels:
            beta = math.sqrt(self.min_pixels / (height * width))
            h_bar = math.ceil(height * beta / f) * f
            w_bar = math.ceil(width * beta / f) * f
        return w_bar, h_bar

    def count(self, width: int, height: int) -> int:
        """Tokens one image of this size costs."""
        if self.fixed_tokens is not None:
            return self.fixed_tokens
        w_bar, h_bar = self.resized_size(width, height)
        return (w_bar // self.factor) * (h_bar // self.factor)
