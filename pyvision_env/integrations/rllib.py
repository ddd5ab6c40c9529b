"""PyVision episodes in RLlib's env runners (new API stack), by the environment name ``pyvision``.

Importing this module registers ``pyvision`` with Ray Tune's registry, so ``config.environment("pyvision",
env_config=...)`` makes RLlib's ``SingleAgentEnvRunner`` build PyVision environments by name, locally and on remote
env runners. ``env_config`` names the suite (``suite``, a registered suite or installed public benchmark, and
optionally ``split``) and the environments' options: ``reward`` and any
:class:`~pyvision_env.env.PyVisionEnv` argument (``protocol``, ``max_turns``, ``max_images``...). Each env runner
plays its ``num_envs_per_env_runner`` episodes concurrently in one
:class:`~pyvision_env.vector.PyVisionVectorEnv`, on the kernels of its process's default engine.

RLlib's defaults stack observations into numeric arrays; a PyVision observation is a list of chat messages with
images, and an action is the model's response text. What RLlib needs instead is in :data:`ENV_RUNNER_SETTINGS`:

* the creator builds the vector env itself (``gym_env_vectorize_mode="vector_entry_point"``; Gymnasium's
  ``SyncVectorEnv`` cannot batch messages): :class:`ConversationVectorEnv` hands RLlib one observation per
  sub-environment in an object array, and takes the module's responses as they are;
* each observation RLlib sees is the episode's whole conversation so far (``PyVisionEnv.conversation()``: the
  first messages, then each response and the messages it brought), so an RLModule is a function of one
  observation, and nothing is lost when RLlib cuts an episode into chunks;
* episodes keep their observations as lists (``episodes_to_numpy=False``), and the env-to-module connector
  :class:`ConversationsToBatch` replaces RLlib's default connectors: the module's ``batch["obs"]`` holds the N
  conversations, and it returns ``{"actions": <N response strings>}``, which go to the environments unchanged.

Example (``MyVLMModule`` is your ``TorchRLModule``; its ``_forward`` generates a response for each conversation)::

    from pyvision_env.integrations.rllib import ENV_RUNNER_SETTINGS  # registers "pyvision"
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module import RLModuleSpec

    config = (PPOConfig()
              .environment("pyvision", env_config={"suite": "zoom", "reward": "accumulative", "max_turns": 6})
              .env_runners(num_env_runners=2, num_envs_per_env_runner=4, **ENV_RUNNER_SETTINGS)
              .rl_module(rl_module_spec=RLModuleSpec(module_class=MyVLMModule)))
    runners = EnvRunnerGroup(config=config)  # ray.rllib.env.env_runner_group; Algorithm builds the same
    batches = runners.foreach_env_runner(lambda runner: runner.sample(num_episodes=8), local_env_runner=False)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.tune.registry import register_env

from ..vector import PyVisionVectorEnv

ENV_NAME = "pyvision"


class ConversationVectorEnv(gym.vector.VectorWrapper):
    """A :class:`~pyvision_env.vector.PyVisionVectorEnv` as RLlib's env runner steps it: the observations are each
    sub-environment's conversation so far, in an object array of shape ``(num_envs,)``; ``step`` takes any
    sequence of ``num_envs`` response strings (a NumPy array included).

    Example:
        >>> envs = ConversationVectorEnv(PyVisionVectorEnv(2, "zoom", max_turns=4))  # doctest: +SKIP
        >>> conversations, infos = envs.reset(seed=0)
        >>> conversations.shape, conversations[0][0].role
        ((2,), 'system')
    """

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: Mapping[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        _, infos = self.env.reset(seed=seed, options=options)
        return self._conversations(), infos

    def step(self, actions: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        _, rewards, terminated, truncated, infos = self.env.step(list(actions))
        return self._conversations(), rewards, terminated, truncated, infos

    def _conversations(self) -> np.ndarray:
        return _object_array([env.unwrapped.conversation() for env in self.env.envs])


class ConversationsToBatch(ConnectorV2):
    """Env-to-module connector: ``batch["obs"]`` holds each episode's latest observation (its conversation so far),
    an object array in the order of the env runner's episodes (one per sub-environment).

    An episode that has just ended gets ``None``: RLlib still asks for its action, which the environment ignores
    (it resets that sub-environment instead, Gymnasium's next-step autoreset), so the module returns any string
    (``""``) there rather than generate a response nobody reads.
    """

    def __call__(self, *, rl_module: Any, batch: dict[str, Any], episodes: list[Any], explore: bool | None = None,
                 shared_data: dict | None = None, metrics: Any = None, **kwargs: Any) -> dict[str, Any]:
        batch[Columns.OBS] = _object_array([None if episode.is_done else episode.get_observations(-1)
                                            for episode in episodes])
        return batch


ENV_RUNNER_SETTINGS: dict[str, Any] = {
    "gym_env_vectorize_mode": "vector_entry_point",
    "episodes_to_numpy": False,
    "env_to_module_connector": lambda *_: ConversationsToBatch(),
    "add_default_connectors_to_env_to_module_pipeline": False,
    "add_default_connectors_to_module_to_env_pipeline": False,
}
"""``config.env_runners(**ENV_RUNNER_SETTINGS)``: what RLlib's env runners need to play PyVision episodes (see the
module docstring)."""


def make_vector_env(env_config: Mapping[str, Any]) -> ConversationVectorEnv:
    """The environment creator registered as ``pyvision``: RLlib calls it with ``env_config`` and ``num_envs``."""
    options = dict(env_config)
    num_envs = options.pop("num_envs", None)
    if num_envs is None:
        raise ValueError("RLlib builds pyvision environments as one vector env: configure the env runners with "
                         "config.env_runners(**pyvision_env.integrations.rllib.ENV_RUNNER_SETTINGS) (it sets "
                         "gym_env_vectorize_mode='vector_entry_point')")
    suite = options.pop("suite", None)
    if suite is None:
        raise ValueError(f"env_config must name the suite, e.g. {{'suite': 'zoom'}}; got {options!r}")
    return ConversationVectorEnv(PyVisionVectorEnv(int(num_envs), suite, **options))


def register() -> None:
    """Register :func:`make_vector_env` with Ray Tune as ``pyvision``. Done on import; safe to repeat."""
    register_env(ENV_NAME, make_vector_env)


def _object_array(items: list[Any]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)  # filled one by one: NumPy would turn equal-length lists into 2-D
    for i, item in enumerate(items):
        array[i] = item
    return array


register()
