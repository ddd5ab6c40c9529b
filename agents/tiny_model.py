"""A tiny random Qwen2.5-VL (or Qwen2-VL) built offline, for tests and CPU demos (``pyvision make-tiny-model OUT``).

Everything is made here, nothing is downloaded:

* a byte-level BPE tokenizer trained on the project's own prompts, code and answers, with the Qwen special
  tokens (``<|im_start|>``, ``<|im_end|>``, ``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``,
  ``<|video_pad|>``, ``<|endoftext|>``) and a chat template in Qwen2-VL's wire format;
* a shrunken ``Qwen2_5_VLConfig`` (hidden size 64, 2 layers, a 2-block vision tower: about 0.2 M
  parameters) with random weights from ``seed``;
* the PIL image processor (transformers' torchvision-based one is unusable without torchvision), saved on
  its own: a combined ``Qwen2_5_VLProcessor`` cannot be saved without a video processor (which needs torchvision).

The folder loads with ``from_pretrained`` and generates (random text, deterministically for a seed).

Example::

    >>> path = make_tiny_model("/tmp/tiny-qwen")                                  # doctest: +SKIP
    >>> model, tokenizer, image_processor = load_tiny_model(path)                 # doctest: +SKIP
    >>> processor = load_tiny_processor(path)          # one processor object, for trainers that want one
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>")

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's chat format: a default system turn, ``<|im_start|>role`` blocks, one ``<|image_pad|>`` per image
between vision markers (the processor expands it to the image's token count)."""

MIN_PIXELS, MAX_PIXELS = 56 * 56, 448 * 448
"""The tiny model's image processor budget (small images keep CPU generation fast)."""


def training_corpus() -> list[str]:
    """Text the tokenizer learns its merges from: the protocols' prompts, the suites' questions and the
    scripted policies' code."""
    from pyvision_env.protocols import PROTOCOLS

    from .scripted import HELPER_SOURCE, VIDEO_HELPER_SOURCE

    texts = [protocol().system_prompt for protocol in PROTOCOLS.values()]
    texts += [HELPER_SOURCE, VIDEO_HELPER_SOURCE]
    texts += ["<code>\n```python\nplt.imshow(image_clue_0.crop((10, 20, 110, 120))); plt.show()\n```\n</code>",
              "<answer>\\boxed{42}</answer>", "How many red circles are in the image? Answer with a number."]
    return texts * 4


FAMILIES = ("qwen2.5-vl", "qwen2-vl")


def make_tiny_model(out: str | os.PathLike, *, family: str = "qwen2.5-vl", seed: int = 0, vocab_size: int = 1024,
                    hidden_size: int = 64, layers: int = 2, vision_depth: int = 2, corpus: Sequence[str] = (),
                    phrase_tokens: bool = False, init_std: float = 0.02) -> Path:
    """Build the tiny model (``family``: ``"qwen2.5-vl"`` or ``"qwen2-vl"``), its tokenizer and image processor
    into ``out`` (created); returns its path.

    ``corpus``: more text for the tokenizer to learn merges from (a task's prompts and code, so that they take
    few tokens). ``phrase_tokens``: let merges cross spaces and punctuation (numbers stay whole), so that the
    corpus's fixed phrases become single tokens — the CPU demo's conversations shrink about 3x.
    ``init_std``: standard deviation of the random weights (transformers' default 0.02). A tiny model trained
    for a few hundred steps learns to attend to one token far back — to copy a number from a tool's output —
    many times sooner from 0.08: at 0.02 its attention starts almost uniform and the gradient that would
    sharpen it is diluted over the whole context."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    if phrase_tokens:
        bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=False),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([*training_corpus(), *corpus], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.save(str(out / "tokenizer.json"))
    # Qwen2Tokenizer re-splits text with Qwen's word regex; a phrase tokenizer must load as the file says.
    tokenizer_class = PreTrainedTokenizerFast if phrase_tokens else Qwen2Tokenizer
    tokenizer = tokenizer_class(tokenizer_file=str(out / "tokenizer.json"), eos_token="<|im_end|>",
                                pad_token="<|endoftext|>", unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
    heads = max(2, hidden_size // 16)
    text = {"vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": heads // 2,
            "max_position_embeddings": 32768, "tie_word_embeddings": True, "initializer_range": init_std, "bos_token_id": None,
            "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}}
    vision = {"depth": vision_depth, "num_heads": 2, "patch_size": 14, "spatial_merge_size": 2,
              "temporal_patch_size": 2}
    if family == "qwen2.5-vl":
        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=hidden_size, window_size=112,
                      fullatt_block_indexes=[vision_depth - 1])
        config_class, model_class = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        vision.update(embed_dim=32, hidden_size=hidden_size, mlp_ratio=2)
        config_class, model_class = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    config = config_class(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                          video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                          vision_end_token_id=ids["<|vision_end|>"], initializer_range=init_std)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).save_pretrained(out)
    return out


def load_tiny_model(path: str | os.PathLike):
    """``(model, tokenizer, image_processor)`` of a folder made by :func:`make_tiny_model`."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a model folder (no config.json); make one with "
                                f"`pyvision make-tiny-model {path}`")
    return (AutoModelForImageTextToText.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path),
            Qwen2VLImageProcessorPil.from_pretrained(path))


def load_tiny_processor(path: str | os.PathLike, chat_template: str | None = None):
    """A ``Qwen2_5_VLProcessor`` of a folder made by :func:`make_tiny_model`, for libraries that take one processor
    object (TRL): the tokenizer and the PIL image processor, with no video processor (transformers' needs
    torchvision), and images returned as torch tensors as the torchvision processor returns them.
    ``chat_template`` replaces the folder's (e.g. a template that renders tool calls)."""
    from transformers import AutoTokenizer, Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = Qwen2VLImageProcessorPil.from_pretrained(path, return_tensors="pt")
    return ImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                              chat_template=chat_template or tokenizer.chat_template)
