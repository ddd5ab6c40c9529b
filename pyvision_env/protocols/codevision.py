"""The JSON tool-call format of CodeVision models.

* Tool call: ``<tool_call>{"name": "code_image_tool", "arguments": {"code": ..., "image_index": k}}</tool_call>``.
  The code runs in a *fresh* namespace (stateless, as CodeVision's executor) with the chosen image as
  ``image``, and must leave a PIL image in ``result`` (or ``output``); it comes back as the next image.
* Answer: a response without a tool call that holds ``<answer>...</answer>`` or ``\\boxed{...}``.

Example:
    >>> p = CodeVisionProtocol()
    >>> action = p.parse(p.render_action(code="result = image.rotate(90)", image_index=0))
    >>> action.kind, action.calls[0].image_index
    ('code', 0)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from ..execution import CellResult, CellStatus
from ..graders import extract_boxed
from ..messages import ImagePart, Message, Part, TextPart
from .base import (
    Action,
    EpisodeInputs,
    Protocol,
    ToolCall,
    ToolOutput,
    boxed_answer,
    choices_text,
    merge_text,
)

TOOL_NAME = "code_image_tool"
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)

SYSTEM_PROMPT = f"""\
You answer questions about images. You may transform an image with Python before answering.

To call the tool, write exactly one call per turn:
<tool_call>{{"name": "{TOOL_NAME}", "arguments": {{"code": "<python code>", "description": "<why>", \
"image_index": <k>}}}}</tool_call>

The code runs in a fresh namespace with the selected image (0 is the first input image; every tool result
is the next number) as the PIL image `image`, plus numpy as np, Image, ImageOps, ImageEnhance,
ImageFilter, ImageDraw and math. It must store its output image in a variable named `result`.
Typical operations: `image.crop((x0, y0, x1, y1))`, `image.resize(...)`, `image.rotate(angle, expand=True)`,
`ImageOps.mirror(image)`, `ImageOps.flip(image)`, `ImageOps.autocontrast(image)`.

