"""PyVision episodes as a verl agent loop, and PyVision suites as verl's parquet rows.

verl's ``AgentLoopWorker`` makes one agent loop per sample, by the row's ``agent_name``, and awaits its
``run(sampling_params, **row)``. Importing this module registers :class:`PyVisionAgentLoop` under the name
``pyvision``; each loop plays one episode of a registered suite (or public benchmark) on the process's default
engine, token in, token out: it renders the episode's messages with verl's Continuous Token builder (the
processor's chat template, each image's placeholder expanded to its grid), asks verl's server manager for
tokens, decodes them, steps the environment and appends the observation's tokens with response mask 0. The
reward wrapper's total is the sample's ``reward_score``.

Example (the trainer's config names the loop; rows say ``agent_name: pyvision``)::

    from pyvision_env.integrations.verl import write_dataset

    write_dataset("zoom", "data/zoom-train.parquet", split="train")
    # actor_rollout_ref.rollout.agent.agent_loop_config_path=docs/examples/verl/agent_loops.yaml, whose entry
    # {name: pyvision, _target_: pyvision_env.integrations.verl.PyVisionAgentLoop, reward: accumulative,
    #  env: {max_turns: 5}} gives the loop its reward and PyVisionEnv options.

A row's ``extra_info`` names the suite, split and task; its ``prompt`` is only the question as text (verl's
dataset filters prompt lengths with it): the loop replaces it with the episode's own first messages (system
prompt, question and images).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.utils.profiler import simple_timer

from ..execution import Engine
from ..make import make_env
from ..messages import Message, to_hf
from ..registry import resolve_tasks
from . import write_parquet

T = TypeVar("T")

AGENT_NAME = "pyvision"
EPISODE_METRICS = ("turn", "tool_calls", "tool_errors", "format_errors", "images_shown", "visual_tokens")
"""The episode counters each sample reports in ``extra_fields["reward_extra_info"]`` (from its last step's
info), beside ``acc`` (1.0 when the answer was correct)."""


@register(AGENT_NAME)
class PyVisionAgentLoop(AgentLoopBase):
    """One PyVision episode per sample, in verl's agent-loop contract.

    Args:
        reward: ``"accumulative"``, ``"codevision"``, a mapping (``{"name": "accumulative", "cap": 3}``) or None
            for the task's grade alone.
        env: :class:`~pyvision_env.env.PyVisionEnv` options (``protocol``, ``max_turns``, ``max_images``...);
            ``max_turns`` defaults to ``actor_rollout_ref.rollout.multi_turn.max_assistant_turns`` when that is
            set.
        *args, **kwargs: what verl's worker passes to every agent loop (its config, server manager, tokenizer,
            processor...).

    ``run`` returns the episode's tokens (``prompt_ids``: its first messages; ``response_ids``: responses and
    observations, mask 1 on sampled tokens only), its images in placeholder order, ``reward_score`` (0.0 when the
    responses outgrow ``rollout.response_length`` before the episode ends: ``end_reason`` ``"over_length"``), and
    ``extra_fields``: ``reward_extra_info`` (``acc`` and :data:`EPISODE_METRICS`, which verl logs),
    ``reward_components``, ``end_reason`` and ``task_id``.
    """

    def __init__(self, *args: Any, reward: str | Mapping[str, Any] | None = None,
                 env: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reward = _plain(reward)
        self.env_options = _plain(env or {})
        max_turns = self.rollout_config.multi_turn.max_assistant_turns
        if max_turns:
            self.env_options.setdefault("max_turns", max_turns)
        self.response_length = self.rollout_config.response_length

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        """Play the row's task (``extra_info``: ``suite``, ``task_id``, optionally ``split``) to its end or until
        the response budget is spent; the episode's kernel is freed before this returns."""
        suite, split, task_id = _row_task(kwargs.get("extra_info"))
        env = await asyncio.to_thread(make_env, suite, split=split, reward=self.reward, **self.env_options)
        try:
            return await self._play(env, task_id, sampling_params)
        finally:
            await asyncio.to_thread(env.close)

    async def _play(self, env: Any, task_id: str, sampling_params: dict[str, Any]) -> AgentLoopOutput:
        engine, protocol = env.unwrapped.engine, env.unwrapped.protocol
        observation, info = await _on(engine, env.areset(options={"task_id": task_id}))
        messages, images = to_hf(observation), _images(observation)
        self._assert_mm_supported(bool(images))
        prompt_ids = await self.ct_build_initial_tokens(messages, images=images or None)
        ids, mask = list(prompt_ids), []
        logprobs: list[float] | None = [] if sampling_params.get("logprobs") else None
        request_id, metrics, reward, turns, end_reason = uuid4().hex, {}, 0.0, 1, "over_length"
        while True:
            with simple_timer("generate_sequences", metrics):
                output = await self.server_manager.generate(
                    request_id=request_id, prompt_ids=ids, image_data=images or None,
                    sampling_params={**sampling_params, "max_tokens": self.response_length - len(mask)})
            merged, mask, logprobs = await self.ct_merge_assistant_token(
                ids, output.token_ids, mask, logprobs,
                assistant_logprobs=output.log_probs if logprobs is not None else None)
            ids, turns = merged.token_ids, turns + 1
            if len(mask) >= self.response_length:  # the budget is spent (the response may be cut): not played
                break
            response = self.tokenizer.decode(output.token_ids, skip_special_tokens=True)
            with simple_timer("tool_calls", metrics):
                observation, reward, terminated, truncated, info = await _on(engine, env.astep(response))
            if terminated or truncated:
                end_reason = info["end_reason"]
                break
            observed_images = _images(observation)
            self._assert_mm_supported(bool(observed_images))
            previous = [*messages, *to_hf([protocol.assistant_message(response)])]
            messages = previous + to_hf(observation)
            merged, observed_mask, observed_logprobs = await self.ct_merge_context_msg(
                previous, messages, ids, mask, logprobs)
            if len(observed_mask) >= self.response_length:  # no room for the observation (nor its images)
                break
            ids, mask, logprobs, turns = merged.token_ids, observed_mask, observed_logprobs, turns + 1
            images += observed_images
        prompt_ids, response_ids = ids[:len(ids) - len(mask)], ids[len(ids) - len(mask):]
        return AgentLoopOutput(
            prompt_ids=prompt_ids, response_ids=response_ids, response_mask=mask,
            response_logprobs=logprobs, multi_modal_data={"images": images} if images else {},
            reward_score=float(reward), num_turns=turns, metrics=metrics,
            extra_fields={"reward_extra_info": {"acc": float(bool(info["correct"])),
                                                **{key: info[key] for key in EPISODE_METRICS}},
                          "reward_components": dict(info.get("reward_components") or {}),
                          "end_reason": end_reason, "task_id": task_id})


