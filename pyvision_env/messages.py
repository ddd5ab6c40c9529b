"""Multimodal chat messages: the observations of :class:`~pyvision_env.env.PyVisionEnv`.

An observation is a list of :class:`Message` objects — the messages to append to the conversation. Each
message holds text and image parts *in order*, and converts without loss to the two formats policies use:

* :func:`to_openai` — OpenAI chat messages with ``text`` and ``image_url`` (base64 PNG data URL) parts;
* :func:`to_hf` — Hugging Face chat-template messages (``{"type": "image", "image": PIL.Image}`` parts).

:func:`from_openai` and :func:`from_hf` invert them, so ``from_openai(to_openai(m)) == m``.

Example:
    >>> from PIL import Image
    >>> msg = Message("user", (TextPart("Look:"), ImagePart(Image.new("RGB", (4, 4)))))
    >>> to_openai([msg])[0]["content"][1]["type"]
    'image_url'
    >>> from_openai(to_openai([msg])) == [msg]
    True
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class TextPart:
    text: str


@dataclass(frozen=True, eq=False)
class ImagePart:
    """An image; equal to another when the pixels are. Names the model uses (``<image_clue_1>``) are text."""

    image: Image.Image

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImagePart):
            return NotImplemented
        return _same_pixels(self.image, other.image)

    __hash__ = None  # type: ignore[assignment]


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    """One chat message: a role and an ordered tuple of parts.

    ``tool_call_id`` links a ``tool`` message to the assistant's call (OpenAI function calling);
    ``tool_calls`` carries an assistant message's calls in OpenAI form.
    """

    role: str
    content: tuple[Part, ...]
    tool_call_id: str | None = None
    tool_calls: tuple[dict, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if isinstance(self.content, str):
            object.__setattr__(self, "content", (TextPart(self.content),))
        elif not isinstance(self.content, tuple):
            object.__setattr__(self, "content", tuple(self.content))
        for part in self.content:
            if not isinstance(part, (TextPart, ImagePart)):
                raise TypeError(f"message parts must be TextPart or ImagePart, got {type(part).__name__}")

    @classmethod
    def text(cls, role: str, text: str) -> Message:
        return cls(role, (TextPart(text),))

    @property
    def images(self) -> list[Image.Image]:
        return [part.image for part in self.content if isinstance(part, ImagePart)]

    @property
    def plain_text(self) -> str:
        """The text parts joined (images left out)."""
        return "".join(part.text for part in self.content if isinstance(part, TextPart))


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a is b or (a.mode == b.mode and a.size == b.size and a.tobytes() == b.tobytes())


# --- OpenAI chat format ----------------------------------------------------------------------------

def image_to_data_url(image: Image.Image) -> str:
    """A PNG ``data:`` URL (lossless)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_from_data_url(url: str) -> Image.Image:
    """Decode a base64 ``data:image/...`` URL. Raises ValueError for anything else."""
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise ValueError("only base64 data:image/... URLs can be decoded (remote URLs are never fetched)")
    try:
        raw = base64.b64decode(url.split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            return image.copy()
    except (binascii.Error, OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"not a decodable image data URL: {error}") from error


def to_openai(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """OpenAI chat messages. Content is always a list of parts, so the conversion is invertible."""
    return _export(messages, lambda image: {"type": "image_url", "image_url": {"url": image_to_data_url(image)}})


def from_openai(messages: Sequence[dict[str, Any]]) -> list[Message]:
    """Inverse of :func:`to_openai`; also accepts plain-string content."""
    return _import(messages, "image_url", lambda item: image_from_data_url(item["image_url"]["url"]))


# --- Hugging Face chat-template format -------------------------------------------------------------

def to_hf(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Messages for ``processor.apply_chat_template``: ``{"type": "image", "image": PIL}`` and text parts."""
    return _export(messages, lambda image: {"type": "image", "image": image})


def from_hf(messages: Sequence[dict[str, Any]]) -> list[Message]:
    """Inverse of :func:`to_hf`."""
    return _import(messages, "image", lambda item: item["image"])


def _export(messages: Iterable[Message], image_item: Callable[[Image.Image], dict]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        parts = [{"type": "text", "text": part.text} if isinstance(part, TextPart) else image_item(part.image)
                 for part in message.content]
        entry: dict[str, Any] = {"role": message.role, "content": parts}
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            entry["tool_calls"] = [dict(call) for call in message.tool_calls]
        out.append(entry)
    return out


def _import(messages: Sequence[dict[str, Any]], image_type: str,
            read_image: Callable[[dict], Image.Image]) -> list[Message]:
    out = []
    for entry in messages:
        content = entry.get("content") or []
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        parts: list[Part] = []
        for item in content:
            if item.get("type") == "text":
                parts.append(TextPart(item["text"]))
            elif item.get("type") == image_type:
                parts.append(ImagePart(read_image(item)))
            else:
                raise ValueError(f"unsupported content part type {item.get('type')!r}")
        out.append(Message(entry["role"], tuple(parts), entry.get("tool_call_id"),
                           tuple(entry.get("tool_calls") or ())))
    return out
