"""OpenAI function calling with one ``python`` tool — for any served model (vLLM, SGLang, hosted APIs).

The action is the assistant message: either its JSON (``{"content": ..., "tool_calls": [...]}``, as an
OpenAI client returns it) or raw text with Hermes-style ``<tool_call>{"name": "python", "arguments":
{"code": ...}}</tool_call>`` blocks (what a server's tool parser reads). A message without tool calls is the
final answer (its ``\\boxed{}`` content when present). Each call gets a ``tool`` message with its text and
images; ``images_in_tool_message=False`` sends the images in a following user message instead, for
servers that accept only text in tool messages.

Example:
    >>> p = OpenAIToolsProtocol()
    >>> action = p.parse(p.render_action(code="print(2)", call_id="call_1"))
    >>> action.kind, action.calls[0].id, action.calls[0].code
    ('code', 'call_1', 'print(2)')
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..messages import ImagePart, Message, Part, TextPart
from .base import (
    Action,
    EpisodeInputs,
    Protocol,
    ToolCall,
    ToolOutput,
    choices_text,
    merge_text,
    video_parts,
)

TOOL_NAME = "python"
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)

TOOLS: list[dict[str, Any]] = [{
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": ("Run Python code in a persistent Jupyter kernel. The input images are PIL images named "
                        "image_clue_0, image_clue_1, ... Figures shown with plt.show() and printed text are "
                        "returned."),
        "parameters": {"type": "object", "properties": {"code": {"type": "string",
                                                                  "description": "Python code to run"}},
                       "required": ["code"]},
    },
}]

SYSTEM_PROMPT = """\
You answer questions about images. You can call the `python` tool to run code in a persistent Jupyter
kernel: the input images are PIL images named `image_clue_0`, `image_clue_1`, ...; numpy (np), PIL (Image,
ImageOps, ImageEnhance, ImageFilter, ImageDraw) and matplotlib.pyplot (plt) are imported. Show an image with
plt.imshow(...) and plt.show() to see it; crop, zoom, rotate, flip and enhance contrast as needed.
When you are sure, reply without a tool call and put the short final answer in \\boxed{...}."""


class OpenAIToolsProtocol(Protocol):
    name = "openai-tools"
    supports_video = True
    default_system_prompt = SYSTEM_PROMPT
    tools = TOOLS
    format_reminder = "Call the `python` tool with a 'code' argument, or reply with the final answer in \\boxed{...}."

    def __init__(self, system_prompt: str | None = None, images_in_tool_message: bool = True, **kwargs) -> None:
        super().__init__(system_prompt, **kwargs)
        self.images_in_tool_message = images_in_tool_message

    def _parse(self, text: str) -> Action:
        message = _as_message_json(text)
        if message is not None:
            content, raw_calls = message.get("content") or "", message.get("tool_calls") or []
            if not isinstance(content, str) or not isinstance(raw_calls, list):
                return Action("invalid", text, error="The message must have string 'content' and a list of "
                                                     "'tool_calls'.")
            parsed = [self._openai_call(call, i) for i, call in enumerate(raw_calls)]
        else:
            content = _TOOL_CALL.sub("", text)
            parsed = [self._hermes_call(body, i) for i, body in enumerate(_TOOL_CALL.findall(text))]
            if not parsed and "<tool_call>" in text:
                return Action("invalid", text, error="The <tool_call> block is not closed with </tool_call>.")
        errors = [item for item in parsed if isinstance(item, str)]
        if errors:
            return Action("invalid", text, error=errors[0])
        if parsed:
            return Action("code", text, calls=tuple(parsed))  # type: ignore[arg-type]
        if not content.strip():
            return Action("invalid", text, error="The message has neither a tool call nor an answer.")
        return Action("answer", text, answer=content.strip())

    @staticmethod
    def _openai_call(call: Any, position: int) -> ToolCall | str:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            return "Each tool call must be an object with a 'function' object."
        return _make_call(call["function"].get("name"), call["function"].get("arguments"),
                          str(call.get("id") or f"call_{position}"))

    @staticmethod
    def _hermes_call(body: str, position: int) -> ToolCall | str:
        try:
            call = json.loads(body)
        except json.JSONDecodeError as error:
            return f"The tool call is not valid JSON ({error.msg} at character {error.pos})."
        if not isinstance(call, dict):
            return "The tool call must be a JSON object with 'name' and 'arguments'."
        return _make_call(call.get("name"), call.get("arguments"), f"call_{position}")

    def question_parts(self, inputs: EpisodeInputs) -> list[Part]:
        parts: list[Part] = []
        for index, (image, (width, height)) in enumerate(zip(inputs.images, inputs.original_sizes)):
            parts += [TextPart(f"image_clue_{index} ({width}x{height} pixels):\n"), ImagePart(image),
                      TextPart("\n")]
        parts += video_parts(inputs.videos)
        parts.append(TextPart(inputs.task.question + choices_text(inputs.task)))
        return parts

    def tool_messages(self, outputs: Sequence[ToolOutput]) -> list[Message]:
        messages, deferred = [], []
        for output in outputs:
            error = self.error_text(output.result)
            notes = output.notes + output.result.notes
            text = self.result_text(output.result) + (f"Error: {error}\n" if error else "")
            text += "".join(note + "\n" for note in notes)
            parts: list[Part] = [TextPart(text or "(no output)\n")]
            image_parts: list[Part] = []
            for offset, image in enumerate(output.images):
                image_parts += [TextPart(f"image_clue_{output.first_index + offset}:\n"), ImagePart(image)]
            if self.images_in_tool_message:
                parts += image_parts
            else:
                deferred += image_parts
            messages.append(Message("tool", tuple(merge_text(parts)), tool_call_id=output.call.id))
        if deferred:
            messages.append(Message("user", tuple(merge_text([TextPart("Images from the tool calls:\n"),
                                                              *deferred]))))
        return messages

    def assistant_message(self, response: str) -> Message:
        message = _as_message_json(response)
        if message is None:
            return Message.text("assistant", response)
        calls = tuple(call for call in message.get("tool_calls") or () if isinstance(call, dict))
        content = message.get("content") if isinstance(message.get("content"), str) else ""
        return Message("assistant", (TextPart(content),) if content else (), tool_calls=calls)

    def render_action(self, *, thought: str = "", code: str | None = None, answer: str | None = None,
                      image_index: int | None = None, call_id: str | None = None) -> str:
        if answer is not None:
            return json.dumps({"role": "assistant", "content": f"{thought}\n\\boxed{{{answer}}}".strip()})
        if code is None:
            raise ValueError("render_action needs code or answer")
        call = {"id": call_id or "call_0", "type": "function",
                "function": {"name": TOOL_NAME, "arguments": json.dumps({"code": code})}}
        return json.dumps({"role": "assistant", "content": thought or None, "tool_calls": [call]})


def _as_message_json(text: str) -> dict | None:
    """The response as an OpenAI assistant-message object, when it is one."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        message = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) and ("tool_calls" in message or "content" in message) else None


def _make_call(name: Any, arguments: Any, call_id: str) -> ToolCall | str:
    if name != TOOL_NAME:
        return f"Unknown tool {name!r}; the only tool is {TOOL_NAME!r}."
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as error:
            return f"The tool call's arguments are not valid JSON ({error.msg} at character {error.pos})."
    if not isinstance(arguments, dict) or not isinstance(arguments.get("code"), str) \
            or not arguments["code"].strip():
        return "The `python` tool needs a non-empty 'code' string argument."
    return ToolCall(arguments["code"], id=call_id)
