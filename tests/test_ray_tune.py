"""Ray Tune / RLlib: registered suites are created by name in Ray worker processes, and a Tune sweep runs
trials of trainer settings with the tiny model on CPU."""

from __future__ import annotations

import csv
import json

import pytest

from pyvision_env.make import make_env
from pyvision_env.pools.tune import register_ray_envs
from pyvision_env.registry import load_suite, register_suite

from .conftest import quiet_engine


def first_turn(env):
    """Reset with seed 0 and run one cell: what the task and the cell's output were."""
    observation, info = env.reset(seed=0)
    observation, *_ = env.step(env.unwrapped.protocol.render_action(code="print(image_clue_0.size)"))
    env.close()
    return info["task_id"], observation[-1].plain_text


def test_registered_suites_are_created_by_name_on_ray_workers(local_ray, tmp_path):
    ray = local_ray
    register_suite("ray-few-counts", load_suite("count").split("held-out"), replace=True)  # not built in
    (tmp_path / "broken.jsonl").write_text("this is not JSON\n")
    register_suite("ray-broken", tmp_path / "broken.jsonl", replace=True)
    with pytest.warns(UserWarning, match="'ray-broken' is not registered with Ray"):
        ids = register_ray_envs()  # every suite that loads; the broken one is left out
    assert {"PyVision/Count-v0", "PyVision/Zoom-v0", "PyVision/RayFewCounts-v0"} <= set(ids)
    assert "PyVision/RayBroken-v0" not in ids
    with pytest.raises(KeyError, match="unknown suite"):
        register_ray_envs(["no-such-suite"])
    with pytest.raises((OSError, ValueError)):
        register_ray_envs(["ray-broken"])

    @ray.remote(num_cpus=0.25)
    def play_by_name(name, env_config):
        """What RLlib's env runners do: look the name up in Tune's registry and call its creator."""
        from ray.tune.registry import ENV_CREATOR, _global_registry

        return first_turn(_global_registry.get(ENV_CREATOR, name)(env_config))

    with quiet_engine(spare_kernels=1) as engine:
        for env_id, suite in (("PyVision/Count-v0", "count"), ("PyVision/RayFewCounts-v0", "ray-few-counts")):
            remote = ray.get(play_by_name.remote(env_id, {"max_turns": 2}), timeout=180)
            local = first_turn(make_env(suite, max_turns=2, engine=engine))
            assert remote == local and "Text Result" in remote[1]


def test_a_tune_sweep_runs_one_trial_per_setting(local_ray, tmp_path):
    from trainers.tune_sweep import run_sweep

    rows = run_sweep(tmp_path, {"algorithm.lr": ["3e-4", "1e-3"]}, overrides=["steps=1", "eval.every=1"],
                     cpus_per_trial=1.0)
    assert sorted(row["algorithm.lr"] for row in rows) == ["1e-3", "3e-4"]
    for row in rows:
        assert row["error"] is None and row["updates"] == 1, row
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["eval/accuracy"] <= 1
    table = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert len(table) == 2 and "| algorithm.lr |" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    learning_rates = sorted(json.loads(path.read_text())["algorithm"]["lr"]
                            for path in (tmp_path / "sweep").glob("*/run/config.json"))
    assert learning_rates == [3e-4, 1e-3]  # each trial trained with its own setting
