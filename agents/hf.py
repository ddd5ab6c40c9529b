"""A local Hugging Face vision-language model as a policy (Qwen2.5-VL and Qwen2-VL first), on CPU or GPU.

:class:`HFChatModel` turns conversations into model inputs with the tokenizer's own chat template and
generates; :class:`HFPolicy` keeps one conversation per environment and answers a whole batch in one padded
``generate`` call. ``pyvision serve`` puts an :class:`HFChatModel` behind an OpenAI-compatible endpoint.

Rendering (:meth:`HFChatModel.render`): the messages go through ``tokenizer.apply_chat_template`` with an
``{"type": "image"}`` part per image, and each image's single ``<|image_pad|>`` becomes as many as the
image processor's grid gives (``t * h * w / merge_size**2``) — what Qwen's processor does, without needing
its video processor (unavailable without torchvision). Models whose processor works are used
through ``AutoProcessor`` instead.

Example::

    >>> policy = HFPolicy("/tmp/tiny-qwen", max_new_tokens=64, temperature=0.0)   # doctest: +SKIP
    >>> env = gym.make("PyVision/Zoom-v0"); observation, info = env.reset(seed=0)  # doctest: +SKIP
    >>> policy.act(observation, info)                                              # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyvision_env.deprecation import renamed_keywords
from pyvision_env.messages import ImagePart, Message, TextPart
from pyvision_env.protocols import Protocol

from .base import ChatPolicy


class ModelLoadError(RuntimeError):
    """A model folder or name cannot be loaded (missing, not a model, no chat template)."""


NEUTRAL_GENERATION = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                      "eta_cutoff": 0.0, "min_new_tokens": 0}
"""What a model's ``generation_config.json`` may set that reshapes the distribution (Qwen2.5-VL's sets a
repetition penalty of 1.05, for one), set to no effect: transformers fills every unset option from that file."""


@dataclass
class Sampling:
    """Sampling parameters of a generation (``temperature`` 0: greedy). ``top_k`` 0 keeps every token, as in
    vLLM (-1 there). Only these shape a generation: the model's own ``generation_config.json`` does not, so the
    HF and vLLM backends sample from the same distribution (:data:`NEUTRAL_GENERATION`)."""

    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: Sequence[str] = ()
    """Generation stops after any of these strings (kept in the output, as vLLM's ``include_stop_str``)."""

    def generate_kwargs(self) -> dict[str, Any]:
        """``generate`` arguments. transformers reads an unset ``top_k`` as 50, so 0 is passed as 0 (off).

        >>> [Sampling(temperature=0.7, top_k=k).generate_kwargs()["top_k"] for k in (0, 5)]
        [0, 5]
        """
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, **NEUTRAL_GENERATION}
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class Generation:
    """One completion: its text, why it stopped and the token counts."""

    text: str
    finish_reason: str
    """``"stop"`` (end-of-turn token or a stop string) or ``"length"`` (``max_new_tokens`` reached)."""
    prompt_tokens: int
    completion_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


