"""`PyVisionVectorEnv`: N environments stepped concurrently on one engine's event loop.

The kernels are separate processes already, so one Python process can drive many episodes at once: a
vector step runs the ``astep`` coroutines of the stepped sub-environments together (``asyncio.gather`` on
the engine's loop) and returns when all are done.

Actions are one response text per sub-environment; ``None`` means "do not step this one" (it is left
exactly as it is: no new observation ``[]``, reward 0, not terminated or truncated, no info entries, and
``infos["active"][i]`` is False). That is how a batch goes on while some conversations wait or are done.

Autoreset follows Gymnasium (``metadata["autoreset_mode"]``, see https://farama.org/Vector-Autoreset-Mode):

- ``NEXT_STEP`` (default): the step after an episode ended resets that sub-environment instead of stepping
  it (its action is ignored; reward 0; the observation and info are those of the reset);
- ``SAME_STEP``: an ended episode is reset in the same step; the returned observation and info are the
  reset's, the last ones are in ``infos["final_obs"]`` and ``infos["final_info"]``;
- ``DISABLED``: an ended sub-environment must be reset with ``reset(options={"reset_mask": mask})`` (or
  be given ``None``) before it is stepped again.

Infos are merged Gymnasium-style (``infos[key][i]`` with the mask ``infos["_" + key]``), but a key whose
values differ in type across sub-environments (``score`` is ``None`` until an episode is graded) becomes an
object array, so nothing is coerced (``None`` never turns into ``False`` or ``nan``).

Example:
    >>> import gymnasium as gym, pyvision_env                                   # doctest: +SKIP
    >>> envs = gym.make_vec("PyVision/Zoom-v0", num_envs=4, autoreset_mode="SameStep", max_turns=6)
    >>> observations, infos = envs.reset(seed=0)         # env i is seeded with 0 + i
    >>> code = envs.envs[0].protocol.render_action(code="print(image_clue_0.size)")
    >>> observations, rewards, terminated, truncated, infos = envs.step([code, code, None, None])
    >>> infos["active"]
    array([ True,  True, False, False])
    >>> envs.close()

Several existing environments (all on one engine) make a vector env too:
``PyVisionVectorEnv.from_envs([PyVisionEnv(tasks, engine=engine) for _ in range(8)])``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from .env import EpisodeEnv
from .execution import Engine, default_engine
from .execution.loop import LoopThread
from .make import make_env
from .messages import Message
from .tasks import Task, TaskSet

log = logging.getLogger(__name__)

_TRANSPARENT_WRAPPERS = (gym.wrappers.PassiveEnvChecker, gym.wrappers.OrderEnforcing)
"""Wrappers ``gym.make`` adds that change nothing the vector env relies on; it looks through them."""

StepResult = tuple[tuple[list[Message], ...], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]


class PyVisionVectorEnv(VectorEnv):
    """``num_envs`` :class:`~pyvision_env.env.PyVisionEnv` stepped concurrently; see the module docstring.

    Args:
        num_envs: number of sub-environments.
        suite: the tasks, as for :class:`~pyvision_env.env.PyVisionEnv`.
        autoreset_mode: an :class:`~gymnasium.vector.AutoresetMode` or its value (``"NextStep"``,
            ``"SameStep"``, ``"Disabled"``).
        engine: the engine all sub-environments share (their kernels, their event loop); the process-wide
            default engine if None. The vector env does not close it.
        **env_kwargs: further :class:`~pyvision_env.env.PyVisionEnv` arguments (``protocol``, ``max_turns``...),
            and ``reward=`` to wrap each sub-environment in a reward (:mod:`pyvision_env.wrappers`); each is made by
            :func:`~pyvision_env.make.make_env`.

    ``gymnasium.make_vec("PyVision/<Suite>-v0", num_envs=N, autoreset_mode=..., **env_kwargs)`` builds one.
    """

    def __init__(self, num_envs: int, suite: str | TaskSet | Sequence[Task], *,
                 autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP, engine: Engine | None = None,
                 **env_kwargs: Any) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        engine = engine or default_engine()
        self._setup([_async_layer(make_env(suite, engine=engine, **env_kwargs), i) for i in range(num_envs)],
                    autoreset_mode)

    @classmethod
    def from_envs(cls, envs: Sequence[gym.Env], *,
                  autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP) -> PyVisionVectorEnv:
        """A vector env over existing environments, which must all use one engine (or one
        :class:`~pyvision_env.pools.ray_pool.RayEnvPool`, whose loop then drives them).

        ``gym.make`` results are accepted (their checker and order-enforcing wrappers are looked through), and
        so are wrappers with ``areset``/``astep`` coroutines (every :mod:`pyvision_env.wrappers` wrapper); other
        wrappers are refused, since the vector env calls the environments' coroutines directly.

        Example:
            >>> envs = PyVisionVectorEnv.from_envs([gym.make("PyVision/Zoom-v0", engine=engine)  # doctest: +SKIP
            ...                                     for _ in range(4)])
        """
        self = cls.__new__(cls)
        self._setup([_async_layer(env, i) for i, env in enumerate(envs)], autoreset_mode)
        return self

    def _setup(self, envs: list[gym.Env], autoreset_mode: str | AutoresetMode) -> None:
        if not envs:
            raise ValueError("a vector env needs at least one environment")
        if len({id(env) for env in envs}) != len(envs):
            raise ValueError("the same environment appears more than once; each sub-environment must be its own")
        engines = {id(env.unwrapped.engine): env.unwrapped.engine for env in envs}
        if len(engines) > 1:
            owners = [next(i for i, env in enumerate(envs) if env.unwrapped.engine is engine)
                      for engine in engines.values()]
            raise ValueError(f"all sub-environments must share one Engine (the vector env runs them on its event "
                             f"loop), but they use {len(engines)} engines (first users: envs {owners}); pass "
                             "engine=... to each PyVisionEnv")
        self.envs = envs
        self.engine: Engine | LoopThread = envs[0].unwrapped.engine
        """Runs the sub-environments' coroutines: their engine, or for remote envs their Ray pool's loop."""
        self.num_envs = len(envs)
        self.autoreset_mode = AutoresetMode(autoreset_mode)
        self.metadata = {**envs[0].metadata, "autoreset_mode": self.autoreset_mode}
        self.render_mode = envs[0].render_mode
        self.single_observation_space = envs[0].observation_space
        self.single_action_space = envs[0].action_space
        for i, env in enumerate(envs):
            if env.action_space != self.single_action_space or env.observation_space != self.single_observation_space:
                raise ValueError(f"env {i} has spaces {env.observation_space}, {env.action_space}; env 0 has "
                                 f"{self.single_observation_space}, {self.single_action_space}")
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self._unready = np.ones(self.num_envs, dtype=np.bool_)
        """No usable episode: never reset, or its last reset or step raised. Stepping it is an error."""
        self._ended = np.zeros(self.num_envs, dtype=np.bool_)
        """The episode ended and was not reset yet (``NEXT_STEP`` resets it on its next step)."""

    # --- synchronous API (Gymnasium) --------------------------------------------------------------

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None
              ) -> tuple[tuple[list[Message], ...], dict[str, Any]]:
        """Reset sub-environments concurrently.

        Args:
            seed: ``int``: env ``i`` is seeded with ``seed + i``; a list: one seed (or None) per env.
            options: a dict given to every env (``{"task_index": 3}``), with an optional ``"reset_mask"``
                (bool array: reset only those); or one dict per env, ``None`` for an env not to reset
                (``[{"task_index": i} for i in range(n)]``).

        Envs that are not reset return ``[]`` and no info entries (``infos["active"]`` is False).
        """
        return self.engine.run_coroutine(self.areset(seed=seed, options=options))

    def step(self, actions: Sequence[str | None]) -> StepResult:
        """Step the sub-environments whose action is not ``None``, concurrently.

        Returns ``(observations, rewards, terminated, truncated, infos)``: a tuple of N message lists and
        arrays of shape ``(N,)``. If some sub-environments raise, the others still finish their step; then
        the first exception is raised (a note names the sub-environments), and those that raised need a
        reset (``reset(options={"reset_mask": mask})``).
        """
        return self.engine.run_coroutine(self.astep(actions))

    def render(self) -> tuple[str | None, ...]:
        return tuple(env.render() for env in self.envs)

    def branch(self, index: int, count: int) -> PyVisionVectorEnv:
        """A new vector env of ``count`` forks of sub-environment ``index``'s episode in progress (each at the same
        point: its kernel's cells replayed, its counters and conversation copied; see
        :meth:`~pyvision_env.env.PyVisionEnv.fork`), ready to step: for tree rollouts, one node expanded into
        ``count`` children. This vector env is unchanged; close the branches when done.

        >>> children = envs.branch(0, 4)                                         # doctest: +SKIP
        >>> children.step([response_a, response_b, response_c, response_d])
        """
        if not 0 <= index < self.num_envs or count < 1:
            raise ValueError(f"branch needs a sub-environment index in [0, {self.num_envs}) and count >= 1, got "
                             f"{index} and {count}")
        if self._unready[index] or self._ended[index]:
            raise gym.error.ResetNeeded(f"sub-environment {index} has no episode in progress to branch")
        afork = getattr(self.envs[index], "afork", None)
        if afork is None:
            raise TypeError(f"sub-environment {index} ({type(self.envs[index]).__name__}) cannot fork its episode")
        forks = self.engine.run_coroutine(_fork_all(afork, count))
        branches = PyVisionVectorEnv.from_envs(forks, autoreset_mode=self.autoreset_mode)
        branches._unready[:] = False
        return branches

    def __del__(self) -> None:
        """Nothing, as in gymnasium 1.4: :meth:`close` ends the episodes. (gymnasium 1.2's ``VectorEnv.__del__``
        closes an open vector env when it is collected: one left half-built by a refused argument, or one still open
        at interpreter exit, when the engine's loop is gone.)"""

    def close_extras(self, **kwargs: Any) -> None:
        """End every sub-environment's episode (their kernels are killed together); the engine stays open."""
        if not self.engine.closed:
            self.engine.run_coroutine(_close_all(self.envs))
        for env in self.envs:  # wrappers finish their own work (e.g. a recorder writes the abandoned episode)
            env.close()

    # --- asyncio API ------------------------------------------------------------------------------

    async def areset(self, *, seed: int | Sequence[int | None] | None = None,
                     options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None = None
                     ) -> tuple[tuple[list[Message], ...], dict[str, Any]]:
        """Like :meth:`reset`, as a coroutine on the engine's event loop."""
        self._check_open()
        seeds = self._seeds(seed)
        plan = self._reset_plan(options)
        calls = {i: self.envs[i].areset(seed=seeds[i], options=opts) for i, opts in enumerate(plan)
                 if opts is not None}
        results = await _gather(calls)
        observations: list[list[Message]] = [[] for _ in range(self.num_envs)]
        infos: dict[int, dict[str, Any]] = {}
        for i, outcome in results.items():
            self._unready[i] = isinstance(outcome, BaseException)
            self._ended[i] = False
            if not self._unready[i]:
                observations[i], infos[i] = outcome
        _raise_failures(results, "reset")
        return tuple(observations), self._merge(infos)

    async def astep(self, actions: Sequence[str | None]) -> StepResult:
        """Like :meth:`step`, as a coroutine on the engine's event loop."""
        self._check_open()
        actions = self._check_actions(actions)
        calls = {i: self._step_one(i, action) for i, action in enumerate(actions) if action is not None}
        results = await _gather(calls)
        observations: list[list[Message]] = [[] for _ in range(self.num_envs)]
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        terminated = np.zeros(self.num_envs, dtype=np.bool_)
        truncated = np.zeros(self.num_envs, dtype=np.bool_)
        infos: dict[int, dict[str, Any]] = {}
        for i, outcome in results.items():
            if isinstance(outcome, BaseException):
                self._unready[i] = True
                continue
            observations[i], rewards[i], terminated[i], truncated[i], infos[i] = outcome
            self._ended[i] = (terminated[i] or truncated[i]) and self.autoreset_mode is not AutoresetMode.SAME_STEP
        _raise_failures(results, "step")
        return tuple(observations), rewards, terminated, truncated, self._merge(infos)

    # --- internals --------------------------------------------------------------------------------

    async def _step_one(self, i: int, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        env = self.envs[i]
        if self._ended[i]:  # NEXT_STEP: this step is the reset (_check_actions refused the other modes)
            observation, info = await env.areset()
            return observation, 0.0, False, False, info
        observation, reward, terminated, truncated, info = await env.astep(action)
        if (terminated or truncated) and self.autoreset_mode is AutoresetMode.SAME_STEP:
            final = {"final_obs": observation, "final_info": info}
            observation, info = await env.areset()
            info = {**final, **info}
        return observation, reward, terminated, truncated, info

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this vector env is closed")

    def _check_actions(self, actions: Sequence[str | None]) -> list[str | None]:
        if isinstance(actions, str):
            raise TypeError(f"step() takes one action per sub-environment ({self.num_envs} strings or None), "
                            "got a single str")
        actions = list(actions)
        if len(actions) != self.num_envs:
            raise ValueError(f"step() takes {self.num_envs} actions (str, or None to skip an env), got {len(actions)}")
        for i, action in enumerate(actions):
            if action is None:
                continue
            if not isinstance(action, str):
                raise TypeError(f"action {i} must be a str (the model's response) or None, got "
                                f"{type(action).__name__}")
            if self._unready[i]:
                raise gym.error.ResetNeeded(f"sub-environment {i} has no episode (never reset, or its last reset "
                                            "or step raised): reset it first, e.g. "
                                            "reset(options={'reset_mask': mask}), or give it None")
            if self._ended[i] and self.autoreset_mode is AutoresetMode.DISABLED:
                raise gym.error.ResetNeeded(f"the episode of sub-environment {i} ended and autoreset is disabled: "
                                            "reset it with reset(options={'reset_mask': mask}) or give it None")
        return actions

    def _seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        if seed is None:
            return [None] * self.num_envs
        if isinstance(seed, (int, np.integer)):
            return [int(seed) + i for i in range(self.num_envs)]
        seeds = list(seed)
        if len(seeds) != self.num_envs:
            raise ValueError(f"a list of seeds needs one per sub-environment ({self.num_envs}), got {len(seeds)}")
        return seeds

    def _reset_plan(self, options: Mapping[str, Any] | Sequence[Mapping[str, Any] | None] | None
                    ) -> list[dict[str, Any] | None]:
        """The options each env is reset with; ``None``: not reset."""
        if options is None:
            return [{} for _ in range(self.num_envs)]
        if isinstance(options, Mapping):
            shared = dict(options)
            mask = shared.pop("reset_mask", None)
            if mask is None:
                return [dict(shared) for _ in range(self.num_envs)]
            mask = np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self.num_envs},), got "
                                 f"dtype {mask.dtype} and shape {mask.shape}")
            plan = [dict(shared) if reset else None for reset in mask]
        else:
            plan = [None if opts is None else dict(opts) for opts in options]
            if len(plan) != self.num_envs:
                raise ValueError(f"a list of options needs one entry (dict, or None: no reset) per sub-environment "
                                 f"({self.num_envs}), got {len(plan)}")
        if all(opts is None for opts in plan):
            raise ValueError("reset() was asked to reset no sub-environment")
        return plan

    def _merge(self, infos: dict[int, dict[str, Any]]) -> dict[str, Any]:
        merged = _merge_infos(infos, self.num_envs)
        merged["active"] = np.zeros(self.num_envs, dtype=np.bool_)
        merged["active"][list(infos)] = True
        merged["_active"] = np.ones(self.num_envs, dtype=np.bool_)
        return merged


