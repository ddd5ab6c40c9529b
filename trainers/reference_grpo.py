"""Multi-turn GRPO with the accumulative tool reward, in one file (CleanRL style): the whole algorithm, top to
bottom, to read before the modular trainer (:mod:`trainers.grpo`), which adds OFR's oversampling and ranking,
asynchronous episodes, evaluation, checkpoints, logging and vLLM.

Each update:

1. **Rollouts** — ``groups`` tasks, ``group_size`` episodes each, played in lockstep on a vector env: every turn
   the live conversations are continued in one generation batch (token in, token out: the sampled ids and
   their log-probs are kept; only new observations are tokenized), then their environments step.
2. **Reward** — the environment's accumulative tool reward, ``R = 1[correct] + c * tool_calls * 1[correct]``.
3. **Advantages** — group-relative: ``A = R - mean(R of the group)`` (divided by the group's std if
   ``--normalize-std``; :func:`trainers.ofr.group_advantages`), the same for every token of the episode.
4. **Filtering** — groups whose rewards are all equal carry no signal (``A = 0``) and are dropped (the "F" of
   OFR).
5. **Loss** — the clipped surrogate with separate low/high clip ranges, averaged over all sampled tokens of
   the mini-batch (token-mean); prompt and observation tokens are masked out. ``--epochs`` passes over the
   batch, so from the second pass on the ratio moves away from 1 and clipping acts.

Run it on the demo's SFT model (``pyvision train-demo`` writes one)::

    python -m trainers.reference_grpo --model runs/demo/sft/checkpoints/step-000080 --steps 4
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.hf import Sampling

from .rollout import EpisodeSpec, Trajectory
from .tokens import Encoded


@dataclass
class Args:
    model: str
    """Hugging Face model folder (a Qwen2.5-VL / Qwen2-VL, e.g. the demo's tiny one after SFT)."""
    suite: str = "tally"
    steps: int = 4
    """Updates."""
    groups: int = 8
    """Tasks per update."""
    group_size: int = 4
    """Episodes per task."""
    max_turns: int = 3
    max_new_tokens: int = 80
    max_length: int = 1024
    """Token budget of an episode (prompt, responses, observations)."""
    temperature: float = 1.0
    lr: float = 3e-4
    clip_low: float = 0.2
    clip_high: float = 0.28
    normalize_std: bool = False
    epochs: int = 2
    """Passes over each update's batch."""
    mini_batch_size: int = 16
    tool_coefficient: float = 0.1
    """``c`` of the accumulative tool reward."""
    system_prompt: str | None = None
    """Default: the protocol's."""
    seed: int = 0
    out: str | None = None
    """Save the trained model here."""


def play(envs: Any, chat: Any, backend: Any, tasks: Sequence[int], seed: int, args: Args) -> list[Trajectory]:
    """One episode per entry of ``tasks``, in lockstep: each turn, one generation batch for the live
    conversations, then one vector-env step. Returns their tokens (loss mask 1 on sampled ones), sampler
    log-probs, images and rewards."""
    observations, infos = envs.reset(seed=seed, options=[{"task_index": t} for t in tasks])
    episodes = [Trajectory(EpisodeSpec(task, seed + i, i // args.group_size), task_id)
                for i, (task, task_id) in enumerate(zip(tasks, infos["task_id"]))]
    for episode, observation in zip(episodes, observations):
        episode.extend(chat.prompt(observation), sampled=False)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    live = list(range(len(episodes)))
    # an episode whose next response could overflow its token budget ends unanswered
    while live := [i for i in live if len(episodes[i].ids) + args.max_new_tokens <= args.max_length]:
        sampled = backend.generate([Encoded(episodes[i].ids, episodes[i].images, episodes[i].image_records)
                                    for i in live], sampling)
        actions: list[str | None] = [None] * len(episodes)
        for i, sample in zip(live, sampled):
            episodes[i].extend(sample, sampled=True)
            if sample.finished:  # else it was cut off mid-response: nothing to send
                actions[i] = chat.decode(sample.ids)
        observations, rewards, terminated, truncated, infos = envs.step(actions)
        live = []
        for i in (i for i, action in enumerate(actions) if action is not None):
            episodes[i].reward += float(rewards[i])
            if terminated[i] or truncated[i]:
                episodes[i].correct, episodes[i].tool_calls = bool(infos["correct"][i]), int(infos["tool_calls"][i])
            else:
                episodes[i].extend(chat.continuation(observations[i]), sampled=False)
                live.append(i)
    return episodes


def clipped_token_mean_loss(logprobs: Any, old_logprobs: Any, advantages: Any, mask: Any, clip_low: float,
                            clip_high: float) -> Any:
    """``-mean over masked tokens of min(ratio * A, clip(ratio, 1 - low, 1 + high) * A)``; tensors ``(B, L)``."""
    import torch

    ratio = torch.exp(logprobs - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages)
    return -(surrogate * mask).sum() / mask.sum()


def main(args: Args, backend: Any = None) -> dict[str, float]:
    """Train; prints one line per update and returns the last update's numbers. ``backend``: a generation
    backend to sample with instead of Hugging Face ``generate`` on the model."""
    import torch

    from pyvision_env.execution import Engine
    from pyvision_env.vector import PyVisionVectorEnv

    from .backends import HFBackend, PixelCache
    from .config import ModelConfig
    from .modeling import load_policy
    from .objective import collate, sequence_logprobs
    from .ofr import group_advantages

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    policy = load_policy(ModelConfig(path=args.model))
    model, chat = policy.model, policy.chat
    chat.check_template()
    backend, pixels = backend or HFBackend(model, chat), PixelCache(chat.image_processor)
    optimizer = torch.optim.AdamW(policy.trainable_parameters, lr=args.lr, weight_decay=0.0)
    episodes_per_step = args.groups * args.group_size
    env_kwargs: dict[str, Any] = {"max_turns": args.max_turns, "kernel_start": "first-call",
                                  "reward": {"name": "accumulative", "coefficient": args.tool_coefficient}}
    if args.system_prompt is not None:
        env_kwargs["system_prompt"] = args.system_prompt
    numbers: dict[str, float] = {}
    with Engine(spare_kernels=min(episodes_per_step, 8)) as engine:
        envs = PyVisionVectorEnv(episodes_per_step, args.suite, engine=engine, autoreset_mode="Disabled",
                                 **env_kwargs)
        task_count = len(envs.envs[0].unwrapped.tasks)
        try:
            for step in range(1, args.steps + 1):
                started = time.perf_counter()
                # 1-2. rollouts and rewards
                tasks = random.sample(range(task_count), args.groups)
                model.eval()
                episodes = play(envs, chat, backend, [t for t in tasks for _ in range(args.group_size)],
                                seed=args.seed * 1_000_003 + step * episodes_per_step, args=args)
                # 3-4. group-relative advantages; groups without a reward difference are dropped
                kept: list[tuple[Trajectory, float]] = []
                for g in range(args.groups):
                    group = episodes[g * args.group_size:(g + 1) * args.group_size]
                    rewards = [e.reward for e in group]
                    if max(rewards) > min(rewards):
                        kept += zip(group, group_advantages(rewards, args.normalize_std))
                # 5. clipped token-mean loss over the kept episodes
                losses = []
                model.train()
                for _ in range(args.epochs if kept else 0):
                    random.shuffle(kept)
                    for start in range(0, len(kept), args.mini_batch_size):
                        mini = kept[start:start + args.mini_batch_size]
                        batch = collate([t for t, _ in mini], [a for _, a in mini], chat, pixels)
                        logprobs = sequence_logprobs(model, batch, args.temperature)
                        loss = clipped_token_mean_loss(logprobs, batch["old_logprobs"], batch["advantages"],
                                                       batch["loss_mask"], args.clip_low, args.clip_high)
                        optimizer.zero_grad()
                        loss.backward()
                        torch.nn.utils.clip_grad_norm_(policy.trainable_parameters, 1.0)
                        optimizer.step()
                        losses.append(float(loss.detach()))
                numbers = {"step": step, "reward": float(np.mean([e.reward for e in episodes])),
                           "accuracy": float(np.mean([e.correct for e in episodes])),
                           "tool_calls": float(np.mean([e.tool_calls for e in episodes])),
                           "kept_groups": len(kept) // args.group_size,
                           "loss": float(np.mean(losses)) if losses else float("nan"),
                           "seconds": time.perf_counter() - started}
                print("  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()),
                      flush=True)
        finally:
            envs.close()
    if args.out:
        model.save_pretrained(args.out)
        chat.tokenizer.save_pretrained(args.out)
        chat.image_processor.save_pretrained(args.out)
    return numbers


def parse_args(argv: Sequence[str] | None = None) -> Args:
    """``Args`` from the command line (one ``--flag`` per field)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    for field in dataclasses.fields(Args):
        flag = "--" + field.name.replace("_", "-")
        if field.type in ("bool", bool):
            parser.add_argument(flag, action="store_true")
        elif field.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True)
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            parser.add_argument(flag, type=kind, default=field.default)
    return Args(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main(parse_args())
