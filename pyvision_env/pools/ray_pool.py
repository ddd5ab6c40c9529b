"""Environments hosted by Ray actors: :class:`RayEnvPool`, its :class:`EnvWorker` actors and the
:class:`RemoteEnv` proxies the driver plays.

* Each :class:`EnvWorker` is an async Ray actor with its own :class:`~pyvision_env.execution.Engine`: it
  hosts up to ``envs_per_worker`` running episodes, their environments and their kernels. Workers are spread
  over the cluster's nodes and reserve ``cpus_per_worker`` CPUs each (fractions allowed).
* A :class:`RemoteEnv` is a Gymnasium environment in the driver. Its ``reset`` takes a slot on the least
  busy live worker (waiting while every worker is full or ``max_concurrent_episodes`` run: backpressure);
  its steps go to that worker; the slot is given back when the episode ends. Observations come back as the
  same :class:`~pyvision_env.messages.Message` lists, images included.
* A worker that dies (its process or its node) raises :class:`~pyvision_env.pools.WorkerLost` from the
  episode's next call, never a hang: every call has ``call_timeout``. Ray restarts the worker (up to
  ``worker_restarts`` times); its kernels died with it (they are killed when their parent dies).
* Kernels run under bubblewrap with no network (their own network namespace): they cannot reach Ray's ports
  or any other service, and Ray's session directory (its Unix sockets) is hidden from them. A worker refuses
  to start where bubblewrap does not work, unless ``allow_weak_isolation``.

Suites are sent to workers by name when the workers know the name (built-in suites), otherwise as the
resolved :class:`~pyvision_env.tasks.TaskSet` (then its image and video files must be readable at the same
paths on every node: a shared file system).

Example::

    pool = RayEnvPool(PoolConfig(backend="ray", workers=2, envs_per_worker=4, cpus_per_worker=0.5))
    env = pool.make_env("zoom", max_turns=4)
    observation, info = env.reset(seed=0)
    pool.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from ..env import PyVisionEnv, protocol_for
from ..execution import Engine, SandboxConfig
from ..execution.limits import DEFAULT_HIDDEN_PATHS
from ..execution.loop import LoopThread
from ..graders import get_grader
from ..make import make_env
from ..messages import Message
from ..registry import list_suites, resolve_tasks
from ..spaces import MessagesSpace, ResponseSpace
from ..tasks import TaskSet
from .base import EnvPool, PoolBusy, PoolConfig, WorkerLost

log = logging.getLogger(__name__)


class EnvNotOpen(KeyError):
    """The worker does not host this environment (it never did, or it restarted since)."""


class EnvWorker:
    """A Ray actor hosting environments and their kernels (see the module docstring); made by the pool."""

    def __init__(self, index: int, engine_spare_kernels: int, max_kernels: int, allow_weak_isolation: bool) -> None:
        import ray

        self.index = index
        session_dir = _ray_session_dir()
        hidden = DEFAULT_HIDDEN_PATHS + ((os.path.dirname(session_dir),) if session_dir else ())
        sandbox = SandboxConfig(isolation="auto" if allow_weak_isolation else "bubblewrap", hidden_paths=hidden)
        self.engine = Engine(sandbox=sandbox, spare_kernels=engine_spare_kernels, max_kernels=max_kernels)
        self.node = ray.get_runtime_context().get_node_id()
        self.envs: dict[str, gym.Env] = {}

    async def ready(self) -> dict[str, Any]:
        """Where this worker runs and what it knows: node, pid, isolation, the suites registered here."""
        return {"index": self.index, "node": self.node, "pid": os.getpid(), "isolation": self.engine.isolation,
                "suites": [suite.name for suite in list_suites()]}

    async def open(self, key: str, suite: Any, env_kwargs: dict[str, Any]) -> None:
        """Host environment ``key`` of ``suite`` (a name or a TaskSet)."""
        if key not in self.envs:
            self.envs[key] = await asyncio.to_thread(make_env, suite, engine=self.engine, **env_kwargs)

    async def reset(self, key: str, seed: int | None, options: dict[str, Any] | None
                    ) -> tuple[tuple[list[Message], dict[str, Any]], dict[str, float]]:
        """The reset's result, and the environment's timings of it."""
        env = self._env(key)
        return await self._run(env.areset(seed=seed, options=options)), env.unwrapped.timings

    async def step(self, key: str, action: str
                   ) -> tuple[tuple[list[Message], float, bool, bool, dict[str, Any]], dict[str, float]]:
        """The step's result, and the environment's timings of it."""
        env = self._env(key)
        return await self._run(env.astep(action)), env.unwrapped.timings

    async def close_env(self, key: str) -> None:
        env = self.envs.pop(key, None)
        if env is not None:
            await self._run(env.unwrapped.aclose())

    async def shutdown(self) -> None:
        """Close every environment and the engine (its kernels are killed)."""
        for key in list(self.envs):
            await self.close_env(key)
        await asyncio.to_thread(self.engine.close)

    def _env(self, key: str) -> gym.Env:
        try:
            return self.envs[key]
        except KeyError:
            raise EnvNotOpen(key) from None

    async def _run(self, coroutine: Any) -> Any:
        return await asyncio.wrap_future(self.engine.submit(coroutine))


def _ray_session_dir() -> str | None:
    """This Ray node's session directory (its Unix sockets and logs), hidden from kernels."""
    try:
        from ray._private import worker

        return worker._global_node.get_session_dir_path()
    except Exception:  # noqa: BLE001 - a private API; /tmp/ray (the default) is hidden anyway
        return None