async def _gather(calls: dict[int, Coroutine[Any, Any, Any]]) -> dict[int, Any]:
    """Run the coroutines together; every one finishes (or raises) before this returns."""
    outcomes = await asyncio.gather(*calls.values(), return_exceptions=True)
    return dict(zip(calls, outcomes))


def _raise_failures(results: dict[int, Any], what: str) -> None:
    """Raise the first sub-environment's exception, with a note naming every one that failed."""
    failed = {i: outcome for i, outcome in results.items() if isinstance(outcome, BaseException)}
    if not failed:
        return
    (first, error), others = next(iter(failed.items())), list(failed.items())[1:]
    note = (f"raised by sub-environment {first} in PyVisionVectorEnv.{what}(); the other "
            f"{len(results) - len(failed)} sub-environment(s) of this {what} finished normally (their results are "
            "dropped), the failed ones need a reset")
    if others:
        note += "; also failed: " + ", ".join(f"env {i} ({type(e).__name__}: {e})" for i, e in others)
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note(note)
    else:
        log.error("%s", note)
    raise error


def _merge_infos(infos: dict[int, dict[str, Any]], num_envs: int) -> dict[str, Any]:
    """Gymnasium's vector info layout (``infos[key]``, ``infos["_" + key]``), type-stable per key."""
    merged: dict[str, Any] = {}
    keys = list(dict.fromkeys(key for info in infos.values() for key in info))
    for key in keys:
        present = {i: info[key] for i, info in infos.items() if key in info}
        values = list(present.values())
        if all(isinstance(value, dict) for value in values):  # final_info
            merged[key] = _merge_infos(present, num_envs)
        else:
            kinds = {type(value) for value in values}
            kind = next(iter(kinds))
            if len(kinds) == 1 and (kind in (bool, int, float) or issubclass(kind, np.number)):
                array = np.zeros(num_envs, dtype=kind)
            else:
                array = np.full(num_envs, None, dtype=object)
            for i, value in present.items():
                array[i] = value
            merged[key] = array
        mask = np.zeros(num_envs, dtype=np.bool_)
        mask[list(present)] = True
        merged[f"_{key}"] = mask
    return merged


