"""Environment pools: where episodes' environments (and their kernels) run.

Code that plays episodes — the trainer's rollout collection, ``pyvision eval`` — asks a pool for
environments and plays them the same way whichever pool it has:

* :class:`LocalEnvPool` — :class:`~pyvision_env.env.PyVisionEnv` objects in this process, their kernels on
  one local :class:`~pyvision_env.execution.Engine`;
* :class:`~pyvision_env.pools.ray_pool.RayEnvPool` — environments hosted by Ray actors
  (:class:`~pyvision_env.pools.ray_pool.EnvWorker`) spread over a cluster's nodes; this process holds
  :class:`~pyvision_env.pools.ray_pool.RemoteEnv` proxies with the same Gymnasium and asyncio API.

When a Ray worker dies mid-episode (its process, or its node), the episode's next call raises
:class:`WorkerLost`; the code playing it starts the episode again from its reset up to
:attr:`EnvPool.episode_attempts` times in all (``PoolConfig.on_worker_lost="retry"``), or records it as
failed with the reason (``"fail"``).

Example::

    with make_pool(PoolConfig(backend="ray", workers=4, envs_per_worker=8), concurrency=32) as pool:
        envs = pool.vector_env(32, "zoom", max_turns=6)        # a PyVisionVectorEnv either way
        env = pool.make_env("count")                           # one environment
"""

from __future__ import annotations

from .base import BACKENDS, ON_WORKER_LOST, EnvPool, LocalEnvPool, PoolBusy, PoolConfig, WorkerLost


def make_pool(config: PoolConfig, concurrency: int) -> EnvPool:
    """The pool ``config`` describes; ``concurrency`` (episodes at once) sizes a local pool's engine."""
    if config.backend == "ray":
        from .ray_pool import RayEnvPool

        return RayEnvPool(config)
    return LocalEnvPool(config, concurrency=concurrency)


__all__ = ["BACKENDS", "ON_WORKER_LOST", "EnvPool", "LocalEnvPool", "PoolBusy", "PoolConfig", "WorkerLost",
           "make_pool"]
