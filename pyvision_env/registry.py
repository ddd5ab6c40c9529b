"""Suites of tasks registered as Gymnasium environments (``PyVision/<Suite>-v0``).

Register your own visual task from a JSONL file in a few lines:

    >>> import gymnasium as gym
    >>> from pyvision_env import register_suite                                 # doctest: +SKIP
    >>> env_id = register_suite("my-signs", "data/signs.jsonl", description="read street signs")
    >>> env_id
    'PyVision/MySigns-v0'
    >>> env = gym.make(env_id, protocol="openai-tools", max_turns=6)

``source`` may be a JSONL file, a task folder, a :class:`~pyvision_env.tasks.TaskSet`, a
:class:`~pyvision_env.tasks.TaskSource` (a built-in synthetic suite, a public benchmark loader: its description
and tags are the suite's unless given), or a function returning a TaskSet (called on first use). Extra keyword
arguments become the environment's defaults. :func:`~pyvision_env.make.make_env` builds the environment a
registered id names.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym

from .deprecation import REMOVED_IN
from .tasks import Task, TaskSet, TaskSource, load_directory, load_jsonl

NAMESPACE = "PyVision"


@dataclass
class Suite:
    """A registered suite: where its tasks come from, its Gymnasium id and its environments' defaults. It is
    itself a :class:`~pyvision_env.tasks.TaskSource`."""

    name: str
    env_id: str
    description: str
    loader: Callable[[], TaskSet]
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    _tasks: TaskSet | None = None

    def load(self) -> TaskSet:
        """The suite's tasks (loaded on first use, then cached)."""
        if self._tasks is None:
            tasks = self.loader()
            if not isinstance(tasks, TaskSet):
                raise TypeError(f"the loader of suite {self.name!r} returned {type(tasks).__name__}, "
                                "not a TaskSet")
            self._tasks = tasks
        return self._tasks

    def tasks(self) -> TaskSet:
        """Deprecated name of :meth:`load`."""
        warnings.warn(f"Suite.tasks() is deprecated and goes in {REMOVED_IN}; use Suite.load()", DeprecationWarning,
                      stacklevel=2)
        return self.load()


_SUITES: dict[str, Suite] = {}
_lock = threading.Lock()


def env_id_for(name: str) -> str:
    """``"hr-bench_4k"`` -> ``"PyVision/HrBench4k-v0"``."""
    words = [w for w in name.replace("_", "-").split("-") if w]
    if not words or not all(w.isalnum() for w in words):
        raise ValueError(f"suite names use letters, digits, '-' and '_', got {name!r}")
    return f"{NAMESPACE}/{''.join(w[:1].upper() + w[1:] for w in words)}-v0"


def register_suite(name: str, source: str | os.PathLike | TaskSet | TaskSource | Callable[[], TaskSet], *,
                   description: str | None = None, tags: tuple[str, ...] | None = None, replace: bool = False,
                   **env_kwargs: Any) -> str:
    """Register a suite and its Gymnasium id; returns the id. ``replace=True`` re-registers a name."""
    env_id = env_id_for(name)
    if isinstance(source, TaskSource):
        description = source.description if description is None else description
        tags = source.tags if tags is None else tags
    suite = Suite(name, env_id, description or "", _as_loader(name, source), dict(env_kwargs), tuple(tags or ()))
    with _lock:
        if name in _SUITES and not replace:
            raise ValueError(f"suite {name!r} is already registered (pass replace=True to re-register)")
        _SUITES[name] = suite
        if env_id in gym.registry:
            del gym.registry[env_id]
        gym.register(id=env_id, entry_point="pyvision_env.make:make_env",
                     vector_entry_point="pyvision_env.vector:PyVisionVectorEnv",
                     kwargs={"suite": name, **env_kwargs})
    return env_id


def get_suite(name: str) -> Suite:
    """The registered suite ``name`` (a KeyError naming the registered ones if there is none)."""
    with _lock:
        if name not in _SUITES:
            raise KeyError(f"unknown suite {name!r}; registered: {', '.join(sorted(_SUITES)) or 'none'}")
        return _SUITES[name]


def load_suite(name: str) -> TaskSet:
    """The tasks of a registered suite (loaded once, then cached)."""
    return get_suite(name).load()


def resolve_tasks(source: str | TaskSet | Sequence[Task], split: str | None = None) -> TaskSet:
    """The tasks an environment plays: a registered suite's (by name), a TaskSet, or a sequence of tasks;
    only those of ``split`` when given."""
    if isinstance(source, str):
        tasks = load_suite(source)
    elif isinstance(source, TaskSet):
        tasks = source
    else:
        tasks = TaskSet("tasks", source)
    return tasks.split(split) if split is not None else tasks


SUITES_ENTRY_POINT_GROUP = "pyvision.suites"
"""Entry-point group of functions that register suites when called (``benchmarks`` registers the public
benchmarks found under ``$PYVISION_BENCHMARKS``); :func:`register_installed_suites` calls them."""


def register_installed_suites() -> list[str]:
    """Call every function of the ``pyvision.suites`` entry-point group (what ``pyvision tasks`` lists);
    returns the problems of those that failed, one line each."""
    problems = []
    for entry in metadata.entry_points(group=SUITES_ENTRY_POINT_GROUP):
        try:
            entry.load()()
        except Exception as error:  # noqa: BLE001  (one broken source must not hide the other suites)
            problems.append(f"the suites of {entry.name!r} ({entry.value}) are not registered: {error}")
    return problems


def list_suites() -> list[Suite]:
    """Registered suites, sorted by name."""
    with _lock:
        return sorted(_SUITES.values(), key=lambda s: s.name)


def _as_loader(name: str, source: Any) -> Callable[[], TaskSet]:
    if isinstance(source, TaskSet):
        return lambda: source
    if isinstance(source, TaskSource):
        return source.load
    if callable(source):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"suite {name!r}: {path} does not exist")
    if path.is_dir():
        return lambda: load_directory(path, name)
    if path.suffix == ".jsonl":
        return lambda: load_jsonl(path, name)
    raise ValueError(f"suite {name!r}: source must be a .jsonl file, a folder, a TaskSet, a TaskSource or a "
                     f"function; got {source!r}")