def template_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as Hugging Face chat-template input: text parts, an ``{"type": "image"}`` part per image,
    ``tool_calls`` where the message has them."""
    out = []
    for message in messages:
        parts = [{"type": "text", "text": part.text} if isinstance(part, TextPart) else {"type": "image"}
                 for part in message.content]
        entry: dict[str, Any] = {"role": message.role, "content": parts}
        if message.tool_calls:
            entry["tool_calls"] = [dict(call) for call in message.tool_calls]
        out.append(entry)
    return out


def takes_token_types(model: Any) -> bool:
    """Whether the model's forward takes ``mm_token_type_ids``: Qwen2-VL and Qwen2.5-VL compute the 3D rotary
    positions of image tokens from them, and without them give every token a 1D position — not what they were
    trained with (on the tiny model, logits move by up to 0.8)."""
    import inspect

    return "mm_token_type_ids" in inspect.signature(model.forward).parameters


def image_token_types(input_ids: Any, image_token_id: int) -> Any:
    """``mm_token_type_ids`` of ``input_ids``: 1 at image placeholders, 0 elsewhere.

    >>> import torch
    >>> image_token_types(torch.tensor([[5, 9, 9, 6]]), image_token_id=9).tolist()
    [[0, 1, 1, 0]]
    """
    return (input_ids == image_token_id).long()


class HFChatModel:
    """A chat VLM from a local folder: render conversations, generate completions (batched).

    Args:
        path: a model folder (``config.json``, tokenizer with a chat template, image processor).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or ``"auto"`` (CUDA when available).
        dtype: ``"auto"`` (bfloat16 on CUDA, float32 on CPU), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        max_context: prompts longer than this many tokens raise :class:`ValueError` (context overflow).
    """

    def __init__(self, path: str | os.PathLike, device: str = "auto", dtype: str = "auto",
                 max_context: int | None = None, seed: int | None = None) -> None:
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a model folder (no config.json); build a tiny one with "
                                 f"`pyvision make-tiny-model {path}`")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if dtype == "auto":
            dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        try:
            self.config = AutoConfig.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
            self.image_processor = AutoImageProcessor.from_pretrained(path)
            self.model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device)
        except (OSError, ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot load the model in {path}: {error}") from error
        self.model.eval()
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelLoadError(f"the tokenizer in {path} has no chat template: it cannot render conversations")
        self.name = path.name
        self.image_token = "<|image_pad|>"
        self.merge = int(getattr(getattr(self.config, "vision_config", None), "spatial_merge_size", 2))
        self.max_context = max_context or int(getattr(getattr(self.config, "text_config", self.config),
                                                       "max_position_embeddings", 32768))
        self.generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        self._torch = torch

    # --- rendering --------------------------------------------------------------------------------

    def template_messages(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        """The messages as chat-template input (an ``{"type": "image"}`` part per image)."""
        return template_messages(messages)

    def template_messages_with_images(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        """Like :meth:`template_messages`, with the images in their parts (a processor's own input)."""
        out = self.template_messages(messages)
        for entry, message in zip(out, messages):
            entry["content"] = [{"type": "image", "image": part.image} if isinstance(part, ImagePart) else item
                                for item, part in zip(entry["content"], message.content)]
        return out

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> tuple[str, list]:
        """``(prompt text with expanded image tokens, images in order)``."""
        text = self.tokenizer.apply_chat_template(self.template_messages(messages), tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
        images = [part.image.convert("RGB") for message in messages for part in message.content
                  if isinstance(part, ImagePart)]
        pieces = text.split(self.image_token)
        if len(pieces) - 1 != len(images):
            raise ValueError(f"the chat template rendered {len(pieces) - 1} image placeholders for {len(images)} "
                             "images")
        if not images:
            return text, images
        grids = self.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
        counts = (grids.prod(dim=1) // self.merge**2).tolist()
        return pieces[0] + "".join(self.image_token * n + rest for n, rest in zip(counts, pieces[1:])), images

    def inputs(self, conversations: Sequence[Sequence[Message]]) -> dict[str, Any]:
        """Padded model inputs for a batch of conversations (left padding, images of all in order)."""
        rendered = [self.render(messages) for messages in conversations]
        batch = self.tokenizer([text for text, _ in rendered], return_tensors="pt", padding=True)
        longest = int(batch["attention_mask"].sum(dim=1).max())
        if longest > self.max_context:
            raise ValueError(f"the prompt is {longest} tokens long; the model's context holds {self.max_context}")
        images = [image for _, imgs in rendered for image in imgs]
        if images:
            batch.update(self.image_processor(images=images, return_tensors="pt"))
        if takes_token_types(self.model):
            batch["mm_token_type_ids"] = image_token_types(batch["input_ids"],
                                                           self.tokenizer.convert_tokens_to_ids(self.image_token))
        return {key: value.to(self.device) for key, value in batch.items()}

    # --- generation -------------------------------------------------------------------------------

    def generate(self, conversations: Sequence[Sequence[Message]], sampling: Sampling | None = None
                 ) -> list[Generation]:
        """One completion per conversation, in one batched ``generate`` call."""
        sampling = sampling or Sampling()
        inputs = self.inputs(conversations)
        prompt_length = inputs["input_ids"].shape[1]
        kwargs = sampling.generate_kwargs()
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        end = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        with self._torch.no_grad():
            output = self.model.generate(**inputs, **kwargs, pad_token_id=self.tokenizer.pad_token_id,
                                         eos_token_id=end)
        results = []
        for row, mask in zip(output, inputs["attention_mask"]):
            new = row[prompt_length:].tolist()
            if self.tokenizer.pad_token_id in new:
                new = new[:new.index(self.tokenizer.pad_token_id)]
            finished = end in new
            if finished:
                new = new[:new.index(end)]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            stopped = any(text.endswith(s) for s in sampling.stop)
            reason = "stop" if finished or stopped else "length"
            results.append(Generation(text, reason, int(mask.sum()), len(new) + int(finished)))
        return results


@renamed_keywords(max_images="context_images", max_visual_tokens="context_visual_tokens")
class HFPolicy(ChatPolicy):
    """A local VLM answering in the environment's protocol; one conversation per environment slot, a batch of
    slots in one ``generate`` call.

    Args:
        model: an :class:`HFChatModel` or a model folder.
        protocol: the environment's protocol (how replies enter the conversation).
        context_images / context_visual_tokens: the conversation's image budget (see :class:`Conversation`).
        **sampling: fields of :class:`Sampling` (``max_new_tokens``, ``temperature``, ``top_p``, ``stop``).
    """

    name = "hf"

    def __init__(self, model: HFChatModel | str | os.PathLike, *, protocol: Protocol | str = "pyvision",
                 device: str = "auto", seed: int | None = None, context_images: int | None = None,
                 context_visual_tokens: int | None = None, **sampling: Any) -> None:
        super().__init__(protocol, context_images, context_visual_tokens)
        self.model = model if isinstance(model, HFChatModel) else HFChatModel(model, device=device, seed=seed)
        self.sampling = Sampling(**sampling)

    def complete_batch(self, conversations: list[list[Message]]) -> list[tuple[str, dict[str, Any]]]:
        return [(g.text, {"prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens,
                          "finish_reason": g.finish_reason}) for g in self.model.generate(conversations, self.sampling)]
