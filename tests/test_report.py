"""The HTML training report: its tables, embedded images and escaping, parsed and then shown in a real
headless Chromium (the browser test of the episode viewer, reused)."""

from __future__ import annotations

import base64
import html
import io
import re
from html.parser import HTMLParser

import pytest
from PIL import Image

from pyvision_env.messages import ImagePart, Message, TextPart
from tests.test_recording import _chromium, requires_chromium
from trainers.report import Sample, Turn, write_report

MAGENTA, CYAN = (255, 0, 255), (0, 255, 255)
HOSTILE = "<script>document.title = 'pwned'</script></pre><img src=x onerror=\"document.title='pwned'\"> & done"


class _Page(HTMLParser):
    """The parts of the page the tests look at: tags, table cells, images, <pre> texts, the title."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.cells: list[str] = []
        self.images: list[dict[str, str]] = []
        self.pres: list[str] = []
        self.title = ""
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag in ("td", "th", "pre", "title"):
            self._open.append(tag)
            if tag == "pre":
                self.pres.append("")
            elif tag != "title":
                self.cells.append("")

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        if not self._open:
            return
        tag = self._open[-1]
        if tag == "title":
            self.title += data
        else:
            target = self.pres if tag == "pre" else self.cells
            target[-1] += data


def _image(colour, size) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    plot = folder / "reward.png"
    _image((10, 120, 10), (300, 200)).save(plot)
    conversation = [
        Message.text("system", "You are a careful visual assistant."),
        Message("user", (TextPart("What colour is it?"), ImagePart(_image(MAGENTA, (800, 200))))),
        Message.text("assistant", HOSTILE),
        Message("tool", (TextPart("shown:"), ImagePart(_image(CYAN, (200, 100))))),
        Message.text("assistant", r"\boxed{magenta}"),
    ]
    samples = [Sample.from_messages("step 10 <rollout 1>", "colour-1", True, 1.1, conversation),
               Sample("step 10, rollout 2", "colour-2", None, 0.0,
                      [Turn("user", "And this one?", [_image(MAGENTA, (100, 60))]), Turn("assistant", "")])]
    tables = [("Evaluation <b>before</b> and after",
               [{"model": "base", "accuracy": 0.4123, "kept_ratio": 0.5, "tool_calls": 1.23456, "steps": 1200},
                {"model": "RL <i>", "accuracy": 0.5, "loss": None, "tokens": 123456.7}])]
    path = write_report(folder / "out" / "report.html", title="Run <zoom> & count",
                        intro="First paragraph\nstill first.\n\n  Second <paragraph>.  \n\n",
                        tables=tables, plots=[plot], samples=samples)
    return path


def test_the_page_holds_the_tables_images_and_escaped_text(report):
    text = report.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    assert page.title == "Run <zoom> & count"
    assert page.cells == ["model", "accuracy", "kept_ratio", "tool_calls", "steps", "loss", "tokens",
                          "base", "41.2%", "50.0%", "1.235", "1,200", "–", "–",
                          "RL <i>", "50.0%", "–", "–", "–", "–", "123,457"]
    assert "<caption>Evaluation &lt;b&gt;before&lt;/b&gt; and after</caption>" in text
    assert "<p>First paragraph\nstill first.</p>" in text and "<p>Second &lt;paragraph&gt;.</p>" in text
    # The plot, the user image, the tool image and the second sample's image: all PNG data URLs.
    assert len(page.images) == 4
    decoded = []
    for image in page.images:
        assert image["src"].startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1]))) as png:
            decoded.append((png.size, png.getpixel((0, 0))))
            assert (str(png.width), str(png.height)) == (image["width"], image["height"])
    assert decoded == [((300, 200), (10, 120, 10)), ((384, 96), MAGENTA), ((200, 100), CYAN),
                       ((100, 60), MAGENTA)]  # the 800-pixel image is a 384-pixel thumbnail
    assert page.images[0]["alt"] == "reward.png" and "reward</figcaption>" in text
    # The hostile response is text in a <pre>: no script element, no extra image, nothing external.
    assert page.tags.count("script") == 0
    assert HOSTILE in page.pres
    assert "&lt;script&gt;document.title" in text
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    assert "step 10 &lt;rollout 1&gt;" in text and "✓ correct" in text and "? not graded" in text


@requires_chromium
def test_chromium_renders_the_images_and_runs_no_script(report, tmp_path):
    dom = _chromium("--dump-dom", report.as_uri(), profile=tmp_path / "profile")
    assert "<title>Run &lt;zoom&gt; &amp; count</title>" in dom  # a script that ran would have renamed it
    assert "pwned" not in html.unescape(dom).replace(HOSTILE, "")
    shot = tmp_path / "shot.png"
    _chromium("--window-size=1000,2600", "--hide-scrollbars", f"--screenshot={shot}", report.as_uri(),
              profile=tmp_path / "profile")
    with Image.open(shot) as screenshot:
        colours = {colour: count for count, colour in screenshot.convert("RGB").getcolors(1 << 24)}
    # Every embedded image decoded and painted: the thumbnail (384 × 96) and the small one (100 × 60) in
    # magenta, the tool image in cyan, the plot in green.
    assert colours.get(MAGENTA, 0) >= 0.95 * (384 * 96 + 100 * 60)
    assert colours.get(CYAN, 0) >= 0.95 * 200 * 100
    assert colours.get((10, 120, 10), 0) >= 0.95 * 300 * 200
