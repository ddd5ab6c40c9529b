"""``make_env``: the environment a registered id names, with its wrappers (the entry point of ``gym.make``).

Example:
    >>> import gymnasium as gym, pyvision_env                                   # doctest: +SKIP
    >>> env = gym.make("PyVision/Zoom-v0", reward={"name": "accumulative", "cap": 3})
    >>> env = make_env("zoom", reward="codevision", max_turns=4)               # the same without gym.make
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym

from .env import PyVisionEnv
from .tasks import Task, TaskSet
from .wrappers import EpisodeStatistics, reward_spec


def make_env(suite: str | TaskSet | Sequence[Task], *, reward: str | Mapping[str, Any] | None = None,
             **env_kwargs: Any) -> gym.Env:
    """A :class:`~pyvision_env.env.PyVisionEnv` of ``suite`` in the reward wrapper ``reward`` names (see
    :func:`~pyvision_env.wrappers.reward_spec`; the environment gets the options the reward needs), in
    :class:`~pyvision_env.wrappers.EpisodeStatistics`; ``env_kwargs`` are the environment's arguments."""
    if reward is None:
        return EpisodeStatistics(PyVisionEnv(suite, **env_kwargs))
    reward_class, options = reward_spec(reward)
    env = PyVisionEnv(suite, **{**reward_class.env_options, **env_kwargs})
    return EpisodeStatistics(reward_class(env, **options))
