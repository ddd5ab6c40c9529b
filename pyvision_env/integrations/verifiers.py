"""PyVision episodes as a verifiers (v1) environment: ``vf-eval`` runs them against any OpenAI-compatible endpoint.

verifiers 0.4 builds an environment from a *taskset* (the rows), an *env* (how one row becomes an episode) and a
*harness* (what calls the model), exported by an installed package that its id names: here the package
:mod:`pyvision_verifiers`, id ``pyvision-verifiers``. Each rollout plays one PyVision episode in its own sandboxed
kernel. The env plays the user: it opens the conversation with the episode's first messages (system prompt,
question, images as OpenAI ``image_url`` parts), steps the episode with each reply and answers with the
observation, until the episode ends; the kernel is freed then, or when the rollout fails or is cancelled. The
rollout's reward is the episode's return under ``reward`` (accumulative, CodeVision, or the task's grade alone);
its counters, correctness and reward components are the rollout's metrics.

Example (``pyvision serve`` or any other endpoint at ``--client.base-url``)::

    vf-eval pyvision-verifiers --env.taskset.suite zoom --env.taskset.reward accumulative -n 4 \\
        -m tiny --client.base-url http://127.0.0.1:8000/v1 --no-push

In Python, ``load_environment("zoom", reward="accumulative")`` is the environment that command builds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any, TypeVar

import httpx
import verifiers.v1 as vf
from pydantic import Field, field_validator
from verifiers.v1.dialects.chat import message_to_wire

from ..make import make_env
from ..messages import to_openai
from ..protocols import get_protocol
from ..registry import resolve_tasks
from ..wrappers import reward_spec

T = TypeVar("T")

ENV_ID = "pyvision-verifiers"
"""The id verifiers finds the environment by (it imports the package :mod:`pyvision_verifiers`)."""
METRIC_KEYS = ("turn", "tool_calls", "tool_errors", "format_errors", "images_shown", "visual_tokens")
"""The episode counters recorded as metrics of a rollout (with ``correct`` and ``reward_<component>``)."""


class PyVisionTasksetConfig(vf.TasksetConfig):
    """The episodes to play (``--env.taskset.*``)."""

    suite: str | None = None
    """Required: a registered suite or installed public benchmark (see `pyvision tasks`)."""
    split: str | None = None
    """Only the tasks of this split (train, held-out, ...)."""
    reward: str | dict[str, Any] | None = None
    """accumulative, codevision, a reward mapping, or None for the task's grade alone."""
    protocol: str = "pyvision"
    """pyvision or codevision (openai-tools replies are tool calls, which this harness does not request)."""
    max_turns: int = Field(8, ge=1)
    """Assistant turns per episode."""
    options: dict[str, Any] = Field(default_factory=dict)
    """Other PyVisionEnv arguments, e.g. {"max_images": 8, "max_visual_tokens": 16384}."""

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, suite: str | None) -> str | None:
        if suite is not None:
            try:
                resolve_tasks(suite)
            except KeyError as error:  # pydantic reports a ValueError as the field's error
                raise ValueError(error.args[0]) from None
        return suite

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, reward: str | dict[str, Any] | None) -> str | dict[str, Any] | None:
        if reward is not None:
            reward_spec(reward)
        return reward

    @field_validator("protocol")
    @classmethod
    def _text_protocol(cls, protocol: str) -> str:
        if get_protocol(protocol).name == "openai-tools":
            raise ValueError("protocol 'openai-tools' is not supported here: its replies are tool calls against a "
                             "tool schema the harness does not send; use 'pyvision' or 'codevision'")
        return protocol


class PyVisionData(vf.TaskData):
    """A task of a suite and the settings of its episode: what a trace needs to replay it."""

    suite: str
    split: str | None
    task_id: str
    episode: dict[str, Any]
    """:func:`~pyvision_env.make.make_env` arguments: ``reward``, ``protocol``, ``max_turns`` and the options."""


class PyVisionTask(vf.Task[PyVisionData]):
    """A PyVision task; it has no prompt (the episode opens the conversation) and is scored by the episode."""


class PyVisionTaskset(vf.Taskset[PyVisionTask, PyVisionTasksetConfig]):
    """The tasks of the suite (and split), in order."""

    def load(self) -> Iterator[PyVisionTask]:
        config = self.config
        if config.suite is None:
            raise ValueError("name the suite to play: --env.taskset.suite NAME (see `pyvision tasks`)")
        episode = {"reward": config.reward, "protocol": config.protocol, "max_turns": config.max_turns,
                   **config.options}
        for task in resolve_tasks(config.suite, config.split):
            yield PyVisionTask(PyVisionData(id=task.id, name=task.id, description=task.question, suite=config.suite,
                                            split=config.split, task_id=task.id, episode=episode), config.task)


