"""What every environment pool is: its configuration, the :class:`EnvPool` interface, the local pool, and the
errors of a pool whose workers can die (see :mod:`pyvision_env.pools`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from ..execution import Engine
from ..make import make_env
from ..vector import PyVisionVectorEnv

BACKENDS = ("local", "ray")
ON_WORKER_LOST = ("retry", "fail")


class WorkerLost(RuntimeError):
    """The worker hosting an episode died or stopped answering; the episode cannot go on (its kernel is gone)."""


class PoolBusy(TimeoutError):
    """No episode slot became free in time (every worker is at ``envs_per_worker`` or the global cap is hit)."""


@dataclass
class PoolConfig:
    """Where environments run. The defaults run them in this process (``backend: local``)."""

    backend: str = "local"
    """``local`` (this process) or ``ray`` (actors on a Ray cluster)."""
    address: str | None = None
    """Ray: ``auto`` (the cluster this machine belongs to), ``HOST:PORT`` of a head node, ``ray://HOST:10001``
    (Ray Client), or ``None`` to start a private local Ray instance for the run. Ignored when this process
    has already called ``ray.init``."""
    workers: int = 2
    """Ray: env worker actors (each hosts up to ``envs_per_worker`` running episodes and their kernels)."""
    envs_per_worker: int = 8
    """Ray: episodes one worker runs at once."""
    max_concurrent_episodes: int | None = None
    """Ray: cap on episodes running at once over all workers (``None``: ``workers * envs_per_worker``); an
    episode that would exceed it waits for a free slot (backpressure)."""
    cpus_per_worker: float = 1.0
    """Ray: CPUs each worker reserves (fractions allowed; its kernels use what they need)."""
    memory_per_worker: int | None = None
    """Ray: bytes of memory each worker reserves (``None``: no reservation)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Ray: custom resources each worker needs, to keep workers on the nodes that offer them (start CPU nodes
    with ``ray start --resources='{"pyvision_env": 64}'`` and set ``{pyvision_env: 1}``)."""
    spread: bool = True
    """Ray: place workers on as many nodes as possible (the ``SPREAD`` scheduling strategy)."""
    on_worker_lost: str = "retry"
    """What happens to an episode whose worker died: ``retry`` it from its reset, or ``fail`` it (recorded
    with the reason)."""
    max_retries: int = 2
    """Ray: new attempts of an episode whose worker died (``on_worker_lost: retry``)."""
    worker_restarts: int = 3
    """Ray: times Ray restarts a dead worker (on any node with room) before it is given up."""
    call_timeout: float = 600.0
    """Ray: seconds a reset or step may take before its worker is declared lost (and restarted)."""
    slot_timeout: float = 600.0
    """Ray: seconds an episode may wait for a free slot before :class:`PoolBusy` is raised."""
    start_timeout: float = 120.0
    """Ray: seconds the workers may take to start (Ray, the actors, their engines)."""
    allow_weak_isolation: bool = False
    """Ray: let workers run kernels without bubblewrap (then kernels could reach the network and Ray's ports);
    off, a worker on a node without working bubblewrap fails to start."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"pool backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.on_worker_lost not in ON_WORKER_LOST:
            raise ValueError(f"on_worker_lost must be one of {ON_WORKER_LOST}, got {self.on_worker_lost!r}")
        for name in ("workers", "envs_per_worker"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_concurrent_episodes is not None and self.max_concurrent_episodes < 1:
            raise ValueError(f"max_concurrent_episodes must be at least 1 or None, got {self.max_concurrent_episodes}")
        if self.cpus_per_worker < 0 or self.max_retries < 0 or self.worker_restarts < 0:
            raise ValueError("cpus_per_worker, max_retries and worker_restarts cannot be negative")
        for name in ("call_timeout", "slot_timeout", "start_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class EnvPool:
    """What code that plays episodes needs from a pool (see the module docstring)."""

    config: PoolConfig

    def make_env(self, suite: Any, **env_kwargs: Any) -> gym.Env:
        """One environment of ``suite`` (a registered name, or a TaskSet for a local pool), with
        :func:`~pyvision_env.make.make_env` arguments (``reward=``, ``max_turns=``...)."""
        raise NotImplementedError

    def vector_env(self, num_envs: int, suite: Any, **env_kwargs: Any) -> PyVisionVectorEnv:
        """``num_envs`` environments of ``suite`` stepped together."""
        return PyVisionVectorEnv.from_envs([self.make_env(suite, **env_kwargs) for _ in range(num_envs)])

    @property
    def episode_attempts(self) -> int:
        """Times an episode is played before its :class:`WorkerLost` is final."""
        return 1 + (self.config.max_retries if self.config.on_worker_lost == "retry" else 0)

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class LocalEnvPool(EnvPool):
    """Environments in this process on one engine (owned and closed by the pool unless given).

    >>> with LocalEnvPool(concurrency=4) as pool:                                # doctest: +SKIP
    ...     env = pool.make_env("zoom", max_turns=4)
    """

    def __init__(self, config: PoolConfig | None = None, *, concurrency: int = 8, engine: Engine | None = None
                 ) -> None:
        self.config = config or PoolConfig()
        self._owns_engine = engine is None
        self.engine = engine or Engine(spare_kernels=min(concurrency, 8), max_kernels=2 * concurrency + 8)

    def make_env(self, suite: Any, **env_kwargs: Any) -> gym.Env:
        return make_env(suite, engine=self.engine, **env_kwargs)

    @property
    def episode_attempts(self) -> int:
        return 1  # a local environment has no worker to lose

    def close(self) -> None:
        if self._owns_engine:
            self.engine.close()
