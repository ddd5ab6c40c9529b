"""A self-contained HTML page of recorded episodes (see :mod:`pyvision_env.wrappers.recording`), and ``pyvision view``.

The page is one file: images are embedded as base64 ``data:`` URLs, the CSS and the few lines of script are
inline, and nothing is loaded from elsewhere, so it can be mailed or archived as is. All model text is
HTML-escaped. A summary table (accuracy, mean turns, tool calls, end reasons) covers every episode; each
episode is a collapsible section with its header and the conversation turn by turn: the code in
``<pre><code>`` blocks, the outputs, the images inline.

Example::

    page = render_html("runs/zoom")           # runs/zoom/episodes.html
    served = serve(page)                      # served.url: http://127.0.0.1:<port>/episodes.html
    served.stop()
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
import threading
import warnings
import webbrowser
from collections import Counter
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from .wrappers.recording import (
    EpisodeFileError,
    EpisodeRecord,
    RecordingWarning,
    episodes_file,
    read_episodes,
)

DEFAULT_MAX_EPISODES = 500

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.4em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}th{background:#f3f3f3}
.note{background:#fff6d6;border:1px solid #e6cf7a;padding:.4em .8em;margin:.5em 0}
details.episode{border:1px solid #bbb;border-radius:6px;margin:.6em 0;padding:.2em .8em}
details.episode>summary{cursor:pointer;font-weight:600;padding:.3em 0}
.correct>summary .verdict{color:#17702b}.wrong>summary .verdict{color:#b00020}
.unfinished>summary .verdict{color:#8a6d00}
.turn{border-left:4px solid #8ab;padding:.2em .8em;margin:.8em 0}.turn.error{border-left-color:#c33}
.turn h4{margin:.2em 0;font-size:1em}.msg{margin:.4em 0}.role{font-size:.8em;color:#666;font-weight:600}
pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.5em;margin:.3em 0;
border-radius:4px}
pre code{font:13px/1.4 ui-monospace,monospace}pre.code{background:#eef3ff}
.badge{font-size:.8em;padding:0 .4em;border-radius:3px;background:#eee;margin-left:.4em}
.badge.error{background:#fdd}figure{display:inline-block;margin:.3em .6em .3em 0}
figure img{max-width:100%;max-height:520px;height:auto;border:1px solid #ccc;image-rendering:auto}
img.broken{outline:3px solid #c00;min-width:60px;min-height:30px}figcaption{font-size:.75em;color:#666}
body[data-filter=correct] .episode:not(.correct),body[data-filter=wrong] .episode:not(.wrong),
body[data-filter=unfinished] .episode:not(.unfinished){display:none}
"""

# Marks each image with the width it decoded to; one that did not decode gets a red outline.
_SCRIPT = """
window.addEventListener("load", function () {
  for (const img of document.images) {
    img.dataset.naturalWidth = img.naturalWidth;
    if (!img.naturalWidth) img.classList.add("broken");
  }
});
"""


def render_html(episodes_jsonl: str | os.PathLike, out_html: str | os.PathLike | None = None, *,
                max_episodes: int | None = DEFAULT_MAX_EPISODES, title: str | None = None) -> Path:
    """Write the page of a run folder or episodes JSONL; returns its path.

    Args:
        episodes_jsonl: ``episodes.jsonl`` or the run folder holding it.
        out_html: the page to write (default: the JSONL's name with ``.html``, next to it).
        max_episodes: render at most this many episodes, in file order (``None``: all); the summary covers all
            and the page says how many were left out.
        title: the page title (default: from the run folder's name).

    Example::

        render_html("runs/zoom", max_episodes=50)    # -> Path("runs/zoom/episodes.html")
    """
    if max_episodes is not None and max_episodes < 1:
        raise ValueError(f"max_episodes must be at least 1 (or None for all), got {max_episodes}")
    source = episodes_file(episodes_jsonl)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RecordingWarning)
        records = read_episodes(source)
    skipped = [str(w.message) for w in caught if issubclass(w.category, RecordingWarning)]
    for message in skipped:
        warnings.warn(message, RecordingWarning, stacklevel=2)
    out = Path(out_html) if out_html is not None else source.with_suffix(".html")
    title = title or f"PyVision run: {source.parent.resolve().name}"
    shown = records if max_episodes is None else records[:max_episodes]
    images = _ImageEmbedder()
    body = [f"<h1>{_esc(title)}</h1>", f"<p>Source: <code>{_esc(source)}</code></p>", _summary(records)]
    body += [f'<p class="note">{_esc(message)}</p>' for message in skipped]
    if len(shown) < len(records):
        body.append(f'<p class="note">Showing the first {len(shown)} of {len(records)} episodes '
                    f"(max episodes: {max_episodes}); the summary covers all {len(records)}.</p>")
    body.append('<p>Show: <select onchange="document.body.dataset.filter=this.value">'
                '<option value="">all</option><option value="correct">correct</option>'
                '<option value="wrong">wrong</option><option value="unfinished">unfinished</option>'
                "</select></p>")
    body += [_episode(number, record, images, opened=number == 1) for number, record in enumerate(shown, 1)]
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n"
            f"<body>\n" + "\n".join(body) + f"\n<script>{_SCRIPT}</script>\n</body></html>\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, out)  # a page being served is never seen half-written
    return out


