"""Every renamed public name still works for one release, with a DeprecationWarning that names the new one."""

from __future__ import annotations

import importlib
import sys

import pytest

import pyvision_env
from agents.base import Conversation
from pyvision_env.execution import AsyncEngine, Engine, ExecutionLimits
from pyvision_env.registry import get_suite
from trainers.ofr import OFRConfig, OFRSelector


def test_renamed_keywords_map_to_the_new_ones():
    with pytest.warns(DeprecationWarning, match=r"ExecutionLimits\(episode_timeout=...\).*max_execution_time="):
        limits = ExecutionLimits(episode_timeout=5.0, max_images_per_episode=3)
    assert (limits.max_execution_time, limits.max_images_per_session) == (5.0, 3)
    with pytest.raises(TypeError, match="both"):
        ExecutionLimits(episode_timeout=5.0, max_execution_time=6.0)
    with pytest.warns(DeprecationWarning, match="use context_images="):
        conversation = Conversation(max_images=2, max_visual_tokens=100)
    assert (conversation.context_images, conversation.context_visual_tokens) == (2, 100)
    with pytest.warns(DeprecationWarning, match=r"AsyncEngine\(pool_size=...\).*use spare_kernels="):
        assert AsyncEngine(pool_size=3)._spare_kernels == 3
    with pytest.warns(DeprecationWarning, match=r"Engine\(pool_size=...\).*use spare_kernels="):
        engine = Engine(pool_size=0)
    try:
        assert engine.status().ready_kernels == 0
    finally:
        engine.close()
    with pytest.warns(DeprecationWarning, match="OFRSelector"):
        assert OFRSelector(OFRConfig(target_size=16, group_size=4)).group_size == 4


def test_renamed_functions_and_methods():
    with pytest.warns(DeprecationWarning, match="use pyvision_env.generate_tasks"):
        assert pyvision_env.from_generator is pyvision_env.generate_tasks
    with pytest.warns(DeprecationWarning, match="use pyvision_env.tasks.load_hf_dataset"):
        from pyvision_env.tasks import from_hf_dataset
    assert from_hf_dataset is pyvision_env.load_hf_dataset
    with pytest.raises(AttributeError):
        pyvision_env.no_such_name  # noqa: B018
    suite = get_suite("zoom")
    with pytest.warns(DeprecationWarning, match=r"Suite.load\(\)"):
        assert suite.tasks() is suite.load()


@pytest.mark.parametrize("old, new, name", [
    ("pyvision_env.rewards", "pyvision_env.wrappers", "AccumulativeToolReward"),
    ("pyvision_env.recording", "pyvision_env.wrappers.recording", "RecordEpisodes"),
    ("agents.video_policies", "agents.scripted.video and agents.baselines", "UniformVideoPolicy"),
    ("benchmarks.harness", "benchmarks.evaluation.harness", "Evaluation"),
    ("benchmarks.public", "benchmarks.evaluation.public", "register_public_benchmarks"),
    ("benchmarks.robustness", "benchmarks.evaluation.robustness", "register_robust_variant"),
])
def test_moved_modules_still_import(old, new, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"module {old} moved to {new}"):
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new.split(" and ")[-1]), name)


def test_the_old_environment_variable_sizes_the_default_engine(monkeypatch):
    from pyvision_env.execution import default_engine, set_default_engine

    monkeypatch.delenv("PYVISION_SPARE_KERNELS", raising=False)
    monkeypatch.setenv("PYVISION_POOL_SIZE", "0")
    previous = set_default_engine(None)
    try:
        with pytest.warns(DeprecationWarning, match=r"\$PYVISION_SPARE_KERNELS"):
            engine = default_engine()
        assert engine._async._spare_kernels == 0
        engine.close()
    finally:
        set_default_engine(previous)
