"""PyVision episodes inside TRL's ``GRPOTrainer``, through its ``environment_factory``.

TRL makes one environment per rollout with ``environment_factory()``, calls ``reset(**row)`` with the dataset
row, exposes the environment's public methods to the model as tools, and runs the tool calls the model makes
until it answers without one. Here the environment is :class:`PyVisionTRLEnv`: ``reset`` starts the row's task
(its images and question are appended to the row's prompt), its one tool ``python`` runs code in the episode's
sandboxed kernel and returns the printed text and the images shown, and :func:`pyvision_reward` hands each
rollout's final answer to its episode and returns the episode's reward (the suite's grade, or the reward wrapper
``reward`` names). The episode uses the ``openai-tools`` protocol: tool calls in the chat template's format, the
answer in ``\\boxed{}``.

Example::

    from trl import GRPOConfig, GRPOTrainer
    from pyvision_env.integrations.trl import environment_factory, pyvision_reward, training_dataset

    trainer = GRPOTrainer(model="Qwen/Qwen3-VL-2B-Instruct", args=GRPOConfig(num_generations=8),
                          train_dataset=training_dataset("zoom", split="train"),
                          environment_factory=environment_factory("zoom", reward="accumulative", max_turns=5),
                          reward_funcs=pyvision_reward)
    trainer.train()

The model's chat template must render tool calls and tool messages with images (Qwen3-VL's does; Qwen2.5-VL's
ships without tools): TRL refuses a template that cannot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from ..make import make_env
from ..messages import to_hf
from ..protocols import OpenAIToolsProtocol
from ..registry import resolve_tasks

PROTOCOL = "openai-tools"
METRIC_KEYS = ("turn", "tool_calls", "tool_errors", "format_errors", "images_shown", "visual_tokens")
"""The episode counters :func:`pyvision_reward` logs to TRL's completions table (``log_extra``)."""


class PyVisionTRLEnv:
    """One PyVision episode per rollout, in TRL's ``environment_factory`` contract (``reset`` and tools).

    Make instances with :func:`environment_factory`. The model sees one tool, :meth:`python`; the rest of the
    class is private, because TRL offers every public method to the model.
    """

    def __init__(self, suite: str, *, split: str | None = None, reward: str | dict | None = None,
                 **env_options: Any) -> None:
        if env_options.get("protocol", PROTOCOL) != PROTOCOL:
            raise ValueError(f"TRL calls tools through the chat template, so the protocol is {PROTOCOL!r}; "
                             f"got protocol={env_options['protocol']!r}")
        env_options["protocol"] = PROTOCOL
        self._suite = suite
        self._env = make_env(suite, split=split, reward=reward, **env_options)
        self._protocol: OpenAIToolsProtocol = self._env.unwrapped.protocol
        self._task_ids = {task.id for task in self._env.unwrapped.tasks}
        self._reward = 0.0
        self._info: dict[str, Any] = {}
        self._done = True

    def reset(self, task_id: str | None = None, **row: Any) -> list[dict[str, Any]]:
        """Start the episode of the row's ``task_id``; returns the question's parts (images and text), which TRL
        appends to the row's last prompt message."""
        if task_id is None:
            raise ValueError("a pyvision row needs a 'task_id' column (training_dataset makes such rows)")
        if task_id not in self._task_ids:
            raise ValueError(f"suite {self._suite!r} has no task {task_id!r}")
        observation, info = self._env.reset(options={"task_id": task_id})
        self._reward, self._info, self._done = 0.0, info, False
        return to_hf(observation[-1:])[0]["content"]

    def python(self, code: str) -> list[dict[str, Any]] | str:
        """Run Python code in a persistent Jupyter kernel. The input images are PIL images named image_clue_0,
        image_clue_1, ...; numpy (np), PIL and matplotlib.pyplot (plt) are imported. Printed text and the
        figures shown with plt.show() are returned.

        Args:
            code: Python code to run.
        """
        if self._done:
            return f"The episode has ended ({self._info.get('end_reason')}); no more code runs."
        observation = self._step(self._protocol.render_action(code=code))
        return [part for message in to_hf(observation) for part in message["content"]]

    def _answer(self, message: dict[str, Any]) -> float:
        """End the episode with the rollout's final message and return the episode's reward."""
        if not self._done:
            if message.get("role") == "assistant" and not message.get("tool_calls"):
                self._step(json.dumps({"role": "assistant", "content": _text(message.get("content"))}))
            else:  # TRL stopped the rollout at a tool result (length budget): no answer, no reward
                self._env.close()
                self._info = {**self._info, "end_reason": "unfinished"}
                self._done = True
        return self._reward

    def _step(self, action: str) -> list:
        observation, reward, terminated, truncated, info = self._env.step(action)
        self._reward += float(reward)
        self._info, self._done = info, bool(terminated or truncated)
        return observation


def environment_factory(suite: str, *, split: str | None = None, reward: str | dict | None = None,
                        **env_options: Any) -> Callable[[], PyVisionTRLEnv]:
    """The ``environment_factory`` for ``GRPOTrainer``: each call makes a :class:`PyVisionTRLEnv` of ``suite``
    (a registered suite or installed public benchmark) with the reward ``reward`` names (``"accumulative"``,
    ``"codevision"``, a mapping, or None for the grade alone) and :class:`~pyvision_env.env.PyVisionEnv`
    options (``max_turns``, ``max_images``...). The suite is checked now, not at the first batch.

    >>> factory = environment_factory("tally", reward="accumulative", max_turns=5)      # doctest: +SKIP
    """
    resolve_tasks(suite, split)
    return lambda: PyVisionTRLEnv(suite, split=split, reward=reward, **env_options)


def pyvision_reward(completions: Sequence[list[dict[str, Any]]], environments: Sequence[PyVisionTRLEnv],
                    log_extra: Callable[[str, list], None] | None = None, **_: Any) -> list[float]:
    """The reward function for ``GRPOTrainer``: each rollout's last message goes to its episode as the answer
    (a rollout that stopped at a tool result ends unanswered) and the episode's reward comes back. The episode
    counters and end reasons go to TRL's completions table. Every episode's kernel is free afterwards."""
    rewards = [env._answer(completion[-1]) for completion, env in zip(completions, environments, strict=True)]
    if log_extra is not None:
        for key in (*METRIC_KEYS, "end_reason", "correct"):
            log_extra(key, [env._info.get(key) for env in environments])
    return rewards


pyvision_reward.__name__ = "pyvision"  # TRL logs each reward function under its name


def training_dataset(suite: str, split: str | None = None, **env_options: Any):
    """A ``datasets.Dataset`` with one row per task of ``suite``: ``prompt`` (the protocol's system prompt and an
    empty user turn that ``reset`` fills with the task's images and question) and ``task_id``. ``env_options``
    are those of :func:`environment_factory` that change the prompt (``system_prompt``)."""
    from datasets import Dataset

    tasks = resolve_tasks(suite, split)
    system_prompt = OpenAIToolsProtocol(env_options.get("system_prompt")).system_prompt
    prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": ""}]
    return Dataset.from_list([{"prompt": prompt, "task_id": task.id} for task in tasks])


def _text(content: Any) -> str:
    """A message's text: its string content, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content or () if isinstance(part, dict))