def _row_task(extra_info: Mapping[str, Any] | None) -> tuple[str, str | None, str]:
    info = dict(extra_info or {})
    if not info.get("suite") or not info.get("task_id"):
        raise ValueError("a pyvision row needs extra_info with 'suite' and 'task_id' (write_dataset makes such "
                         f"rows); got extra_info={info!r}")
    return str(info["suite"]), info.get("split"), str(info["task_id"])


async def _on(engine: Engine, coroutine: Coroutine[Any, Any, T]) -> T:
    """Await ``coroutine`` on the engine's event loop (the environment's) from verl's."""
    return await asyncio.wrap_future(engine.submit(coroutine))


def _images(messages: Sequence[Message]) -> list[Any]:
    return [image for message in messages for image in message.images]


def _plain(value: Any) -> Any:
    """Plain dicts and lists of a config value (verl passes an entry's options as OmegaConf containers)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def dataset_rows(suite: str, split: str | None = None) -> list[dict[str, Any]]:
    """verl dataset rows for every task of ``suite`` (a registered suite or public benchmark name)."""
    tasks = resolve_tasks(suite, split)
    return [{"data_source": f"pyvision/{suite}", "agent_name": AGENT_NAME,
             "prompt": [{"role": "user", "content": task.question}],
             "reward_model": {"style": "rule", "ground_truth": task.answer},
             "extra_info": {"suite": suite, "split": split, "task_id": task.id, "index": index}}
            for index, task in enumerate(tasks)]


def write_dataset(suite: str, path: str | Path, split: str | None = None) -> Path:
    """Write :func:`dataset_rows` as the parquet file verl's trainer reads (``data.train_files=[path]``)."""
    return write_parquet(dataset_rows(suite, split), path)

