"""Policies that act in the ``pyvision_env`` environments: they read observations and write responses.

* :mod:`agents.base` — the :class:`~agents.base.Policy` interface and the conversation every model policy keeps;
* :mod:`agents.scripted` — a tool-using scripted policy per built-in suite; :mod:`agents.baselines` — policies
  without tools (direct answers, uniform video frames, random) and a guessing teacher;
* :mod:`agents.openai_policy`, :mod:`agents.hf`, :mod:`agents.vllm_policy` — served endpoints, local Hugging Face
  models, vLLM; :mod:`agents.serve` serves a local model behind an OpenAI-compatible endpoint;
* :mod:`agents.make` — a policy by name (what ``pyvision run/eval --policy`` uses);
  :mod:`agents.episodes` — one episode of a policy in an environment, and its :class:`~agents.episodes.EpisodeResult`.

Example:
    >>> from agents import scripted_policy
    >>> scripted_policy("zoom", "pyvision").name
    'scripted-zoom'
"""

from .baselines import DirectAnswerPolicy, RandomPolicy, UniformVideoPolicy
from .scripted import SCRIPTED_POLICIES, ScriptedPolicy, scripted_policy

__all__ = ["SCRIPTED_POLICIES", "DirectAnswerPolicy", "RandomPolicy", "ScriptedPolicy", "UniformVideoPolicy",
           "scripted_policy"]
