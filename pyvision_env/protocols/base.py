"""The :class:`Protocol` interface: how a response becomes an :class:`Action`, and results become messages.

A protocol never raises on model output: empty, giant, binary or malformed responses all parse to an
``invalid`` action whose ``error`` the environment shows to the model (or ends the episode on).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from ..execution import CellResult, CellStatus
from ..messages import ImagePart, Message, Part, TextPart
from ..tasks import Task
from ..video import VideoInfo

MAX_RESPONSE_CHARS = 65536


@dataclass(frozen=True)
class ToolCall:
    """One piece of code to execute. ``id`` links an OpenAI tool call to its result; ``image_index`` is the
    image a CodeVision call works on."""

    code: str
    id: str | None = None
    image_index: int | None = None


@dataclass(frozen=True)
class Action:
    """A parsed response: ``kind`` is ``"code"`` (``calls`` to run), ``"answer"`` or ``"invalid"`` (``error``)."""

    kind: str
    response: str
    calls: tuple[ToolCall, ...] = ()
    answer: str | None = None
    error: str | None = None

    @property
    def code(self) -> str | None:
        return "\n\n".join(call.code for call in self.calls) if self.calls else None


@dataclass
class ToolOutput:
    """What one call produced, as the environment delivers it (images already within budget)."""

    call: ToolCall
    result: CellResult
    images: list[Image.Image] = field(default_factory=list)
    first_index: int = 0
    """The number of the first new image (``image_clue_<first_index>``): numbering continues over the episode."""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VideoView:
    """What the first message shows of one video: its metadata and the frames given up front (none in the
    on-demand mode unless thumbnails are asked for; N uniformly sampled ones in the uniform mode)."""

    info: VideoInfo
    frames: Sequence[Image.Image] = ()
    times: Sequence[float] = ()
    """Seconds of each frame from the video's start."""


@dataclass(frozen=True)
class EpisodeInputs:
    """What the first user message shows: the task, its images as the model sees them, and their original
    sizes (the kernel holds the originals), and its videos."""

    task: Task
    images: Sequence[Image.Image]
    original_sizes: Sequence[tuple[int, int]]
    videos: Sequence[VideoView] = ()


class Protocol(ABC):
    """How one model family talks: parse responses, render the first message, tool results and errors.

    Subclasses set :attr:`name` and :attr:`default_system_prompt` and implement the abstract methods.
    ``system_prompt`` overrides the default (``""`` sends no system message).
    """

    name: str = ""
    default_system_prompt: str = ""
    supports_video: bool = False
    code_markers: tuple[str, str] | None = None
    """The strings that open and close a code block in a response, for trainers that treat code apart (greedy
    code, a cut just before a tool call: ``rollout.greedy_code``, ``rollout.prefix_resamples``); None: unmarked."""

    def __init__(self, system_prompt: str | None = None, max_response_chars: int = MAX_RESPONSE_CHARS) -> None:
        self.system_prompt = self.default_system_prompt if system_prompt is None else system_prompt
        self.max_response_chars = max_response_chars

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # --- parsing --------------------------------------------------------------------------------

    def parse(self, response: str) -> Action:
        """Parse a whole response. Never raises for any string; raises TypeError for a non-string."""
        if not isinstance(response, str):
            raise TypeError(f"an action is the model's response text (str), got {type(response).__name__}")
        text = response.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        if not text.strip():
            return Action("invalid", text, error="The response is empty.")
        if len(text) > self.max_response_chars:
            return Action("invalid", text, error=f"The response is {len(text)} characters long; at most "
                                                 f"{self.max_response_chars} are accepted.")
        if "\x00" in text:
            return Action("invalid", text, error="The response contains NUL bytes (binary data), which cannot "
                                                 "be executed or graded.")
        return self._parse(text)

    @abstractmethod
    def _parse(self, text: str) -> Action:
        """Parse a non-empty, size-checked response."""

    # --- rendering ------------------------------------------------------------------------------

    def initial_messages(self, inputs: EpisodeInputs) -> list[Message]:
        """The messages that start an episode: the system prompt (if any) and the question."""
        messages = [Message.text("system", self.system_prompt)] if self.system_prompt else []
        return messages + [Message("user", tuple(merge_text(self.question_parts(inputs))))]

    @abstractmethod
    def question_parts(self, inputs: EpisodeInputs) -> list[Part]:
        """Text and image parts of the first user message."""

    @abstractmethod
    def tool_messages(self, outputs: Sequence[ToolOutput]) -> list[Message]:
        """The observation after the calls of one action ran."""

    def format_error_messages(self, action: Action) -> list[Message]:
        return [Message.text("user", f"{action.error} {self.format_reminder}")]

    format_reminder: str = ""
    """One sentence reminding the model of the format, appended to format errors."""

    def assistant_message(self, response: str) -> Message:
        """How a response appears in the conversation history."""
        return Message.text("assistant", response)

    @abstractmethod
    def render_action(self, *, thought: str = "", code: str | None = None, answer: str | None = None,
                      image_index: int | None = None, call_id: str | None = None) -> str:
        """A response in this protocol's format (scripted policies and tests write through this)."""

    def cell_code(self, call: ToolCall) -> str:
        """The code the kernel runs for a call (CodeVision wraps it)."""
        return call.code

    # --- shared rendering helpers ---------------------------------------------------------------

    @staticmethod
    def result_text(result: CellResult) -> str:
        """stdout and the value of the last expression."""
        return result.text

    @staticmethod
    def error_text(result: CellResult) -> str:
        """A short, model-facing description of a failed cell (``""`` when it succeeded)."""
        if result.status is CellStatus.OK:
            return ""
        if result.status is CellStatus.ERROR:
            return result.traceback.strip() or f"{result.error_name}: {result.error_value}"
        if result.status is CellStatus.TIMEOUT:
            return f"TimeoutError: {result.error_value or 'the code ran too long and was stopped'}"
        if result.status is CellStatus.OUTPUT_LIMIT:
            return f"OutputLimitError: {result.error_value or 'the code printed too much and was stopped'}"
        return f"KernelCrashed: {result.error_value or 'the interpreter died'}; all variables are lost"


