"""The async vector env: concurrency, masked steps, autoreset modes, seeding, failures; Gymnasium's vector classes.

Every reset starts a kernel (about a second of CPU), so the tests use few sub-environments and episodes.
"""

from __future__ import annotations

import functools
import time

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from PIL import Image

from pyvision_env import PyVisionEnv, Task, TaskSet, register_suite
from pyvision_env.execution import set_default_engine
from pyvision_env.messages import Message
from pyvision_env.protocols import get_protocol
from pyvision_env.vector import PyVisionVectorEnv
from pyvision_env.wrappers.recording import RecordEpisodes, read_episodes

from .conftest import kernel_processes, quiet_engine, wait_until

PROTOCOL = get_protocol("pyvision")
COMPARED_INFO = ("task_id", "turn", "tool_calls", "tool_errors", "format_errors", "action_kind", "end_reason",
                 "correct", "score")


def code(source: str) -> str:
    return PROTOCOL.render_action(code=source)


def answer(value: str) -> str:
    return PROTOCOL.render_action(answer=value)


def make_tasks(directory) -> TaskSet:
    """Twelve numeric questions on one small image; the answer of task ``t<i>`` is ``i``."""
    image = directory / "digits.png"
    Image.fromarray(np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)).save(image)
    return TaskSet("vector-tests", [Task(id=f"t{i}", question=f"What is {i}?", answer=str(i), images=(str(image),),
                                         grader="numeric") for i in range(12)])


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> TaskSet:
    return make_tasks(tmp_path_factory.mktemp("vector"))


