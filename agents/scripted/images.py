"""Scripted policies for the built-in image suites: they solve each task by writing real code through the env.

Each policy runs image analysis *in the episode's kernel* (locate a needle by colour, crop and zoom, try the
eight orientations and keep the most readable one, flatten and stretch faint ink, count connected
components) and decides its next step and its answer from the text the code prints — never from the task's
answer, metadata or the cache files.

Example::

    import gymnasium as gym, pyvision_env
    env = gym.make("PyVision/Zoom-v0")
    policy = scripted_policy("zoom", env.unwrapped.protocol)
    observation, info = env.reset(seed=0)
    done = False
    while not done:
        observation, reward, terminated, truncated, info = env.step(policy.act(observation, info))
        done = terminated or truncated
    info["correct"]
    # -> True
"""

from __future__ import annotations

import re
from collections.abc import Generator

from .common import COLORS, READ_PATTERN, SHAPES, ScriptedPolicy, asked_alphabet, asked_word, printed


class ZoomScriptedPolicy(ScriptedPolicy):
    """Find the tag by its border colour, crop and zoom it, read it at full resolution."""

    name = "scripted-zoom"

    def script(self, question: str) -> Generator[str, str, None]:
        color = asked_word(question, COLORS) or "red"
        seen = yield self.run(
            f"blobs = components(color_mask(image, {color!r}))\n"
            "x0, y0, x1, y1, _ = (int(v) for v in blobs[blobs[:, 4].argmax()])\n"
            f"print(f'{color} tag at ({{x0}}, {{y0}}, {{x1}}, {{y1}})')\n"
            "result = image.crop((x0, y0, x1, y1)).resize(((x1 - x0) * 4, (y1 - y0) * 4), Image.LANCZOS)",
            f"The tag is tiny in this view. I will find its {color} border by colour and zoom in on it.")
        found = printed(rf"{color} tag at \((\d+), (\d+), (\d+), (\d+)\)", seen)
        if found is None:
            yield self.answer("0", f"I could not find a {color} tag.")
            return
        box = tuple(int(v) for v in found.groups())
        seen = yield self.run(
            f"tag = image.crop({box})\n"
            f"text, readability = read_text(tag, alphabet={asked_alphabet(question)!r})\n"
            "print(f'reads {text!r} (readability {readability:.2f})')\n"
            "result = Image.fromarray(~ink_mask(tag)).resize((tag.width * 4, tag.height * 4))",
            "The zoomed tag is legible. I will read its characters against the font's glyphs.")
        read = printed(READ_PATTERN, seen)
        text = read.group(1) if read else ""
        yield self.answer(text, f"The tag reads {text}.")


class OrientationScriptedPolicy(ScriptedPolicy):
    """Try the eight rotations and mirror images, keep the most readable one, read it."""

    name = "scripted-orientation"
    CANDIDATES = ("as is", "ROTATE_90", "ROTATE_180", "ROTATE_270", "FLIP_LEFT_RIGHT", "FLIP_TOP_BOTTOM",
                  "TRANSPOSE", "TRANSVERSE")

    def script(self, question: str) -> Generator[str, str, None]:
        seen = yield self.run(
            f"views = {{name: image if name == 'as is' else image.transpose(Image.Transpose[name])\n"
            f"         for name in {self.CANDIDATES!r}}}\n"
            "scores = {}\n"
            "for name, view in views.items():\n"
            "    text, scores[name] = read_text(view)\n"
            "    print(f'{name}: reads {text!r} (readability {scores[name]:.2f})')\n"
            "result = views[max(scores, key=scores.get)]",
            "The card may be rotated or mirrored. I will undo each possible transform and see which one "
            "reads best.")
        rows = re.findall(rf"({'|'.join(self.CANDIDATES)}): {READ_PATTERN}", seen)
        best = max(rows, key=lambda row: float(row[2]))[0] if rows else "as is"
        transform = "image" if best == "as is" else f"image.transpose(Image.Transpose.{best})"
        seen = yield self.run(
            f"upright = {transform}\n"
            f"text, readability = read_text(upright, alphabet={asked_alphabet(question)!r})\n"
            "print(f'reads {text!r} (readability {readability:.2f})')\n"
            "result = upright",
            f"'{best}' reads best. I will put the card upright that way and read the code.")
        read = printed(READ_PATTERN, seen)
        text = read.group(1) if read else ""
        yield self.answer(text, f"Upright, the card reads {text}.")