class PyVisionHarnessConfig(vf.HarnessConfig):
    """The harness has no settings of its own."""


class PyVisionHarness(vf.Harness[PyVisionHarnessConfig]):
    """The model's side of a turn: one chat completion on the conversation so far, requested in this process
    from the rollout's interception endpoint (which applies ``-m`` and ``--sampling.*``). Nothing to install and
    no program to run: the model's code runs in the episode's kernel."""

    APPENDS_SYSTEM_PROMPT = True
    SUPPORTS_RESUME = True
    EXECUTES_CODE = False
    NEEDS_CONTAINER = False

    async def launch(self, ctx: vf.ModelContext, trace: vf.Trace, runtime: vf.Runtime, endpoint: str, secret: str,
                     mcp_urls: dict[str, str], data: vf.TaskData) -> vf.ProgramResult:
        system, conversation = self.resolve_prompt(data)
        messages = [{"role": "system", "content": system}] if system else []
        messages += [message_to_wire(message) for message in conversation or []]
        async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10.0)) as client:
            response = await client.post(f"{endpoint}/chat/completions", json={"model": ctx.model, "messages": messages},
                                         headers={"Authorization": f"Bearer {secret}"})
        if response.is_error:
            return vf.ProgramResult(1, "", f"HTTP {response.status_code}: {response.text[:2000]}")
        return vf.ProgramResult(0, response.json()["choices"][0]["message"].get("content") or "", "")


class PyVisionEnvConfig(vf.EnvConfig):
    """One seat, ``player`` (``--env.player.*``), on the local subprocess runtime (its harness needs no sandbox)."""

    player: vf.AgentConfig = vf.AgentConfig(runtime=vf.SubprocessConfig())


class PyVisionVerifiersEnv(vf.Env[PyVisionEnvConfig]):
    """A rollout is one episode: reset, then for each reply a step whose observation is the next user turn, until
    the episode ends (or verifiers ends the exchange: a turn limit, an error, a timeout)."""

    async def run(self, task: PyVisionTask, agents: vf.Agents) -> None:
        data = task.data
        env = await asyncio.to_thread(make_env, data.suite, split=data.split, **data.episode)
        engine = env.unwrapped.engine

        def on_engine(coroutine: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
            return asyncio.wrap_future(engine.submit(coroutine))

        try:
            observation, info = await on_engine(env.areset(options={"task_id": data.task_id}))
            async with agents.player.interaction(task) as interaction:
                segment = await interaction.turn(to_openai(observation))
                while not segment.terminated:
                    observation, _, terminated, truncated, info = await on_engine(env.astep(segment.last_reply))
                    if terminated or truncated:
                        break
                    segment = await interaction.turn(to_openai(observation))
                record_episode(interaction.trace, info)  # before the rollout closes, so its log and dashboard show it
        finally:
            await asyncio.to_thread(env.close)  # the kernel is gone when this returns


def record_episode(trace: vf.Trace, info: Mapping[str, Any]) -> None:
    """Put an episode's last ``info`` on its trace: the return as reward ``pyvision`` (0 unless the episode ended),
    the counters, correctness and reward components as metrics, the end reason in ``trace.info``."""
    totals = info.get("episode", {"return": 0.0, "components": {}})  # EpisodeStatistics' totals at the end
    trace.record_reward("pyvision", totals["return"])
    trace.record_metrics({key: info[key] for key in METRIC_KEYS})
    trace.record_metrics({"correct": bool(info["correct"]),
                          **{f"reward_{name}": value for name, value in totals["components"].items()}})
    trace.info["end_reason"] = info["end_reason"]


def load_environment(suite: str, *, split: str | None = None, reward: str | Mapping[str, Any] | None = None,
                     protocol: str = "pyvision", max_turns: int = 8, **options: Any) -> PyVisionVerifiersEnv:
    """The environment ``vf-eval pyvision-verifiers`` builds from these ``--env.taskset.*`` settings; ``options``
    are other :class:`~pyvision_env.env.PyVisionEnv` arguments.

    >>> env = load_environment("zoom", reward="accumulative", max_turns=4)     # doctest: +SKIP
    >>> len(list(env.taskset))
    100
    """
    taskset = PyVisionTasksetConfig(id=ENV_ID, suite=suite, split=split, reward=reward, protocol=protocol,
                                    max_turns=max_turns, options=options)
    return PyVisionVerifiersEnv(PyVisionEnvConfig(taskset=taskset))

