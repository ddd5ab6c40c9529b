"""Baselines without tools: :class:`DirectAnswerPolicy` (answers from the first view),
:class:`UniformVideoPolicy` (answers from the video frames given up front) and :class:`RandomPolicy` (random
responses, seeded); and :class:`GuessingMixture`, a tool-using policy that skips its tools and guesses in a
share of the episodes (an imperfect cold-start teacher).

The direct-answer policy runs the scripted policies' own analysis routines (:mod:`agents.scripted`), here, on
the first image of the observation — the view the environment downscaled for the model — and never
transforms it (no zoom, rotation or enhancement). It stands for a model that only looks: the built-in suites
are built so that it does clearly worse than a policy that uses the tools. The uniform video baseline
(``video_context="uniform"``) likewise stands for a model that sees every sampled frame perfectly, but only
those frames.

Example::

    import gymnasium as gym, pyvision_env
    env = gym.make("PyVision/Count-v0")
    policy = DirectAnswerPolicy(env.unwrapped.protocol)
    observation, info = env.reset(seed=0)
    info = env.step(policy.act(observation, info))[-1]
    info["end_reason"], info["tool_calls"]
    # -> ('answered', 0)
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from pyvision_env.messages import ImagePart, Message, TextPart
from pyvision_env.protocols import Protocol, get_protocol

from .base import Policy
from .scripted.common import (
    COLORS,
    SHAPES,
    asked_alphabet,
    asked_word,
    color_mask,
    components,
    find_shapes,
    kernel_code,
    read_text,
)
from .scripted.video import ASKED_SECONDS, BLUE, GREEN, YELLOW, bar_width, card_box, lit

_OPTIONS = re.compile(r"^\(([A-Z])\) ", re.MULTILINE)


def _question_text(observation: list[Message]) -> str:
    return "\n".join(message.plain_text for message in observation if message.role != "system")


def _first_image(observation: list[Message]) -> Image.Image | None:
    images = [image for message in observation for image in message.images]
    return images[0] if images else None


def direct_answer(image: Image.Image, question: str) -> str:
    """The answer read off ``image`` as it is: a count of the asked shapes, the text inside the asked
    colour's largest blob (a tag), or the image's line of text; ``""`` when nothing could be read."""
    color, shape = asked_word(question, COLORS), asked_word(question, SHAPES)
    if shape is not None:
        return str(len(find_shapes(image, color or "red", shape)))
    if color is not None:
        blobs = components(color_mask(image, color))
        if len(blobs) == 0:
            return ""
        x0, y0, x1, y1, _ = (int(v) for v in blobs[blobs[:, 4].argmax()])
        image = image.crop((x0, y0, x1, y1))
    return read_text(image, asked_alphabet(question))[0]


class DirectAnswerPolicy(Policy):
    """Answers at the first turn, without tools, from the observation's first image; when nothing can be
    read it guesses (the first option of a multiple-choice question, else ``0``)."""

    name = "direct"

    def __init__(self, protocol: Protocol | str = "pyvision") -> None:
        self.protocol = get_protocol(protocol)

    def act(self, observation: list[Message], info: dict[str, Any]) -> str:
        question, image = _question_text(observation), _first_image(observation)
        answer = direct_answer(image, question) if image is not None else ""
        if not answer:
            options = _OPTIONS.findall(question)
            answer = options[0] if options else "0"
        return self.protocol.render_action(thought="Answering from the image as shown.", answer=answer)


class RandomPolicy(Policy):
    """Random responses: plain text (a format error), a random simple operation on the image, or a random
    answer (an option letter, a number or a short code). Seeded: the same seed gives the same responses.

    Example:
        >>> from pyvision_env.messages import Message
        >>> first = [Message.text("user", "How many?")]
        >>> a, b = RandomPolicy(seed=3), RandomPolicy(seed=3)
        >>> a.act(first, {"turn": 0}) == b.act(first, {"turn": 0})
        True
    """

    name = "random"
    OPERATIONS = (
        "result = image.rotate({angle}, expand=True)",
        "result = image.crop((0, 0, max(1, image.width // {parts}), max(1, image.height // {parts})))",
        "result = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)",
        "result = ImageOps.autocontrast(image.convert('L'))",
        "result = image.resize((max(1, image.width // {parts}), max(1, image.height // {parts})))",
        "print(image.size)\nresult = image",
    )

    def __init__(self, protocol: Protocol | str = "pyvision", seed: int = 0) -> None:
        self.protocol = get_protocol(protocol)
        self.rng = random.Random(seed)
        self._options: list[str] = []
        self._calls = 0

    def act(self, observation: list[Message], info: dict[str, Any]) -> str:
        if info.get("turn") == 0:
            self._options = _OPTIONS.findall(_question_text(observation))
            self._calls = 0
        kind = self.rng.choices(("text", "code", "answer"), weights=(1, 3, 2))[0]
        if kind == "text":
            return " ".join(self.rng.choice(("maybe", "the", "image", "shows", "something", "look"))
                            for _ in range(self.rng.randint(1, 8)))
        if kind == "code":
            self._calls += 1
            code = self.rng.choice(self.OPERATIONS).format(angle=self.rng.choice((90, 180, 270)),
                                                           parts=self.rng.randint(2, 4))
            return self.protocol.render_action(code=kernel_code(self.protocol, code), image_index=0,
                                               call_id=f"call_{self._calls}")
        if self._options:
            answer = self.rng.choice(self._options)
        elif self.rng.random() < 0.5:
            answer = str(self.rng.randint(0, 99))
        else:
            answer = "".join(self.rng.choice("ABCDEFGHJKLMNPRTUVWXY2345789") for _ in range(self.rng.randint(4, 6)))
        return self.protocol.render_action(answer=answer)


class GuessingMixture(Policy):
    """Follows ``policy``, except in a ``guess_rate`` share of the episodes, where it answers at once with a
    random one of ``guesses`` — like cold-start data distilled from a model that often skips its tools.
    One random stream (``seed``) serves all batch slots.

    Example:
        >>> from agents.scripted import scripted_policy
        >>> from pyvision_env.messages import Message
        >>> teacher = GuessingMixture(scripted_policy("tally"), guesses=["7"], guess_rate=1.0)
        >>> teacher.act([Message.text("user", "How many red squares are in the image?")], {"turn": 0})
        '<answer>\\\\boxed{7}</answer>'
    """

    name = "guessing-mixture"

    def __init__(self, policy: Policy, guesses: Sequence[str], guess_rate: float = 0.5,
                 seed: int | random.Random = 0) -> None:
        if not 0.0 <= guess_rate <= 1.0 or not guesses:
            raise ValueError(f"guess_rate must be in [0, 1] and guesses non-empty, got {guess_rate}, {guesses!r}")
        self.policy, self.guesses, self.guess_rate = policy, list(guesses), guess_rate
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self.guessing = False

    def act(self, observation: list[Message], info: dict[str, Any]) -> str:
        if info.get("turn") == 0:
            self.guessing = self.rng.random() < self.guess_rate
        if self.guessing:
            return self.policy.protocol.render_action(answer=self.guess(observation))
        return self.policy.act(observation, info)

    def guess(self, observation: list[Message]) -> str:
        """The answer given without the tool (a subclass may read it from the question)."""
        return self.rng.choice(self.guesses)

    def act_batch(self, observations: Sequence[list[Message]], infos: Sequence[dict[str, Any]]) -> list[str]:
        slots = self.__dict__.setdefault("_mixtures", [])
        while len(slots) < len(observations):
            slots.append(type(self)(copy.deepcopy(self.policy), self.guesses, self.guess_rate, self.rng))
        return [slot.act(obs, info) for slot, obs, info in zip(slots, observations, infos)]


# --- the uniform-sampling video baseline ---------------------------------------------------------------


def sampled_frames(observation: list[Message]) -> list[tuple[float, Image.Image]]:
    """The ``(seconds, frame)`` pairs the first message gives, from its ``[12.0 s]`` labels."""
    pairs, seconds = [], None
    for message in observation:
        for part in message.content:
            if isinstance(part, TextPart):
                labels = re.findall(r"\[(\d+(?:\.\d+)?) s\] $", part.text)
                seconds = float(labels[-1]) if labels else None
            elif isinstance(part, ImagePart) and seconds is not None:
                pairs.append((seconds, part.image))
                seconds = None
    return pairs


def uniform_answer(question: str, frames: list[tuple[float, Image.Image]], original_width: int) -> str:
    """The answer read off the sampled frames alone (see :class:`UniformVideoPolicy`)."""
    if not frames:
        return "0"
    times = [seconds for seconds, _ in frames]
    if "turns green" in question:
        on = [lit(frame, GREEN, min_pixels=40) for _, frame in frames]
        first = next((i for i, state in enumerate(on) if state), None)
        if first is None:
            return "0"
        return str(round((times[max(0, first - 1)] + times[first]) / 2))  # the middle of the gap
    if "flashes" in question:
        on = [lit(frame, YELLOW, min_pixels=40) for _, frame in frames]
        return str(sum(1 for i, state in enumerate(on) if state and (i == 0 or not on[i - 1])))
    if "blue bar" in question:
        asked = ASKED_SECONDS.search(question)
        target = float(asked.group(1)) if asked else 0.0
        scale = original_width / frames[0][1].width
        widths = [bar_width(frame, BLUE) * scale for _, frame in frames]
        return str(round(float(np.interp(target, times, widths))))
    for _, frame in frames:
        box = card_box(frame, min_pixels=150)
        if box is not None:
            return read_text(frame.crop(box), alphabet="0123456789")[0] or "0"
    return "0"


class UniformVideoPolicy(Policy):
    """Answers at the first turn from the uniformly sampled frames the environment gave, analysing each of
    them perfectly (it interpolates between samples where that helps) but seeing nothing else."""

    name = "uniform-video"

    def __init__(self, protocol: Protocol | str = "pyvision") -> None:
        self.protocol = get_protocol(protocol)

    def act(self, observation: list[Message], info: dict[str, Any]) -> str:
        text = "\n".join(message.plain_text for message in observation if message.role != "system")
        size = re.search(r"\((\d+)x(\d+), \d+ frames", text)
        answer = uniform_answer(text, sampled_frames(observation), int(size.group(1)) if size else 1)
        return self.protocol.render_action(thought="From the sampled frames.", answer=answer)