class ServedPage(NamedTuple):
    """A page served over HTTP: its ``url``, and ``stop()`` to shut the server down."""

    url: str
    stop: Callable[[], None]


def serve(path: str | os.PathLike, host: str = "127.0.0.1", port: int = 0) -> ServedPage:
    """Serve one HTML file (at ``/`` and ``/<name>``, re-read on every request) from a background thread.

    ``port=0`` picks a free port. Nothing else on the disk is reachable through the server.

    Example::

        served = serve("runs/zoom/episodes.html")    # served.url == "http://127.0.0.1:41235/episodes.html"
        served.stop()
    """
    page = Path(path).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"no page to serve at {page}")
    routes = {"/", "/" + quote(page.name)}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if urlsplit(self.path).path not in routes:
                self.send_error(404, "only the run page is served here")
                return
            try:
                body = page.read_bytes()
            except OSError as error:
                self.send_error(500, f"cannot read the page: {error}")
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: no line on stderr per request."""

    server = ThreadingHTTPServer((host, port), Handler)
    thread = threading.Thread(target=server.serve_forever, name=f"pyvision-view:{server.server_port}",
                              daemon=True)
    thread.start()
    stopped = threading.Lock()

    def stop() -> None:
        if stopped.acquire(blocking=False):
            server.shutdown()
            server.server_close()
            thread.join()

    return ServedPage(f"http://{host}:{server.server_port}/{quote(page.name)}", stop)


def open_in_browser(path_or_url: str | os.PathLike) -> bool:
    """Open a page file or an ``http(s)`` URL in the default browser; False when none could be started."""
    target = os.fspath(path_or_url)
    if not target.startswith(("http://", "https://")):
        target = Path(target).resolve().as_uri()
    return webbrowser.open(target)


# --- command line -----------------------------------------------------------------------------------

def add_view_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``view`` to an ``argparse`` subparsers object (handled by :func:`run_view`)."""
    parser = subparsers.add_parser(
        "view", help="render recorded episodes as one HTML page, and open or serve it",
        description="Render the episodes of a run (RUN_DIR/episodes.jsonl or a JSONL file) as one "
                    "self-contained HTML page with their code, outputs and images, then open it in a browser "
                    "or serve it on loopback.")
    parser.add_argument("path", metavar="RUN_DIR_OR_JSONL", help="a run folder or an episodes JSONL file")
    parser.add_argument("--out", type=Path, help="the page to write (default: next to the JSONL, .html)")
    parser.add_argument("--serve", action="store_true", help="serve the page on 127.0.0.1 until Ctrl-C")
    parser.add_argument("--port", type=int, default=0, help="port for --serve (default: any free port)")
    parser.add_argument("--no-open", action="store_true", help="do not open a browser")
    parser.add_argument("--max-episodes", type=int, default=DEFAULT_MAX_EPISODES, metavar="N",
                        help="render at most N episodes; 0 renders all (default: %(default)s)")
    parser.set_defaults(handler=run_view)
    return parser


