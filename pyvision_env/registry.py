"""Suites of tasks registered as Gymnasium environments (``PyVision/<Suite>-v0``).

Register your own visual task from a JSONL file in a few lines:

    >>> import gymnasium as gym
    >>> from pyvision_env import register_suite                                 # doctest: +SKIP
    >>> env_id = register_suite("my-signs", "data/signs.jsonl", description="read street signs")
    >>> env_id
    'PyVision/MySigns-v0'
    >>> env = gym.make(env_id, protocol="openai-tools", max_turns=6)

``source`` may be a JSONL file, a task folder, a :class:`~pyvision_env.tasks.TaskSet`, or a function returning
one (called on first use). Extra keyword arguments become the environment's defaults.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

from .tasks import TaskSet, load_directory, load_jsonl

NAMESPACE = "PyVision"


@dataclass
class Suite:
    name: str
    env_id: str
    description: str
    loader: Callable[[], TaskSet]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    _tasks: TaskSet | None = None

    def tasks(self) -> TaskSet:
        """The suite's tasks (loaded on first use, then cached)."""
        if self._tasks is None:
            tasks = self.loader()
            if not isinstance(tasks, TaskSet):
                raise TypeError(f"the loader of suite {self.name!r} returned {type(tasks).__name__}, "
                                "not a TaskSet")
            self._tasks = tasks
        return self._tasks


_SUITES: dict[str, Suite] = {}
_lock = threading.Lock()


def env_id_for(name: str) -> str:
    """``"hr-bench_4k"`` -> ``"PyVision/HrBench4k-v0"``."""
    words = [w for w in name.replace("_", "-").split("-") if w]
    if not words or not all(w.isalnum() for w in words):
        raise ValueError(f"suite names use letters, digits, '-' and '_', got {name!r}")
    return f"{NAMESPACE}/{''.join(w[:1].upper() + w[1:] for w in words)}-v0"


def register_suite(name: str, source: str | os.PathLike | TaskSet | Callable[[], TaskSet], *,
                   description: str = "", tags: tuple[str, ...] = (), replace: bool = False,
                   **env_kwargs: Any) -> str:
    """Register a suite and its Gymnasium id; returns the id. ``replace=True`` re-registers a name."""
    env_id = env_id_for(name)
    with _lock:
        if name in _SUITES and not replace:
            raise ValueError(f"suite {name!r} is already registered (pass replace=True to re-register)")
        _SUITES[name] = Suite(name, env_id, description, _as_loader(name, source), dict(env_kwargs), tuple(tags))
        if env_id in gym.registry:
            del gym.registry[env_id]
        gym.register(id=env_id, entry_point="pyvision_env.registry:make_env",
                     vector_entry_point="pyvision_env.vector:PyVisionVectorEnv",
                     kwargs={"suite": name, **env_kwargs})
    return env_id


def make_env(suite: Any, *, reward: str | Mapping[str, Any] | None = None, **env_kwargs: Any) -> gym.Env:
    """The entry point of ``PyVision/<Suite>-v0``: a :class:`~pyvision_env.env.PyVisionEnv`, wrapped in the
    reward of ``reward`` (see :func:`~pyvision_env.rewards.make_reward_wrapper`) when given.

    >>> env = gym.make("PyVision/Zoom-v0", reward={"name": "accumulative", "cap": 3})  # doctest: +SKIP
    """
    from .env import PyVisionEnv
    from .rewards import make_reward_wrapper

    return make_reward_wrapper(PyVisionEnv(suite, **env_kwargs), reward, in_spec=True)


def load_suite(name: str) -> TaskSet:
    """The tasks of a registered suite (loaded once, then cached)."""
    with _lock:
        if name not in _SUITES:
            raise KeyError(f"unknown suite {name!r}; registered: {', '.join(sorted(_SUITES)) or 'none'}")
        suite = _SUITES[name]
    return suite.tasks()


def list_suites() -> list[Suite]:
    """Registered suites, sorted by name."""
    with _lock:
        return sorted(_SUITES.values(), key=lambda s: s.name)


def _as_loader(name: str, source: Any) -> Callable[[], TaskSet]:
    if isinstance(source, TaskSet):
        return lambda: source
    if callable(source):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"suite {name!r}: {path} does not exist")
    if path.is_dir():
        return lambda: load_directory(path, name)
    if path.suffix == ".jsonl":
        return lambda: load_jsonl(path, name)
    raise ValueError(f"suite {name!r}: source must be a .jsonl file, a folder, a TaskSet or a function; "
                     f"got {source!r}")
