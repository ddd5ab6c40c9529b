"""A policy by name: what ``pyvision run`` and ``pyvision eval`` build from ``--policy``.

========================  ==========================================================================
``scripted``              the suite's tool-using scripted policy (:mod:`agents.scripted`)
``direct``                answers from the first view without tools (:class:`~agents.baselines.DirectAnswerPolicy`)
``uniform``               video suites: answers from frames sampled at 1 fps (the on-demand baseline)
``random``                random responses, seeded (:class:`~agents.baselines.RandomPolicy`)
``openai``                any OpenAI-compatible endpoint (:class:`~agents.openai_policy.OpenAIPolicy`)
``hf``                    a local Hugging Face VLM (:class:`~agents.hf.HFPolicy`)
``vllm``                  vLLM's offline engine (:class:`~agents.vllm_policy.VLLMPolicy`)
========================  ==========================================================================

Example:
    >>> make_policy("scripted", suite="zoom").name
    'scripted-zoom'
    >>> make_policy("openai", model="m", base_url="http://127.0.0.1:8000/v1").name     # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvision_env.protocols import Protocol

from .base import Policy

POLICIES = ("scripted", "direct", "uniform", "random")
MODEL_POLICIES = ("openai", "hf", "vllm")


class PolicyError(ValueError):
    """A policy cannot be made: an unknown name, a missing model, a model that does not load."""


@dataclass(frozen=True)
class ModelOptions:
    """How a model policy is served and sampled (ignored by the others)."""

    model: str | None = None
    """``hf``/``vllm``: a model folder; ``openai``: the served model's name."""
    base_url: str | None = None
    """``openai``: the API root (default: ``$OPENAI_BASE_URL``)."""
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 1024
    """Tokens per response."""
    device: str = "auto"
    """``hf``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""
    context_images: int | None = None
    """Images kept in the model's context (the oldest go first; see :class:`~agents.base.Conversation`)."""


def make_policy(name: str, *, suite: str | None = None, protocol: Protocol | str = "pyvision", seed: int = 0,
                model: ModelOptions | None = None) -> Policy:
    """The policy ``name`` (see the module table) for ``suite``, speaking ``protocol``.

    Raises :class:`PolicyError` with a message for the user when it cannot be made."""
    if name in MODEL_POLICIES:
        return _model_policy(name, protocol, seed, model or ModelOptions())
    if name == "scripted":
        from .scripted import scripted_policy

        try:
            return scripted_policy(suite or "", protocol)
        except KeyError as error:
            raise PolicyError(error.args[0]) from None
    from .baselines import DirectAnswerPolicy, RandomPolicy, UniformVideoPolicy

    makers = {"direct": lambda: DirectAnswerPolicy(protocol), "uniform": lambda: UniformVideoPolicy(protocol),
              "random": lambda: RandomPolicy(protocol, seed=seed)}
    if name not in makers:
        raise PolicyError(f"unknown policy {name!r}; choose from {', '.join(POLICIES + MODEL_POLICIES)}")
    return makers[name]()


def _model_policy(name: str, protocol: Protocol | str, seed: int, options: ModelOptions) -> Policy:
    if not options.model:
        raise PolicyError(f"--policy {name} needs --model")
    sampling = {"temperature": options.temperature, "top_p": options.top_p, "context_images": options.context_images}
    if name == "openai":
        from .openai_policy import OpenAIPolicy

        return OpenAIPolicy(options.model, base_url=options.base_url, protocol=protocol,
                            max_tokens=options.max_tokens, **sampling)
    try:
        if name == "hf":
            from .hf import HFPolicy

            return HFPolicy(options.model, protocol=protocol, device=options.device, seed=seed,
                            max_new_tokens=options.max_tokens, **sampling)
        from .vllm_policy import VLLMPolicy

        return VLLMPolicy(options.model, protocol=protocol, seed=seed, max_tokens=options.max_tokens, **sampling)
    except ImportError as error:
        install = ("pip install vllm (GPU) or make test-vllm (CPU build)" if name == "vllm"
                   else "pip install torch transformers")
        raise PolicyError(f"--policy {name} needs {error.name or error}: {install}") from None
    except Exception as error:  # noqa: BLE001  (a model that cannot load is a clear message, not a traceback)
        raise PolicyError(f"cannot load {options.model}: {error}") from None
