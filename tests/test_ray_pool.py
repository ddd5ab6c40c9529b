"""Environments on Ray actors, on a local Ray instance with fractional CPU reservations: the same episodes as
local ones, vector envs and the trainer over actors, backpressure, a worker killed mid-episode, and kernels
that cannot reach Ray. Every wait has a timeout."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest
import ray

from agents.scripted import scripted_policy
from benchmarks.evaluation.harness import Evaluation, read_results
from pyvision_env.pools import LocalEnvPool, PoolBusy, PoolConfig, WorkerLost
from pyvision_env.pools.ray_pool import RayEnvPool, RemoteEnv
from pyvision_env.vector import PyVisionVectorEnv

from .conftest import quiet_engine, wait_until

RAY_TEST_CONFIG = {"backend": "ray", "cpus_per_worker": 0.25, "call_timeout": 90.0, "slot_timeout": 90.0,
                   "start_timeout": 180.0}


@pytest.fixture(scope="module")
def pool(local_ray):
    with RayEnvPool(PoolConfig(workers=2, envs_per_worker=3, **RAY_TEST_CONFIG)) as pool:
        yield pool


def play(env, suite, seed):
    """A scripted episode: what was seen, done and scored, images as sizes."""
    policy = scripted_policy(suite, env.unwrapped.protocol)
    observation, info = env.reset(seed=seed)
    trace = [info["task_id"], texts(observation)]
    done = False
    while not done:
        observation, reward, terminated, truncated, info = env.step(policy.act(observation, info))
        trace.append((texts(observation), reward, terminated, truncated))
        done = terminated or truncated
    return trace + [{key: info[key] for key in ("correct", "score", "turn", "tool_calls", "visual_tokens",
                                                  "end_reason")}]


def texts(observation):
    return [(m.role, m.plain_text, [image.size for image in m.images]) for m in observation]


def test_episodes_through_actors_are_the_episodes_played_locally(pool):
    with quiet_engine(spare_kernels=1) as engine:
        local = LocalEnvPool(engine=engine)
        for suite in ("count", "zoom"):
            here, there = local.make_env(suite, max_turns=4), pool.make_env(suite, max_turns=4)
            assert isinstance(there, RemoteEnv) and there.tasks.name == here.unwrapped.tasks.name
            for seed in (0, 5):
                assert play(there, suite, seed) == play(here, suite, seed)
            here.close()
            there.close()
    status = pool.status()
    assert status["running"] == 0 and {w["isolation"] for w in status["workers"]} == {"bubblewrap"}


def test_a_vector_env_of_remote_envs_steps_them_together(pool):
    envs = pool.vector_env(3, "count", max_turns=3, reward="accumulative")
    assert isinstance(envs, PyVisionVectorEnv) and envs.engine is pool.loop
    observations, infos = envs.reset(seed=10)
    assert len(set(infos["task_id"])) == 3 and all(observations)
    assert pool.status()["running"] == 3  # one slot per running episode
    code = envs.envs[0].protocol.render_action(code="print(image_clue_0.size)")
    observations, *_, infos = envs.step([code, None, code])
    assert list(infos["active"]) == [True, False, True]
    assert "Text Result" in observations[0][-1].plain_text and observations[1] == []
    envs.close()
    assert pool.status()["running"] == 0


def grade_by_parity(prediction, task):
    """A grader another package registers (as the public benchmark loaders do): an answer of the right parity."""
    from pyvision_env.graders import Grade, parse_number

    value = parse_number(prediction)
    correct = value is not None and int(value) % 2 == int(task.answer) % 2
    return Grade(float(correct), correct, str(value))


def test_tasks_the_workers_do_not_know_travel_with_their_graders(pool, tmp_path):
    """A suite only the driver has, graded by a name only the driver registered: the worker gets the tasks with
    the grader itself (unpickling imports its module), not the name, so it grades as the driver would."""
    from PIL import Image

    from pyvision_env.graders import GRADERS
    from pyvision_env.tasks import Task, TaskSet

    GRADERS["test-parity"] = grade_by_parity
    Image.new("RGB", (8, 8)).save(tmp_path / "blank.png")
    tasks = TaskSet("parity", [Task(id="p", question="An even number?", answer="4", grader="test-parity",
                                    images=(str(tmp_path / "blank.png"),))])
    env = pool.make_env(tasks, max_turns=2)
    try:
        env.reset(seed=0)
        _, reward, terminated, _, info = env.step(env.protocol.render_action(answer="12"))
        assert terminated and info["correct"] and reward == 1.0
        env.reset(seed=0)
        assert env.step(env.protocol.render_action(answer="7"))[-1]["correct"] is False
    finally:
        env.close()
        del GRADERS["test-parity"]


def test_an_episode_waits_for_a_free_slot_under_the_global_cap(local_ray):
    config = PoolConfig(workers=1, envs_per_worker=4, max_concurrent_episodes=1,
                        **{**RAY_TEST_CONFIG, "slot_timeout": 2.0})
    with RayEnvPool(config) as capped:
        first, second = capped.make_env("count", max_turns=2), capped.make_env("count", max_turns=2)
        first.reset(seed=0)
        with pytest.raises(PoolBusy, match="no episode slot became free in 2 s"):
            second.reset(seed=1)
        waited: dict[str, float] = {}

        def reset_second():
            started = time.monotonic()
            second.reset(seed=1)
            waited["s"] = time.monotonic() - started

        thread = threading.Thread(target=reset_second)
        thread.start()
        time.sleep(0.5)
        assert capped.status()["running"] == 1 and "s" not in waited  # backpressure: it waits
        first.step("<answer>\\boxed{1}</answer>")  # the first episode ends and frees its slot
        thread.join(timeout=60)
        assert not thread.is_alive() and waited["s"] >= 0.4 and capped.status()["running"] == 1
        second.close()
        first.close()


def worker_tree(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def wait_gone(processes: list[psutil.Process], timeout: float = 30) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return alive


def test_a_worker_killed_mid_episode_raises_worker_lost_and_its_kernels_die(pool):
    env = pool.make_env("count", max_turns=4)
    policy = scripted_policy("count", env.protocol)
    observation, info = env.reset(seed=2)
    worker = env._worker
    kernels = worker_tree(worker.info["pid"])
    assert any(p.name() == "pyvision-kernel" or "ipykernel" in " ".join(p.cmdline()) for p in kernels)  # under it
    killed = worker.info["pid"]
    os.kill(killed, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(WorkerLost, match=f"env worker {worker.index} .* died during step"):
        env.step(policy.act(observation, info))
    assert time.monotonic() - started < 60 and pool.status()["running"] == 0
    assert wait_gone(kernels) == []  # its kernels died with it
    assert play(env, "count", 2)[-1]["correct"]  # the next episode runs (Ray restarted the worker)
    env.close()
    assert wait_until(lambda: pool.status()["workers"][worker.index]["pid"] != killed, timeout=60)
    assert pool.status()["workers"][worker.index]["losses"] == 1  # the pool learnt the restarted process


class KillingPolicy:
    """The scripted policy, which also kills the worker of the running episode at its first action (once)."""

    def __init__(self, suite, protocol, pool):
        self.inner, self.pool, self.killed = scripted_policy(suite, protocol), pool, []
        self.name = "killer"

    def act(self, observation, info):
        if not self.killed:
            worker = next(worker for worker in self.pool.workers if worker.active)
            self.killed.append(worker.info["pid"])
            os.kill(worker.info["pid"], signal.SIGKILL)
        return self.inner.act(observation, info)


@pytest.mark.parametrize("on_lost", ["retry", "fail"])
def test_eval_retries_or_records_an_episode_whose_worker_died(local_ray, tmp_path, on_lost):
    config = PoolConfig(workers=2, envs_per_worker=1, on_worker_lost=on_lost, max_retries=1, **RAY_TEST_CONFIG)
    with RayEnvPool(config) as killing_pool:
        policies = []

        def make_policy(suite, protocol):
            policies.append(KillingPolicy(suite, protocol, killing_pool))
            return policies[-1]

        summary = Evaluation(["count"], make_policy, tmp_path / "run", limit=2, progress=False, pool=killing_pool,
                             env_options={"max_turns": 4}).run()
    records = sorted(read_results(tmp_path / "run"), key=lambda r: r["task_id"])
    assert len(records) == 2 and len(policies[0].killed) == 1
    if on_lost == "retry":
        assert [r["attempts"] for r in records] == [2, 1] and all(r["correct"] for r in records)
        assert summary["suites"][0]["accuracy"] == 1.0
    else:
        assert records[0]["end_reason"] == "worker_lost" and "env worker" in records[0]["error"]
        assert records[1]["correct"] and summary["suites"][0]["failed"] == 1


def test_kernels_on_workers_cannot_reach_ray_or_the_network(pool):
    gcs_host, gcs_port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    session_dir = ray._private.worker._global_node.get_session_dir_path()
    env = pool.make_env("count", max_turns=2)
    env.reset(seed=0)
    probe = f"""
