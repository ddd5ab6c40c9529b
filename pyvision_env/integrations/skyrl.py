"""PyVision episodes as SkyRL-Gym environments.

SkyRL's generator makes one environment per sample, ``skyrl_gym.make(env_class, env_config=..., extras=row)``,
calls ``init(prompt)`` and then ``step(response)`` until ``done``. Importing this module registers the class under
the name ``pyvision``; each environment plays one episode of a registered suite (or public benchmark) on the
process's default engine, with the reward named in its config, and returns observations as OpenAI chat messages
(text parts, and images as ``image_url`` data URLs).

Example (the trainer's entry point, then a dataset whose rows say ``env_class: pyvision``)::

    import pyvision_env.integrations.skyrl  # registers "pyvision"
    from pyvision_env.integrations.skyrl import write_dataset

    write_dataset("zoom", "data/zoom-train.parquet", split="train")
    # SkyRL config: environment.env_class=pyvision, environment.skyrl_gym.pyvision={reward: accumulative}

A row's ``extra_info`` names the suite, split and task; ``env_config`` holds the environment's options
(``reward``, ``protocol``, ``max_turns``, ...). The row's prompt is only the question as text: ``init`` replaces it
with the episode's own first messages (system prompt, question and images).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import skyrl_gym
from skyrl_gym.envs.base_text_env import BaseTextEnv, BaseTextEnvStepOutput

from ..make import make_env
from ..messages import to_openai
from ..registry import resolve_tasks
from . import write_parquet

ENV_CLASS = "pyvision"
METRIC_KEYS = ("turn", "tool_calls", "tool_errors", "format_errors", "images_shown", "visual_tokens")
"""The episode counters reported by :meth:`PyVisionSkyRLEnv.get_metrics` (from the last step's info)."""


class PyVisionSkyRLEnv(BaseTextEnv):
    """One PyVision episode in SkyRL-Gym's ``init``/``step``/``close`` contract.

    Args:
        env_config: the environment's options: ``reward`` (``"accumulative"``, ``"codevision"``, a mapping, or
            None for the task's grade alone) and any :class:`~pyvision_env.env.PyVisionEnv` argument
            (``protocol``, ``max_turns``, ``max_images``...); ``suite`` when the row does not name one.
        extras: the dataset row: ``extra_info`` with ``suite``, ``task_id`` and optionally ``split``.
    """

    def __init__(self, env_config: Mapping[str, Any] | None = None, extras: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        options = dict(env_config or {})
        info = dict((extras or {}).get("extra_info") or {})
        suite = info.get("suite") or options.pop("suite", None)
        options.pop("suite", None)
        if suite is None or "task_id" not in info:
            raise ValueError("a pyvision row needs extra_info with 'suite' and 'task_id' (write_dataset makes such "
                             f"rows); got extra_info={info!r}")
        self.task_id = str(info["task_id"])
        reward = options.pop("reward", None)
        self.env = make_env(suite, split=info.get("split"), reward=reward, **options)
        tasks = self.env.unwrapped.tasks
        if self.task_id not in {task.id for task in tasks}:
            self.env.close()
            raise ValueError(f"suite {suite!r} has no task {self.task_id!r}")
        self.max_turns = self.env.unwrapped.max_turns
        self._last_info: dict[str, Any] = {}

    def init(self, prompt: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Start the episode; returns its first messages (they replace the row's text-only ``prompt``)."""
        observation, info = self.env.reset(options={"task_id": self.task_id})
        self._last_info = info
        return to_openai(observation), {"task_id": info["task_id"]}

    def step(self, action: str) -> BaseTextEnvStepOutput:
        """Run the model's response: code cells, an answer or a format error; the reward comes at the end."""
        observation, reward, terminated, truncated, info = self.env.step(action)
        self.turns = info["turn"]
        self._last_info = info
        done = bool(terminated or truncated)
        metadata = {"end_reason": info["end_reason"], "correct": info["correct"],
                    "reward_components": info.get("reward_components", {})}
        return BaseTextEnvStepOutput(observations=to_openai(observation), reward=float(reward), done=done,
                                     metadata=metadata)

    def get_metrics(self) -> dict[str, Any]:
        """The episode's counters (turns, tool calls and errors, images, visual tokens) and its correctness."""
        metrics = {key: self._last_info.get(key) for key in METRIC_KEYS}
        metrics["correct"] = self._last_info.get("correct")
        return metrics

    def close(self) -> None:
        """End the episode and free its kernel."""
        self.env.close()


def register() -> None:
    """Register :class:`PyVisionSkyRLEnv` with SkyRL-Gym as ``pyvision``. Done on import; safe to repeat."""
    if ENV_CLASS not in skyrl_gym.registry:
        skyrl_gym.register(id=ENV_CLASS, entry_point=f"{__name__}:PyVisionSkyRLEnv")


def dataset_rows(suite: str, split: str | None = None) -> list[dict[str, Any]]:
    """SkyRL dataset rows for every task of ``suite`` (a registered suite or public benchmark name)."""
    tasks = resolve_tasks(suite, split)
    return [{"data_source": f"pyvision/{suite}", "env_class": ENV_CLASS,
             "prompt": [{"role": "user", "content": task.question}],
             "reward_spec": {"method": "rule", "ground_truth": task.answer},
             "extra_info": {"suite": suite, "split": split, "task_id": task.id}} for task in tasks]


def write_dataset(suite: str, path: str | Path, split: str | None = None) -> Path:
    """Write :func:`dataset_rows` as the Parquet file SkyRL's trainer reads (``data.train_data=[path]``)."""
    return write_parquet(dataset_rows(suite, split), path)


register()