@pytest.fixture(scope="module")
def bare_engine():
    """No pool: every kernel it has is one a session holds, so ``live_kernels`` counts the leaks."""
    eng = quiet_engine(spare_kernels=0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def vec4(engine, tasks):
    envs = PyVisionVectorEnv(4, tasks, engine=engine)
    envs.reset(seed=0)
    envs.step([code("x = 1")] * 4)  # the first cell of a fresh kernel is slower
    yield envs
    envs.close()


def texts(observation: list[Message]) -> list[str]:
    return [message.plain_text for message in observation]


# --- concurrency and masks ---------------------------------------------------------------------------

def test_steps_run_concurrently(vec4):
    started = time.perf_counter()
    observations, rewards, terminated, truncated, infos = vec4.step([code("import time; time.sleep(0.5); "
                                                                          "print('slept')")] * 4)
    elapsed = time.perf_counter() - started
    assert elapsed < 1.6, f"4 cells of 0.5 s took {elapsed:.2f} s: not concurrent"
    assert all("slept" in texts(obs)[0] for obs in observations)
    assert rewards.dtype == np.float64 and not rewards.any() and not terminated.any() and not truncated.any()
    assert infos["active"].all() and vec4.envs[0].unwrapped.timings["execute_ms"] >= 500


def test_only_active_envs_step(vec4):
    turns = vec4.step([code("print('all')")] * 4)[4]["turn"]
    observations, rewards, terminated, truncated, infos = vec4.step([code("print('a')"), None, None, code("1")])
    assert observations[1] == observations[2] == [] and observations[0] and observations[3]
    assert list(infos["active"]) == list(infos["_turn"]) == [True, False, False, True]
    assert list(infos["turn"]) == [turns[0] + 1, 0, 0, turns[3] + 1]
    assert not rewards.any() and not terminated.any() and not truncated.any()
    assert list(vec4.step([code("2")] * 4)[4]["turn"] - turns) == [2, 1, 1, 2]

    observations, _, _, _, infos = vec4.step([None] * 4)
    assert observations == ([],) * 4 and list(infos) == ["active", "_active"] and not infos["active"].any()


def test_actions_are_checked_before_anything_runs(vec4, engine, tasks):
    with pytest.raises(ValueError, match="takes 4 actions"):
        vec4.step([code("1")] * 3)
    with pytest.raises(TypeError, match="single str"):
        vec4.step(code("1"))
    with pytest.raises(TypeError, match="action 2 must be a str"):
        vec4.step([None, None, 3, None])
    with pytest.raises(ValueError, match="reset_mask"):
        vec4.reset(options={"reset_mask": np.array([True, False])})
    with pytest.raises(ValueError, match="no sub-environment"):
        vec4.reset(options=[None] * 4)
    fresh = PyVisionVectorEnv(2, tasks, engine=engine)
    with pytest.raises(gym.error.ResetNeeded, match="sub-environment 0 has no episode"):
        fresh.step([code("1"), None])
    fresh.close()
    with pytest.raises(RuntimeError, match="closed"):
        fresh.reset()


# --- autoreset ----------------------------------------------------------------------------------------

def pinned_pair(engine, tasks, mode: AutoresetMode) -> PyVisionVectorEnv:
    """Two envs on tasks t0 and t1 (per-env reset options)."""
    envs = PyVisionVectorEnv(2, tasks, engine=engine, autoreset_mode=mode)
    _, infos = envs.reset(options=[{"task_index": 0}, {"task_index": 1}])
    assert list(infos["task_id"]) == ["t0", "t1"]
    assert envs.metadata["autoreset_mode"] is mode
    return envs


def test_autoreset_next_step(engine, tasks):
    envs = pinned_pair(engine, tasks, AutoresetMode.NEXT_STEP)
    observations, rewards, terminated, truncated, infos = envs.step([answer("0"), code("print('one')")])
    assert observations[0] == [] and list(rewards) == [1.0, 0.0] and list(terminated) == [True, False]
    assert infos["end_reason"][0] == "answered" and infos["correct"][0] is True and infos["correct"][1] is None

    observations, rewards, terminated, truncated, infos = envs.step([answer("ignored"), code("print('two')")])
    assert observations[0][-1].role == "user" and "What is" in texts(observations[0])[-1]  # the reset's
    assert list(rewards) == [0.0, 0.0] and not (terminated | truncated).any() and list(infos["turn"]) == [0, 2]

    _, _, _, _, infos = envs.step([code("1"), None])
    assert list(infos["turn"]) == [1, 0] and infos["action_kind"][0] == "code"
    envs.close()


def test_autoreset_same_step(engine, tasks):
    envs = pinned_pair(engine, tasks, AutoresetMode.SAME_STEP)
    observations, rewards, terminated, truncated, infos = envs.step([answer("5"), code("print('one')")])
    assert list(rewards) == [0.0, 0.0] and list(terminated) == [True, False] and not truncated.any()
    assert "What is" in texts(observations[0])[-1] and infos["turn"][0] == 0  # already reset
    assert list(infos["_final_obs"]) == [True, False] and infos["final_obs"][0] == []
    final = infos["final_info"]
    assert final["end_reason"][0] == "answered" and not final["correct"][0] and final["task_id"][0] == "t0"
    assert list(infos["_final_info"]) == list(final["_turn"]) == [True, False]

    _, _, terminated, _, infos = envs.step([code("1"), code("2")])
    assert list(infos["turn"]) == [1, 2] and not terminated.any()
    envs.close()


def test_autoreset_disabled(engine, tasks):
    envs = pinned_pair(engine, tasks, AutoresetMode.DISABLED)
    _, rewards, terminated, _, _ = envs.step([answer("0"), code("1")])
    assert list(terminated) == [True, False] and rewards[0] == 1.0
    with pytest.raises(gym.error.ResetNeeded, match="autoreset is disabled"):
        envs.step([code("1"), code("2")])
    assert envs.step([None, code("2")])[4]["turn"][1] == 2  # the refused step did not run env 1

    observations, infos = envs.reset(seed=3, options={"reset_mask": np.array([True, False])})
    assert observations[1] == [] and list(infos["active"]) == [True, False] and infos["turn"][0] == 0
    assert list(envs.step([code("1"), code("2")])[4]["turn"]) == [1, 3]
    envs.close()


# --- seeding and equivalence with single environments ------------------------------------------------

def test_seeded_like_single_envs_with_the_same_results(engine, tasks):
    """Env ``i`` is seeded with ``seed + i``; the results equal those of single envs given the same actions."""
    script = [[code("print(image_clue_0.size)"), code("print(7 * 6)")], [code("1/0"), answer("3")],
              [answer("4"), None]]
    envs = PyVisionVectorEnv(2, tasks, engine=engine)
    observations, infos = envs.reset(seed=11)
    assert [env.np_random_seed for env in envs.envs] == [11, 12]
    vector_run = [(texts(observations[0]), texts(observations[1]), list(infos["task_id"]))]
    for actions in script:
        observations, rewards, terminated, truncated, infos = envs.step(actions)
        vector_run.append([(texts(observations[i]), rewards[i], terminated[i], truncated[i],
                            [infos[key][i] for key in COMPARED_INFO]) for i in range(2) if actions[i]])
    assert list(envs.reset(seed=11)[1]["task_id"]) == vector_run[0][2]  # deterministic
    envs.close()

    singles = [PyVisionEnv(tasks, engine=engine) for _ in range(2)]
    first = [single.reset(seed=11 + i) for i, single in enumerate(singles)]
    single_run = [(texts(first[0][0]), texts(first[1][0]), [info["task_id"] for _, info in first])]
    for actions in script:
        steps = [(i, singles[i].step(action)) for i, action in enumerate(actions) if action]
        single_run.append([(texts(obs), reward, term, trunc, [info[key] for key in COMPARED_INFO])
                           for i, (obs, reward, term, trunc, info) in steps])
    for single in singles:
        single.close()
    assert vector_run == single_run


# --- failures and cleanup -----------------------------------------------------------------------------

def test_a_failing_env_does_not_stop_the_others_and_close_leaves_no_kernels(bare_engine, tasks):
    def explode(prediction: str, task: Task):
        raise RuntimeError("grader exploded")

    boom = Task(id="boom", question="?", answer="1", images=tasks[0].images, grader=explode)
    envs = PyVisionVectorEnv(3, TaskSet("boom", [*tasks, boom]), engine=bare_engine)
    envs.reset(options=[{"task_id": "boom"}, {"task_index": 0}, {"task_index": 1}])
    assert wait_until(lambda: bare_engine.status().live_kernels == 3, timeout=20)  # kernels open after the reset

    sleep = code("import time; time.sleep(0.3); print('finished')")
    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="grader exploded") as raised:
        envs.step([answer("1"), sleep, sleep])
    assert time.perf_counter() - started >= 0.3  # raised after the others finished
    assert "sub-environment 0" in "".join(getattr(raised.value, "__notes__", []))
    with pytest.raises(gym.error.ResetNeeded, match="sub-environment 0"):
        envs.step([code("1"), None, None])
    assert list(envs.step([None, code("2"), code("3")])[4]["turn"]) == [0, 2, 2]

    envs.close()
    assert bare_engine.status().live_kernels == 0


