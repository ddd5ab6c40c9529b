"""Token-in / token-out conversations: ids that only ever grow, with their images and a loss mask.

A multi-turn rollout never decodes and re-tokenizes what the model said (pitfall 2: the ids would drift from
the sampled ones and their log-probs). :class:`ChatTokenizer` tokenizes

* the first observation with the chat template (:meth:`ChatTokenizer.prompt`), and
* each later observation by *template difference* (:meth:`ChatTokenizer.continuation`): a fixed conversation
  is rendered with and without the new messages and only the added text is tokenized, together with what the
  template puts after an assistant's end-of-turn token (a newline in Qwen's format),

so a conversation is ``prompt + sampled + continuation + sampled + ...``. :meth:`ChatTokenizer.check_template`
verifies once, at start-up, that the template makes this exact (it is prefix-preserving and renders an
assistant turn as generation prompt + text + end token). Each image's one placeholder is expanded to as many
placeholder tokens as the image processor gives it, and each image gets an :class:`ImageRecord` (the hash of its
pixels and its processor grid) as the rollout saw it. :func:`check_visual_parity` is the assertion at the
trainer's door that the images, their grids and their placeholders are still those (so the model never trains
on pixels it did not see, or on none).

Example::

    chat = ChatTokenizer(tokenizer, image_processor)
    chat.check_template()
    ids, images = chat.prompt(observation)              # reset's messages, ending in the generation prompt
    ids += sampled_ids                                   # the model's response, ending in <|im_end|>
    more, more_images = chat.continuation(observation)   # step's messages, ending in the generation prompt
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from agents.hf import image_token_types, template_messages
from pyvision_env.messages import ImagePart, Message
from pyvision_env.wrappers.recording import image_digest

IMAGE_TOKEN = "<|image_pad|>"
END_TOKEN = "<|im_end|>"
VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
"""Tokens only the environment's images may bring: samplers must never produce them (a sampled placeholder
without an image breaks the model's next forward pass)."""


class TemplateError(ValueError):
    """The chat template cannot be used token-in / token-out (see :meth:`ChatTokenizer.check_template`)."""


class ImageTokenMismatch(ValueError):
    """Image placeholder tokens and images of a sequence disagree."""


class VisualParityError(ImageTokenMismatch):
    """The images a forward pass would train on are not the ones the rollout saw (changed, dropped, added, or
    processed to another grid); the message names the sequence and the image."""


@dataclass(frozen=True)
class ImageRecord:
    """An image as the rollout saw it: the sha256 of its pixels (:func:`image_digest`) and its processor grid
    ``(t, h, w)`` in patches."""

    digest: str
    grid: tuple[int, int, int]


@dataclass
class Encoded:
    """Token ids and the images they hold placeholders for, in order, with their records."""

    ids: list[int]
    images: list[Image.Image]
    records: list[ImageRecord] = field(default_factory=list)


