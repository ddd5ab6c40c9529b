"""A policy on vLLM's offline engine (GPU machines): one ``LLM.chat`` call per batch of environments.

Conversations go to vLLM in OpenAI form (images as PNG ``data:`` URLs), so vLLM applies the model's own chat
template and its multimodal processor expands each image. PyVision's ``pyvision`` protocol stops at
``</code>`` (kept in the output), as the released models were sampled. vLLM cannot run vision models on a
machine without a GPU (see pitfalls); the tests that need it are skipped where ``vllm`` is not installed.

Example::

    >>> policy = VLLMPolicy("Qwen/Qwen2.5-VL-7B-Instruct", protocol="pyvision", temperature=1.0)  # doctest: +SKIP
    >>> policy.act_batch(observations, infos)                                                    # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from pyvision_env.messages import Message, to_openai
from pyvision_env.protocols import Protocol

from .base import ChatPolicy

STOP_STRINGS = {"pyvision": ("</code>",)}
"""Per protocol: where generation stops (included in the output)."""


class VLLMPolicy(ChatPolicy):
    """Responses from ``vllm.LLM`` for a batch of conversations.

    Args:
        model: a model folder or name vLLM can load (offline: a local folder).
        protocol: the environment's protocol (tool schema for ``openai-tools``, stop strings for ``pyvision``).
        temperature, top_p, max_tokens, seed: sampling.
        max_images: images per prompt (vLLM's ``limit_mm_per_prompt``) and the conversation's image budget.
        engine_args: more ``vllm.LLM`` arguments (``tensor_parallel_size``, ``gpu_memory_utilization``, ...).
    """

    name = "vllm"

    def __init__(self, model: str, *, protocol: Protocol | str = "pyvision", temperature: float = 1.0,
                 top_p: float = 1.0, max_tokens: int = 1024, seed: int | None = None, max_images: int | None = 16,
                 **engine_args: Any) -> None:
        from vllm import LLM, SamplingParams

        super().__init__(protocol, max_images)
        self.llm = LLM(model=model, seed=seed, limit_mm_per_prompt={"image": max_images or 16}, **engine_args)
        self.sampling = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                                       stop=list(STOP_STRINGS.get(self.protocol.name, ())),
                                       include_stop_str_in_output=True)

    def complete_batch(self, conversations: list[list[Message]]) -> list[tuple[str, dict[str, Any]]]:
        tools = getattr(self.protocol, "tools", None)
        outputs = self.llm.chat([to_openai(messages) for messages in conversations], self.sampling, use_tqdm=False,
                                tools=tools or None)
        return [(output.outputs[0].text, {"prompt_tokens": len(output.prompt_token_ids or ()),
                                          "completion_tokens": len(output.outputs[0].token_ids),
                                          "finish_reason": output.outputs[0].finish_reason}) for output in outputs]