def run_view(args: argparse.Namespace) -> int:
    """``pyvision view``: render, then open the file or serve it until interrupted. Returns the exit code."""
    try:
        page = render_html(args.path, args.out, max_episodes=args.max_episodes or None)
    except (FileNotFoundError, EpisodeFileError, ValueError) as error:
        print(f"pyvision view: {error}", file=sys.stderr)
        return 1
    print(f"wrote {page}")
    if not args.serve:
        if not args.no_open and not open_in_browser(page):
            print(f"no browser found; open {page.resolve().as_uri()}")
        return 0
    served = serve(page, port=args.port)
    print(f"serving {served.url} (Ctrl-C to stop)", flush=True)
    if not args.no_open:
        open_in_browser(served.url)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        served.stop()
    return 0


# --- page parts -----------------------------------------------------------------------------------

def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


class _ImageEmbedder:
    """``data:`` URLs of image files, each file read once per page."""

    def __init__(self) -> None:
        self._urls: dict[Path, str | None] = {}

    def html(self, record: EpisodeRecord, part: dict[str, Any]) -> str:
        path = record.image_path(part)
        if path not in self._urls:
            try:
                encoded = base64.b64encode(path.read_bytes()).decode("ascii")
                self._urls[path] = "data:image/png;base64," + encoded
            except OSError:
                self._urls[path] = None
        url = self._urls[path]
        size = f'{part.get("width")}×{part.get("height")}'
        if url is None:
            return f'<p class="note">missing image file {_esc(part["path"])} ({_esc(size)})</p>'
        return (f'<figure><img src="{url}" alt="{_esc(part["path"])}" width="{_esc(part.get("width"))}" '
                f'height="{_esc(part.get("height"))}"><figcaption>{_esc(size)}</figcaption></figure>')


def _rows(rows: Sequence[tuple[str, Any]]) -> str:
    return "".join(f"<tr><th>{_esc(key)}</th><td>{_esc(value)}</td></tr>" for key, value in rows)


def _verdict(record: EpisodeRecord) -> str:
    if not record.get("finished"):
        return "unfinished"
    return "correct" if record["totals"].get("correct") else "wrong"


def _mean(values: Sequence[float]) -> str:
    return f"{sum(values) / len(values):.2f}" if values else "–"


def _summary(records: Sequence[EpisodeRecord]) -> str:
    finished = [r for r in records if r.get("finished")]
    correct = sum(1 for r in finished if r["totals"].get("correct"))
    totals = [r["totals"] for r in records]
    calls = sum(t.get("tool_calls") or 0 for t in totals)
    errors = sum(t.get("tool_errors") or 0 for t in totals)
    reasons = Counter(str(t.get("end_reason") or "unfinished") for t in totals)
    accuracy = f"{correct}/{len(finished)} = {correct / len(finished):.1%}" if finished else "–"
    rows = [("episodes", f"{len(records)} ({len(records) - len(finished)} unfinished)"),
            ("accuracy (finished episodes)", accuracy),
            ("mean return", _mean([t.get("return") or 0.0 for t in totals])),
            ("mean turns", _mean([t.get("turns") or 0 for t in totals])),
            ("mean tool calls", _mean([t.get("tool_calls") or 0 for t in totals])),
            ("tool errors", f"{errors} of {calls} calls"),
            ("mean images shown", _mean([t.get("images_shown") or 0 for t in totals])),
            ("end reasons", ", ".join(f"{reason}: {count}" for reason, count in reasons.most_common()))]
    return '<table class="summary">' + _rows(rows) + "</table>"