class CountScriptedPolicy(ScriptedPolicy):
    """Mask the asked colour, split it into connected blobs, keep those of the asked shape, count them."""

    name = "scripted-count"

    def script(self, question: str) -> Generator[str, str, None]:
        color = asked_word(question, COLORS) or "red"
        shape = asked_word(question, SHAPES) or "circle"
        seen = yield self.run(
            f"found = find_shapes(image, {color!r}, {shape!r})\n"
            f"print(f'found {{len(found)}} {color} {shape}s')\n"
            "result = image.copy()\n"
            "draw = ImageDraw.Draw(result)\n"
            "for x0, y0, x1, y1 in found:\n"
            "    draw.rectangle((x0 - 4, y0 - 4, x1 + 3, y1 + 3), outline=(0, 0, 0), width=3)",
            f"The shapes are small and clustered. I will separate the {color} blobs with connected components "
            f"and classify each by how much of its box it fills.")
        found = printed(rf"found (\d+) {color} {shape}s", seen)
        count = found.group(1) if found else "0"
        yield self.answer(count, f"There are {count} {color} {shape}s.")


class ContrastScriptedPolicy(ScriptedPolicy):
    """Measure the contrast and try to read; if that fails, flatten and stretch the faint ink, then read."""

    name = "scripted-contrast"

    def script(self, question: str) -> Generator[str, str, None]:
        alphabet = asked_alphabet(question)
        seen = yield self.run(
            "grey = np.asarray(image.convert('L'))\n"
            "low, high = np.percentile(grey, [1, 99])\n"
            "print(f'grey levels from {low:.0f} to {high:.0f}')\n"
            f"text, readability = read_text(image, alphabet={alphabet!r})\n"
            "print(f'reads {text!r} (readability {readability:.2f})')\n"
            "result = ImageOps.autocontrast(image.convert('L'), cutoff=1)",
            "The label is barely visible. I will check the range of grey levels and try to read it as is.")
        read = printed(READ_PATTERN, seen)
        if read is None or not read.group(1) or float(read.group(2)) < 0.7:
            seen = yield self.run(
                "result = enhance_faint(image)\n"
                f"text, readability = read_text(result, alphabet={alphabet!r})\n"
                "print(f'reads {text!r} (readability {readability:.2f})')",
                "The ink is only a few grey levels darker than the paper. I will smooth the noise, subtract "
                "the uneven paper and stretch the contrast, then read again.")
            read = printed(READ_PATTERN, seen)
        text = read.group(1) if read else ""
        yield self.answer(text, f"The label reads {text}.")


class TallyScriptedPolicy(ScriptedPolicy):
    """One numpy cell: the asked colour's pixels / 64 (a square is 8x8), printed; then the printed number is
    the answer. Short on purpose: it is the cold-start data of the trainer's tiny-model demo."""

    name = "scripted-tally"
    RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}

    def script(self, question: str) -> Generator[str, str, None]:
        color = asked_word(question, tuple(self.RGB)) or "red"
        stateless = self.protocol.name == "codevision"  # its calls bind `image` and must leave a `result`
        image = "image" if stateless else "image_clue_0"
        code = f"print((np.asarray({image}) == {self.RGB[color]}).all(-1).sum() // 64)"
        code += "\nresult = image" if stateless else ""
        seen = yield self.protocol.render_action(code=code, image_index=0, call_id="call_1")
        count = re.search(r"^\s*(\d+)\s*$", seen, re.MULTILINE)
        yield self.answer(count.group(1) if count else "0", "")


IMAGE_POLICIES: dict[str, type[ScriptedPolicy]] = {
    "zoom": ZoomScriptedPolicy, "orientation": OrientationScriptedPolicy, "count": CountScriptedPolicy,
    "contrast": ContrastScriptedPolicy, "tally": TallyScriptedPolicy,
}
"""The scripted policy of each built-in image suite."""
