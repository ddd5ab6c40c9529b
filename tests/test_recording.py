"""Episode recording (JSONL + image files) and the HTML viewer, on real episodes with real kernels.

The page is checked in a real headless browser (Debian's ``chromium``): the images must decode and paint,
and the code must be visible.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from pyvision_env import PyVisionEnv, Task, TaskSet
from pyvision_env.viewer import add_view_parser, open_in_browser, render_html, run_view, serve
from pyvision_env.wrappers.recording import (
    FORMAT,
    EpisodeFileError,
    RecordEpisodes,
    RecordingWarning,
    append_line,
    image_digest,
    read_episodes,
)

MAGENTA = (255, 0, 255)
SHOW_TWICE = "print('size', image_clue_0.size)\nplt.imshow(image_clue_0); plt.show()\n" \
             "plt.imshow(image_clue_0); plt.show()"
RAISES = "raise ValueError('boom <tag>')"
HOSTILE = "<script>window.pwned = 1</script></pre><img src=x onerror=alert(1)> & done"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium for the browser "
                                       "test: apt-get install chromium (make system-deps)")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> TaskSet:
    path = tmp_path_factory.mktemp("task") / "magenta.png"
    Image.new("RGB", (64, 48), MAGENTA).save(path)
    return TaskSet("tiny", [Task(id="magenta", question="What colour is the <b>image</b>?", answer="magenta",
                                 images=(str(path),))])


@pytest.fixture(scope="module")
def recorded(engine, tasks, tmp_path_factory) -> SimpleNamespace:
    """Four episodes in one run folder: answered correctly after code, an error and a format error; answered
    wrongly after a hostile format error; abandoned by reset() after one step; abandoned by close()."""
    run = tmp_path_factory.mktemp("run")
    env = RecordEpisodes(PyVisionEnv(tasks, engine=engine, max_turns=6), run, metadata={"model": "scripted"})
    protocol = env.unwrapped.protocol
    conversations, infos, timings = [], [], []

    def episode(actions: list[str], seed: int) -> None:
        observation, _ = env.reset(seed=seed)
        conversation, episode_infos, episode_timings = list(observation), [], []
        for action in actions:
            observation, _, _, _, info = env.step(action)
            conversation += [protocol.assistant_message(action), *observation]
            episode_infos.append(info)
            episode_timings.append(dict(env.unwrapped.timings))
        conversations.append(conversation)
        infos.append(episode_infos)
        timings.append(episode_timings)

    episode([protocol.render_action(code=SHOW_TWICE), protocol.render_action(code=RAISES),
             "I think it is magenta.", protocol.render_action(answer="magenta")], seed=0)
    episode([HOSTILE, protocol.render_action(answer="cyan")], seed=1)
    episode([protocol.render_action(code="print(1)")], seed=2)
    episode([], seed=3)  # the reset() that starts it abandons the third episode
    env.close()  # abandons the fourth
    return SimpleNamespace(run=run, conversations=conversations, infos=infos, timings=timings, protocol=protocol)


# --- recording -------------------------------------------------------------------------------------

def test_a_full_episode_is_one_json_line_with_everything(recorded):
    lines = (recorded.run / "episodes.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    data = json.loads(lines[0])
    assert data["format"] == FORMAT and data["finished"] is True and "abandoned_by" not in data
    assert (data["task_id"], data["answer"]) == ("magenta", "magenta")
    assert data["question"] == "What colour is the <b>image</b>?"
    assert data["metadata"] == {"model": "scripted"} and data["seed"] == 0 and data["protocol"] == "pyvision"
    roles = [m["role"] for m in data["messages"]]
    assert roles == ["system", "user"] + ["assistant", "user"] * 3 + ["assistant"]
    assert [m["step"] for m in data["messages"]] == [0, 0, 1, 1, 2, 2, 3, 3, 4]
    assert data["messages"][2]["content"] == [{"type": "text",
                                               "text": recorded.protocol.render_action(code=SHOW_TWICE)}]
    steps = data["steps"]
    assert [s["info"]["action_kind"] for s in steps] == ["code", "code", "invalid", "answer"]
    assert [s["info"]["code"] for s in steps[:2]] == [SHOW_TWICE, RAISES]
    assert steps[2]["info"]["format_error"] and steps[3]["info"]["answer"] == r"\boxed{magenta}"
    assert [s["reward"] for s in steps] == [0.0, 0.0, 0.0, 1.0]
    assert [(s["terminated"], s["truncated"]) for s in steps] == [(False, False)] * 3 + [(True, False)]
    for step, timings in zip(steps, recorded.timings[0], strict=True):
        assert step["timings"] == timings and "total_ms" in step["timings"] and "timings" not in step["info"]
    assert "boom <tag>" in data["messages"][5]["content"][0]["text"]
    assert data["totals"] == {"return": 1.0, "turns": 4, "tool_calls": 2, "tool_errors": 1,
                              "format_errors": 1, "images_shown": 2,
                              "visual_tokens": recorded.infos[0][-1]["visual_tokens"],
                              "end_reason": "answered", "correct": True, "score": 1.0}
    assert data["duration_s"] >= 0 and data["ended_at"] >= data["started_at"]


def test_messages_rebuild_the_conversation_with_its_images(recorded):
    records = read_episodes(recorded.run)
    assert [r.line for r in records] == [1, 2, 3, 4]
    for record, conversation in zip(records, recorded.conversations):
        assert record.messages() == conversation  # images compare by pixels


def test_images_are_png_files_stored_once(recorded):
    records = read_episodes(recorded.run)
    referenced = {part["path"] for r in records for m in r["messages"] for part in m["content"]
                  if part["type"] == "image"}
    stored = {f"images/{p.name}" for p in (recorded.run / "images").iterdir()}
    assert referenced == stored  # no temporary or stray files
    first_view = records[0]["messages"][1]["content"][1]
    assert all(r["messages"][1]["content"][1]["path"] == first_view["path"] for r in records)
    shown = [part for part in records[0]["messages"][3]["content"] if part["type"] == "image"]
    assert len(shown) == 2 and shown[0]["path"] == shown[1]["path"]  # the same figure twice: one file
    with Image.open(records[0].image_path(shown[0])) as image:
        assert image.format == "PNG" and image.size == (shown[0]["width"], shown[0]["height"])
        assert Path(shown[0]["path"]).stem == image_digest(image)


def test_abandoned_episodes_are_written_unfinished(recorded):
    _, wrong, by_reset, by_close = read_episodes(recorded.run)
    assert wrong["finished"] and wrong["totals"]["correct"] is False and wrong["totals"]["format_errors"] == 1
    assert wrong["messages"][2]["content"][0]["text"] == HOSTILE
    assert (by_reset["finished"], by_reset["abandoned_by"]) == (False, "reset")
    assert by_reset["totals"]["turns"] == 1
    assert by_reset["totals"]["end_reason"] is None and by_reset["totals"]["tool_calls"] == 1
    assert (by_close["finished"], by_close["abandoned_by"], by_close["steps"]) == (False, "close", [])
    assert by_close["totals"]["return"] == 0 and by_close["seed"] == 3


def test_wrappers_sync_and_async_share_a_run_folder(engine, tasks, tmp_path):
    first = RecordEpisodes(PyVisionEnv(tasks, engine=engine), tmp_path)
    second = RecordEpisodes(PyVisionEnv(tasks, engine=engine), tmp_path)
    assert first._saved_kwargs == {"out_dir": os.fspath(tmp_path), "metadata": None}  # RecordConstructorArgs
    protocol = first.unwrapped.protocol
    try:
        first.reset(seed=0)
        engine.run_coroutine(second.areset(seed=1))
        first.step(protocol.render_action(code="print('first')"))
        *_, info = engine.run_coroutine(second.astep(protocol.render_action(answer="magenta")))
        assert info["correct"] is True
        first.step(protocol.render_action(answer="cyan"))
    finally:
        first.close()
        second.close()
    records = read_episodes(tmp_path)
    assert [(r["seed"], r["totals"]["correct"], r["totals"]["turns"]) for r in records] == [(1, True, 1),
                                                                                            (0, False, 2)]
    assert records[0]["episode_id"] != records[1]["episode_id"]


def test_only_pyvision_environments_are_wrapped(tmp_path):
    class Other(gym.Env):
        observation_space = action_space = gym.spaces.Discrete(2)

    with pytest.raises(TypeError, match="needs a PyVisionEnv"):
        RecordEpisodes(Other(), tmp_path)


def test_concurrent_writers_never_interleave_lines(tmp_path):
    path = tmp_path / "episodes.jsonl"

    def write(writer: int) -> None:
        for number in range(20):
            row = {"writer": writer, "n": number, "pad": str(writer) * 200_000}
            append_line(path, json.dumps(row) + "\n")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    script = ("import json, sys; from pathlib import Path; from pyvision_env.wrappers.recording import append_line\n"
              "for n in range(20): append_line(Path(sys.argv[1]), json.dumps({'writer': sys.argv[2], 'n': n, "
              "'pad': 'p' * 300_000}) + '\\n')")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    processes = [subprocess.Popen([sys.executable, "-c", script, str(path), f"p{i}"], env=env)
                 for i in range(2)]
    for thread in threads:
        thread.join()
    assert [p.wait(timeout=60) for p in processes] == [0, 0]
    rows = [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 6 * 20 + 2 * 20
    for writer in [*range(6), "p0", "p1"]:
        assert [r["n"] for r in rows if r.get("writer") == writer] == list(range(20))


# --- reading damaged or wrong files ----------------------------------------------------------------

def test_a_truncated_last_line_is_skipped_and_reported(recorded, tmp_path):
    source = (recorded.run / "episodes.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    path = tmp_path / "episodes.jsonl"
    path.write_text(source[0] + source[1][: len(source[1]) // 2], encoding="utf-8")  # killed mid-line
    with pytest.warns(RecordingWarning, match=r"skipped 1 unreadable line\(s\) \(2;"):
        assert [r["task_id"] for r in read_episodes(path)] == ["magenta"]
    with pytest.raises(EpisodeFileError, match=r"episodes\.jsonl:2: unreadable"):
        read_episodes(path, strict=True)
    append_line(path, source[2])  # the next writer ends the broken line first: its own line survives
    with pytest.warns(RecordingWarning, match=r"\(2;"):
        records = read_episodes(tmp_path)
    assert [(r.line, r["abandoned_by"]) for r in records if "abandoned_by" in r.data] == [(3, "reset")]
    with pytest.warns(RecordingWarning):
        page = render_html(path).read_text(encoding="utf-8")
    assert "skipped 1 unreadable line(s) (2;" in page and page.count('<details class="episode') == 2


def test_missing_and_foreign_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no episodes file at .*episodes\.jsonl"):
        read_episodes(tmp_path)
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_bytes(b"\x00\xff not json\n")
    with pytest.raises(EpisodeFileError, match="holds no episode records"):
        read_episodes(garbage)
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text('{"id": "q1", "question": "?", "answer": "1"}\n', encoding="utf-8")
    with pytest.raises(EpisodeFileError, match="not a pyvision-episode/1 record"):
        read_episodes(tasks_file)


def test_a_missing_image_file_is_named(recorded, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(recorded.run, run)
    record = read_episodes(run)[0]
    missing = record.image_path(record["messages"][1]["content"][1])
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        record.messages()
    page = render_html(run, tmp_path / "page.html").read_text(encoding="utf-8")
    assert f"missing image file images/{missing.name}" in page


# --- the page --------------------------------------------------------------------------------------

def test_page_is_self_contained_escaped_and_capped(recorded, tmp_path):
    page_path = render_html(recorded.run / "episodes.jsonl", tmp_path / "all.html")
    page = page_path.read_text(encoding="utf-8")
    assert page.count("<script>") == 1 and "window.pwned" not in page.replace(
        html.escape("<script>window.pwned"), "")  # the hostile response appears only escaped
    assert html.escape(HOSTILE) in page and "What colour is the &lt;b&gt;image&lt;/b&gt;?" in page
    tags = _tags(page)
    assert {tag for tag, _ in tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "p", "code",
                                        "table", "tr", "th", "td", "select", "option", "details", "summary",
                                        "span", "section", "h4", "div", "pre", "figure", "img", "figcaption",
                                        "b", "script"}
    links = [value for _, attrs in tags for name, value in attrs if name in ("src", "href", "action")]
    image_parts = [p for r in read_episodes(recorded.run) for m in r["messages"] for p in m["content"]
                   if p["type"] == "image"]
    assert len(links) == len(image_parts) == 6
    assert all(link.startswith("data:image/png;base64,") for link in links)
    assert "@import" not in page and "url(" not in page
    assert page.count('<details class="episode') == 4 and "1/2 = 50.0%" in page  # accuracy over finished
    assert page.count('class="episode correct"') == 1 and page.count('class="episode unfinished"') == 2
    assert f'<pre class="code"><code class="language-python">{html.escape(SHOW_TWICE)}</code></pre>' in page
    capped = render_html(recorded.run, tmp_path / "capped.html", max_episodes=1).read_text(encoding="utf-8")
    assert capped.count('<details class="episode') == 1
    assert "Showing the first 1 of 4 episodes" in capped and "1/2 = 50.0%" in capped
    assert render_html(recorded.run) == recorded.run / "episodes.html"
    with pytest.raises(ValueError, match="max_episodes"):
        render_html(recorded.run, tmp_path / "none.html", max_episodes=0)


def _tags(page: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The tags of a page with their attributes, as a browser's tokenizer reads them."""
    found = []

    class Parser(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, attrs))

    Parser().feed(page)
    return found


