"""LoRA adapters (peft) on the policy: only the adapters train, the rest of the model is frozen.

``model.lora_rank > 0`` puts an adapter on the model's linear layers (``model.lora_targets``: peft's
``all-linear`` by default, the output projection excepted), not on the vision tower's when
``model.freeze_vision`` is set. Frozen weights are kept in the compute dtype (they never change, so they need no
master copy: Qwen2.5-VL-7B's take 15 GB in bfloat16 instead of 30 GB) and the adapters in ``model.master_dtype``.
The KL reference is the same model with its adapters switched off (:func:`adapters_off`), so no second copy is
kept. Generation engines and exported checkpoints get the merged weights (:func:`merged_weights`:
``W + alpha / rank · B A`` under the model's own names); a checkpoint also keeps the adapters themselves
(:func:`adapter_weights`) to resume from.

Example::

    add_adapters(model, rank=16, alpha=32, targets="all-linear", train_vision=False)
    with adapters_off(model):
        reference_logits = model(**inputs).logits
    plain = dict(merged_weights(model.state_dict(), scaling=32 / 16))  # loadable by a model without adapters
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

ADAPTER = "default"
"""peft's name for the one adapter."""
ADAPTER_MARK = ".lora_"


def add_adapters(model: Any, rank: int, alpha: float, targets: str, train_vision: bool,
                 frozen_dtype: Any = None, adapter_dtype: Any = None, seed: int = 0) -> None:
    """Inject LoRA adapters of ``rank`` into ``model`` in place (its class stays the same) and freeze everything
    else; frozen weights are cast to ``frozen_dtype`` and adapters to ``adapter_dtype`` when given (peft makes
    them in their layer's dtype). ``targets``: peft's ``target_modules`` (a regex or ``all-linear``). The
    adapters' random start depends on ``seed`` only, so that data-parallel ranks (whose generators differ) build
    the same adapters."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"a LoRA rank must be positive, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                        exclude_modules=None if train_vision else r".*\.visual\..*")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)
    for name, parameter in model.named_parameters():
        trainable = ADAPTER_MARK in name
        parameter.requires_grad_(trainable)
        cast = adapter_dtype if trainable else frozen_dtype
        if cast is not None:
            parameter.data = parameter.data.to(cast)
    if not has_adapters(model):
        raise ValueError(f"model.lora_targets {targets!r} matched no layer of {type(model).__name__}")


def has_adapters(model: Any) -> bool:
    return any(ADAPTER_MARK in name for name, _ in model.named_parameters())


def adapter_modules(model: Any) -> list[Any]:
    """The adapters' own modules (``lora_A`` and ``lora_B`` of every adapted layer); none without adapters
    (peft, then, need not be installed)."""
    if not has_adapters(model):
        return []
    from peft.tuners.lora import LoraLayer

    return [module for layer in model.modules() if isinstance(layer, LoraLayer)
            for module in (layer.lora_A[ADAPTER], layer.lora_B[ADAPTER])]


@contextlib.contextmanager
def adapters_off(model: Any) -> Iterator[Any]:
    """The model without its adapters (the initial policy) inside the block."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [module for module in model.modules() if isinstance(module, BaseTunerLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def merged_weights(state: Mapping[str, Any], scaling: float,
                   gather: Callable[[Any], Any] = lambda tensor: tensor) -> Iterator[tuple[str, Any]]:
    """The weights of the model without adapters, one at a time: each adapted layer's ``W + scaling · B A`` (in
    ``W``'s dtype) under the layer's own name; the adapters' entries dropped. ``gather`` makes a whole tensor of
    each entry used (a sharded model's :func:`~trainers.distributed.gathered`).

    >>> import torch
    >>> state = {"fc.base_layer.weight": torch.zeros(2, 2), "fc.base_layer.bias": torch.ones(2),
    ...          "fc.lora_A.default.weight": torch.ones(1, 2), "fc.lora_B.default.weight": torch.ones(2, 1)}
    >>> merged = dict(merged_weights(state, scaling=0.5))
    >>> sorted(merged), merged["fc.weight"].tolist()
    (['fc.bias', 'fc.weight'], [[0.5, 0.5], [0.5, 0.5]])
    """
    for name, value in state.items():
        if ADAPTER_MARK in name:
            continue
        value = gather(value)
        if ".base_layer." in name:
            layer, _, field = name.rpartition(".base_layer.")
            if field == "weight":
                down = gather(state[f"{layer}.lora_A.{ADAPTER}.weight"])
                up = gather(state[f"{layer}.lora_B.{ADAPTER}.weight"])
                value = (value.float() + scaling * (up.float() @ down.float())).to(value.dtype)
            name = f"{layer}.{field}"
        yield name, value


def adapter_weights(state: Mapping[str, Any]) -> dict[str, Any]:
    """Only the adapters' entries of a state dict."""
    return {name: value for name, value in state.items() if ADAPTER_MARK in name}
