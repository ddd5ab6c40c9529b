"""Scripted policies for the built-in video suites: they fetch the frames they need on demand.

Each :class:`VideoScriptedPolicy` fetches frames from ``video_clue_0`` with code (coarse-to-fine search for an
event, a scan at 4 fps for flashes, a seek to the asked moment, a 1 fps scan for a needle), analyses them in the
kernel with numpy and shows only the one frame that settles the answer. It reads the question and what the code
prints — never the task's answer or metadata. The uniform-sampling baseline,
:class:`~agents.baselines.UniformVideoPolicy`, runs the same analysis routines on the frames given up front.

Example::

    import gymnasium as gym, pyvision_env
    env = gym.make("PyVision/VideoEvent-v0")                       # on-demand: metadata only at reset
    policy = scripted_policy("video-event", env.unwrapped.protocol)    # from agents.scripted
    observation, info = env.reset(seed=0)
    ...                                                            # step until the episode ends
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Generator

import numpy as np

from .common import HELPER_SOURCE, ScriptedPolicy, printed

GREEN, YELLOW, BLUE, WHITE = (40, 190, 60), (245, 205, 30), (40, 80, 210), (255, 255, 255)

# --- analysis routines (sent to the kernel as source; they use only numpy) -----------------------------------


def color_pixels(frame, color, tolerance=90):
    """Boolean mask of the pixels of ``frame`` (an RGB array or image) within ``tolerance`` of ``color``."""
    pixels = np.asarray(frame, dtype=np.int16)[..., :3]
    return np.abs(pixels - np.array(color, dtype=np.int16)).sum(axis=-1) < tolerance


def lit(frame, color, min_pixels=60):
    """Whether a lamp of ``color`` is lit in ``frame`` (at least ``min_pixels`` of that colour)."""
    return int(color_pixels(frame, color).sum()) >= min_pixels


def bar_width(frame, color=(40, 80, 210)):
    """Width in pixels of a horizontal bar of ``color``: the median length of its fullest rows."""
    rows = color_pixels(frame, color).sum(axis=1)
    full = rows[rows >= 0.5 * rows.max()] if rows.max() else rows
    return int(np.median(full))


def card_box(frame, min_pixels=300):
    """The box ``(x0, y0, x1, y1)`` of a white card in ``frame``, or None when there is none."""
    white = np.asarray(frame)[..., :3].min(axis=-1) > 235
    if white.sum() < min_pixels:
        return None
    ys, xs = np.nonzero(white)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


VIDEO_HELPERS = (color_pixels, lit, bar_width, card_box)
VIDEO_HELPER_SOURCE = HELPER_SOURCE + "\n\n" + "\n\n".join(inspect.getsource(helper) for helper in VIDEO_HELPERS)
"""The analysis routines as the kernel receives them: the image helpers (text reading) and the above."""

ASKED_SECONDS = re.compile(r"at (\d+(?:\.\d+)?) seconds")
"""The moment a video-measure question asks about."""


# --- on-demand scripted policies -----------------------------------------------------------------------------


class VideoScriptedPolicy(ScriptedPolicy):
    """Base class: code runs against ``video_clue_0`` (the helpers come with the first call)."""

    def run(self, code: str, thought: str) -> str:
        parts = [VIDEO_HELPER_SOURCE, code] if self._calls == 0 else [code]
        self._calls += 1
        return self.protocol.render_action(thought=thought, code="\n\n".join(parts), call_id=f"call_{self._calls}")


class VideoEventScriptedPolicy(VideoScriptedPolicy):
    """Coarse-to-fine: one frame every 2 s to bracket the switch, then a binary search between the two."""

    name = "scripted-video-event"

    def script(self, question: str) -> Generator[str, str, None]:
        seen = yield self.run(
            "fps = video_clue_0.get_avg_fps()\n"
            "coarse = list(range(0, len(video_clue_0), max(1, round(2 * fps))))\n"
            f"green = [lit(frame, {GREEN}) for frame in video_clue_0.get_batch(coarse).asnumpy()]\n"
            "after = next((i for i, on in enumerate(green) if on), None)\n"
            "print('never green' if after is None else "
            "f'green between frames {coarse[max(0, after - 1)]} and {coarse[after]}')",
            "The video is long and I see no frame yet. I will check one frame every two seconds to find "
            "roughly when the lamp turns green.")
        bracket = printed(r"green between frames (\d+) and (\d+)", seen)
        if bracket is None:
            yield self.answer("0", "The lamp never turned green in the frames I checked.")
            return
        low, high = (int(v) for v in bracket.groups())
        seen = yield self.run(
            f"low, high = {low}, {high}\n"
            "while high - low > 1:\n"
            "    middle = (low + high) // 2\n"
            f"    low, high = (low, middle) if lit(video_clue_0[middle].asnumpy(), {GREEN}) else (middle, high)\n"
            "start = float(video_clue_0.get_frame_timestamp(high)[0])\n"
            "print(f'first green frame {high} at {start:.3f} s')\n"
            "display(get_frames(video_clue_0, indices=[high])[0])",
            "Now I will binary-search the frames between those two for the first green one.")
        found = printed(r"first green frame \d+ at ([0-9.]+) s", seen)
        seconds = round(float(found.group(1))) if found else 0
        yield self.answer(str(seconds), f"The lamp turns green at about {seconds} s.")


class VideoCountScriptedPolicy(VideoScriptedPolicy):
    """Scan every other frame (4 fps catches flashes of 3 frames or more) and count the rising edges."""

    name = "scripted-video-count"

    def script(self, question: str) -> Generator[str, str, None]:
        seen = yield self.run(
            "frames = list(range(0, len(video_clue_0), 2))\n"
            f"on = [lit(frame, {YELLOW}) for frame in video_clue_0.get_batch(frames).asnumpy()]\n"
            "starts = [frames[i] for i in range(len(on)) if on[i] and (i == 0 or not on[i - 1])]\n"
            "print(f'{len(starts)} flashes, starting at frames {starts}')\n"
            "if starts:\n"
            "    display(get_frames(video_clue_0, indices=[starts[0]])[0])",
            "The flashes are shorter than a second. I will check every other frame for the yellow lamp and "
            "count the times it comes on.")
        found = printed(r"(\d+) flashes", seen)
        count = found.group(1) if found else "0"
        yield self.answer(count, f"The lamp flashes {count} times.")


class VideoMeasureScriptedPolicy(VideoScriptedPolicy):
    """Seek to the asked moment and measure the bar there."""

    name = "scripted-video-measure"

    def script(self, question: str) -> Generator[str, str, None]:
        asked = ASKED_SECONDS.search(question)
        seconds = float(asked.group(1)) if asked else 0.0
        seen = yield self.run(
            f"index = min(len(video_clue_0) - 1, round({seconds} * video_clue_0.get_avg_fps()))\n"
            "frame = video_clue_0[index].asnumpy()\n"
            f"print(f'frame {{index}}: the bar is {{bar_width(frame, {BLUE})}} px wide')\n"
            "display(Image.fromarray(frame))",
            f"I will fetch the frame at {seconds} s and measure the blue bar's width in pixels.")
        found = printed(r"the bar is (\d+) px wide", seen)
        width = found.group(1) if found else "0"
        yield self.answer(width, f"At {seconds} s the bar is {width} px wide.")


class VideoNeedleScriptedPolicy(VideoScriptedPolicy):
    """Scan one frame per second for the white card, then read it on the frame where it shows."""

    name = "scripted-video-needle"

    def script(self, question: str) -> Generator[str, str, None]:
        seen = yield self.run(
            "step = max(1, round(video_clue_0.get_avg_fps()))\n"
            "frames = list(range(0, len(video_clue_0), step))\n"
            "hits = [i for i, frame in zip(frames, video_clue_0.get_batch(frames).asnumpy()) if card_box(frame)]\n"
            "print(f'card on frames {hits}' if hits else 'no card found')",
            "The card shows for two seconds somewhere in a long video. I will check one frame per second for "
            "a white card, without looking at them all.")
        found = printed(r"card on frames \[(\d+)", seen)
        if found is None:
            yield self.answer("0", "I found no card.")
            return
        seen = yield self.run(
            f"frame = video_clue_0[{found.group(1)}].asnumpy()\n"
            "card = Image.fromarray(frame).crop(card_box(frame))\n"
            "text, readability = read_text(card, alphabet='0123456789')\n"
            "print(f'reads {text!r} (readability {readability:.2f})')\n"
            "display(card)",
            "Found it. I will crop the card and read its number.")
        read = printed(r"reads '(\d*)'", seen)
        number = read.group(1) if read else ""
        yield self.answer(number, f"The card reads {number}.")


VIDEO_POLICIES: dict[str, type[VideoScriptedPolicy]] = {
    "video-event": VideoEventScriptedPolicy, "video-count": VideoCountScriptedPolicy,
    "video-measure": VideoMeasureScriptedPolicy, "video-needle": VideoNeedleScriptedPolicy,
}
"""The scripted policy of each built-in video suite."""
