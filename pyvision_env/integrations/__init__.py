"""PyVision environments inside other RL frameworks: one module per framework, each an optional extra.

* :mod:`pyvision_env.integrations.skyrl` — SkyRL-Gym (``pip install 'pyvision-rl[skyrl]'``).

Each adapter is thin: it plays :class:`~pyvision_env.env.PyVisionEnv` episodes (with the rewards of
:mod:`pyvision_env.wrappers`) in the framework's own contract and re-implements none of them. What survives in
each framework is listed in ``docs/integrations.md``.
"""
