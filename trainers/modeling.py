"""Loading the policy model for training, shared by the SFT and RL trainers.

The weights (and so their gradients and the optimizer's state) are kept in ``model.master_dtype`` (float32 by
default: master weights), and forward passes run in ``model.dtype`` under autocast (bfloat16 on CUDA).

Example::

    policy = load_policy(ModelConfig(path="runs/tiny"))
    policy.model, policy.chat.tokenizer, policy.trainable_parameters
    with policy.autocast():
        logits = policy.model(**inputs).logits
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ModelConfig
from .tokens import ChatTokenizer

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class PolicyModel:
    model: Any
    chat: ChatTokenizer
    device: str
    compute_dtype: str = "float32"
    """The dtype of forward passes (:meth:`autocast`); the weights are in the model's own dtype."""
    sharded: bool = False
    """The model is sharded over data-parallel ranks (:func:`~trainers.distributed.shard_model`), which casts
    the weights to :attr:`compute_dtype` itself."""
    lora_scaling: float | None = None
    """The adapters' scale when the model trains LoRA adapters (:mod:`trainers.lora`), else None."""

    def autocast(self) -> Any:
        """Run forward passes in :attr:`compute_dtype` (a no-op where it is the weights' dtype, or where the
        sharded model casts them). Autocast's cache of cast weights is off: it would keep a copy of every weight
        in the compute dtype until the context ends (2 bytes per parameter in bfloat16, 16.6 GB for the 7B, even
        under gradient checkpointing), and it saves work only for a weight used twice in one pass."""
        import contextlib

        import torch

        dtype = getattr(torch, self.compute_dtype)
        if self.sharded or all(parameter.dtype == dtype for parameter in self.model.parameters()):
            return contextlib.nullcontext()
        return torch.autocast(self.device.split(":")[0], dtype=dtype, cache_enabled=False)

    @property
    def processors(self) -> tuple[Any, Any]:
        """What a checkpoint saves beside the weights."""
        return self.chat.tokenizer, self.chat.image_processor

    @property
    def trainable_parameters(self) -> list[Any]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def plain_weights(self, dtype: Any = None) -> Iterator[tuple[str, Any]]:
        """The whole weights under the model's own names, adapters merged, one tensor at a time (in ``dtype``
        if given): what a generation engine loads. A sharded model gathers each tensor from its shards as it
        goes, so every rank must consume the iterator to its end, and no rank ever holds the whole model twice.
        Example: ``backend.sync_weights(policy.plain_weights(torch.bfloat16), timeout=300)``."""
        from .distributed import gathered
        from .lora import merged_weights

        state = self.model.state_dict()
        weights = (merged_weights(state, self.lora_scaling, gathered) if self.lora_scaling
                   else ((name, gathered(value)) for name, value in state.items()))
        for name, value in weights:
            yield name, value.to(dtype) if dtype is not None and value.is_floating_point() else value


def load_policy(config: ModelConfig, device: str | None = None, weights: bool = True) -> PolicyModel:
    """The model, tokenizer and image processor of ``config.path`` in training mode, on ``device`` (default:
    ``config.device``); the chat template is checked for token-in / token-out use
    (:meth:`ChatTokenizer.check_template`).

    The weights are read in ``model.master_dtype``, or with LoRA straight in the compute dtype (they stay frozen
    in it: no float32 copy of a 7B model is ever made). ``weights=False`` builds the same model on the meta
    device, with nothing read and no memory taken: a sharded model whose weights the main rank sends
    (:func:`~trainers.distributed.load_from_main`); the start-up canary is then the caller's to run."""
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from agents.hf import ModelLoadError, takes_token_types

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    path = Path(config.path)
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model.path {str(path)!r} is not a model folder (no config.json); build a tiny one "
                             f"with `pyvision make-tiny-model {path}`")
    device = device or config.device
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    for name, value in (("model.dtype", dtype), ("model.master_dtype", config.master_dtype)):
        if value not in DTYPES:
            raise ValueError(f"{name} must be one of {', '.join(DTYPES)} (or auto for model.dtype), got {value!r}")
    stored_dtype = getattr(torch, dtype if config.lora_rank else config.master_dtype)
    if weights:
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=stored_dtype).to(device)
    else:
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(path), dtype=stored_dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    image_processor = AutoImageProcessor.from_pretrained(path)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelLoadError(f"the tokenizer in {path} has no chat template")
    merge = int(getattr(getattr(model.config, "vision_config", None), "spatial_merge_size", 2))
    chat = ChatTokenizer(tokenizer, image_processor, merge, token_types=takes_token_types(model))
    chat.check_template()
    if config.freeze_vision:
        for name, parameter in model.named_parameters():
            if ".visual." in f".{name}":
                parameter.requires_grad_(False)
    if config.lora_rank:
        from .lora import add_adapters

        add_adapters(model, config.lora_rank, config.lora_alpha, config.lora_targets,
                     train_vision=not config.freeze_vision, frozen_dtype=getattr(torch, dtype),
                     adapter_dtype=getattr(torch, config.master_dtype))
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        if config.lora_rank:  # the frozen embeddings' outputs must carry gradients into checkpointed layers
            model.enable_input_require_grads()
    model.train()
    policy = PolicyModel(model, chat, device, dtype,
                         lora_scaling=config.lora_alpha / config.lora_rank if config.lora_rank else None)
    if weights:
        check_sees_pixels(policy)
    return policy


def check_sees_pixels(policy: PolicyModel) -> None:
    """The start-up canary: the vision tower must give a blank image and a real one different features, or the
    model would train on images it cannot see (broken or missing vision weights, a processor that blanks them).
    Raises :class:`~trainers.tokens.VisualParityError`; a model without ``get_image_features`` is not checked."""
    import numpy as np
    import torch
    from PIL import Image

    from .backends import PixelCache
    from .tokens import VisualParityError

    if not hasattr(policy.model, "get_image_features"):
        log.warning("%s has no get_image_features: its vision tower is not checked", type(policy.model).__name__)
        return
    pixels = PixelCache(policy.chat.image_processor)
    real = Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), dtype=np.uint8))
    features = []
    with torch.no_grad(), policy.autocast():
        for image in (Image.new("RGB", (112, 112), "white"), real):
            inputs = {key: value.to(policy.device) for key, value in pixels([image]).items()}
            out = policy.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                  image_grid_thw=inputs["image_grid_thw"])
            out = getattr(out, "pooler_output", out)
            features.append(torch.cat(list(out)) if isinstance(out, (list, tuple)) else out)
    if torch.allclose(features[0].float(), features[1].float()):
        raise VisualParityError("the vision tower gives a blank image and a real one the same features: the model "
                                "cannot see pixels (check its vision weights and image processor)")


def start_run(config: Any, rank: int = 0) -> Path:
    """Create the run folder of a trainer config, write its settings there (``config.json``, by rank 0) and seed
    Python, numpy and torch with ``config.seed`` (offset by the rank, so that ranks sample differently); returns
    the folder."""
    import json
    import random

    import numpy as np
    import torch

    from .config import to_dict

    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (run_dir / "config.json").write_text(json.dumps(to_dict(config), indent=2))
    seed = config.seed + 1_000_003 * rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return run_dir


def make_optimizer(policy: PolicyModel, lr: float, weight_decay: float, warmup_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters and a linear warm-up schedule (constant after it)."""
    import torch

    optimizer = torch.optim.AdamW(policy.trainable_parameters, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0)
    return optimizer, scheduler
