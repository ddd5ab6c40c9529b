"""The base of every PyVision wrapper: hooks written once, run by the Gymnasium API and by the asyncio API.

A wrapper overrides some of four hooks; :class:`PyVisionWrapper` calls them around the wrapped environment's
``reset``/``step`` and around its ``areset``/``astep`` coroutines (the ones
:class:`~pyvision_env.vector.PyVisionVectorEnv` drives), so a wrapper works in a vector env without writing its
logic twice:

* :meth:`~PyVisionWrapper.before_reset` — before the wrapped reset (say, finish the episode it abandons);
* :meth:`~PyVisionWrapper.after_reset` — ``(observation, info)`` of the reset, returned possibly changed;
* :meth:`~PyVisionWrapper.after_step` — the action and the step's five values, returned possibly changed;
* :meth:`~PyVisionWrapper.before_close` — before the wrapped environment closes;
* :meth:`~PyVisionWrapper.after_fork` — on the copy of the wrapper that :meth:`~PyVisionWrapper.fork` puts
  around a fork of the episode: copy the mutable per-episode state the two must not share.

A wrapper whose hooks do blocking work (files) sets ``blocking_hooks = True``: the asyncio API then runs them in a
worker thread, never on the event loop.

Example::

    class CountSteps(PyVisionWrapper):
        def after_reset(self, observation, info, seed):
            self.steps = 0
            return observation, info

        def after_step(self, action, observation, reward, terminated, truncated, info):
            self.steps += 1
            return observation, reward, terminated, truncated, {**info, "steps": self.steps}
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from ..env import require_episode_env
from ..messages import Message

StepResult = tuple[list[Message], float, bool, bool, dict[str, Any]]


class PyVisionWrapper(gym.Wrapper[list, str, list, str]):
    """A wrapper around a PyVisionEnv (or a wrapper stack around one, or a Ray pool's ``RemoteEnv``); see the
    module docstring for the hooks."""

    blocking_hooks = False
    """The hooks block (file I/O): the asyncio API runs them in a worker thread."""

    def __init__(self, env: gym.Env) -> None:
        gym.Wrapper.__init__(self, env)
        require_episode_env(env, type(self).__name__)

    # --- hooks ------------------------------------------------------------------------------------

    def before_reset(self) -> None:
        """Called before the wrapped environment resets."""

    def after_reset(self, observation: list[Message], info: dict[str, Any], seed: int | None
                    ) -> tuple[list[Message], dict[str, Any]]:
        """Sees (and may change) what the reset returned."""
        return observation, info

    def after_step(self, action: str, observation: list[Message], reward: float, terminated: bool,
                   truncated: bool, info: dict[str, Any]) -> StepResult:
        """Sees (and may change) what the step returned for ``action``."""
        return observation, reward, terminated, truncated, info

    def before_close(self) -> None:
        """Called before the wrapped environment closes."""

    def after_fork(self) -> None:
        """Called on a fork's wrapper (a shallow copy of this one): replace shared mutable episode state by
        copies."""

    # --- forks ------------------------------------------------------------------------------------

    def fork(self) -> PyVisionWrapper:
        """This wrapper stack around a fork of the episode in progress (see
        :meth:`~pyvision_env.env.PyVisionEnv.fork`)."""
        return self._around(self._inner("fork")())

    async def afork(self) -> PyVisionWrapper:
        """Like :meth:`fork`, as a coroutine on the engine's event loop."""
        return self._around(await self._inner("afork")())

    def _inner(self, name: str) -> Callable[[], Any]:
        method = getattr(self.env, name, None)
        if method is None:
            raise TypeError(f"{type(self.env).__name__} cannot fork an episode (only PyVisionEnv and the "
                            "PyVision wrappers around it can)")
        return method

    def _around(self, env: gym.Env) -> PyVisionWrapper:
        twin = copy.copy(self)
        twin.env = env
        twin.after_fork()
        return twin

    # --- Gymnasium API ----------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[list[Message], dict[str, Any]]:
        self.before_reset()
        observation, info = self.env.reset(seed=seed, options=options)
        return self.after_reset(observation, info, seed)

    def step(self, action: str) -> StepResult:
        return self.after_step(action, *self.env.step(action))

    def close(self) -> None:
        try:
            self.before_close()
        finally:
            self.env.close()

    # --- asyncio API ------------------------------------------------------------------------------

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                     ) -> tuple[list[Message], dict[str, Any]]:
        """Like :meth:`reset`, around the wrapped environment's ``areset`` coroutine."""
        await self._run_hook(self.before_reset)
        observation, info = await self.env.get_wrapper_attr("areset")(seed=seed, options=options)
        return await self._run_hook(self.after_reset, observation, info, seed)

    async def astep(self, action: str) -> StepResult:
        """Like :meth:`step`, around the wrapped environment's ``astep`` coroutine."""
        result = await self.env.get_wrapper_attr("astep")(action)
        return await self._run_hook(self.after_step, action, *result)

    async def _run_hook(self, hook: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(hook, *args) if self.blocking_hooks else hook(*args)
