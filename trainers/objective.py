"""The policy-gradient objective: batches of trajectories, token log-probs, and the clipped GRPO loss.

* :func:`collate` pads trajectories into model inputs (right padding) with their loss masks, old log-probs and
  per-token advantages, after checking every trajectory's image placeholders against its images; :func:`pack`
  puts them back to back in one row instead, without padding (:func:`rows` and :func:`lay_out` go between
  per-trajectory values and either layout);
* :func:`sequence_logprobs` is the log-prob of every token given the ones before it, under
  ``softmax(logits / temperature)`` — the same quantity the samplers record — optionally a chunk of positions at
  a time so that long sequences never hold their full vocabulary logits;
* :func:`grpo_loss` is the clipped surrogate with separate low/high clip ranges (DAPO's "clip-higher"),
  averaged over all loss tokens of the mini-batch (token-mean), with an optional KL term to a reference policy
  (the k3 estimator) and an optional truncated importance-sampling correction for the sampler's mismatch.

Example::

    batch = collate(trajectories, advantages, chat, pixels)
    logprobs = sequence_logprobs(model, batch, temperature=1.0)
    loss, stats = grpo_loss(logprobs, batch, clip_low=0.2, clip_high=0.28, token_count=batch["loss_mask"].sum())
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from .backends import PixelCache, token_logprobs
from .rollout import Trajectory
from .tokens import ChatTokenizer, check_visual_parity

MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw", "mm_token_type_ids")


def collate(trajectories: Sequence[Trajectory], advantages: Sequence[float], chat: ChatTokenizer,
            pixels: PixelCache) -> dict[str, Any]:
    """Model inputs plus ``loss_mask``, ``old_logprobs`` (the sampler's) and ``advantages`` (one value per
    trajectory, spread over its tokens), right-padded to the longest trajectory, and the trajectories'
    ``lengths``. Every trajectory's images must be the ones its rollout saw, processed to the same grids, each
    with its placeholders (:func:`~trainers.tokens.check_visual_parity`), or the batch is refused."""
    import torch

    batch = _checked_pixels(trajectories, chat, pixels)
    lengths = batch["lengths"]
    shape = (len(trajectories), max(lengths))
    batch.update({"input_ids": torch.full(shape, chat.pad_token_id, dtype=torch.long),
                  "attention_mask": torch.zeros(shape, dtype=torch.long), "loss_mask": torch.zeros(shape),
                  "old_logprobs": torch.zeros(shape), "advantages": torch.zeros(shape)})
    for row, (trajectory, advantage, n) in enumerate(zip(trajectories, advantages, lengths)):
        batch["input_ids"][row, :n] = torch.tensor(trajectory.ids)
        batch["attention_mask"][row, :n] = 1
        batch["loss_mask"][row, :n] = torch.tensor(trajectory.loss_mask, dtype=torch.float)
        batch["old_logprobs"][row, :n] = torch.tensor(trajectory.logprobs)
        batch["advantages"][row, :n] = float(advantage)
    batch.update(chat.token_type_inputs(batch["input_ids"]))
    return batch


def pack(trajectories: Sequence[Trajectory], advantages: Sequence[float], chat: ChatTokenizer, pixels: PixelCache,
         rope_index: Callable[..., Any] | None = None) -> dict[str, Any]:
    """What :func:`collate` gives, as one row of the trajectories back to back, without padding: each
    trajectory's positions restart at 0 and the model keeps the trajectories apart by them (transformers builds
    the block-causal mask from ``position_ids`` when there is no ``attention_mask``: SDPA, eager and
    FlashAttention 2). A trajectory, and so an image with its placeholders, is never split.

    ``rope_index(input_ids, mm_token_type_ids, image_grid_thw)``: the ``(3, 1, n)`` positions of one trajectory
    with images (Qwen2-VL and Qwen2.5-VL: the first output of ``model.model.get_rope_index``), for a model with
    ``chat.token_types``; positions are then ``(4, 1, L)``, text positions first, as those models take packed
    inputs. Without it they are 1D.
    """
    import torch

    batch = _checked_pixels(trajectories, chat, pixels)
    grids = batch["image_grid_thw"] if "image_grid_thw" in batch else torch.zeros((0, 3), dtype=torch.long)
    columns: dict[str, list[Any]] = defaultdict(list)
    for trajectory, advantage in zip(trajectories, advantages):
        ids = torch.tensor([trajectory.ids])
        columns["input_ids"].append(ids)
        columns["loss_mask"].append(torch.tensor([trajectory.loss_mask], dtype=torch.float))
        columns["old_logprobs"].append(torch.tensor([trajectory.logprobs]))
        columns["advantages"].append(torch.full(ids.shape, float(advantage)))
        text = torch.arange(ids.shape[1]).view(1, 1, -1)
        if rope_index is not None and chat.token_types:
            mine, grids = grids[:len(trajectory.images)], grids[len(trajectory.images):]
            spatial = rope_index(ids, chat.token_type_inputs(ids)["mm_token_type_ids"], mine) if len(mine) else \
                text.expand(3, 1, -1)
            columns["position_ids"].append(torch.cat([text, spatial]))
        else:
            columns["position_ids"].append(text[0])
    batch.update({key: torch.cat(parts, dim=-1) for key, parts in columns.items()})
    batch.update(chat.token_type_inputs(batch["input_ids"]))
    return batch


def rows(values: Any, batch: dict[str, Any]) -> list[Any]:
    """Each trajectory's entries of a ``(rows, length)`` tensor laid out as ``batch`` (padded or packed)."""
    if "position_ids" in batch:
        return list(values[0].split(batch["lengths"]))
    return [values[row, :n] for row, n in enumerate(batch["lengths"])]


