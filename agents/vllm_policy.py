"""A policy on vLLM's offline engine: one ``LLM.chat`` call per batch of environments.

Conversations go to vLLM in OpenAI form (images as PNG ``data:`` URLs), so vLLM applies the model's own chat
template and its multimodal processor expands each image. PyVision's ``pyvision`` protocol stops at
``</code>`` (kept in the output), as the released models were sampled.

A text-only model cannot see images: a conversation with an image raises :class:`ValueError` unless the
policy is built with ``context_images=0``, which replaces every image by :attr:`Conversation.OMITTED
<agents.base.Conversation.OMITTED>` (the text-only path). On a CPU build of vLLM the engine defaults to
:data:`CPU_ENGINE_ARGS`; vision models do not run there (the Qwen2-VL processors need torchvision, unusable beside the CPU torch).

Example::

    >>> policy = VLLMPolicy("Qwen/Qwen2.5-VL-7B-Instruct", protocol="pyvision", temperature=1.0)  # doctest: +SKIP
    >>> policy.act_batch(observations, infos)                                                    # doctest: +SKIP
    >>> VLLMPolicy("/tmp/tiny-qwen2-text", context_images=0, max_model_len=2048)   # text-only, CPU  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyvision_env.deprecation import renamed_keywords
from pyvision_env.messages import ImagePart, Message, to_openai
from pyvision_env.protocols import Protocol

from .base import ChatPolicy
from .hf import ModelLoadError

STOP_STRINGS = {"pyvision": ("</code>",)}
"""Per protocol: where generation stops (included in the output)."""

CPU_ENGINE_ARGS: dict[str, Any] = {"enforce_eager": True, "kv_cache_memory_bytes": 512 << 20}
"""Engine defaults on vLLM's CPU backend: no torch.compile (slow start), and a fixed KV cache instead of
reserving ``gpu_memory_utilization`` (92 %) of the machine's memory. Given arguments (or
``VLLM_CPU_KVCACHE_SPACE``) win."""


@renamed_keywords(max_images="context_images")
class VLLMPolicy(ChatPolicy):
    """Responses from ``vllm.LLM`` for a batch of conversations.

    Args:
        model: a model folder or name vLLM can load (offline: a local folder); a folder path without
            ``config.json`` raises :class:`~agents.hf.ModelLoadError` before vLLM starts.
        protocol: the environment's protocol (tool schema for ``openai-tools``, stop strings for ``pyvision``).
        temperature, top_p, max_tokens: sampling.
        seed: the engine's seed; request ``k`` of the policy samples with seed ``seed + k`` (reproducible, and
            distinct between slots). ``None``: unseeded requests.
        context_images: images per prompt (vLLM's ``limit_mm_per_prompt``) and the conversation's image budget;
            ``0`` for a text-only model (images become a text note).
        engine_args: more ``vllm.LLM`` arguments (``max_model_len``, ``gpu_memory_utilization``, ...).
    """

    name = "vllm"

    def __init__(self, model: str, *, protocol: Protocol | str = "pyvision", temperature: float = 1.0,
                 top_p: float = 1.0, max_tokens: int = 1024, seed: int | None = None,
                 context_images: int | None = 16, **engine_args: Any) -> None:
        path = Path(model).expanduser()
        if (path.exists() or path.is_absolute() or str(model).startswith(".")) and not (path / "config.json").is_file():
            raise ModelLoadError(f"{model} is not a model folder (no config.json)")
        from vllm import LLM, SamplingParams
        from vllm.platforms import current_platform

        super().__init__(protocol, context_images)
        if current_platform.is_cpu() and not {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(engine_args):
            engine_args = {**CPU_ENGINE_ARGS, **engine_args}
        if seed is not None:
            engine_args["seed"] = seed
        self.model_name = str(model)
        images = 16 if context_images is None else context_images
        self.llm = LLM(model=self.model_name, limit_mm_per_prompt={"image": images}, **engine_args)
        self.multimodal = bool(self.llm.model_config.is_multimodal_model)
        self.seed, self.requests = seed, 0
        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                       stop=list(STOP_STRINGS.get(self.protocol.name, ())),
                                       include_stop_str_in_output=True)

    def complete_batch(self, conversations: list[list[Message]]) -> list[tuple[str, dict[str, Any]]]:
        if not self.multimodal and any(isinstance(part, ImagePart) for messages in conversations
                                       for message in messages for part in message.content):
            raise ValueError(f"{self.model_name} is a text-only model and cannot take images; build the policy "
                             "with context_images=0 (`--context-images 0`) to replace them by a text note")
        params = []
        for _ in conversations:
            sampling = self.sampling.clone()
            if self.seed is not None:
                sampling.seed = self.seed + self.requests
            self.requests += 1
            params.append(sampling)
        tools = getattr(self.protocol, "tools", None)
        outputs = self.llm.chat([to_openai(messages) for messages in conversations], params, use_tqdm=False,
                                tools=tools or None)
        return [(output.outputs[0].text, {"prompt_tokens": len(output.prompt_token_ids or ()),
                                          "completion_tokens": len(output.outputs[0].token_ids),
                                          "finish_reason": output.outputs[0].finish_reason}) for output in outputs]
