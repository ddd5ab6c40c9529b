"""Ray Tune registration: every registered suite's Gymnasium id becomes a ``ray.tune`` environment name, so Tune
trials create the environments by name on any process of the cluster. (RLlib's env runners need a vector env of
conversations: use the name ``pyvision`` of :mod:`pyvision_env.integrations.rllib`.)

Example::

    import ray
    from pyvision_env.pools.tune import register_ray_envs

    ray.init()
    register_ray_envs()                      # ["PyVision/Contrast-v0", "PyVision/Count-v0", ...]

Built-in suites are known to every process (importing ``pyvision_env`` registers them); for the others
(``register_suite``, public benchmarks) the creator carries the loaded tasks, whose files must then be readable
at the same paths on every node.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import gymnasium as gym

from ..make import make_env
from ..registry import list_suites
from ..suites import SUITES, VIDEO_SUITES
from ..tasks import TaskSet


def register_ray_envs(suites: Iterable[str] | None = None) -> list[str]:
    """Register ``suites`` (names; default: every registered suite) with ``ray.tune.register_env`` under their
    Gymnasium ids; returns the ids. A suite named in ``suites`` whose tasks cannot be loaded raises; by
    default such a suite is left out with a warning."""
    from ray.tune import register_env

    wanted = set(suites) if suites is not None else None
    known = {suite.name: suite for suite in list_suites()}
    if wanted is not None and (unknown := wanted - set(known)):
        raise KeyError(f"unknown suite(s) {', '.join(sorted(unknown))}; registered: {', '.join(sorted(known))}")
    ids = []
    for name, suite in sorted(known.items()):
        if wanted is not None and name not in wanted:
            continue
        try:
            tasks = None if name in SUITES or name in VIDEO_SUITES else suite.load()
        except (OSError, ValueError) as error:  # LayoutError and TaskFormatError are ValueErrors
            if wanted is not None:
                raise
            warnings.warn(f"suite {name!r} is not registered with Ray: its tasks cannot be loaded ({error})",
                          stacklevel=2)
            continue
        register_env(suite.env_id, functools.partial(create_env, suite.env_id, tasks, suite.env_kwargs))
        ids.append(suite.env_id)
    return ids


def create_env(env_id: str, tasks: TaskSet | None, defaults: Mapping[str, Any], env_config: Mapping[str, Any]
               ) -> gym.Env:
    """What a registered name creates: ``gym.make(env_id, **env_config)``, or, for a suite other processes do
    not know, the environment of its ``tasks`` with the suite's default arguments under ``env_config``."""
    if tasks is None:
        return gym.make(env_id, **dict(env_config))
    return make_env(tasks, **{**defaults, **dict(env_config)})
