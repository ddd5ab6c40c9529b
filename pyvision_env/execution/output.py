"""Turning hostile kernel messages into capped, clean text and validated images.

Nothing in ipykernel caps output, and the kernel can send anything on its own channels, so every
message is treated as untrusted data: text is sanitised and kept as head + tail, images are checked
(size, pixels, aspect ratio) from the PNG header before anything is decoded.

Example:
    >>> sanitize_text("\\x1b[31mred\\x1b[0m\\x00 ok")
    'red ok'
    >>> buf = TextBuffer(limit=10, tail_fraction=0.3)
    >>> buf.append("0123456789abcdefghij")
    >>> buf.truncated, buf.text().startswith("0123456")
    (True, True)
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from dataclasses import dataclass, field

from PIL import Image

from .limits import ExecutionLimits

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
# Control characters except \t and \n; \r is normalised separately. Also lone surrogates (invalid UTF-8).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def sanitize_text(text: str) -> str:
    """Strip ANSI escapes, NUL and other control characters and lone surrogates; normalise newlines.

    The result is safe to put in JSON and to tokenize.
    """
    if not isinstance(text, str):
        text = str(text)
    text = _ANSI.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


class TextBuffer:
    """Keeps the first and last characters of a stream of text, and a marker for what was cut."""

    def __init__(self, limit: int, tail_fraction: float = 0.25) -> None:
        self.tail_limit = int(limit * tail_fraction)
        self.head_limit = limit - self.tail_limit
        self._head: list[str] = []
        self._head_len = 0
        self._tail = ""
        self.total_chars = 0

    @property
    def truncated(self) -> bool:
        return self.total_chars > self.head_limit + self.tail_limit

    def append(self, text: str) -> None:
        self.total_chars += len(text)
        room = self.head_limit - self._head_len
        if room > 0:
            self._head.append(text[:room])
            self._head_len += min(room, len(text))
            text = text[room:]
        if text and self.tail_limit:
            self._tail = (self._tail + text[-self.tail_limit:])[-self.tail_limit:]

    def text(self) -> str:
        head = "".join(self._head)
        if not self.truncated:
            return head + self._tail
        omitted = self.total_chars - len(head) - len(self._tail)
        return f"{head}\n[... {omitted} characters truncated ...]\n{self._tail}"


@dataclass
class PendingImage:
    """A PNG from the kernel that passed the header checks; decoded after the cell (off the hot path)."""

    data: bytes
    size: tuple[int, int]

    def decode(self) -> Image.Image:
        """Decode in full (the size was already checked against the limits)."""
        image = Image.open(io.BytesIO(self.data))
        image.load()
        return image


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_size(width: int, height: int, limits: ExecutionLimits) -> None:
    if width <= 0 or height <= 0:
        raise ValueError(f"empty image ({width}x{height})")
    limit = min(limits.max_image_pixels, Image.MAX_IMAGE_PIXELS or limits.max_image_pixels)
    if width * height > limit:
        guard = " (PIL's decompression-bomb guard)" if limit < limits.max_image_pixels else ""
        raise ValueError(f"{width}x{height} is over the {limit}-pixel limit{guard}")
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ValueError(f"{width}x{height} has an aspect ratio over {limits.max_aspect_ratio:g}")


def check_image(data: bytes, limits: ExecutionLimits) -> PendingImage:
    """Validate an encoded image from its header only. Raises ``ValueError`` with the reason."""
    if len(data) > limits.max_image_bytes:
        raise ValueError(f"{len(data)} bytes is over the {limits.max_image_bytes}-byte limit")
    if data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        _check_size(*struct.unpack(">II", data[16:24]), limits)  # before PIL parses anything
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header, decodes nothing
            width, height = image.size
    except Image.DecompressionBombError as exc:
        raise ValueError(f"decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad image
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None
    _check_size(width, height, limits)
    return PendingImage(data, (width, height))


@dataclass
class OutputCollector:
    """Accumulates one cell's IOPub messages under the cell's limits."""

    limits: ExecutionLimits
    images_allowed: int | None = None
    """Images still allowed in the episode (``None``: only the per-cell limit applies)."""
    stdout: TextBuffer = field(init=False)
    stderr: TextBuffer = field(init=False)
    result: str = ""
    images: list[PendingImage] = field(default_factory=list)
    error: tuple[str, str, str] | None = None
    bytes_received: int = 0
    notes: list[str] = field(default_factory=list)
    truncated: bool = False

    def __post_init__(self) -> None:
        self.stdout = TextBuffer(self.limits.max_text_chars, self.limits.text_tail_fraction)
        self.stderr = TextBuffer(self.limits.max_text_chars, self.limits.text_tail_fraction)

    @property
    def over_budget(self) -> bool:
        return self.bytes_received > self.limits.max_output_bytes

    def add(self, msg_type: str, content: dict) -> None:
        """Take one IOPub message already matched to this cell."""
        if msg_type == "stream":
            text = _as_text(content.get("text", ""))
            self.bytes_received += len(text)
            target = self.stderr if content.get("name") == "stderr" else self.stdout
            target.append(sanitize_text(text))
        elif msg_type in ("display_data", "update_display_data", "execute_result"):
            self._add_data(content.get("data"), is_result=msg_type == "execute_result")
        elif msg_type == "error":
            name = sanitize_text(_as_text(content.get("ename", "")))[:200]
            value = self._capped(sanitize_text(_as_text(content.get("evalue", ""))))
            frames = content.get("traceback", [])
            tb = "\n".join(_as_text(line) for line in frames) if isinstance(frames, list) else _as_text(frames)
            self.bytes_received += len(tb) + len(value)
            self.error = (name, value, self._capped(sanitize_text(tb)))

    def _capped(self, text: str) -> str:
        """``text`` cut to ``max_text_chars``; a cut marks the cell's output as truncated."""
        if len(text) > self.limits.max_text_chars:
            self.truncated = True
        return _cap(text, self.limits.max_text_chars)

    def _add_data(self, data: object, is_result: bool) -> None:
        if not isinstance(data, dict):
            return
        png = data.get("image/png")
        if png is not None:
            self.bytes_received += len(png) if isinstance(png, (str, bytes)) else 0
            self._add_image(png)
            return
        text = sanitize_text(_as_text(data.get("text/plain", "")))
        self.bytes_received += len(text)
        if is_result:
            self.result = self._capped(text)
        elif text:
            self.stdout.append(text + "\n")

    def _add_image(self, encoded: object) -> None:
        kept = len(self.images)
        if kept >= self.limits.max_images_per_cell or (self.images_allowed is not None and kept >= self.images_allowed):
            self.truncated = True
            self._note_once("image dropped: over the limit of images per cell or per episode")
            return
        if isinstance(encoded, str) and len(encoded) > self.limits.max_image_bytes * 4 // 3 + 4:
            self.truncated = True
            self.notes.append(f"image rejected: over the {self.limits.max_image_bytes}-byte limit")
            return
        try:
            raw = base64.b64decode(encoded, validate=False) if isinstance(encoded, str) else bytes(encoded)
            self.images.append(check_image(raw, self.limits))
        except (ValueError, TypeError, binascii.Error) as exc:
            self.truncated = True
            self.notes.append(f"image rejected: {exc}")

    def _note_once(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):  # mime bundles may split text into lines
        return "".join(_as_text(v) for v in value)
    return "" if value is None else str(value)


def _cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - limit} characters truncated ...]"
