"""A self-contained HTML report of a training run: text, tables, plots and sample trajectories.

The report is one file: images are embedded as base64 PNG ``data:`` URLs, the CSS is inline, and there is no
script at all — its Content-Security-Policy forbids scripts and every external resource, and all text (model
output included) is HTML-escaped. Sample images are shown as thumbnails at most 384 pixels wide.

Example::

    write_report("runs/grpo/report.html", title="GRPO on zoom-count",
                 intro="Qwen2.5-VL-3B, 200 steps.\\n\\nAccuracy rose from 31% to 48%.",
                 tables=[("Evaluation", [{"suite": "zoom", "accuracy": 0.48, "tool_calls": 1.9}])],
                 plots=plot_run("runs/grpo"),
                 samples=[Sample.from_messages("step 200, rollout 3", task.id, True, 1.1, conversation)])
"""

from __future__ import annotations

import html
import json
import math
import numbers
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pyvision_env.messages import Message, image_to_data_url

THUMBNAIL_WIDTH = 384

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.25em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0 1.2em}caption{text-align:left;font-weight:600;padding:.3em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.3em .6em .3em 0;vertical-align:top}figcaption{font-size:.8em;color:#666}
figure img{max-width:100%;height:auto;border:1px solid #ccc}
.sample{border:1px solid #bbb;border-radius:6px;margin:1em 0;padding:.2em .9em}
.sample h3{margin:.4em 0 .2em}.meta{color:#444;margin:.2em 0 .6em}
.correct .verdict{color:#17702b}.wrong .verdict{color:#b00020}.unknown .verdict{color:#8a6d00}
.turn{border-left:4px solid #8ab;padding:.1em .8em;margin:.6em 0}.turn.assistant{border-left-color:#c9a227}
.turn.tool{border-left-color:#6a6}.role{font-size:.8em;color:#666;font-weight:600}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.5em;margin:.3em 0;border-radius:4px;
font:13px/1.4 ui-monospace,monospace}
"""


@dataclass
class Turn:
    """One message of a sample: its role (``system``, ``user``, ``assistant``, ``tool``), text and images."""

    role: str
    text: str
    images: list[Image.Image] = field(default_factory=list)


@dataclass
class Sample:
    """A trajectory to show in a report: a header (title, task id, correct or not, reward) and its turns.

    ``correct`` is None when the episode was not graded (e.g. it ended before an answer).

    >>> Sample.from_messages("rollout 1", "count-7", True, 1.0, [Message.text("user", "How many?")]).turns
    [Turn(role='user', text='How many?', images=[])]
    """

    title: str
    task_id: str
    correct: bool | None
    reward: float
    turns: list[Turn]

    @classmethod
    def from_messages(cls, title: str, task_id: str, correct: bool | None, reward: float,
                      messages: Iterable[Message]) -> Sample:
        """A sample from a conversation of :class:`~pyvision_env.messages.Message`: one turn per message, its
        text parts joined (with the tool calls of a function-calling assistant message, as JSON) and its
        images in order."""
        turns = []
        for message in messages:
            text = message.plain_text
            if message.tool_calls:
                calls = json.dumps(list(message.tool_calls), indent=1, ensure_ascii=False)
                text = f"{text}\n{calls}" if text else calls
            turns.append(Turn(message.role, text, message.images))
        return cls(title, task_id, correct, reward, turns)


def write_report(path: str | os.PathLike, *, title: str, intro: str = "",
                 tables: Sequence[tuple[str, Sequence[Mapping[str, Any]]]] = (),
                 plots: Sequence[str | os.PathLike] = (), samples: Sequence[Sample] = ()) -> Path:
    """Write the report and return its path (the file is replaced atomically).

    Args:
        path: the HTML file to write; its folder is created.
        title: the page title and heading.
        intro: plain text; blank lines separate paragraphs.
        tables: (caption, rows) pairs; the columns are the rows' keys in first-seen order. Numbers are
            formatted for reading: a fraction in [0, 1] whose column name contains ``accuracy`` or ``ratio`` is
            shown as a percentage, other floats with 4 significant digits.
        plots: image files (e.g. from :func:`trainers.metrics.plot_run`), captioned with their file stem.
        samples: trajectories, shown turn by turn.

    Example::

        write_report("report.html", title="Baseline", tables=[("Eval", [{"model": "3B", "accuracy": 0.41}])])
    """
    body = [f"<h1>{_esc(title)}</h1>"]
    body += [f"<p>{_esc(paragraph.strip())}</p>" for paragraph in re.split(r"\n\s*\n", intro) if paragraph.strip()]
    body += [_table(caption, rows) for caption, rows in tables]
    if plots:
        body.append("<h2>Plots</h2>")
        body += [_plot(Path(plot)) for plot in plots]
    if samples:
        body.append("<h2>Sample trajectories</h2>")
        body += [_sample(sample) for sample in samples]
    page = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, out)
    return out


def format_cell(key: str, value: Any) -> str:
    """A table cell's text.

    >>> format_cell("eval/accuracy", 0.4567), format_cell("loss", 0.012345), format_cell("tokens", 123456.7)
    ('45.7%', '0.01235', '123,457')
    """
    if not _is_number(value):
        return "–" if value is None else str(value)
    if isinstance(value, numbers.Integral):
        return f"{value:,}"
    if math.isnan(value):
        return "–"
    if ("accuracy" in key or "ratio" in key) and 0 <= value <= 1:
        return f"{value:.1%}"
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"


# --- page parts -------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(caption: str, rows: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    head = "".join(f"<th>{_esc(column)}</th>" for column in columns)
    lines = []
    for row in rows:
        cells = []
        for column in columns:
            value = row.get(column)
            numeric = ' class="num"' if _is_number(value) else ""
            cells.append(f"<td{numeric}>{_esc(format_cell(column, value))}</td>")
        lines.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<table><caption>{_esc(caption)}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(lines)}</tbody></table>")


def _plot(path: Path) -> str:
    with Image.open(path) as image:
        image.load()
        return _figure(image, path.stem, alt=path.name)


def _figure(image: Image.Image, caption: str, alt: str) -> str:
    return (f'<figure><img src="{image_to_data_url(image)}" alt="{_esc(alt)}" width="{image.width}" '
            f'height="{image.height}"><figcaption>{_esc(caption)}</figcaption></figure>')


def _thumbnail(image: Image.Image) -> str:
    size = f"{image.width}×{image.height}"
    if image.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    if image.width > THUMBNAIL_WIDTH:
        height = max(1, round(image.height * THUMBNAIL_WIDTH / image.width))
        image = image.resize((THUMBNAIL_WIDTH, height), Image.Resampling.LANCZOS)
    return _figure(image, size, alt=f"image {size}")


def _sample(sample: Sample) -> str:
    verdict, mark = {True: ("correct", "✓ correct"), False: ("wrong", "✗ wrong")}.get(
        sample.correct, ("unknown", "? not graded"))
    parts = [f'<section class="sample {verdict}"><h3>{_esc(sample.title)}</h3>',
             f'<p class="meta">task <code>{_esc(sample.task_id)}</code> · <span class="verdict">{mark}</span> · '
             f"reward {_esc(format_cell('reward', sample.reward))} · {len(sample.turns)} turns</p>"]
    for turn in sample.turns:
        parts.append(f'<div class="turn {_esc(turn.role)}"><div class="role">{_esc(turn.role)}</div>')
        if turn.text.strip():
            parts.append(f"<pre>{_esc(turn.text)}</pre>")
        parts += [_thumbnail(image) for image in turn.images]
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)
