"""One episode of a policy in an environment, and its outcome: the runner behind ``pyvision run`` and
``pyvision eval`` (``benchmarks.evaluation``), the video benchmark and the trainer demo's teacher.

Example:
    >>> env = gym.make("PyVision/Zoom-v0")                                     # doctest: +SKIP
    >>> result = play_episode(env, scripted_policy("zoom", env.unwrapped.protocol), options={"task_index": 3})
    >>> result.correct, result.tool_calls, result.end_reason
    (True, 2, 'answered')
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from .base import Policy


@dataclass(frozen=True)
class EpisodeResult:
    """The outcome of one episode, from its last ``info``; or of one that failed outside the environment
    (``error`` says why, ``end_reason`` is the caller's reason, e.g. ``policy_error``)."""

    task_id: str
    correct: bool
    score: float
    reward: float
    """The sum of the episode's rewards (with a reward wrapper, its return)."""
    turns: int
    tool_calls: int
    tool_errors: int
    format_errors: int
    images_shown: int
    visual_tokens: int
    frames_fetched: int
    end_reason: str
    answer: str | None
    """The answer as the policy gave it (None without one)."""
    seconds: float
    """Wall-clock time of the episode."""
    error: str | None = None

    @classmethod
    def from_info(cls, info: Mapping[str, Any], reward: float, seconds: float) -> EpisodeResult:
        return cls(task_id=info["task_id"], correct=bool(info["correct"]), score=float(info["score"] or 0.0),
                   reward=reward, turns=info["turn"], tool_calls=info["tool_calls"],
                   tool_errors=info["tool_errors"], format_errors=info["format_errors"],
                   images_shown=info["images_shown"], visual_tokens=info["visual_tokens"],
                   frames_fetched=info.get("frames_fetched", 0), end_reason=info["end_reason"],
                   answer=info.get("answer"), seconds=seconds)

    @classmethod
    def failed(cls, task_id: str, end_reason: str, error: BaseException, seconds: float = 0.0) -> EpisodeResult:
        """An episode that could not be played to its end (it scores 0)."""
        return cls(task_id=task_id, correct=False, score=0.0, reward=0.0, turns=0, tool_calls=0, tool_errors=0,
                   format_errors=0, images_shown=0, visual_tokens=0, frames_fetched=0, end_reason=end_reason,
                   answer=None, seconds=seconds, error=f"{type(error).__name__}: {error}")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def play_episode(env: gym.Env, policy: Policy, *, seed: int | None = None,
                 options: dict[str, Any] | None = None) -> EpisodeResult:
    """Reset ``env`` (with ``seed`` and ``options``, e.g. ``{"task_index": 3}``) and let ``policy`` answer each
    observation until the episode ends. Exceptions (of the policy or the environment) propagate."""
    started = time.perf_counter()
    observation, info = env.reset(seed=seed, options=options)
    total, done = 0.0, False
    while not done:
        observation, reward, terminated, truncated, info = env.step(policy.act(observation, info))
        total += float(reward)
        done = terminated or truncated
    return EpisodeResult.from_info(info, total, time.perf_counter() - started)