def _episode(number: int, record: EpisodeRecord, images: _ImageEmbedder, opened: bool) -> str:
    totals, verdict = record["totals"], _verdict(record)
    steps = record.get("steps") or []
    final = steps[-1]["info"] if steps else {}
    summary = (f'#{number} · {_esc(record["task_id"])} · <span class="verdict">{verdict}</span> · '
               f'return {_esc(totals.get("return"))} · {_esc(totals.get("turns"))} turns · '
               f'{_esc(totals.get("tool_calls"))} tool calls · '
               f'{_esc(totals.get("end_reason") or "not ended")}')
    fields = [("question", record.get("question")), ("reference answer", record.get("answer")),
              ("model answer", final.get("answer") if final.get("action_kind") == "answer" else None),
              ("choices", ", ".join(record["choices"]) if record.get("choices") else None),
              ("correct", totals.get("correct")), ("score", totals.get("score")),
              ("tool errors", totals.get("tool_errors")), ("format errors", totals.get("format_errors")),
              ("images shown", totals.get("images_shown")), ("visual tokens", totals.get("visual_tokens")),
              ("abandoned by", record.get("abandoned_by")), ("protocol", record.get("protocol")),
              ("seed", record.get("seed")), ("started", record.get("started_at")),
              ("duration", f'{record.get("duration_s")} s'), ("episode id", record.get("episode_id")),
              ("metadata", json.dumps(record["metadata"], ensure_ascii=False) if record.get("metadata")
               else None)]
    header = _rows([(key, value) for key, value in fields if value is not None])
    by_step: dict[int, list[dict[str, Any]]] = {}
    for message in record.get("messages") or []:
        by_step.setdefault(message["step"], []).append(message)
    parts = [f'<details class="episode {verdict}"{" open" if opened else ""}><summary>{summary}</summary>',
             f"<table>{header}</table>", '<section class="turn"><h4>Start</h4>']
    parts += [_message(record, m, images) for m in by_step.get(0, [])]
    parts.append("</section>")
    previous_errors = 0
    for index, step in enumerate(steps, 1):
        info = step["info"]
        failed = (info.get("tool_errors") or 0) > previous_errors
        previous_errors = info.get("tool_errors") or 0
        parts.append(_turn(record, index, step, by_step.get(index, []), images, failed))
    parts.append("</details>")
    return "\n".join(parts)


def _turn(record: EpisodeRecord, index: int, step: dict[str, Any], messages: list[dict[str, Any]],
          images: _ImageEmbedder, failed: bool) -> str:
    info, kind = step["info"], step["info"].get("action_kind")
    timings = step.get("timings") or info.get("timings") or {}  # files written before 0.2 kept them in info
    badges = [f'<span class="badge">{_esc(kind)}</span>',
              f'<span class="badge">reward {_esc(step["reward"])}</span>']
    if isinstance(timings.get("total_ms"), (int, float)):
        badges.append(f'<span class="badge">{timings["total_ms"]:.0f} ms</span>')
    if failed:
        badges.append('<span class="badge error">tool error</span>')
    if step.get("terminated") or step.get("truncated"):
        ending = "terminated" if step.get("terminated") else "truncated"
        badges.append(f'<span class="badge">{ending}: {_esc(info.get("end_reason"))}</span>')
    parts = [f'<section class="turn{" error" if failed else ""}"><h4>Turn {index}{"".join(badges)}</h4>']
    responses = [m for m in messages if m["role"] == "assistant"]
    for message in responses:
        open_attr = "" if kind == "code" else " open"
        parts.append(f'<details class="response"{open_attr}><summary>assistant response</summary>'
                     f"{_message(record, message, images)}</details>")
    if kind == "code" and info.get("code"):
        parts.append(f'<pre class="code"><code class="language-python">{_esc(info["code"])}</code></pre>')
    elif kind == "answer":
        parts.append(f"<p><b>answer:</b> {_esc(info.get('answer'))}</p>")
    elif kind == "invalid":
        parts.append(f'<p class="note">format error: {_esc(info.get("format_error"))}</p>')
    parts += [_message(record, m, images) for m in messages if m["role"] != "assistant"]
    parts.append("</section>")
    return "\n".join(parts)


def _message(record: EpisodeRecord, message: dict[str, Any], images: _ImageEmbedder) -> str:
    body = []
    for part in message["content"]:
        if part["type"] == "text":
            if part["text"].strip():
                body.append(f"<pre>{_esc(part['text'])}</pre>")
        else:
            body.append(images.html(record, part))
    if message.get("tool_calls"):
        body.append(f"<pre>{_esc(json.dumps(message['tool_calls'], indent=1, ensure_ascii=False))}</pre>")
    if message["role"] == "system":
        return f'<details class="msg"><summary class="role">system prompt</summary>{"".join(body)}</details>'
    return f'<div class="msg"><div class="role">{_esc(message["role"])}</div>{"".join(body)}</div>'