import os, socket
for host in ({gcs_host!r}, "127.0.0.1"):
    try:
        socket.create_connection((host, {gcs_port}), timeout=3)
        print("REACHED", host)
    except OSError as error:
        print("BLOCKED", host, type(error).__name__)
print("SESSION_VISIBLE", os.path.exists({session_dir!r}))
print("RAY_VARS", sorted(k for k in os.environ if k.startswith("RAY")))
print("INTERFACES", sorted(name for _, name in socket.if_nameindex()))
print("SHM", sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else "absent")
print("RAY_TOKEN", os.path.exists(os.path.expanduser("~/.ray")) or os.path.exists("/root/.ray"))
"""
    observation, *_ = env.step(env.protocol.render_action(code=probe))
    text = observation[-1].plain_text
    env.close()
    assert f"BLOCKED {gcs_host}" in text and "BLOCKED 127.0.0.1" in text and "REACHED" not in text, text
    assert "SESSION_VISIBLE False" in text and "RAY_VARS []" in text and "INTERFACES ['lo']" in text, text
    assert ("SHM []" in text or "SHM absent" in text) and "RAY_TOKEN False" in text, text  # no object store


def test_the_trainer_collects_rollouts_through_actors(local_ray, tmp_path):
    from agents.tiny_model import make_tiny_model
    from trainers.demo import tokenizer_corpus
    from trainers.grpo import GRPOTrainer

    from .scripted_generation import ScriptedTallyGeneration
    from .test_trainer import small_config

    model_dir = make_tiny_model(tmp_path / "model", corpus=tokenizer_corpus())
    config = small_config(tmp_path, model_dir, **{"pool.backend": "ray", "pool.workers": 2, "pool.envs_per_worker": 2,
                                                  "pool.cpus_per_worker": 0.25, "pool.call_timeout": 90,
                                                  "eval.every": 0})
    with GRPOTrainer(config) as trainer:
        assert all(isinstance(env, RemoteEnv) for env in trainer.train_envs.envs)
        trainer.backend = trainer.collector.backend = ScriptedTallyGeneration(trainer.chat)
        train = trainer.train()["train"]
    assert 0 < train["tool_calls"] < 1 and train["accuracy"] == pytest.approx(train["tool_calls"])
    assert train["trained_trajectories"] >= 2 and train["grad_norm"] > 0