async def _close_all(envs: Sequence[gym.Env]) -> None:
    await asyncio.gather(*(env.unwrapped.aclose() for env in envs), return_exceptions=True)


async def _fork_all(afork: Any, count: int) -> list[gym.Env]:
    """``count`` forks made concurrently; if one fails, the others are closed and the first error raised."""
    results = await asyncio.gather(*(afork() for _ in range(count)), return_exceptions=True)
    failures = [result for result in results if isinstance(result, BaseException)]
    if failures:
        await _close_all([result for result in results if not isinstance(result, BaseException)])
        raise failures[0]
    return list(results)


def _async_layer(env: gym.Env, index: int) -> gym.Env:
    """The outermost layer the vector env drives: ``gym.make``'s checker and order wrappers are looked
    through; every layer below must offer ``areset``/``astep`` (PyVisionEnv, RecordEpisodes, ...)."""
    while isinstance(env, _TRANSPARENT_WRAPPERS):
        env = env.env
    layer = env
    while True:
        if not (callable(getattr(type(env), "areset", None)) and callable(getattr(type(env), "astep", None))):
            raise TypeError(f"env {index} is wrapped in {type(env).__name__}, which has no areset/astep coroutines "
                            "(the vector env drives those directly): use gymnasium.wrappers.vector wrappers on "
                            "the vector env, or gymnasium.vector.SyncVectorEnv")
        if not isinstance(env, gym.Wrapper):
            break
        env = env.env
    if not isinstance(env, EpisodeEnv):
        raise TypeError(f"env {index} is a {type(env).__name__}, not a PyVisionEnv (or a proxy of one such as a "
                        "Ray pool's RemoteEnv)")
    return layer