def _chromium(*arguments: str, profile: Path) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
                           "--virtual-time-budget=5000",
                           *arguments], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# Appended to a copy of the page: reports what the browser decoded (each image's pixels, drawn on a canvas
# and summed per RGBA channel), what it shows (a closed <details> hides its content) and whether the
# hostile response's script ran.
PROBE = """<script>window.addEventListener("load", function () {
  const shown = (element) => element.checkVisibility();
  function channelSums(img) {
    const canvas = document.createElement("canvas");
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(img, 0, 0);
    const data = context.getImageData(0, 0, canvas.width, canvas.height).data, sums = [0, 0, 0, 0];
    for (let k = 0; k < data.length; k++) sums[k % 4] += data[k];
    return sums;
  }
  const report = {
    pwned: window.pwned !== undefined,
    images: [...document.images].map((img) => ({path: img.alt, width: img.naturalWidth,
      height: img.naturalHeight, marked: img.dataset.naturalWidth, sums: channelSums(img),
      shown: shown(img)})),
    code: [...document.querySelectorAll("pre code")].map((code) => ({text: code.textContent,
      shown: shown(code)})),
  };
  const out = document.createElement("pre");
  out.id = "probe"; out.textContent = JSON.stringify(report); document.body.appendChild(out);
});</script></body>"""