def boxed_answer(thought: str, answer: str) -> str:
    """``<answer>\\boxed{...}</answer>`` after an optional thought — the answer of the tag-based protocols."""
    return f"{thought}\n<answer>\\boxed{{{answer}}}</answer>" if thought else f"<answer>\\boxed{{{answer}}}</answer>"


def labelled_image(index: int, image: Image.Image) -> list[Part]:
    """``<image_clue_k>`` image ``</image_clue_k>`` — how PyVision-style prompts name an image."""
    return [TextPart(f"<image_clue_{index}>"), ImagePart(image), TextPart(f"</image_clue_{index}>")]


VIDEO_HELP = """\
The video `video_clue_{index}` ({description}) is open in the kernel as a decord-style VideoReader; no frame
is shown until your code shows it. `len(video_clue_{index})` frames, `video_clue_{index}.get_avg_fps()`,
`video_clue_{index}.get_batch([i, j, ...]).asnumpy()` -> uint8 array (n, height, width, 3),
`video_clue_{index}[i]`, `video_clue_{index}.get_frame_timestamp(i)` -> [start, end] seconds. Helpers:
`get_frames(video, indices=None, times=None)` -> PIL images; `show_frames(frames, titles=None, columns=4)`
shows them as one grid image. Fetch only the frames you need (analyse them with numpy, show few).
"""


def video_parts(videos: Sequence[VideoView]) -> list[Part]:
    """The first message's text and frames for each video (shared by the protocols that support video)."""
    parts: list[Part] = []
    for index, view in enumerate(videos):
        parts.append(TextPart(VIDEO_HELP.format(index=index, description=view.info.describe())))
        if view.frames:
            parts.append(TextPart(f"{len(view.frames)} frames of it, sampled uniformly:\n"))
        for seconds, frame in zip(view.times, view.frames):
            parts += [TextPart(f"[{seconds:.1f} s] "), ImagePart(frame), TextPart("\n")]
    return parts


def choices_text(task: Task) -> str:
    if not task.choices:
        return ""
    return "\nOptions:\n" + "\n".join(f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(task.choices))


def merge_text(parts: Sequence[Part]) -> list[Part]:
    """Join adjacent text parts (one text part between images, as a chat template sees them)."""
    merged: list[Part] = []
    for part in parts:
        if isinstance(part, TextPart) and merged and isinstance(merged[-1], TextPart):
            merged[-1] = TextPart(merged[-1].text + part.text)
        else:
            merged.append(part)
    return merged
