"""The RLlib adapter, driven through RLlib's own env runners: they build PyVision environments by the registered name
``pyvision`` and play real episodes on real kernels, which come back as RLlib ``SingleAgentEpisode`` objects."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray.rllib", reason="the 'rllib' extra is not installed")

from ray.rllib.algorithms.ppo import PPOConfig
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule
from ray.rllib.env.env_runner_group import EnvRunnerGroup
from ray.rllib.env.single_agent_env_runner import SingleAgentEnvRunner
from ray.rllib.env.single_agent_episode import SingleAgentEpisode
from ray.rllib.utils.metrics import EPISODE_RETURN_MEAN

from agents.scripted import scripted_policy
from pyvision_env.execution import default_engine
from pyvision_env.integrations.rllib import ENV_RUNNER_SETTINGS
from pyvision_env.messages import ImagePart, Message

from .conftest import kernel_processes, wait_until

pytestmark = [pytest.mark.filterwarnings("ignore:.*Overriding environment rllib-single-agent-env-v0"),
              pytest.mark.usefixtures("framework_engine")]
"""Each env runner registers its environment with Gymnasium under this one name; RLlib makes our environments
without an engine argument."""


class ScriptedModule(TorchRLModule):
    """The suite's scripted policy as an RLModule: a function of each conversation (replayed from its start), as a
    vision-language model generating the next response would be. ``None`` is an episode that has ended."""

    def setup(self) -> None:
        self.ended = 0

    def _forward(self, batch: dict, **kwargs) -> dict:
        actions = np.empty(len(batch[Columns.OBS]), dtype=object)
        for i, conversation in enumerate(batch[Columns.OBS]):
            self.ended += conversation is None
            actions[i] = "" if conversation is None else self.respond(conversation)
        return {Columns.ACTIONS: actions}

    def respond(self, conversation: list[Message]) -> str:
        policy = scripted_policy(self.model_config["suite"], self.model_config["protocol"])
        observations: list[list[Message]] = [[]]
        for message in conversation:  # the observations between the responses
            if message.role == "assistant":
                observations.append([])
            else:
                observations[-1].append(message)
        for turn, observation in enumerate(observations):
            response = policy.act(observation, {"turn": turn})
        return response


def rllib_config(env_config: dict, num_envs: int = 2, protocol: str = "pyvision") -> PPOConfig:
    module = RLModuleSpec(module_class=ScriptedModule, model_config={"suite": env_config.get("suite"),
                                                                     "protocol": protocol})
    return (PPOConfig()
            .environment("pyvision", env_config={"protocol": protocol, **env_config})
            .env_runners(num_env_runners=0, num_envs_per_env_runner=num_envs, **ENV_RUNNER_SETTINGS)
            .rl_module(rl_module_spec=module))


def test_the_env_runner_plays_episodes_of_the_env_it_made_by_name():
    live_before = default_engine().status().live_kernels
    runner = SingleAgentEnvRunner(config=rllib_config({"suite": "zoom", "reward": "accumulative", "max_turns": 4}))
    try:
        episodes = runner.sample(num_episodes=3)
        chunks = runner.sample(num_timesteps=3)  # episodes cut into chunks: the conversation stays whole
        metrics = runner.get_metrics()
        ended = runner.module.ended
    finally:
        runner.stop()
    assert default_engine().status().live_kernels <= live_before  # the episodes' kernels are gone

    assert len(episodes) >= 3 and all(isinstance(episode, SingleAgentEpisode) for episode in episodes)
    for episode in episodes:
        last = episode.get_infos(-1)
        assert episode.is_terminated and last["correct"] and last["end_reason"] == "answered"
        assert len(episode) == last["turn"] >= 2 and last["tool_calls"] >= 1  # it zoomed before answering
        assert episode.get_return() == pytest.approx(last["episode"]["return"])
        assert episode.get_return() > 1.0  # accuracy plus the tool bonus
        assert list(episode.get_rewards()[:-1]) == [0.0] * (len(episode) - 1)
        first, final = episode.get_observations(0), episode.get_observations(-1)
        assert first[0].role == "system" and any(isinstance(part, ImagePart) for part in first[1].content)
        assert final[:len(first)] == first  # each observation is the whole conversation so far, responses too
        assert [m.plain_text for m in final if m.role == "assistant"] == list(episode.get_actions())
    assert ended >= 1  # asked to act for an ended episode, the module got None (its "" went nowhere)
    assert metrics[EPISODE_RETURN_MEAN].peek() == pytest.approx(np.mean([e.get_return() for e in episodes]))

    assert sum(len(chunk) for chunk in chunks) >= 3
    for chunk in chunks:
        assert chunk.get_observations(0)[0].role == "system"  # a later chunk starts from a whole conversation


def test_bad_env_configs_are_refused_with_clear_errors():
    with pytest.raises(ValueError, match="must name the suite"):
        SingleAgentEnvRunner(config=rllib_config({"max_turns": 2}))
    with pytest.raises(KeyError, match="unknown suite 'no-such-suite'"):
        SingleAgentEnvRunner(config=rllib_config({"suite": "no-such-suite"}))
    without_settings = (PPOConfig().environment("pyvision", env_config={"suite": "zoom"})
                        .env_runners(num_env_runners=0))
    with pytest.raises(ValueError, match="ENV_RUNNER_SETTINGS"):
        SingleAgentEnvRunner(config=without_settings)


def test_episodes_under_the_openai_tools_protocol():
    runner = SingleAgentEnvRunner(config=rllib_config({"suite": "count", "max_turns": 4}, num_envs=1,
                                                      protocol="openai-tools"))
    try:
        (episode, *_) = runner.sample(num_episodes=1)
    finally:
        runner.stop()
    assert episode.is_terminated and episode.get_infos(-1)["correct"]
    calls = [m.tool_calls for m in episode.get_observations(-1) if m.role == "assistant"]
    assert any(calls) and episode.get_infos(-1)["tool_calls"] == sum(map(len, calls))  # the calls ran as calls


def test_a_visual_token_budget_truncates_the_episode_and_a_seed_replays_the_tasks():
    def play(seed: int) -> list[SingleAgentEpisode]:
        config = rllib_config({"suite": "zoom", "max_turns": 4, "max_visual_tokens": 300}).debugging(seed=seed)
        runner = SingleAgentEnvRunner(config=config)
        try:
            return runner.sample(num_episodes=2)
        finally:
            runner.stop()

    episodes = play(seed=7)
    assert all(episode.is_truncated and not episode.is_terminated for episode in episodes)
    assert {episode.get_infos(-1)["end_reason"] for episode in episodes} == {"max_visual_tokens"}
    assert all(episode.get_return() == 0.0 for episode in episodes)
    tasks = sorted(episode.get_infos(0)["task_id"] for episode in episodes)
    assert sorted(episode.get_infos(0)["task_id"] for episode in play(seed=7)) == tasks


def test_a_remote_env_runner_plays_episodes_and_leaves_no_kernel(local_ray):
    kernels_before = {process.pid for process in kernel_processes()}
    config = (rllib_config({"suite": "zoom", "max_turns": 4}, num_envs=1)
              .env_runners(num_env_runners=1, num_cpus_per_env_runner=0.25, sample_timeout_s=120))
    group = EnvRunnerGroup(config=config)
    try:
        ((episodes, started),) = group.foreach_env_runner(
            lambda runner: (runner.sample(num_episodes=2), runner.sample(num_timesteps=1)),  # then one left running
            local_env_runner=False, timeout_seconds=180)
        remote_kernels = {process.pid for process in kernel_processes()} - kernels_before
    finally:
        group.stop()
    assert len(episodes) >= 2
    assert all(episode.is_terminated and episode.get_infos(-1)["correct"] for episode in episodes)
    assert [len(chunk) for chunk in started] == [1] and not started[0].is_done
    assert remote_kernels  # the worker's kernels (the running episode's at least) are this test's descendants ...
    assert wait_until(lambda: not remote_kernels & {process.pid for process in kernel_processes()}, timeout=60)