def test_from_envs_checks_its_environments(engine, bare_engine, tasks):
    env_id = register_suite("vector-tests", tasks, replace=True)
    made = [gym.make(env_id, engine=engine) for _ in range(2)]
    envs = PyVisionVectorEnv.from_envs(made, autoreset_mode="SameStep")
    assert envs.envs == [env.env.env for env in made]  # gym.make's checker and order wrappers are looked through
    assert envs.autoreset_mode is AutoresetMode.SAME_STEP
    with pytest.raises(ValueError, match="share one Engine"):
        PyVisionVectorEnv.from_envs([PyVisionEnv(tasks, engine=engine), PyVisionEnv(tasks, engine=bare_engine)])
    with pytest.raises(TypeError, match="wrapped in TimeLimit"):
        PyVisionVectorEnv.from_envs([gym.make(env_id, engine=engine, max_episode_steps=3)])
    with pytest.raises(ValueError, match="more than once"):
        PyVisionVectorEnv.from_envs([made[0], made[0]])


def test_recorded_sub_environments_share_one_run_folder(engine, tasks, tmp_path):
    recorded = [RecordEpisodes(PyVisionEnv(tasks, engine=engine), tmp_path) for _ in range(2)]
    envs = PyVisionVectorEnv.from_envs(recorded, autoreset_mode="Disabled")
    envs.reset(options=[{"task_index": 3}, {"task_index": 5}])
    envs.step([code("print(6 * 7)"), code("x = 1")])
    envs.step([answer("3"), None])
    envs.close()  # the second episode is abandoned by close and recorded as unfinished
    records = sorted(read_episodes(tmp_path), key=lambda r: r["task_id"])
    assert [(r["task_id"], r["finished"]) for r in records] == [("t3", True), ("t5", False)]
    assert records[0]["totals"]["correct"] is True and records[0]["totals"]["tool_calls"] == 1


