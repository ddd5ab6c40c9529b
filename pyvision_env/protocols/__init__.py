"""Action / observation protocols: how responses are parsed and results rendered, per model family.

=================  ==========================================================================
``pyvision``       PyVision / PyVision-RL: ``<code>`` blocks, ``image_clue_i``, boxed answers
``codevision``     CodeVision: JSON ``<tool_call>`` to ``code_image_tool``, stateless, ``result``
``openai-tools``   OpenAI function calling with a ``python`` tool
=================  ==========================================================================

Example:
    >>> get_protocol("pyvision").parse("no code here").kind
    'invalid'
"""

from __future__ import annotations

from typing import Any

from .base import Action, EpisodeInputs, Protocol, ToolCall, ToolOutput, VideoView
from .codevision import CodeVisionProtocol
from .openai_tools import OpenAIToolsProtocol
from .pyvision import PyVisionProtocol

PROTOCOLS: dict[str, type[Protocol]] = {
    "pyvision": PyVisionProtocol, "codevision": CodeVisionProtocol, "openai-tools": OpenAIToolsProtocol,
}


def get_protocol(spec: str | Protocol, **kwargs: Any) -> Protocol:
    """A protocol instance from its name (with constructor ``kwargs``) or an instance (returned as is)."""
    if isinstance(spec, Protocol):
        if kwargs:
            raise ValueError("protocol options apply only when the protocol is given by name")
        return spec
    if spec not in PROTOCOLS:
        raise ValueError(f"unknown protocol {spec!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[spec](**kwargs)


__all__ = ["PROTOCOLS", "Action", "CodeVisionProtocol", "EpisodeInputs", "OpenAIToolsProtocol", "Protocol",
           "PyVisionProtocol", "ToolCall", "ToolOutput", "VideoView", "get_protocol"]
