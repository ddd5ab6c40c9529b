"""A tiny random text-only Qwen2 (``Qwen2ForCausalLM``) built offline, for engines that cannot run the tiny
Qwen2.5-VL on CPU (vLLM: its Qwen2-VL processors need torchvision, which does not install beside the CPU torch).

It has the tokenizer and chat template of :func:`agents.tiny_model.make_tiny_model` (the same byte-level BPE
with the Qwen special tokens, taken from a tiny VL model built next to it), hidden size 64, 2 layers, head size
32 (vLLM's CPU attention has no kernel for 16), an untied output head (greedy text varies instead of repeating
the last token): about 0.2 M parameters, random from ``seed``. It cannot see images: give it text, or let a
policy replace images by a note (``VLLMPolicy(..., context_images=0)``).

Example::

    >>> path = make_tiny_text_model("/tmp/tiny-qwen2-text")                     # doctest: +SKIP
    >>> policy = VLLMPolicy(str(path), context_images=0, max_model_len=2048)           # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def make_tiny_text_model(out: str | os.PathLike, *, seed: int = 0, vocab_size: int = 1024, hidden_size: int = 64,
                         layers: int = 2, max_position_embeddings: int = 4096) -> Path:
    """Build the tiny text model and its tokenizer into ``out`` (created, ``save_pretrained`` layout); returns
    its path."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from .tiny_model import make_tiny_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:  # the VL model's tokenizer, built by its own code
        tokenizer = AutoTokenizer.from_pretrained(make_tiny_model(scratch, vocab_size=vocab_size, layers=1,
                                                                  vision_depth=1))
    end, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    heads = max(1, hidden_size // 32)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=1,
                         max_position_embeddings=max_position_embeddings, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=end, pad_token_id=pad)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).eval()
    model.generation_config.eos_token_id = end
    model.generation_config.pad_token_id = pad
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
