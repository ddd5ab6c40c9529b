"""Video suites and policies end to end: generation, on-demand scripted policies under both video protocols,
the uniform baseline's token cost, gym.make with rewards."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import pyvision_env  # noqa: F401  (registers the suites)
from agents.baselines import UniformVideoPolicy, sampled_frames
from agents.scripted import scripted_policy
from pyvision_env import PyVisionEnv
from pyvision_env.suites import CACHE_ENV, VIDEO_SUITES
from pyvision_env.video import PyAVVideoReader

TASKS = 3


@pytest.fixture(scope="module")
def video_tasks(tmp_path_factory):
    """The first tasks of each video suite, generated into a private cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("video-cache")))
        yield {name: suite.load(count=TASKS) for name, suite in VIDEO_SUITES.items()}


def play(env, policy, index: int) -> dict:
    observation, info = env.reset(options={"task_index": index})
    while True:
        observation, _, terminated, truncated, info = env.step(policy.act(observation, info))
        if terminated or truncated:
            return info


def test_generation_is_seeded_and_matches_the_metadata(video_tasks, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    again = VIDEO_SUITES["video-event"].load(count=TASKS)
    assert [t.answer for t in again] == [t.answer for t in video_tasks["video-event"]]
    for task in video_tasks["video-event"]:
        assert task.answer == str(round(task.metadata["switch_seconds"]))
    for task in video_tasks["video-count"]:
        assert task.answer == str(len(task.metadata["flashes"]))
    reader = PyAVVideoReader(video_tasks["video-needle"][0].videos[0])
    info = reader.info()
    assert (info.width, info.height, info.fps) == (128, 96, pytest.approx(4.0))
    assert info.keyframe_interval <= 8 and 120 <= info.duration <= 181
    shown = video_tasks["video-needle"][0].metadata["shown_seconds"]
    card = reader[reader.index_at(shown + 1)].asnumpy()
    assert (card.min(axis=-1) > 235).sum() > 300  # the card is there when the metadata says
    assert (reader[reader.index_at(max(0.0, shown - 5))].asnumpy().min(axis=-1) > 235).sum() < 50


@pytest.mark.parametrize("suite", list(VIDEO_SUITES))
def test_on_demand_policy_solves_its_suite_with_few_tokens(video_tasks, engine, suite):
    tasks = video_tasks[suite]
    on_demand = PyVisionEnv(tasks, engine=engine)
    policy = scripted_policy(suite, on_demand.protocol)
    infos = [play(on_demand, policy, index) for index in range(TASKS)]
    on_demand.close()
    assert all(info["correct"] and info["tool_errors"] == 0 for info in infos), infos
    assert all(info["frames_fetched"] >= 1 for info in infos)

    uniform = PyVisionEnv(tasks, engine=engine, video_context="uniform", video_fps=1.0)
    baseline = [play(uniform, UniformVideoPolicy(uniform.protocol), index) for index in range(TASKS)]
    uniform.close()
    assert all(info["tool_calls"] == 0 and info["frames_fetched"] == 0 for info in baseline)
    tokens = np.mean([i["visual_tokens"] for i in infos]), np.mean([i["visual_tokens"] for i in baseline])
    assert tokens[0] <= 0.2 * tokens[1], tokens


def test_uniform_view_gives_labelled_frames_at_one_per_second(video_tasks, engine):
    task = video_tasks["video-event"][0]
    env = PyVisionEnv(video_tasks["video-event"], engine=engine, video_context="uniform", video_fps=1.0)
    observation, info = env.reset(options={"task_index": 0})
    frames = sampled_frames(observation)
    seconds = task.metadata["seconds"]
    assert [t for t, _ in frames] == pytest.approx([float(k) for k in range(int(seconds))])
    assert info["visual_tokens"] == len(frames) * env.token_rule.count(*frames[0][1].size)
    env.close()
    thumbnails = PyVisionEnv(video_tasks["video-event"], engine=engine, video_thumbnails=3)
    observation, info = thumbnails.reset(options={"task_index": 0})
    assert len(sampled_frames(observation)) == 3 and "video_clue_0" in observation[-1].plain_text
    thumbnails.close()


def test_openai_tools_protocol_runs_video_episodes(video_tasks, engine):
    env = PyVisionEnv(video_tasks["video-measure"], engine=engine, protocol="openai-tools")
    info = play(env, scripted_policy("video-measure", env.protocol), 0)
    assert info["correct"] and info["tool_calls"] == 1
    env.close()
    with pytest.raises(ValueError, match="does not support video"):
        PyVisionEnv(video_tasks["video-measure"], engine=engine, protocol="codevision")


def test_registered_video_env_with_reward_and_frame_budget(video_tasks, engine):
    env = gym.make("PyVision/VideoNeedle-v0", engine=engine, reward="accumulative", max_frames=20)
    try:
        env.reset(seed=0)
        protocol = env.unwrapped.protocol
        _, _, _, _, info = env.step(protocol.render_action(code="video_clue_0.get_batch(list(range(0, 200, 5)))"))
        assert info["tool_errors"] == 1 and info["frames_fetched"] == 0
        observation, _, _, _, info = env.step(protocol.render_action(code="print(video_clue_0[3].shape)"))
        assert "(96, 128, 3)" in observation[0].plain_text and info["frames_fetched"] == 1
        _, _, terminated, _, info = env.step(protocol.render_action(answer="0"))
        assert terminated and info["episode"]["components"]["tool_turns"] == 2.0
    finally:
        env.close()