def lay_out(per_trajectory: Sequence[Any], batch: dict[str, Any]) -> Any:
    """The inverse of :func:`rows`: per-trajectory 1D tensors laid out as ``batch`` (zeros in the padding)."""
    import torch

    if "position_ids" in batch:
        return torch.cat(list(per_trajectory))[None]
    out = torch.zeros(batch["input_ids"].shape)
    for row, values in enumerate(per_trajectory):
        out[row, :len(values)] = values
    return out


def _checked_pixels(trajectories: Sequence[Trajectory], chat: ChatTokenizer, pixels: PixelCache) -> dict[str, Any]:
    """The trajectories' pixel inputs and ``lengths``, after the visual parity check of each trajectory."""
    batch = pixels([image for trajectory in trajectories for image in trajectory.images])
    grids = batch["image_grid_thw"].tolist() if "image_grid_thw" in batch else []
    for trajectory in trajectories:
        mine, grids = grids[:len(trajectory.images)], grids[len(trajectory.images):]
        check_visual_parity(trajectory.ids, trajectory.images, trajectory.image_records, mine, chat,
                            trajectory.label)
    batch["lengths"] = [len(trajectory.ids) for trajectory in trajectories]
    return batch


def sequence_logprobs(model: Any, batch: dict[str, Any], temperature: float = 1.0,
                      chunk_size: int | None = None) -> Any:
    """``(B, L)`` log-probs of each token given the previous ones (column 0, which has none, is 0).

    ``chunk_size``: project the final hidden states onto the vocabulary this many positions at a time, and under
    autograd recompute each chunk's logits in the backward pass instead of keeping them, so no pass ever holds the
    whole ``(B, L, vocab)`` logits — 9.3 GiB in float32 for one 16k-token sequence over Qwen2.5's 152k-token
    vocabulary. Needs a Hugging Face model whose last hidden state goes through a plain output projection
    (``get_output_embeddings()``, no logit soft-capping), as Qwen2 and Qwen2.5-VL do; the result equals the
    unchunked one.

    >>> import torch
    >>> from transformers import Qwen2Config, Qwen2ForCausalLM
    >>> model = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    >>> batch = {"input_ids": torch.arange(10).reshape(1, 10), "attention_mask": torch.ones(1, 10)}
    >>> torch.allclose(sequence_logprobs(model, batch), sequence_logprobs(model, batch, chunk_size=3), atol=1e-5)
    True
    """
    import torch

    device = next(model.parameters()).device
    inputs = {key: batch[key].to(device) for key in MODEL_INPUTS if key in batch}
    targets = inputs["input_ids"][:, 1:]
    if chunk_size is None:
        logits = model(**inputs, use_cache=False).logits
        logprobs = token_logprobs(logits[:, :-1], targets, temperature)
    else:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive number of positions, got {chunk_size!r}")
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(f"{type(model).__name__} has no output projection; chunked log-probs need one (set "
                             "logprob_chunk_size: null)")
        # the model's own forward (a sharded model gathers its weights there), keeping no position's logits
        hidden = model(**inputs, use_cache=False, output_hidden_states=True,
                       logits_to_keep=torch.zeros(0, dtype=torch.long, device=device)).hidden_states[-1][:, :-1]
        from torch.utils.checkpoint import checkpoint

        logprobs = torch.cat([
            checkpoint(_projected_logprobs, head, hidden[:, start:start + chunk_size],
                       targets[:, start:start + chunk_size], temperature, use_reentrant=False)
            for start in range(0, hidden.shape[1], chunk_size)], dim=1)
    logprobs = torch.cat([torch.zeros_like(logprobs[:, :1]), logprobs], dim=1)
    if "position_ids" in inputs:  # packed: a trajectory's first token has nothing of its own before it
        text_positions = inputs["position_ids"][0] if inputs["position_ids"].dim() == 3 else inputs["position_ids"]
        logprobs = logprobs.masked_fill(text_positions == 0, 0.0)
    return logprobs