@dataclass
class _Worker:
    """The driver's view of one :class:`EnvWorker`."""

    index: int
    actor: Any
    info: dict[str, Any] = field(default_factory=dict)
    active: int = 0
    losses: int = 0
    generation: int = 0
    """Incremented at each loss: calls that fail together (one crash) count as one loss."""
    retired: bool = False
    """Lost more often than Ray restarts it: no new episode goes there."""
    stale: bool = False
    """Lost since :attr:`info` was read (Ray may have restarted it elsewhere)."""


class RayEnvPool(EnvPool):
    """Environment workers on a Ray cluster; see the module docstring and :class:`~pyvision_env.pools.PoolConfig`.

    If this process has not called ``ray.init``, the pool connects to ``config.address`` (``None``: a new
    private local Ray instance) and shuts Ray down on :meth:`close`.
    """

    def __init__(self, config: PoolConfig) -> None:
        import ray

        self.config = config
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(address=config.address or "local", include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        self.loop = LoopThread("pyvision-ray-pool", owner_label="this Ray pool")
        self.capacity = min(config.max_concurrent_episodes or config.workers * config.envs_per_worker,
                            config.workers * config.envs_per_worker)
        self._running = 0
        self._payloads: dict[tuple[Any, Any], Any] = {}
        self._payload_lock = threading.Lock()
        self._closed = False
        try:
            worker_class = ray.remote(EnvWorker).options(
                num_cpus=config.cpus_per_worker, memory=config.memory_per_worker, resources=dict(config.resources),
                max_restarts=config.worker_restarts, max_task_retries=0,
                scheduling_strategy="SPREAD" if config.spread else "DEFAULT")
            spare_kernels = min(config.envs_per_worker, 8)
            self.workers = [_Worker(i, worker_class.remote(i, spare_kernels, 2 * config.envs_per_worker + 8,
                                                           config.allow_weak_isolation))
                            for i in range(config.workers)]
            infos = ray.get([worker.actor.ready.remote() for worker in self.workers], timeout=config.start_timeout)
        except BaseException:
            self.close()
            raise
        for worker, info in zip(self.workers, infos):
            worker.info = info
        self._known_suites = set.intersection(*(set(info["suites"]) for info in infos))
        self._changed = self.loop.run_coroutine(_make_condition())
        self._turn = itertools.count()

    # --- EnvPool ----------------------------------------------------------------------------------

    def make_env(self, suite: Any, **env_kwargs: Any) -> RemoteEnv:
        return RemoteEnv(self, suite, **env_kwargs)

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        """Episodes running, the cap, and each worker's node, pid, running episodes and losses (a worker lost
        since it was last asked is asked again where Ray restarted it, for up to ``timeout`` seconds)."""
        import ray

        for worker in self.workers:
            if worker.stale and not worker.retired:
                try:
                    worker.info, worker.stale = ray.get(worker.actor.ready.remote(), timeout=timeout), False
                except Exception as error:  # noqa: BLE001 - still restarting: its last known place is shown
                    log.info("env worker %d has not answered since it was lost: %s", worker.index, error)
        return {"running": self._running, "capacity": self.capacity,
                "workers": [{**worker.info, "active": worker.active, "losses": worker.losses,
                             "retired": worker.retired} for worker in self.workers]}

    def close(self) -> None:
        """Shut the workers down (their environments and kernels first), then Ray if the pool started it."""
        import ray

        if self._closed:
            return
        self._closed = True
        workers = getattr(self, "workers", [])
        try:
            ray.get([worker.actor.shutdown.remote() for worker in workers], timeout=60)
        except Exception as error:  # noqa: BLE001 - a dead or stuck worker is killed below all the same
            log.warning("env workers did not shut down cleanly: %s", error)
        for worker in workers:
            ray.kill(worker.actor, no_restart=True)
        self.loop.close()
        if self._started_ray:
            ray.shutdown()

    # --- slots and calls (on the pool's loop) -----------------------------------------------------

    async def acquire(self) -> _Worker:
        """A slot on the least busy live worker; waits (up to ``slot_timeout``) while none is free."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(self._has_slot), self.config.slot_timeout)
            except asyncio.TimeoutError:
                raise PoolBusy(f"no episode slot became free in {self.config.slot_timeout:g} s ({self._running} "
                               f"episodes running, capacity {self.capacity})") from None
            live = [worker for worker in self.workers if not worker.retired]
            if not live:
                raise WorkerLost(f"every env worker was lost more than {self.config.worker_restarts} times; "
                                 "none is left")
            turn = next(self._turn)
            worker = min(live, key=lambda w: (w.active, (w.index - turn) % len(self.workers)))
            worker.active += 1
            self._running += 1
            return worker

    async def release(self, worker: _Worker) -> None:
        async with self._changed:
            worker.active -= 1
            self._running -= 1
            self._changed.notify_all()

    def _has_slot(self) -> bool:
        live = [worker for worker in self.workers if not worker.retired]
        return not live or (self._running < self.capacity
                            and any(worker.active < self.config.envs_per_worker for worker in live))

    async def call(self, worker: _Worker, method: str, *args: Any) -> Any:
        """``worker.method(*args)`` with ``call_timeout``; a dead or silent worker raises :class:`WorkerLost`."""
        import ray

        if worker.stale and not worker.retired:
            await self._until_restarted(worker)
        generation = worker.generation
        reference = getattr(worker.actor, method).remote(*args)
        try:
            return await asyncio.wait_for(reference, self.config.call_timeout)
        except asyncio.TimeoutError:
            if generation == worker.generation:
                ray.kill(worker.actor, no_restart=False)  # Ray starts it again; the episodes it held are lost
            await self.lost(worker, generation)
            raise WorkerLost(f"env worker {worker.index} (node {worker.info.get('node', '?')[:12]}) did not answer "
                             f"{method} in {self.config.call_timeout:g} s; it is being restarted") from None
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as error:
            await self.lost(worker, generation)
            raise WorkerLost(f"env worker {worker.index} (node {worker.info.get('node', '?')[:12]}) died during "
                             f"{method}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
                             ) from None

    async def _until_restarted(self, worker: _Worker) -> None:
        """Wait (up to ``start_timeout``) until Ray has started a lost worker again, and learn where it runs; a
        call to an actor that is still restarting would fail as "unavailable" although nothing is lost yet."""
        import ray

        deadline = time.monotonic() + self.config.start_timeout
        while worker.stale:
            try:
                worker.info = await asyncio.wait_for(worker.actor.ready.remote(),
                                                     max(0.1, deadline - time.monotonic()))
                worker.stale = False
            except ray.exceptions.ActorUnavailableError:
                if time.monotonic() >= deadline:
                    return  # the call reports it
                await asyncio.sleep(0.2)
            except (asyncio.TimeoutError, ray.exceptions.RayError):
                return  # the call reports it

    async def lost(self, worker: _Worker, generation: int) -> None:
        """Count ``worker``'s loss seen by a call made at ``generation`` (once per crash)."""
        async with self._changed:
            if generation != worker.generation:
                return  # this crash was counted already
            worker.generation += 1
            worker.losses += 1
            worker.retired = worker.losses > self.config.worker_restarts
            worker.stale = True
            self._changed.notify_all()

    def payload(self, suite: Any, split: str | None, tasks: TaskSet) -> Any:
        """What to send workers for ``suite`` (resolved to ``tasks``): its name if they know it, else ``tasks``
        with their graders resolved (put in Ray's object store once). A grader travels as the function itself,
        so a worker needs no registry entry for it: unpickling imports the module that defines it."""
        import ray

        if isinstance(suite, str) and suite in self._known_suites:
            return suite
        key = (suite if isinstance(suite, str) else id(suite), split)
        with self._payload_lock:
            if key not in self._payloads:
                self._payloads[key] = ray.put(TaskSet(tasks.name, [dataclasses.replace(task, grader=get_grader(
                    task.grader)) for task in tasks], tasks.description))
            return self._payloads[key]


async def _make_condition() -> asyncio.Condition:
    return asyncio.Condition()  # made on the pool's loop, which it belongs to


class RemoteEnv(gym.Env):
    """A :class:`~pyvision_env.env.PyVisionEnv` (with its wrappers) hosted by a :class:`RayEnvPool` worker. Same
    API: ``reset``/``step``/``close``, the ``areset``/``astep``/``aclose`` coroutines (which run on the pool's
    loop, :attr:`engine`) and ``timings`` (the worker's); ``tasks`` and ``protocol`` are local copies.
    """

    metadata = PyVisionEnv.metadata

    def __init__(self, pool: RayEnvPool, suite: Any, **env_kwargs: Any) -> None:
        if "engine" in env_kwargs:
            raise TypeError("a RemoteEnv runs on its worker's engine; do not pass engine=")
        self.pool = pool
        self.engine = pool.loop
        """Runs this env's coroutines (what :class:`~pyvision_env.vector.PyVisionVectorEnv` drives)."""
        self.key = uuid.uuid4().hex
        self.env_kwargs = env_kwargs
        split = env_kwargs.get("split")
        self.tasks = resolve_tasks(suite, split)
        self.protocol = protocol_for(env_kwargs.get("protocol", "pyvision"), env_kwargs.get("protocol_options"),
                                     env_kwargs.get("system_prompt"))
        self.trace_operations = bool(env_kwargs.get("trace_operations"))
        self.timings: dict[str, float] = {}
        self.observation_space = MessagesSpace()
        self.action_space = ResponseSpace(self.protocol.max_response_chars)
        self.render_mode = None
        self._payload = pool.payload(suite, split, self.tasks)
        self._worker: _Worker | None = None
        """The worker of the episode in progress (holding one of its slots)."""
        self._hosts: set[int] = set()
        """Workers this env was opened on (closed there when the env closes)."""

    # --- Gymnasium API ----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[list[Message], dict[str, Any]]:
        return self.engine.run_coroutine(self.areset(seed=seed, options=options))

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        return self.engine.run_coroutine(self.astep(action))

    def close(self) -> None:
        if not self.engine.closed:
            self.engine.run_coroutine(self.aclose())

    # --- asyncio API ------------------------------------------------------------------------------

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                     ) -> tuple[list[Message], dict[str, Any]]:
        worker = self._worker or await self.pool.acquire()
        self._worker = worker
        try:
            try:
                result, self.timings = await self.pool.call(worker, "reset", self.key, seed, options)
            except EnvNotOpen:  # first episode of this env on that worker, or the worker restarted
                await self.pool.call(worker, "open", self.key, self._payload, self.env_kwargs)
                self._hosts.add(worker.index)
                result, self.timings = await self.pool.call(worker, "reset", self.key, seed, options)
        except BaseException:
            await self._release()
            raise
        return result

    async def astep(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        if self._worker is None:
            raise RuntimeError("call reset() before step(): no episode is running")
        worker, generation = self._worker, self._worker.generation
        try:
            result, self.timings = await self.pool.call(worker, "step", self.key, action)
        except EnvNotOpen:  # the call reached the worker after Ray restarted it: the episode died with it
            await self.pool.lost(worker, generation)
            await self._release()
            raise WorkerLost(f"env worker {worker.index} restarted during the episode; its state is gone") from None
        except WorkerLost:
            await self._release()
            raise
        if result[2] or result[3]:  # terminated or truncated: the slot goes back
            await self._release()
        return result

    async def aclose(self) -> None:
        await self._release()
        for index in sorted(self._hosts):
            try:
                await self.pool.call(self.pool.workers[index], "close_env", self.key)
            except WorkerLost:
                pass  # its kernels died with it
        self._hosts.clear()

    async def _release(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await self.pool.release(worker)
