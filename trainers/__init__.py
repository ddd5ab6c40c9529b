"""RL training for PyVision-RL agents.

This package will hold the (GPU) trainer: rollout collection against the
``pyvision_env`` environment, reward/advantage computation and policy-gradient
updates of the agent model (``torch`` + ``transformers``, optionally ``ray``
for distributed rollouts and ``vllm`` for fast generation). Its heavy
dependencies come from the ``train``, ``ray`` and ``vllm`` extras and are
meant to be imported lazily so that the core environment installs without them.
"""