def _projected_logprobs(head: Any, hidden: Any, targets: Any, temperature: float) -> Any:
    return token_logprobs(head(hidden), targets, temperature)


def grpo_loss(logprobs: Any, batch: dict[str, Any], *, clip_low: float, clip_high: float, token_count: float,
              ref_logprobs: Any = None, kl_coef: float = 0.0, importance_cap: float | None = None
              ) -> tuple[Any, dict[str, float]]:
    """The clipped surrogate, summed over loss tokens and divided by ``token_count`` (the mini-batch's loss
    tokens, so that micro-batches add up to a token-mean), plus ``kl_coef`` × KL to the reference.

    ``importance_cap``: weight each token's surrogate by ``min(pi_old / pi_sampler, importance_cap)`` — the
    truncated importance-sampling correction for a sampler whose numerics differ from the trainer's (vLLM);
    ``batch["behaviour_logprobs"]`` holds the sampler's log-probs, ``batch["old_logprobs"]`` the trainer's.

    Returns ``(loss, stats)`` with the mini-batch shares of ``clip_fraction``, ``kl``, ``importance_weight``
    and ``importance_capped`` (sums over this micro-batch divided by ``token_count``, so they add up too).
    Tokens outside the loss mask (prompts, observations, padding) never reach an ``exp``.
    """
    import torch

    device = logprobs.device
    mask = batch["loss_mask"].to(device)
    inside = mask > 0
    old = batch["old_logprobs"].to(device)
    advantages = batch["advantages"].to(device)
    ratio = torch.exp(torch.where(inside, logprobs - old, 0.0))
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high) * advantages
    per_token = -torch.minimum(unclipped, clipped)
    stats = {"clip_fraction": float(((unclipped != clipped).float() * mask).sum() / token_count)}
    if importance_cap is not None:
        behaviour = batch["behaviour_logprobs"].to(device)
        raw = torch.exp(torch.where(inside, old - behaviour, 0.0))
        weights = torch.clamp(raw, max=importance_cap)
        per_token = per_token * weights
        stats["importance_weight"] = float((weights * mask).sum() / token_count)
        stats["importance_capped"] = float(((raw > importance_cap).float() * mask).sum() / token_count)
    if ref_logprobs is not None and kl_coef > 0:
        delta = torch.where(inside, ref_logprobs.to(device) - logprobs, 0.0)
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + kl_coef * kl
        stats["kl"] = float((kl.detach() * mask).sum() / token_count)
    loss = (per_token * mask).sum() / token_count
    return loss, stats