@requires_chromium
def test_page_in_headless_chromium_shows_images_and_code(recorded, tmp_path):
    page = render_html(recorded.run, tmp_path / "page.html")
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE), encoding="utf-8")
    dom = _chromium("--dump-dom", probed.as_uri(), profile=tmp_path / "profile")
    report = json.loads(html.unescape(re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S).group(1)))
    assert report["pwned"] is False  # the hostile response's script never ran (and added no <img>)
    assert len(report["images"]) == 6
    for image in report["images"]:  # every image decoded to exactly the recorded pixels
        with Image.open(recorded.run / image["path"]) as png:
            expected = np.asarray(png.convert("RGBA"), dtype=np.int64).reshape(-1, 4).sum(axis=0).tolist()
            assert (image["width"], image["height"]) == png.size
        assert image["sums"] == expected
        assert image["marked"] == str(image["width"])  # the page's own script saw it decoded too
    assert sum(image["shown"] for image in report["images"]) == 3  # the open first episode: view + 2 figures
    assert [code["text"] for code in report["code"] if code["shown"]] == [SHOW_TWICE, RAISES]
    # And it paints: the magenta task image and figures are on the screenshot.
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1200,2400", "--hide-scrollbars", f"--screenshot={shot}", page.as_uri(),
              profile=tmp_path / "profile")
    with Image.open(shot) as screenshot:
        colours = screenshot.convert("RGB").getcolors(1 << 24)
    assert sum(count for count, colour in colours if colour == MAGENTA) > 56 * 56


