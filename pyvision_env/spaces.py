"""Gymnasium spaces for :class:`~pyvision_env.env.PyVisionEnv`: response text in, chat messages out.

Example:
    >>> from pyvision_env.messages import Message
    >>> MessagesSpace().contains([Message.text("user", "hi")]), ResponseSpace().contains("<code>...")
    (True, True)
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
from gymnasium import spaces
from PIL import Image

from .messages import ImagePart, Message, TextPart

RESPONSE_CHARSET = string.ascii_letters + string.digits + string.punctuation + " \n"


class ResponseSpace(spaces.Text):
    """Any string up to ``max_length`` characters (a model's whole response). Samples are random printable
    text, which every protocol parses as an invalid action."""

    def __init__(self, max_length: int = 65536, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(max_length=max_length, min_length=0, charset=RESPONSE_CHARSET, seed=seed)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        if mask is None and probability is None:  # keep samples short: they are random text, not responses
            length = int(self.np_random.integers(0, min(self.max_length, 256) + 1))
            return super().sample(mask=(length, None))
        return super().sample(mask=mask, probability=probability)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"ResponseSpace(max_length={self.max_length})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ResponseSpace) and other.max_length == self.max_length


class MessagesSpace(spaces.Space[list]):
    """A list of :class:`~pyvision_env.messages.Message` (text and PIL image parts in order)."""

    def __init__(self, seed: int | np.random.Generator | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> list[Message]:
        """A user message with random text and a small random image."""
        rng = self.np_random
        words = " ".join("".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(1, 8))))
                         for _ in range(int(rng.integers(1, 6))))
        pixels = rng.integers(0, 256, size=(int(rng.integers(1, 33)), int(rng.integers(1, 33)), 3), dtype=np.uint8)
        return [Message("user", (TextPart(words), ImagePart(Image.fromarray(pixels, "RGB"))))]

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and all(isinstance(m, Message) for m in x)

    def __repr__(self) -> str:
        return "MessagesSpace()"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, MessagesSpace)