class ChatTokenizer:
    """Tokenizes conversations of :class:`~pyvision_env.messages.Message` for training and sampling.

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template (Qwen2-VL wire format or compatible).
        image_processor: the model's image processor (gives each image's ``image_grid_thw``).
        merge_size: the vision tower's spatial merge (tokens per image = t * h * w / merge_size**2).
        token_types: whether the model's inputs include ``mm_token_type_ids``.
    """

    def __init__(self, tokenizer: Any, image_processor: Any, merge_size: int = 2, token_types: bool = False) -> None:
        self.tokenizer, self.image_processor, self.merge_size = tokenizer, image_processor, merge_size
        self.token_types = token_types
        """Model inputs carry ``mm_token_type_ids`` (:meth:`token_type_inputs`): the model computes its image
        tokens' 3D positions from them (Qwen2-VL, Qwen2.5-VL; :func:`agents.hf.takes_token_types`)."""
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.end_token_id = tokenizer.convert_tokens_to_ids(END_TOKEN)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_token_id
        vocabulary = tokenizer.get_vocab()
        self.never_sampled = [vocabulary[token] for token in VISION_TOKENS if token in vocabulary]
        probe = [Message.text("system", "s"), Message.text("user", "u")]
        after_end = self._render([*probe, Message.text("assistant", "a")])
        self._after_end = after_end[after_end.rindex(END_TOKEN) + len(END_TOKEN):]
        """What the template writes after an assistant turn's end token (Qwen: a newline)."""
        self._probe = [*probe, Message.text("assistant", "a")]

    def token_type_inputs(self, input_ids: Any) -> dict[str, Any]:
        """``{"mm_token_type_ids": ...}`` of a batch of ids when the model takes them (:attr:`token_types`),
        else ``{}``."""
        return {"mm_token_type_ids": image_token_types(input_ids, self.image_token_id)} if self.token_types else {}

    # --- rendering --------------------------------------------------------------------------------

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(template_messages(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def image_grids(self, images: Sequence[Image.Image]) -> list[tuple[int, int, int]]:
        """Each image's processor grid ``(t, h, w)`` in patches."""
        if not images:
            return []
        grids = self.image_processor(images=[image.convert("RGB") for image in images],
                                     return_tensors="pt")["image_grid_thw"]
        return [tuple(int(v) for v in grid) for grid in grids.tolist()]

    def image_token_counts(self, images: Sequence[Image.Image]) -> list[int]:
        """Placeholder tokens each image takes."""
        return [self.token_count(grid) for grid in self.image_grids(images)]

    def token_count(self, grid: Sequence[int]) -> int:
        """Placeholder tokens of an image of processor grid ``grid``."""
        return int(grid[0] * grid[1] * grid[2]) // self.merge_size**2

    def encode(self, text: str, images: Sequence[Image.Image]) -> Encoded:
        """Tokenize rendered text whose ``<|image_pad|>`` placeholders (one per image) are expanded."""
        pieces = text.split(IMAGE_TOKEN)
        if len(pieces) - 1 != len(images):
            raise ImageTokenMismatch(f"the text has {len(pieces) - 1} image placeholders for {len(images)} images")
        grids = self.image_grids(images)
        expanded = pieces[0] + "".join(IMAGE_TOKEN * self.token_count(grid) + rest
                                       for grid, rest in zip(grids, pieces[1:]))
        return Encoded(self.tokenizer(expanded, add_special_tokens=False)["input_ids"], list(images),
                       [ImageRecord(image_digest(image), grid) for image, grid in zip(images, grids)])

    def prompt(self, messages: Sequence[Message]) -> Encoded:
        """The first observation, rendered with the generation prompt."""
        return self.encode(self._render(messages, add_generation_prompt=True), _images(messages))

    def continuation(self, messages: Sequence[Message]) -> Encoded:
        """The tokens that follow an assistant turn's end token: the template's text after it, the new
        messages, and the next generation prompt."""
        before = self._render(self._probe)
        after = self._render([*self._probe, *messages], add_generation_prompt=True)
        if not after.startswith(before):
            raise TemplateError("the chat template is not prefix-preserving: adding messages changed the text "
                                "before them")
        return self.encode(self._after_end + after[len(before):], _images(messages))

    def decode(self, ids: Sequence[int]) -> str:
        """A response's text (special tokens such as the end token dropped)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def check_template(self) -> None:
        """Raise :class:`TemplateError` unless token-in / token-out reproduces the template exactly: every
        conversation prefix renders as a prefix, and an assistant turn renders as the generation prompt, the
        response, the end token and the text after it."""
        conversation = [Message.text("system", "s"), Message.text("user", "question"),
                        Message.text("assistant", "<code>x</code>"), Message.text("user", "result"),
                        Message.text("assistant", "<answer>y</answer>")]
        for cut in range(1, len(conversation)):
            shorter, longer = self._render(conversation[:cut]), self._render(conversation[:cut + 1])
            if not longer.startswith(shorter):
                raise TemplateError(f"the chat template is not prefix-preserving: adding message {cut} "
                                    f"({conversation[cut].role}) rewrites earlier text")
            if conversation[cut].role == "assistant":
                expected = (self._render(conversation[:cut], add_generation_prompt=True)
                            + conversation[cut].plain_text + END_TOKEN + self._after_end)
                if longer != expected:
                    raise TemplateError("the chat template renders an assistant turn differently from what is "
                                        f"sampled after the generation prompt: {longer[-80:]!r} vs "
                                        f"{expected[-80:]!r}")


def _images(messages: Sequence[Message]) -> list[Image.Image]:
    return [part.image for message in messages for part in message.content if isinstance(part, ImagePart)]


def check_visual_parity(ids: Sequence[int], images: Sequence[Image.Image], records: Sequence[ImageRecord],
                        grids: Sequence[Sequence[int]], chat: ChatTokenizer, where: str) -> None:
    """Raise :class:`VisualParityError` (naming ``where`` and the image) unless the sequence holds the images its
    rollout recorded — as many, the same pixels, processed to the same ``grids`` now — each with its run of
    placeholder tokens."""
    if len(images) != len(records):
        raise VisualParityError(f"{where}: the rollout saw {len(records)} images, the forward pass was given "
                                f"{len(images)}")
    for index, (image, record, grid) in enumerate(zip(images, records, grids)):
        if image_digest(image) != record.digest:
            raise VisualParityError(f"{where}: image {index} is not the one the rollout saw (its pixels changed)")
        if tuple(int(v) for v in grid) != record.grid:
            raise VisualParityError(f"{where}: image {index} is processed to grid {tuple(grid)}, the rollout's was "
                                    f"{record.grid} (another image processor setting?)")
    try:
        check_images(ids, chat.image_token_id, [chat.token_count(grid) for grid in grids])
    except ImageTokenMismatch as error:
        raise VisualParityError(f"{where}: {error}") from None


def check_images(ids: Sequence[int], image_token_id: int, token_counts: Sequence[int]) -> None:
    """Raise :class:`ImageTokenMismatch` unless ``ids`` hold one run of placeholder tokens per image, of the
    image's length, in order (the trainer's door: nothing reaches the model otherwise).

    >>> check_images([1, 9, 9, 2, 9, 3], 9, [2, 1])
    >>> check_images([1, 9, 9, 2], 9, [2, 1])
    Traceback (most recent call last):
    ...
    trainers.tokens.ImageTokenMismatch: 1 runs of image tokens ([2]) for 2 images ([2, 1])
    """
    runs: list[int] = []
    previous = None
    for token in ids:
        if token == image_token_id:
            if previous == image_token_id:
                runs[-1] += 1
            else:
                runs.append(1)
        previous = token
    if runs != list(token_counts):
        raise ImageTokenMismatch(f"{len(runs)} runs of image tokens ({runs}) for {len(token_counts)} images "
                                 f"({list(token_counts)})")