def test_serve_answers_on_loopback_until_stopped(recorded, tmp_path):
    page = render_html(recorded.run, tmp_path / "served.html")
    served = serve(page)
    try:
        assert served.url.startswith("http://127.0.0.1:") and served.url.endswith("/served.html")
        with urllib.request.urlopen(served.url, timeout=10) as response:
            assert response.status == 200 and response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert response.read() == page.read_bytes()
        render_html(recorded.run, page, max_episodes=1)  # re-rendered pages are served fresh
        root = served.url.rsplit("/", 1)[0] + "/"
        with urllib.request.urlopen(root, timeout=10) as response:
            assert b"Showing the first 1 of 4" in response.read()
        with pytest.raises(urllib.error.HTTPError) as error:
            urllib.request.urlopen(root + "episodes.jsonl", timeout=10)
        assert error.value.code == 404
    finally:
        served.stop()
    served.stop()  # idempotent
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(served.url, timeout=5)


def test_view_command(recorded, tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser(prog="pyvision")
    add_view_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "view.html"
    args = parser.parse_args(["view", str(recorded.run), "--out", str(out), "--no-open",
                              "--max-episodes", "2"])
    assert run_view(args) == 0 and f"wrote {out}" in capsys.readouterr().out
    assert out.read_text(encoding="utf-8").count('<details class="episode') == 2
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or False)
    args = parser.parse_args(["view", str(recorded.run / "episodes.jsonl"), "--out", str(out)])
    assert run_view(args) == 0 and opened == [out.resolve().as_uri()]
    assert "no browser found" in capsys.readouterr().out
    assert open_in_browser("http://127.0.0.1:1/x") is False and opened[-1] == "http://127.0.0.1:1/x"
    assert run_view(parser.parse_args(["view", str(tmp_path / "nothing"), "--no-open"])) == 1
    assert "no episodes file" in capsys.readouterr().err


def test_view_serve_runs_until_interrupted(recorded, tmp_path):
    script = ("import argparse, sys; from pyvision_env.viewer import add_view_parser, run_view\n"
              "parser = argparse.ArgumentParser(); add_view_parser(parser.add_subparsers())\n"
              "sys.exit(run_view(parser.parse_args(sys.argv[1:])))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-c", script, "view", str(recorded.run), "--serve", "--no-open",
               "--out", str(tmp_path / "page.html")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().startswith("wrote ")
        served = re.fullmatch(r"serving (http://127\.0\.0\.1:\d+/page\.html) \(Ctrl-C to stop\)\n",
                              process.stdout.readline())
        with urllib.request.urlopen(served.group(1), timeout=10) as response:
            assert b"PyVision run" in response.read()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0 and process.stdout.read() == "stopped\n"
    finally:
        process.kill()
        process.wait()
