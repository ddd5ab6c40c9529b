"""Checkpoints that a killed run resumes from — on the same number of ranks or on another — losing nothing but
the unfinished update.

``output_dir/checkpoints/step-000010/`` is a loadable model folder (``save_pretrained`` of the whole weights,
with the tokenizer and image processor: evaluate it or train from it as any model), plus

* ``optimizer/`` — the optimizer's state in torch.distributed.checkpoint's sharded format: each rank writes its
  own shards, and a run on any number of ranks reads them back resharded;
* ``rng/rank-N.pt`` — each rank's random states (Python, numpy, torch);
* ``adapters.safetensors`` — a LoRA run's adapters (the model folder holds the merged weights);
* ``trainer_state.pt`` — scheduler, step and data position, written last: a folder without it is incomplete.

A checkpoint is written into a temporary folder and renamed into place, so a kill during saving leaves the
previous one intact; only the newest ``keep`` are kept. Every rank calls :func:`save_checkpoint` and
:func:`load_checkpoint` (they gather and scatter shards); rank 0 writes the shared files. On several machines
``output_dir`` must be a shared file system.

Example::

    save_checkpoint(run_dir, step, policy, optimizer, scheduler, {"sampler": sampler.state()})
    state = load_checkpoint(latest_checkpoint(run_dir), policy, optimizer, scheduler)
    state["step"], state["extra"]["sampler"]
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .distributed import Ranks, full_state_dict, is_sharded, model_class
from .lora import adapter_weights, merged_weights
from .modeling import PolicyModel

STATE_FILE = "trainer_state.pt"
ADAPTER_FILE = "adapters.safetensors"
OPTIMIZER_DIR = "optimizer"
RNG_DIR = "rng"


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    folder = Path(run_dir) / "checkpoints"
    done = sorted(p for p in folder.glob("step-*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def rng_state() -> dict[str, Any]:
    import torch

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(run_dir: str | os.PathLike, step: int, policy: PolicyModel, optimizer: Any, scheduler: Any,
                    extra: dict[str, Any], keep: int = 2, ranks: Ranks | None = None) -> Path:
    """Write the checkpoint of ``step`` atomically and prune older ones; returns its folder."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    ranks = ranks or Ranks()
    final = checkpoint_dir(run_dir, step)
    staging = final.parent / f".{final.name}.partial"
    if ranks.is_main:
        shutil.rmtree(staging, ignore_errors=True)
        (staging / RNG_DIR).mkdir(parents=True)
    ranks.barrier()
    weights = full_state_dict(policy.model)
    if ranks.is_main:
        if policy.lora_scaling:
            save_file({name: value.contiguous() for name, value in adapter_weights(weights).items()},
                      staging / ADAPTER_FILE)
            weights = dict(merged_weights(weights, policy.lora_scaling))
        policy.model.save_pretrained(staging, state_dict=weights)
        for processor in policy.processors:
            processor.save_pretrained(staging)
    del weights
    with _one_process_is_meant(ranks):
        dcp.save({"optimizer": get_optimizer_state_dict(policy.model, optimizer)},
                 checkpoint_id=staging / OPTIMIZER_DIR, no_dist=ranks.size == 1)
    torch.save(rng_state(), staging / RNG_DIR / f"rank-{ranks.rank}.pt")
    ranks.barrier()
    if ranks.is_main:
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "ranks": ranks.size, "extra": extra},
                   staging / STATE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        older = sorted(p for p in final.parent.glob("step-*") if p != final and p.name < final.name)
        for stale in older[:max(0, len(older) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
    ranks.barrier()
    return final


def load_checkpoint(folder: str | os.PathLike, policy: PolicyModel, optimizer: Any, scheduler: Any,
                    ranks: Ranks | None = None) -> dict[str, Any]:
    """Restore weights (a LoRA policy: its adapters), optimizer, scheduler and random states from ``folder``
    (written by any number of ranks); returns the saved state (``step``, ``extra``). A rank the checkpoint has
    no random states for (the run grew) seeds its generators from the step and its rank."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    ranks = ranks or Ranks()
    folder = Path(folder)
    model = policy.model
    state = torch.load(folder / STATE_FILE, weights_only=False)
    weights = {}
    if ranks.is_main or not is_sharded(model):
        weights = _saved_weights(folder, policy)
    if is_sharded(model):
        set_model_state_dict(model, weights, options=StateDictOptions(
            full_state_dict=True, broadcast_from_rank0=True, strict=not policy.lora_scaling))
    else:
        model.load_state_dict(weights, strict=not policy.lora_scaling)
    del weights
    scheduler.load_state_dict(state["scheduler"])
    if "optimizer" in state:  # written by a version before sharded checkpoints, in one process
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        return state
    optimizer_state = get_optimizer_state_dict(model, optimizer)
    with _one_process_is_meant(ranks):
        dcp.load({"optimizer": optimizer_state}, checkpoint_id=folder / OPTIMIZER_DIR, no_dist=ranks.size == 1)
    set_optimizer_state_dict(model, optimizer, optimizer_state)
    mine = folder / RNG_DIR / f"rank-{ranks.rank}.pt"
    if mine.is_file():
        set_rng_state(torch.load(mine, weights_only=False))
    else:
        seed = int(state["step"]) * 1_000_003 + ranks.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
    return state


@contextlib.contextmanager
def _one_process_is_meant(ranks: Ranks) -> Iterator[None]:
    """Without a process group, torch.distributed.checkpoint warns that it assumes one process: it is right."""
    with warnings.catch_warnings():
        if ranks.size == 1:
            warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _saved_weights(folder: Path, policy: PolicyModel) -> dict[str, Any]:
    """The checkpoint's weights by the trained model's names: a LoRA policy's adapters (all of them), or the
    whole model."""
    from safetensors.torch import load_file

    if not policy.lora_scaling:
        saved = model_class(policy.model).from_pretrained(folder)  # the saved key layout
        weights = saved.state_dict()
        del saved
        return weights
    if not (folder / ADAPTER_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no LoRA adapters ({ADAPTER_FILE}): it was written by a run "
                                "without model.lora_rank")
    weights = load_file(folder / ADAPTER_FILE)
    expected = set(adapter_weights(dict(policy.model.named_parameters())))
    if set(weights) != expected:
        raise ValueError(f"{folder / ADAPTER_FILE} holds other adapters than the model's (rank or targets "
                         f"changed?): {len(weights)} saved, {len(expected)} expected")
    return weights
