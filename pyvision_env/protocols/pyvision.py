"""The wire format of PyVision / PyVision-RL models (``<code>`` blocks, ``image_clue_i``, boxed answers).

* Code: ``<code>`` + a fenced python block + ``</code>``; the last such block runs (or, with none, the last
  plain fenced python block). ``multiple_blocks="error"`` rejects responses with several blocks instead.
* Answer: ``<answer> ... \\boxed{...} ... </answer>`` ends the episode; it is checked before code.
* Results come back as ``<tool_response><interpreter>Text Result: ... Image Result: <image_clue_k> ...``.

Example:
    >>> p = PyVisionProtocol()
    >>> p.parse(p.render_action(code="print(1)")).calls[0].code
    'print(1)'
    >>> p.parse("<answer>\\\\boxed{B}</answer>").answer
    '\\\\boxed{B}'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..messages import Message, Part, TextPart
from .base import (
    Action,
    EpisodeInputs,
    Protocol,
    ToolCall,
    ToolOutput,
    boxed_answer,
    choices_text,
    labelled_image,
    merge_text,
    video_parts,
)

_TAGGED = re.compile(r"<code>\s*```(?:python|py)?[ \t]*\n(.*?)```\s*</code>", re.S)
_FENCED = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.S)
_ANSWER = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.S)

SYSTEM_PROMPT = """\
You answer questions about images by thinking step by step and, whenever it helps, writing Python code
that inspects the images. The code runs in a persistent Jupyter kernel (variables survive between turns).

- The i-th input image is already loaded as a PIL image named `image_clue_i` (starting at `image_clue_0`).
- Available: numpy as np, PIL (Image, ImageOps, ImageEnhance, ImageFilter, ImageDraw), matplotlib.pyplot as
  plt, math, io, base64.
- To look at an image, draw it with matplotlib and call `plt.show()`; every new figure comes back to you
  as an image named <image_clue_k>. `print(...)` output comes back as text.
- Useful operations: crop (`img.crop((x0, y0, x1, y1))`), zoom (`img.resize(...)`), rotate or flip
  (`img.rotate(angle, expand=True)`, `ImageOps.mirror`, `ImageOps.flip`), enhance contrast
  (`ImageOps.autocontrast`, `ImageEnhance.Contrast`), and numpy for counting and measuring.

Write code like this, one block per turn, then stop and wait for the result:
<code>
```python
# your code
```
</code>

When you are sure, give the final answer, with the short answer in a box:
<answer>\\boxed{your answer}</answer>"""


class PyVisionProtocol(Protocol):
    name = "pyvision"
    default_system_prompt = SYSTEM_PROMPT
    supports_video = True
    code_markers = ("<code>", "</code>")
    format_reminder = ("Write Python code inside <code>```python ... ```</code>, or give the final answer as "
                       "<answer>\\boxed{...}</answer>.")

    def __init__(self, system_prompt: str | None = None, multiple_blocks: str = "last", **kwargs) -> None:
        super().__init__(system_prompt, **kwargs)
        if multiple_blocks not in ("last", "error"):
            raise ValueError(f"multiple_blocks must be 'last' or 'error', got {multiple_blocks!r}")
        self.multiple_blocks = multiple_blocks

    def _parse(self, text: str) -> Action:
        if "<answer>" in text:
            answer = _ANSWER.search(text).group(1).strip()  # type: ignore[union-attr]
            if not answer:
                return Action("invalid", text, error="The <answer> block is empty.")
            return Action("answer", text, answer=answer)
        blocks = _TAGGED.findall(text) or _FENCED.findall(text)
        if not blocks:
            if "<code>" in text or "```" in text:
                return Action("invalid", text, error="The code block is not closed: write <code>, a ```python "
                                                     "fenced block, then </code>.")
            return Action("invalid", text, error="No code block or final answer was found in the response.")
        if len(blocks) > 1 and self.multiple_blocks == "error":
            return Action("invalid", text, error=f"The response holds {len(blocks)} code blocks; write one "
                                                 "block per turn.")
        code = blocks[-1].strip("\n")
        if not code.strip():
            return Action("invalid", text, error="The code block is empty.")
        return Action("code", text, calls=(ToolCall(code),))

    def question_parts(self, inputs: EpisodeInputs) -> list[Part]:
        parts: list[Part] = []
        for index, (image, (width, height)) in enumerate(zip(inputs.images, inputs.original_sizes)):
            parts += labelled_image(index, image)
            parts.append(TextPart(f"\nImage width: {width}, height: {height} (the variable `image_clue_{index}` "
                                  "holds it at this full size)\n"))
        parts += video_parts(inputs.videos)
        parts.append(TextPart(inputs.task.question + choices_text(inputs.task)))
        return parts

    def tool_messages(self, outputs: Sequence[ToolOutput]) -> list[Message]:
        (output,) = outputs
        result = output.result
        body = "\n".join(output.notes + result.notes)
        error = self.error_text(result)
        text = self.result_text(result)
        if error:
            content = (f"<tool_response>\n<interpreter>{text}Execution error: {error}"
                       f"{chr(10) + body if body else ''}</interpreter>\n</tool_response>")
            return [Message.text("user", content)]
        parts: list[Part] = [TextPart(f"<tool_response>\n<interpreter>\nText Result:\n{text}"
                                      f"{body + chr(10) if body else ''}")]
        if output.images:
            parts.append(TextPart("Image Result:\n"))
            for offset, image in enumerate(output.images):
                parts += labelled_image(output.first_index + offset, image)
                parts.append(TextPart("\n"))
        parts.append(TextPart("</interpreter>\n</tool_response>"))
        return [Message("user", tuple(merge_text(parts)))]

    def render_action(self, *, thought: str = "", code: str | None = None, answer: str | None = None,
                      image_index: int | None = None, call_id: str | None = None) -> str:
        if answer is not None:
            return boxed_answer(thought, answer)
        lead = thought + "\n" if thought else ""
        if code is None:
            raise ValueError("render_action needs code or answer")
        return f"{lead}<code>\n```python\n{code}\n```\n</code>"

