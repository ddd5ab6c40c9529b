"""The SkyRL-Gym adapter, driven through SkyRL-Gym's own registry and ``make``, on real kernels."""

from __future__ import annotations

import pandas as pd
import pytest

skyrl_gym = pytest.importorskip("skyrl_gym", reason="the 'skyrl' extra is not installed")
pytestmark = pytest.mark.usefixtures("framework_engine")

from agents.scripted import scripted_policy  # noqa: E402
from pyvision_env.execution import default_engine  # noqa: E402
from pyvision_env.integrations import skyrl  # noqa: E402
from pyvision_env.messages import from_openai  # noqa: E402


def play(env, protocol: str = "pyvision") -> tuple[list[dict], list, dict]:
    """init + steps with the suite's scripted policy until done; the messages, step outputs and the metrics."""
    messages, _ = env.init([{"role": "user", "content": "ignored: the episode brings its own"}])
    policy = scripted_policy(env.env.unwrapped.tasks.name, protocol)
    observation, info, outputs = from_openai(messages), {"turn": 0}, []
    while True:
        output = env.step(policy.act(observation, info))
        outputs.append(output)
        if output["done"]:
            return messages, outputs, env.get_metrics()
        observation, info = from_openai(output["observations"]), env._last_info


def test_rows_written_for_skyrl_play_through_skyrl_gym_make(tmp_path):
    path = skyrl.write_dataset("zoom", tmp_path / "zoom.parquet")
    rows = pd.read_parquet(path)
    assert len(rows) >= 4 and set(rows["env_class"]) == {"pyvision"}
    row = rows.iloc[0].to_dict()
    assert row["reward_spec"]["ground_truth"] and row["extra_info"]["suite"] == "zoom"
    live_before = default_engine().status().live_kernels

    env = skyrl_gym.make("pyvision", env_config={"reward": "accumulative", "max_turns": 4}, extras=row)
    try:
        messages, outputs, metrics = play(env)
    finally:
        env.close()
    first = messages[-1]["content"]
    assert any(part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/png;base64,")
               for part in first)  # the task's image travels to the model
    assert [output["done"] for output in outputs] == [False] * (len(outputs) - 1) + [True]
    assert all(output["reward"] == 0.0 for output in outputs[:-1])
    last = outputs[-1]
    assert last["metadata"]["correct"] is True and last["reward"] > 1.0  # accuracy plus the tool bonus
    assert last["metadata"]["reward_components"]["accuracy"] == 1.0
    assert metrics["tool_calls"] >= 1 and metrics["turn"] == len(outputs) and metrics["correct"] is True
    assert default_engine().status().live_kernels <= live_before  # the episode's kernel is gone


def test_a_wrong_answer_scores_zero_and_bad_rows_are_refused():
    row = skyrl.dataset_rows("count")[0]
    env = skyrl_gym.make("pyvision", env_config={"max_turns": 2}, extras=row)
    try:
        env.init([])
        output = env.step("<answer>\\boxed{-1}</answer>")
    finally:
        env.close()
    assert output["done"] and output["reward"] == 0.0 and output["metadata"]["correct"] is False
    with pytest.raises(ValueError, match="extra_info with 'suite' and 'task_id'"):
        skyrl_gym.make("pyvision", extras={"extra_info": {"suite": "count"}})
    with pytest.raises(ValueError, match="has no task 'missing'"):
        skyrl_gym.make("pyvision", extras={"extra_info": {"suite": "count", "task_id": "missing"}})
    skyrl.register()  # again: no error
