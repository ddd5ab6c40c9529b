"""A node of a (local, two-node) Ray cluster dies mid-episode: the episode's next call raises WorkerLost instead
of hanging, Ray restarts the worker on the surviving node, and the episode played again succeeds."""

from __future__ import annotations

import time

import pytest
import ray
from ray.cluster_utils import Cluster

from agents.scripted import scripted_policy
from pyvision_env.pools import PoolConfig, WorkerLost
from pyvision_env.pools.ray_pool import RayEnvPool

from .conftest import wait_until


@pytest.fixture
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20})
    second = cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    try:
        yield cluster, second
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_node_lost_mid_episode_is_a_worker_lost_and_the_episode_runs_again(two_nodes):
    cluster, second = two_nodes
    config = PoolConfig(backend="ray", workers=2, envs_per_worker=1, cpus_per_worker=0.5, call_timeout=90,
                        slot_timeout=120, start_timeout=180)
    with RayEnvPool(config) as pool:
        assert {worker["node"] for worker in pool.status()["workers"]} == {cluster.head_node.node_id,
                                                                           second.node_id}  # spread
        envs = [pool.make_env("count", max_turns=4) for _ in range(2)]
        starts = [env.reset(seed=seed) for seed, env in enumerate(envs)]  # one episode on each node
        doomed = next(i for i, env in enumerate(envs) if env._worker.info["node"] == second.node_id)
        env, (observation, info) = envs[doomed], starts[doomed]
        cluster.remove_node(second)
        began = time.monotonic()
        with pytest.raises(WorkerLost, match="died during step"):
            env.step(scripted_policy("count", env.protocol).act(observation, info))
        assert time.monotonic() - began < 90
        survivor = envs[1 - doomed]
        _, _, terminated, *_ = survivor.step("<answer>\\boxed{1}</answer>")
        assert terminated  # the other node's episode was not disturbed
        policy = scripted_policy("count", env.protocol)
        observation, info = env.reset(seed=doomed)  # again: Ray restarted its worker on the head node
        done = False
        while not done:
            observation, _, terminated, truncated, info = env.step(policy.act(observation, info))
            done = terminated or truncated
        assert info["correct"] and env._worker is None
        assert wait_until(lambda: [worker["node"] for worker in pool.status()["workers"]]
                          == [cluster.head_node.node_id] * 2, timeout=30)  # the pool learnt where it went
