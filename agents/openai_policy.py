"""A policy backed by any OpenAI-compatible chat endpoint (vLLM's server, SGLang, ``pyvision serve``, hosted
APIs).

Images go as PNG ``data:`` URLs. Transient failures (connection refused or reset, timeouts, HTTP 408, 409,
429 and 5xx, a malformed body) are retried with exponential backoff and jitter, honouring ``Retry-After``;
permanent ones (other 4xx) raise :class:`PolicyError` at once with the server's message. A batch of
environments is served by concurrent requests, at most ``max_concurrency`` at a time. Token usage, latency
and retries are recorded per step in :attr:`OpenAIPolicy.usage`.

Under the ``openai-tools`` protocol the protocol's tool schema is sent and a reply with ``tool_calls`` is
passed to the environment as the assistant message JSON the protocol reads.

Example::

    >>> policy = OpenAIPolicy("tiny", base_url="http://127.0.0.1:8000/v1", temperature=0.7)  # doctest: +SKIP
    >>> policy.act(observation, info)                                                        # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pyvision_env.deprecation import renamed_keywords
from pyvision_env.messages import Message, to_openai
from pyvision_env.protocols import Protocol

from .base import ChatPolicy

TRANSIENT_STATUS = {408, 409, 429, 500, 502, 503, 504}


class PolicyError(RuntimeError):
    """The endpoint refused the request for good (bad request, authentication, unknown model, context
    overflow) or kept failing after every retry."""


@renamed_keywords(max_images="context_images", max_visual_tokens="context_visual_tokens")
class OpenAIPolicy(ChatPolicy):
    """Chat completions from an OpenAI-compatible endpoint, one conversation per environment slot.

    Args:
        model: the model name the endpoint serves.
        base_url: the API root (``.../v1``); ``$OPENAI_BASE_URL`` when None.
        api_key: ``$OPENAI_API_KEY`` when None (sent as a bearer token if set).
        protocol: the environment's protocol (its tool schema is sent for ``openai-tools``).
        temperature, top_p, max_tokens, stop: sampling parameters (``None`` leaves the server's default).
        timeout: seconds per request; max_retries: retries of a transient failure; backoff: first delay (s).
        max_concurrency: requests in flight at once for :meth:`act_batch`.
        context_images / context_visual_tokens: the conversation's image budget.
        extra_body: more request fields (e.g. ``{"top_k": 20}`` for vLLM).
    """

    name = "openai"

    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 protocol: Protocol | str = "pyvision", temperature: float | None = None,
                 top_p: float | None = None, max_tokens: int | None = 1024, stop: Sequence[str] | None = None,
                 timeout: float = 120.0, max_retries: int = 4, backoff: float = 0.5, max_concurrency: int = 8,
                 context_images: int | None = None, context_visual_tokens: int | None = None,
                 extra_body: dict[str, Any] | None = None) -> None:
        super().__init__(protocol, context_images, context_visual_tokens)
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.sampling = {key: value for key, value in (("temperature", temperature), ("top_p", top_p),
                                                        ("max_tokens", max_tokens), ("stop", list(stop or []) or None))
                         if value is not None}
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.max_concurrency = max_concurrency
        self.extra_body = dict(extra_body or {})

    def complete_batch(self, conversations: list[list[Message]]) -> list[tuple[str, dict[str, Any]]]:
        """One request per conversation, at most ``max_concurrency`` in flight."""
        if len(conversations) == 1:
            return [self.complete(conversations[0])]
        with ThreadPoolExecutor(min(self.max_concurrency, len(conversations))) as pool:
            return list(pool.map(self.complete, conversations))

    # --- requests -------------------------------------------------------------------------------------

    def request_body(self, messages: Sequence[Message]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": to_openai(messages), **self.sampling,
                                **self.extra_body}
        tools = getattr(self.protocol, "tools", None)
        if tools:
            body["tools"] = tools
        return body

    def complete(self, messages: Sequence[Message]) -> tuple[str, dict[str, Any]]:
        """The response text for ``messages`` and its usage record (retries transient failures)."""
        body = json.dumps(self.request_body(messages)).encode()
        started = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            try:
                reply = self._post(body)
                response = self._response_text(reply)
                usage = dict(reply.get("usage") or {})
                usage.update(latency_s=time.perf_counter() - started, retries=attempt,
                             finish_reason=reply["choices"][0].get("finish_reason"))
                return response, usage
            except _Transient as error:
                if attempt == self.max_retries:
                    raise PolicyError(f"{self.base_url}: still failing after {attempt + 1} attempts: {error}") \
                        from None
                delay = error.retry_after or self.backoff * 2 ** attempt * (1 + random.random() / 2)
                time.sleep(min(delay, 60.0))
        raise AssertionError("unreachable")

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as error:
            detail = _error_message(error.read())
            if error.code in TRANSIENT_STATUS:
                retry_after = error.headers.get("Retry-After")
                raise _Transient(f"HTTP {error.code}: {detail}",
                                 float(retry_after) if retry_after and retry_after.isdigit() else None) from None
            raise PolicyError(f"{self.base_url} refused the request (HTTP {error.code}): {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise _Transient(f"cannot reach the endpoint: {reason}") from None
        try:
            reply = json.loads(raw)
            reply["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Transient(f"malformed completion body: {raw[:200]!r}") from None
        return reply

    def _response_text(self, reply: dict[str, Any]) -> str:
        message = reply["choices"][0]["message"]
        if message.get("tool_calls"):
            return json.dumps({"role": "assistant", "content": message.get("content") or "",
                               "tool_calls": message["tool_calls"]})
        return message.get("content") or ""  # an empty completion becomes a format-error observation


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _error_message(raw: bytes) -> str:
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:300].decode(errors="replace") or "(no body)"
