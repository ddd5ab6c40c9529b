"""Checkpoints that a killed run resumes from, losing nothing but the unfinished update.

``output_dir/checkpoints/step-000010/`` holds the model as a loadable folder (``save_pretrained`` with its
tokenizer and image processor) and ``trainer_state.pt``: optimizer, scheduler, the random states of Python,
numpy and torch, the step and the data position. A checkpoint is written into a temporary folder and renamed
into place, so a kill during saving leaves the previous one intact; only the newest ``keep`` are kept.

Example::

    save_checkpoint(run_dir, step, model, processors, optimizer, scheduler, {"sampler": sampler.state()})
    state = load_checkpoint(latest_checkpoint(run_dir), model, optimizer, scheduler)
    state["step"], state["extra"]["sampler"]
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

STATE_FILE = "trainer_state.pt"


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


def save_checkpoint(run_dir: str | os.PathLike, step: int, model: Any, processors: Sequence[Any], optimizer: Any,
                    scheduler: Any, extra: dict[str, Any], keep: int = 2) -> Path:
    """Write the checkpoint of ``step`` atomically and prune older ones; returns its folder."""
    import torch

    final = checkpoint_dir(run_dir, step)
    staging = final.parent / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    for processor in processors:
        processor.save_pretrained(staging)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state(), "extra": extra}, staging / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    older = sorted(p for p in final.parent.glob("step-*") if p != final and p.name < final.name)
    for stale in older[:max(0, len(older) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(folder: str | os.PathLike, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and random states from ``folder``; returns the saved state
    (``step``, ``extra``)."""
    import torch

    folder = Path(folder)
    saved = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype)  # the saved key layout
    model.load_state_dict(saved.state_dict())
    del saved
    state = torch.load(folder / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state
