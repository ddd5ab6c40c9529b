"""Shared fixtures: real engines with real (sandboxed where possible) kernels."""

from __future__ import annotations

import importlib.util
import os
import time
import warnings

import psutil
import pytest

from pyvision_env.execution import (
    Engine,
    ExecutionLimits,
    WeakIsolationWarning,
    probe_bubblewrap,
    set_default_engine,
)

FAST_LIMITS = ExecutionLimits(cell_timeout=10.0, interrupt_grace=1.0)

collect_ignore_glob = [] if importlib.util.find_spec("ray") else ["test_ray_*.py"]
"""Without Ray (the vLLM venv of ``make test-vllm`` has none) its test modules are not collected."""

SANDBOX_WORKS, SANDBOX_REASON = probe_bubblewrap()
requires_sandbox = pytest.mark.skipif(not SANDBOX_WORKS, reason=f"needs bubblewrap: {SANDBOX_REASON}")


def kernel_processes() -> list[psutil.Process]:
    """ipykernel processes started by this test process (directly, through bubblewrap, or forked by an engine's
    kernel factory)."""
    found = []
    for proc in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "ipykernel_launcher" in " ".join(proc.cmdline()) or proc.name() == "pyvision-kernel":
                found.append(proc)
        except psutil.Error:
            continue
    return found


def quiet_engine(**kwargs) -> Engine:
    """An :class:`Engine` (``FAST_LIMITS`` unless given) without the weak-isolation warning."""
    kwargs.setdefault("limits", FAST_LIMITS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeakIsolationWarning)
        return Engine(**kwargs)


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (returns True) or ``timeout`` seconds pass (returns False)."""
    until = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= until:
            return False
        time.sleep(interval)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """The trainer tests' tiny random Qwen2.5-VL, its tokenizer taught the demo's phrases."""
    from agents.tiny_model import make_tiny_model
    from trainers.demo import tokenizer_corpus

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus=tokenizer_corpus())


@pytest.fixture(scope="module")
def policy(model_dir):
    """The tiny model as the trainer loads it (its chat tokenizer: ``policy.chat``)."""
    from trainers.config import ModelConfig
    from trainers.modeling import load_policy

    return load_policy(ModelConfig(path=str(model_dir)))


@pytest.fixture(scope="session")
def engine():
    """One engine for the whole run; each test opens its own sessions (fresh kernels)."""
    eng = quiet_engine(spare_kernels=2, max_kernels=48)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def framework_engine():
    """An engine made the process's default for one test module, with no spare kernels (every live kernel is an
    episode's): the RL frameworks make our environments without an engine argument."""
    engine = quiet_engine(spare_kernels=0)
    previous = set_default_engine(engine)
    yield engine
    set_default_engine(previous)
    engine.close()


@pytest.fixture
def session(engine):
    with engine.session() as s:
        yield s


@pytest.fixture(scope="session", autouse=True)
def no_leftover_kernels():
    """After the whole run, no kernel started by the tests may still be running."""
    yield
    left = [p for p in kernel_processes() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"leftover kernel processes: {[p.pid for p in left]}"


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """``$PYVISION_CACHE`` in the test's own folder (generated suites, decoded benchmark images)."""
    monkeypatch.setenv("PYVISION_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray instance for a test module: 2 CPUs (tests reserve fractions), a small object store."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=100 * 2**20, configure_logging=False)
    yield ray
    ray.shutdown()