When you know the answer, reply without a tool call: <answer>\\boxed{{your answer}}</answer>"""

# Runs one call statelessly; the kernel keeps the list of images (inputs first, then results).
_RUNNER = '''\
import PIL.Image as _cv_Image
_cv_state = globals().setdefault("_pyvision_cv_images", [])
if not _cv_state:
    _cv_inputs = {{int(k[11:]): v for k, v in globals().items()
                   if k.startswith("image_clue_") and k[11:].isdigit() and isinstance(v, _cv_Image.Image)}}
    _cv_state.extend(_cv_inputs[k] for k in sorted(_cv_inputs))
if not 0 <= {index} < len(_cv_state):
    raise IndexError(f"image_index {index} does not exist: images 0..{{len(_cv_state) - 1}} are available")
_cv_namespace = dict(image=_cv_state[{index}].copy(), np=np, Image=Image, ImageOps=ImageOps,
                     ImageEnhance=ImageEnhance, ImageFilter=ImageFilter, ImageDraw=ImageDraw, math=math)
exec(compile({code!r}, "<tool code>", "exec"), _cv_namespace)
_cv_result = _cv_namespace.get("result", _cv_namespace.get("output"))
if not isinstance(_cv_result, _cv_Image.Image):
    raise TypeError("the code must store a PIL image in a variable named `result`")
_cv_state.append(_cv_result)
display(_cv_result)
del _cv_namespace, _cv_result
'''


class CodeVisionProtocol(Protocol):
    name = "codevision"
    default_system_prompt = SYSTEM_PROMPT
    format_reminder = (f'Call the tool with <tool_call>{{"name": "{TOOL_NAME}", "arguments": {{"code": ..., '
                       '"image_index": k}}</tool_call>, or answer with <answer>\\boxed{...}</answer>.')

    def _parse(self, text: str) -> Action:
        calls = _TOOL_CALL.findall(text)
        if calls:
            if len(calls) > 1:
                return Action("invalid", text, error=f"The response holds {len(calls)} tool calls; make one "
                                                     "call per turn.")
            return self._parse_call(text, calls[0])
        if "<tool_call>" in text:
            return Action("invalid", text, error="The <tool_call> block is not closed with </tool_call>.")
        match = _ANSWER.search(text)
        answer = match.group(1).strip() if match else None
        if answer is None and extract_boxed(text) is not None:
            answer = f"\\boxed{{{extract_boxed(text)}}}"
        if not answer:
            return Action("invalid", text, error="No tool call or final answer was found in the response.")
        return Action("answer", text, answer=answer)

    def _parse_call(self, text: str, body: str) -> Action:
        try:
            call = json.loads(body)
        except json.JSONDecodeError as error:
            return Action("invalid", text, error=f"The tool call is not valid JSON ({error.msg} at character "
                                                 f"{error.pos}).")
        if not isinstance(call, dict) or call.get("name") != TOOL_NAME:
            name = call.get("name") if isinstance(call, dict) else None
            return Action("invalid", text, error=f"Unknown tool {name!r}; the only tool is {TOOL_NAME!r}.")
        arguments = call.get("arguments")
        if isinstance(arguments, str):  # some servers send arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                arguments = None
        if not isinstance(arguments, dict) or not isinstance(arguments.get("code"), str) \
                or not arguments["code"].strip():
            return Action("invalid", text, error="The tool call needs an 'arguments' object with a non-empty "
                                                 "'code' string.")
        index = arguments.get("image_index", 0)
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            return Action("invalid", text, error=f"'image_index' must be a non-negative integer, got {index!r}.")
        return Action("code", text, calls=(ToolCall(arguments["code"], image_index=index),))

    @staticmethod
    def error_text(result: CellResult) -> str:
        """Only the exception line: tracebacks would show the stateless runner, not the model's code."""
        if result.status is CellStatus.ERROR:
            return f"{result.error_name}: {result.error_value}"
        return Protocol.error_text(result)

    def cell_code(self, call: ToolCall) -> str:
        return _RUNNER.format(index=call.image_index or 0, code=call.code)

    def question_parts(self, inputs: EpisodeInputs) -> list[Part]:
        parts: list[Part] = []
        for index, (image, (width, height)) in enumerate(zip(inputs.images, inputs.original_sizes)):
            parts += [TextPart(f"Image {index} ({width}x{height}):\n"), ImagePart(image),
                      TextPart("\n")]
        parts.append(TextPart(inputs.task.question + choices_text(inputs.task)))
        return parts

    def tool_messages(self, outputs: Sequence[ToolOutput]) -> list[Message]:
        (output,) = outputs
        error = self.error_text(output.result)
        notes = "\n".join(output.notes + output.result.notes)
        if error:
            printed = self.result_text(output.result)
            text = f"<tool_response>\n{printed}Error: {error}{chr(10) + notes if notes else ''}\n</tool_response>"
            return [Message.text("user", text)]
        parts: list[Part] = [TextPart("<tool_response>\n")]
        printed = self.result_text(output.result)
        if printed:
            parts.append(TextPart(printed))
        for offset, image in enumerate(output.images):
            parts += [TextPart(f"Image {output.first_index + offset}:\n"), ImagePart(image),
                      TextPart("\n")]
        if notes:
            parts.append(TextPart(notes + "\n"))
        parts.append(TextPart("</tool_response>"))
        return [Message("user", tuple(merge_text(parts)))]

    def render_action(self, *, thought: str = "", code: str | None = None, answer: str | None = None,
                      image_index: int | None = None, call_id: str | None = None) -> str:
        if answer is not None:
            return boxed_answer(thought, answer)
        lead = thought + "\n" if thought else ""
        if code is None:
            raise ValueError("render_action needs code or answer")
        call = {"name": TOOL_NAME, "arguments": {"code": code, "image_index": image_index or 0}}
        return f"{lead}<tool_call>{json.dumps(call)}</tool_call>"
