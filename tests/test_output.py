"""Sanitising and capping what comes back from a kernel (pure functions, no kernel needed)."""

from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from pyvision_env.execution import ExecutionLimits
from pyvision_env.execution.output import OutputCollector, TextBuffer, check_image, sanitize_text


@pytest.mark.parametrize("raw, clean", [
    ("\x1b[1;31mred\x1b[0m", "red"),
    ("a\x00b\x07c", "abc"),
    ("line\r\nnext\rover", "line\nnext\nover"),
    ("tab\tkept\n", "tab\tkept\n"),
    ("bad \udcff surrogate", "bad  surrogate"),
    ("\x1b]0;title\x07visible", "visible"),
    ("unicode é 猫 ok", "unicode é 猫 ok"),
])
def test_sanitize_text(raw, clean):
    assert sanitize_text(raw) == clean
    json.dumps(sanitize_text(raw)).encode("utf-8")


def test_text_buffer_keeps_head_and_tail_with_marker():
    buffer = TextBuffer(limit=100, tail_fraction=0.2)
    for i in range(1000):
        buffer.append(f"{i:04d}\n")
    text = buffer.text()
    assert buffer.truncated and buffer.total_chars == 5000
    assert text.startswith("0000\n0001\n")
    assert text.endswith("0998\n0999\n")
    assert "[... 4900 characters truncated ...]" in text
    assert len(text) < 150


def test_text_buffer_untruncated_is_exact():
    buffer = TextBuffer(limit=100)
    buffer.append("hello ")
    buffer.append("world")
    assert (buffer.text(), buffer.truncated) == ("hello world", False)


def png_bytes(size, mode="RGB"):
    out = io.BytesIO()
    Image.new(mode, size).save(out, format="PNG")
    return out.getvalue()


def bomb_png(width, height):
    """A valid PNG header declaring a huge image, with a tiny compressed body."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) \
        + chunk(b"IEND", b"")


def test_check_image_accepts_and_decodes():
    pending = check_image(png_bytes((64, 32)), ExecutionLimits())
    assert pending.size == (64, 32)
    assert pending.decode().size == (64, 32)


@pytest.mark.parametrize("data, reason", [
    (bomb_png(100_000, 100_000), "pixel limit"),
    (bomb_png(5000, 5000), "pixel limit"),
    (png_bytes((1000, 2)), "aspect ratio"),
    (b"not an image at all", "not a readable image"),
    (png_bytes((100, 100)) * 0 + b"\x89PNG\r\n\x1a\n", "not a readable image"),
])
def test_check_image_rejects_before_decoding(data, reason):
    with pytest.raises(ValueError, match=reason):
        check_image(data, ExecutionLimits())


def test_check_image_byte_limit():
    with pytest.raises(ValueError, match="byte limit"):
        check_image(png_bytes((300, 300)), ExecutionLimits(max_image_bytes=100))


def test_collector_caps_images_per_cell_and_notes_it():
    import base64
    collector = OutputCollector(ExecutionLimits(max_images_per_cell=2))
    encoded = base64.b64encode(png_bytes((8, 8))).decode()
    for _ in range(5):
        collector.add("display_data", {"data": {"image/png": encoded, "text/plain": "<img>"}})
    assert len(collector.images) == 2 and collector.truncated
    assert collector.notes == ["image dropped: over the limit of images per cell or per episode"]


def test_collector_tolerates_malformed_messages():
    collector = OutputCollector(ExecutionLimits())
    collector.add("stream", {"name": "stdout", "text": ["a", "b"]})
    collector.add("display_data", {"data": "not a dict"})
    collector.add("display_data", {"data": {"image/png": "!!!not base64!!!"}})
    collector.add("error", {"ename": None, "evalue": 3, "traceback": "single string"})
    collector.add("execute_result", {"data": {"text/plain": "\x1b[32m5\x1b[0m"}})
    assert collector.stdout.text() == "ab"
    assert collector.result == "5"
    assert collector.error == ("", "3", "single string")
    assert collector.truncated and collector.notes[0].startswith("image rejected")