def test_make_vec_builds_the_async_vector_env(engine, tasks):
    env_id = register_suite("vector-tests", tasks, replace=True, max_turns=3)
    envs = gym.make_vec(env_id, num_envs=3, engine=engine, autoreset_mode=AutoresetMode.DISABLED)
    assert isinstance(envs, PyVisionVectorEnv) and envs.num_envs == 3 and envs.spec.id == env_id
    assert envs.metadata["autoreset_mode"] is AutoresetMode.DISABLED
    assert all(env.unwrapped.engine is engine and env.unwrapped.max_turns == 3 for env in envs.envs)
    assert envs.observation_space.contains(([], [], [])) and envs.action_space.contains(("a", "b", "c"))
    envs.close()


# --- Gymnasium's own vector classes ----------------------------------------------------------------

def test_gymnasium_sync_vector_env(engine, tasks):
    env_id = register_suite("vector-tests", tasks, replace=True)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id, engine=engine) for _ in range(2)])
    observations, infos = envs.reset(seed=11)
    assert isinstance(observations, tuple) and all(isinstance(m, Message) for obs in observations for m in obs)
    observations, rewards, terminated, _, infos = envs.step((code("print(6 * 7)"), answer("-1")))
    assert "42" in texts(observations[0])[0] and observations[1] == []
    assert list(terminated) == [False, True] and list(rewards) == [0.0, 0.0] and list(infos["turn"]) == [1, 1]
    envs.close()


def _make_in_subprocess(directory: str) -> gym.Env:
    """Runs in an ``AsyncVectorEnv`` worker: register the suite there (a spawned worker has none), make the env."""
    from pathlib import Path

    return gym.make(register_suite("vector-tests", make_tasks(Path(directory)), replace=True))


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("context", ["spawn", "fork"])
def test_gymnasium_async_vector_env(engine, tmp_path, context):
    """Subprocess workers, each with its own default engine. A forked worker inherits the parent's default
    engine (the dummy env ``AsyncVectorEnv`` makes first) without its loop thread: it must start its own."""
    engine.warm_up()  # the pool's kernels are fully started: they are the only ones that may stay
    ours = {process.pid for process in kernel_processes()}
    previous = set_default_engine(engine)  # the parent's dummy env uses the test engine
    try:
        envs = gym.vector.AsyncVectorEnv([functools.partial(_make_in_subprocess, str(tmp_path))] * 2,
                                         shared_memory=False, context=context)
        envs.reset(seed=0)
        observations, rewards, terminated, _, infos = envs.step((code("print(6 * 7)"), answer("-1")))
        assert "42" in texts(observations[0])[0] and list(terminated) == [False, True]
        assert list(rewards) == [0.0, 0.0] and list(infos["turn"]) == [1, 1]
        envs.close()
    finally:
        set_default_engine(previous)
    assert wait_until(lambda: {p.pid for p in kernel_processes() if p.status() != "zombie"} <= ours, timeout=20)
