"""Agent policies for PyVision-RL.

This package will hold the policies that act in the ``pyvision_env`` Gymnasium
environment: the model-backed agents (multimodal LLMs served locally through
``transformers`` or ``vllm``) that read the image and task, write Python code to
crop/zoom/analyse the image, and receive the sandboxed kernel's outputs as
observations, together with the prompt formatting and action parsing they share
and simple scripted baselines used for tests and benchmarks.

Available now: :func:`scripted_policy` (one tool-using scripted policy per built-in suite,
:mod:`agents.scripted`), :class:`DirectAnswerPolicy` and :class:`RandomPolicy` (:mod:`agents.baselines`).

Example:
    >>> from agents import scripted_policy
    >>> scripted_policy("zoom", "pyvision").name
    'scripted-zoom'
"""

from .baselines import DirectAnswerPolicy, RandomPolicy
from .scripted import SCRIPTED_POLICIES, ScriptedPolicy, scripted_policy

__all__ = ["SCRIPTED_POLICIES", "DirectAnswerPolicy", "RandomPolicy", "ScriptedPolicy", "scripted_policy"]
