"""Episode statistics, whatever the reward: ``info["episode"]`` at an episode's last step.

Example::

    env = EpisodeStatistics(PyVisionEnv("zoom"))                 # gym.make("PyVision/Zoom-v0") applies it too
    ...                                                          # step until the episode ends
    info["episode"]      # {"return": 1.0, "turns": 2, "tool_calls": 1, "tool_successes": 1, "tool_errors": 0,
                         #  "images": 1, "visual_tokens": 1290, "components": {}}
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from ..messages import Message
from .core import PyVisionWrapper, StepResult

EPISODE_KEYS = ("return", "turns", "tool_calls", "tool_successes", "tool_errors", "images", "visual_tokens",
                "components")
"""The keys of ``info["episode"]`` at an episode's last step."""


class EpisodeStatistics(PyVisionWrapper, gym.utils.RecordConstructorArgs):
    """Put the episode's totals in ``info["episode"]`` at its last step (see :data:`EPISODE_KEYS`).

    ``return`` is the sum of the rewards this wrapper saw; ``components`` sums the ``info["reward_components"]``
    that a reward wrapper below it reports (empty without one). Place it outermost, as ``gym.make`` does.
    """

    def __init__(self, env: gym.Env) -> None:
        gym.utils.RecordConstructorArgs.__init__(self)
        super().__init__(env)
        self._return = 0.0
        self._components: dict[str, float] = {}

    def after_reset(self, observation: list[Message], info: dict[str, Any], seed: int | None
                    ) -> tuple[list[Message], dict[str, Any]]:
        self._return, self._components = 0.0, {}
        return observation, info

    def after_fork(self) -> None:
        self._components = dict(self._components)

    def after_step(self, action: str, observation: list[Message], reward: float, terminated: bool,
                   truncated: bool, info: dict[str, Any]) -> StepResult:
        self._return += float(reward)
        for name, value in (info.get("reward_components") or {}).items():
            self._components[name] = self._components.get(name, 0.0) + value
        if terminated or truncated:
            info["episode"] = {"return": self._return, "turns": info["turn"], "tool_calls": info["tool_calls"],
                               "tool_successes": info["tool_calls"] - info["tool_errors"],
                               "tool_errors": info["tool_errors"], "images": info["images_shown"],
                               "visual_tokens": info["visual_tokens"], "components": dict(self._components)}
        return observation, reward, terminated, truncated, info
