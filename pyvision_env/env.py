"""`PyVisionEnv`: a multi-turn visual tool-use environment on sandboxed Jupyter kernels.

Each episode is one task. The observation is a list of chat :class:`~pyvision_env.messages.Message` objects
to append to the conversation; the action is the model's whole response text. Code runs in the episode's
own kernel; an answer is graded and ends the episode; anything else gets a format-error message.

Example:
    >>> import gymnasium as gym, pyvision_env                                   # doctest: +SKIP
    >>> env = gym.make("PyVision/Zoom-v0", protocol="pyvision", max_turns=6)
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(
    ...     "<code>\\n```python\\nprint(image_clue_0.size)\\n```\\n</code>")
    >>> info["tool_calls"], obs[0].plain_text[:40]
    (1, '<tool_response>\\n<interpreter>\\nText Result:')

Every ``info`` carries ``turn``, ``tool_calls``, ``tool_errors``, ``format_errors``, ``images_shown``,
``visual_tokens``, ``action_kind``, ``code``, ``answer``, ``end_reason`` (``None`` while running), ``correct``
and ``score`` (``None`` until graded) and ``task_id``: what happened, the same for the same seed and actions.
How long it took is a measurement of the host, not an outcome, so it is kept apart: ``env.timings`` holds the
milliseconds per phase of the last reset or step.
"""

from __future__ import annotations

import asyncio
import copy
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, runtime_checkable
from typing import Protocol as Interface

import gymnasium as gym
from PIL import Image

from .execution import (
    OPERATIONS_EXPRESSION,
    AsyncSession,
    CellStatus,
    Engine,
    EpisodeLimitError,
    ExecutionLimits,
    default_engine,
    read_operations,
)
from .execution.loop import LoopThread
from .messages import Message
from .protocols import Action, EpisodeInputs, Protocol, ToolOutput, VideoView, get_protocol
from .registry import resolve_tasks
from .spaces import MessagesSpace, ResponseSpace
from .tasks import Task, TaskSet
from .video import PyAVVideoReader, VideoOptions, VideoReadError
from .visual_tokens import VisualTokenRule

DEFAULT_MAX_PIXELS = 1024 * 28 * 28
"""Default image budget per image (about 0.8 MP, 1024 tokens under Qwen2.5-VL): the first view of a large
image is downscaled to this, which is what makes zooming worth it."""

TERMINATING = ("answered", "format_error", "tool_error")
TRUNCATING = ("max_turns", "max_images", "max_visual_tokens", "timeout", "execution_budget")
END_REASONS = TERMINATING + TRUNCATING
"""Every value ``info["end_reason"]`` takes when an episode ends (``TERMINATING`` ones set ``terminated``)."""


@runtime_checkable
class EpisodeEnv(Interface):
    """What code that plays PyVision episodes relies on: :class:`PyVisionEnv`, and proxies of one such as the
    Ray pool's :class:`~pyvision_env.pools.ray_pool.RemoteEnv`. Wrappers (:mod:`pyvision_env.wrappers`) and
    :class:`~pyvision_env.vector.PyVisionVectorEnv` accept any environment whose innermost one has these."""

    tasks: TaskSet
    protocol: Protocol
    engine: Engine | LoopThread
    """Runs the environment's coroutines (``run_coroutine``, ``submit``)."""
    timings: dict[str, float]
    """Milliseconds per phase of the last reset or step."""

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                     ) -> tuple[list[Message], dict[str, Any]]: ...

    async def astep(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def require_episode_env(env: Any, user: str) -> None:
    """Raise a clear TypeError unless ``env``'s innermost environment is an :class:`EpisodeEnv`."""
    inner = getattr(env, "unwrapped", env)
    if not isinstance(inner, EpisodeEnv):
        raise TypeError(f"{user} needs a PyVisionEnv (or a wrapper stack around one), got {type(inner).__name__}")


@dataclass
class _Episode:
    task: Task
    opening: asyncio.Future[AsyncSession] | None
    """The kernel session, opened in the background (the first code call waits for it); None until the first
    code call when kernels start lazily."""
    open_session: Callable[[], asyncio.Future[AsyncSession]]
    started: float
    turn: int = 0
    tool_calls: int = 0
    tool_errors: int = 0
    format_errors: int = 0
    images_shown: int = 0
    visual_tokens: int = 0
    next_image_index: int = 0
    end_reason: str | None = None
    correct: bool | None = None
    score: float | None = None
    last_text: list[str] = field(default_factory=list)
    operations: list[dict[str, Any]] = field(default_factory=list)
    """The image operations of this step's successful calls (when tracing)."""
    frames_fetched: int = 0
    conversation: list[Message] = field(default_factory=list)
    """The episode's messages so far: the first observation, then per step the response and its observation."""


class PyVisionEnv(gym.Env[list, str]):
    """Visual questions answered by writing code that runs in a sandboxed kernel.

    Args:
        suite: a registered suite name, a :class:`~pyvision_env.tasks.TaskSet`, or a sequence of tasks.
        protocol: ``"pyvision"``, ``"codevision"``, ``"openai-tools"`` or a :class:`Protocol` instance.
        protocol_options: constructor options of a protocol given by name (e.g. ``multiple_blocks``).
        system_prompt: replaces the protocol's default system prompt (``""``: none).
        split: use only the tasks of this split (``"train"``, ``"held-out"``, ...).
        max_turns: assistant turns per episode before truncation (``"max_turns"``).
        max_images: images the code may show per episode; more truncates (``"max_images"``).
        max_visual_tokens: visual tokens per episode, first view included; more truncates.
        episode_timeout: wall-clock seconds per episode; a cell never runs past it (``"timeout"``).
        on_tool_error: ``"continue"`` (the model sees the error) or ``"end"`` (terminate with reward 0, as
            PyVision-RL's training did).
        on_format_error: ``"continue"`` (the model sees a format hint) or ``"end"``.
        visual_tokens: model family for token accounting (``"qwen2.5-vl"``, ...) or a :class:`VisualTokenRule`.
        max_pixels: per-image pixel budget of that rule (the model's processor setting); ``None`` keeps the
            family default.
        resize_images: give observation images at the size the model's processor would use (the kernel always
            holds the originals).
        video_context: how a video task starts: ``"on-demand"`` (metadata only, plus ``video_thumbnails``
            frames; the code fetches frames from ``video_clue_i``) or ``"uniform"`` (``video_frames`` frames, or
            ``video_fps`` per second, sampled uniformly and shown up front: the baseline).
        video_frames: frames given up front in the uniform mode (None: ``video_fps`` per second of video).
        video_fps: frames per second given up front in the uniform mode when ``video_frames`` is None.
        video_thumbnails: frames given up front in the on-demand mode (0 by default, as PyVision-Video).
        video_backend: reader of ``video_clue_i`` in the kernel: ``"auto"`` (per video: decord, the API
            PyVision-Video was trained with, for long keyframe intervals; PyAV otherwise), ``"decord"``,
            ``"pyav"``.
        max_frames: frames the code may fetch per episode; past it the reader raises a clear error.
        trace_operations: put the image operations each step's successful cells ran in ``info["operations"]``
            (see :func:`~pyvision_env.execution.read_operations`: crops with their boxes in input pixels,
            resizes, rotations, flips, enhancements); ``None`` there when off. The CodeVision reward turns it on.
        limits: per-cell limits of the kernel (timeouts, memory, output sizes).
        kernel_start: ``"reset"`` (default: the episode's kernel starts loading the task at reset, ready by the
            first step) or ``"first-call"`` (at the episode's first code call: an episode that answers without
            code never takes a kernel; the first call waits for it). RL rollouts of a policy that often answers
            directly save a kernel start (about 0.08 CPU-seconds forked, 0.6 as an interpreter) per such episode.
        engine: the execution engine; the process-wide :func:`~pyvision_env.execution.default_engine` if None.
        render_mode: ``"ansi"`` renders the last turn as text.
    """

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, suite: str | TaskSet | Sequence[Task], *, protocol: str | Protocol = "pyvision",
                 protocol_options: Mapping[str, Any] | None = None, system_prompt: str | None = None,
                 split: str | None = None, max_turns: int = 8, max_images: int | None = 32,
                 max_visual_tokens: int | None = None, episode_timeout: float | None = 300.0,
                 on_tool_error: str = "continue", on_format_error: str = "continue",
                 visual_tokens: str | VisualTokenRule = "qwen2.5-vl", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 resize_images: bool = True, video_context: str = "on-demand", video_frames: int | None = None,
                 video_fps: float = 1.0, video_thumbnails: int = 0, video_backend: str = "auto",
                 max_frames: int | None = None, trace_operations: bool = False, limits: ExecutionLimits | None = None,
                 kernel_start: str = "reset", engine: Engine | None = None, render_mode: str | None = None) -> None:
        self.tasks = resolve_tasks(suite, split)
        self.protocol = protocol_for(protocol, protocol_options, system_prompt)
        if max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {max_turns}")
        for name, value in (("on_tool_error", on_tool_error), ("on_format_error", on_format_error)):
            if value not in ("continue", "end"):
                raise ValueError(f"{name} must be 'continue' or 'end', got {value!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.max_turns = max_turns
        self.max_images = max_images
        self.max_visual_tokens = max_visual_tokens
        self.episode_timeout = episode_timeout
        self.on_tool_error = on_tool_error
        self.on_format_error = on_format_error
        rule = visual_tokens if isinstance(visual_tokens, VisualTokenRule) else VisualTokenRule.for_family(
            visual_tokens)
        self.token_rule = rule if max_pixels is None else VisualTokenRule(**{**rule.__dict__,
                                                                             "max_pixels": max_pixels})
        self.resize_images = resize_images
        if video_context not in ("on-demand", "uniform"):
            raise ValueError(f"video_context must be 'on-demand' or 'uniform', got {video_context!r}")
        if (video_frames is not None and video_frames < 1) or not video_fps > 0 or video_thumbnails < 0 \
                or (max_frames is not None and max_frames < 0):
            raise ValueError("video_frames must be None or >= 1, video_fps > 0, video_thumbnails >= 0 and "
                             f"max_frames None or >= 0; got {video_frames}, {video_fps}, {video_thumbnails}, "
                             f"{max_frames}")
        if video_backend not in ("auto", "pyav", "decord"):
            raise ValueError(f"video_backend must be 'auto', 'pyav' or 'decord', got {video_backend!r}")
        video_tasks = sum(1 for task in self.tasks if task.videos)
        if video_tasks and not self.protocol.supports_video:
            raise ValueError(f"protocol {self.protocol.name!r} does not support video, and {video_tasks} tasks of "
                             f"{self.tasks.name!r} have videos; use 'pyvision' or 'openai-tools'")
        self.video_context, self.video_frames, self.video_fps = video_context, video_frames, video_fps
        self.video_thumbnails, self.max_frames = video_thumbnails, max_frames
        self.video_options = VideoOptions(backend=video_backend, max_frames=max_frames)
        self.trace_operations = trace_operations
        if kernel_start not in ("reset", "first-call"):
            raise ValueError(f"kernel_start must be 'reset' or 'first-call', got {kernel_start!r}")
        self.kernel_start = kernel_start
        self.limits = limits
        self.render_mode = render_mode
        self.engine = engine or default_engine()
        self.observation_space = MessagesSpace()
        self.action_space = ResponseSpace(self.protocol.max_response_chars)
        self.timings: dict[str, float] = {}
        """Milliseconds per phase of the last reset or step (``parse_ms``, ``execute_ms``, ``grade_ms``,
        ``total_ms``): measurements of this host, kept out of ``info``, which holds outcomes only."""
        self._episode: _Episode | None = None
        self._closing: set[asyncio.Future] = set()

    # --- synchronous API (Gymnasium) --------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode on a task chosen by the seeded RNG, or by ``options={"task_id": ...}`` /
        ``{"task_index": i}``."""
        super().reset(seed=seed)
        return self.engine.run_coroutine(self.areset(options=options))

    def step(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        return self.engine.run_coroutine(self.astep(action))

    def close(self) -> None:
        if not self.engine.closed:
            self.engine.run_coroutine(self.aclose())
        self._episode = None

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        if self._episode is None:
            return "(no episode)"
        return "\n".join(self._episode.last_text) or f"task {self._episode.task.id}: started"

    # --- asyncio API (the vector env drives many environments on the engine's loop) ----------------

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                     ) -> tuple[list[Message], dict[str, Any]]:
        """Like :meth:`reset`, as a coroutine on the engine's event loop."""
        if seed is not None:
            super().reset(seed=seed)
        elif self._np_random is None:
            super().reset()
        started = time.perf_counter()
        await self._end_episode()
        task = self._choose_task(options or {})
        # The kernel loads the originals in the background while this process prepares the first view; the
        # first step waits for the kernel (by then a model has usually spent longer generating).
        def open_session() -> asyncio.Future[AsyncSession]:
            return asyncio.ensure_future(self.engine.core.open_session(
                images={f"image_clue_{i}": media for i, media in enumerate(task.images)}, limits=self.limits,
                videos={f"video_clue_{i}": media for i, media in enumerate(task.videos)},
                video_options=self.video_options))

        opening = open_session() if self.kernel_start == "reset" else None
        try:
            images, sizes = await asyncio.to_thread(self._first_view, task)
            videos = [await asyncio.to_thread(self._video_view, task, media) for media in task.videos]
        except BaseException:
            await _discard_session(opening)
            raise
        episode = _Episode(task, opening, open_session, started=started, next_image_index=len(images))
        self._episode = episode
        episode.visual_tokens = sum(self.token_rule.count(*image.size)
                                    for image in [*images, *(frame for view in videos for frame in view.frames)])
        observation = self.protocol.initial_messages(EpisodeInputs(task, images, sizes, videos))
        episode.conversation = list(observation)
        self.timings = _milliseconds(total=time.perf_counter() - started)
        return observation, self._info(episode, None)

    async def astep(self, action: str) -> tuple[list[Message], float, bool, bool, dict[str, Any]]:
        """Like :meth:`step`, as a coroutine on the engine's event loop."""
        episode = self._episode
        if episode is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if episode.end_reason is not None:
            raise gym.error.ResetNeeded(f"the episode ended ({episode.end_reason}); call reset() before step()")
        started = time.perf_counter()
        parsed = self.protocol.parse(action)
        parse_end = time.perf_counter()
        episode.turn += 1
        episode.operations = []
        reward, seconds = 0.0, {"parse": parse_end - started}
        if parsed.kind == "answer":
            grade = await asyncio.to_thread(episode.task.grade, parsed.answer or "")
            episode.correct, episode.score, reward = grade.correct, grade.score, grade.score
            episode.end_reason = "answered"
            observation: list[Message] = []
            episode.last_text = [f"turn {episode.turn}: answer {grade.extracted!r} -> "
                                 f"{'correct' if grade.correct else 'wrong'} (expected {episode.task.answer!r})"]
            seconds["grade"] = time.perf_counter() - parse_end
        elif parsed.kind == "invalid":
            episode.format_errors += 1
            observation = self.protocol.format_error_messages(parsed)
            episode.last_text = [f"turn {episode.turn}: format error: {parsed.error}"]
            if self.on_format_error == "end":
                episode.end_reason = "format_error"
        else:
            observation = await self._run_calls(episode, parsed)
            seconds["execute"] = time.perf_counter() - parse_end
        if episode.end_reason is None:
            if episode.turn >= self.max_turns:
                episode.end_reason = "max_turns"
            elif self.episode_timeout is not None and time.perf_counter() - episode.started >= self.episode_timeout:
                episode.end_reason = "timeout"
        episode.conversation += [self.protocol.assistant_message(action), *observation]
        terminated = episode.end_reason in TERMINATING
        truncated = episode.end_reason is not None and not terminated
        self.timings = _milliseconds(**seconds, total=time.perf_counter() - started)
        info = self._info(episode, parsed)
        if episode.end_reason is not None:  # free the kernel now, without making the caller wait for the kill
            closing = asyncio.ensure_future(_discard_session(episode.opening))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        return observation, float(reward), terminated, truncated, info

    def fork(self) -> PyVisionEnv:
        """A second environment at this one's point of the episode in progress: the kernel's state (its cells
        replayed in a new kernel with the same inputs and seed, see
        :meth:`~pyvision_env.execution.AsyncSession.fork`), the images shown, the counters and budgets used, the
        conversation so far (:meth:`conversation`) and the task RNG. Both then go on independently: for tree
        rollouts, resampling a failed call from the same prefix, or replaying a recorded trajectory. Close the
        fork when done.

        >>> observation, info = env.reset(options={"task_index": 0})              # doctest: +SKIP
        >>> _ = env.step(code_response)
        >>> branch = env.fork()
        >>> branch.step(other_response)  # from the same point; env is unchanged
        """
        return self.engine.run_coroutine(self.afork())

    async def afork(self) -> PyVisionEnv:
        """Like :meth:`fork`, as a coroutine on the engine's event loop."""
        episode = self._episode
        if episode is None or episode.end_reason is not None:
            raise gym.error.ResetNeeded("fork() needs an episode in progress: call reset() first")
        twin = copy.copy(self)
        twin._closing = set()
        twin._np_random = copy.deepcopy(self.np_random)  # made now if the env was never seeded
        twin.timings = dict(self.timings)
        opening = None
        if episode.opening is not None:
            session = await episode.opening
            opening = asyncio.get_running_loop().create_future()
            opening.set_result(await session.fork())
        twin._episode = replace(episode, opening=opening, last_text=list(episode.last_text),
                                operations=list(episode.operations), conversation=list(episode.conversation))
        return twin

    def conversation(self) -> list[Message]:
        """The messages of the episode in progress (or just ended) so far, responses included; empty before the
        first reset."""
        return list(self._episode.conversation) if self._episode is not None else []

    async def aclose(self) -> None:
        """Like :meth:`close`, as a coroutine: ends the episode and waits until its kernel is gone."""
        await self._end_episode()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    # --- internals --------------------------------------------------------------------------------

    async def _run_calls(self, episode: _Episode, action: Action) -> list[Message]:
        outputs: list[ToolOutput] = []
        episode.last_text = []
        expressions = {"operations": OPERATIONS_EXPRESSION} if self.trace_operations else {}
        if episode.task.videos:
            expressions["frames"] = "_pyvision_frames_fetched()"
        if episode.opening is None:
            episode.opening = episode.open_session()
        session = await episode.opening
        for call in action.calls:
            remaining = None
            if self.episode_timeout is not None:
                remaining = self.episode_timeout - (time.perf_counter() - episode.started)
                if remaining <= 0:
                    episode.end_reason = "timeout"
                    break
            try:
                result = await session.run(self.protocol.cell_code(call), cell_timeout=remaining,
                                           expressions=expressions)
            except EpisodeLimitError as error:
                episode.end_reason = "execution_budget"
                episode.last_text.append(f"execution budget used up: {error}")
                break
            episode.tool_calls += 1
            episode.operations += read_operations(result.expressions.get("operations"))
            if result.expressions.get("frames", "").isdigit():
                episode.frames_fetched = int(result.expressions["frames"])
            if result.status is not CellStatus.OK:
                episode.tool_errors += 1
                if result.status is CellStatus.TIMEOUT and remaining is not None \
                        and remaining < (self.limits or self.engine.limits).cell_timeout:
                    episode.end_reason = "timeout"
            output = ToolOutput(call, result, first_index=episode.next_image_index)
            for image in result.images:
                tokens = self.token_rule.count(*image.size)
                if self.max_images is not None and episode.images_shown + 1 > self.max_images:
                    episode.end_reason = episode.end_reason or "max_images"
                elif self.max_visual_tokens is not None and episode.visual_tokens + tokens > self.max_visual_tokens:
                    episode.end_reason = episode.end_reason or "max_visual_tokens"
                else:
                    output.images.append(self._as_seen(image))
                    episode.images_shown += 1
                    episode.visual_tokens += tokens
                    continue
                dropped = len(result.images) - len(output.images)
                output.notes.append(f"{dropped} image(s) not shown: the episode's "
                                    f"{episode.end_reason.replace('_', ' ')} budget is used up")
                break
            episode.next_image_index += len(output.images)
            outputs.append(output)
            episode.last_text.append(f"turn {episode.turn}: ran {call.code!r}\n-> {result.summary()}")
            if not result.ok and self.on_tool_error == "end":
                episode.end_reason = "tool_error"
            if episode.end_reason is not None:
                break
        return self.protocol.tool_messages(outputs) if outputs else []

    def _as_seen(self, image: Image.Image) -> Image.Image:
        """The image at the size the model's processor would give it (when ``resize_images``)."""
        if not self.resize_images or self.token_rule.fixed_tokens is not None:
            return image
        size = self.token_rule.resized_size(*image.size)
        if size == image.size:
            return image
        # reducing_gap: downscales of 6x and more (8K benchmark images) first reduce by an integer factor
        # (fast box filter), then resample bicubic; the result is indistinguishable at gap 3.
        return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)

    def _choose_task(self, options: Mapping[str, Any]) -> Task:
        unknown = set(options) - {"task_id", "task_index"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; use task_id or task_index")
        if "task_id" in options:
            try:
                return self.tasks[self.tasks.index_of(options["task_id"])]
            except KeyError as error:
                raise ValueError(error.args[0]) from None
        if "task_index" in options:
            index = options["task_index"]
            if not isinstance(index, int) or not 0 <= index < len(self.tasks):
                raise ValueError(f"task_index must be an int in [0, {len(self.tasks)}), got {index!r}")
            return self.tasks[index]
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def _first_view(self, task: Task) -> tuple[list[Image.Image], list[tuple[int, int]]]:
        """The task's images as the model sees them, and their original sizes (cached per file)."""
        views = []
        for media in task.images:
            key = None
            if not isinstance(media, Image.Image):
                try:
                    stat = os.stat(media)
                except OSError as error:
                    raise ValueError(f"task {task.id}: cannot load {os.fspath(media)}: {error}") from error
                key = (os.fspath(media), stat.st_mtime_ns, stat.st_size, self.token_rule, self.resize_images)
                if (cached := _FIRST_VIEWS.get(key)) is not None:
                    views.append(cached)
                    continue
            view = self._load_view(task, media)
            if key is not None:
                _FIRST_VIEWS.put(key, view)
            views.append(view)
        return [view[0].copy() for view in views], [view[1] for view in views]

    def _load_view(self, task: Task, media: Any) -> tuple[Image.Image, tuple[int, int]]:
        try:
            if isinstance(media, Image.Image):
                image = media
            else:
                with Image.open(media) as opened:
                    opened.load()
                    image = opened.copy() if opened.mode in ("RGB", "L") else opened.convert("RGB")
        except (OSError, Image.DecompressionBombError, ValueError) as error:
            where = "an in-memory image" if isinstance(media, Image.Image) else os.fspath(media)
            raise ValueError(f"task {task.id}: cannot load {where}: {error}") from error
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        return self._as_seen(image), image.size

    def _video_view(self, task: Task, media: str | os.PathLike) -> VideoView:
        """A video's metadata and the frames given up front (cached per file and setting)."""
        try:
            stat = os.stat(media)
        except OSError as error:
            raise ValueError(f"task {task.id}: cannot load video {os.fspath(media)}: {error}") from error
        key = ("video", os.fspath(media), stat.st_mtime_ns, stat.st_size, self.video_context, self.video_frames,
               self.video_fps, self.video_thumbnails, self.token_rule, self.resize_images)
        if (cached := _FIRST_VIEWS.get(key)) is not None:
            return cached
        try:
            reader = PyAVVideoReader(os.fspath(media))
        except VideoReadError as error:
            raise ValueError(f"task {task.id}: cannot load video: {error}") from error
        try:
            info = reader.info()
            if self.video_context == "uniform":
                count = self.video_frames or max(1, round(info.duration * self.video_fps))
            else:
                count = self.video_thumbnails
            indices = sorted({int(k * info.frames / count) for k in range(min(count, info.frames))})
            frames = [Image.fromarray(reader.get_batch([index]).asnumpy()[0]) for index in indices]
            times = reader.get_frame_timestamp(indices)[:, 0].tolist() if indices else []
        except VideoReadError as error:
            raise ValueError(f"task {task.id}: cannot read video: {error}") from error
        finally:
            reader.close()
        view = VideoView(info, [self._as_seen(frame) for frame in frames], times)
        _FIRST_VIEWS.put(key, view)
        return view

    async def _end_episode(self) -> None:
        episode, self._episode = self._episode, None
        if episode is not None:
            await _discard_session(episode.opening)

    def _info(self, episode: _Episode, action: Action | None) -> dict[str, Any]:
        return {
            "task_id": episode.task.id, "turn": episode.turn, "tool_calls": episode.tool_calls,
            "tool_errors": episode.tool_errors, "format_errors": episode.format_errors,
            "images_shown": episode.images_shown, "visual_tokens": episode.visual_tokens,
            "action_kind": action.kind if action else None, "code": action.code if action else None,
            "answer": action.answer if action else None,
            "format_error": action.error if action else None, "end_reason": episode.end_reason,
            "correct": episode.correct, "score": episode.score,
            "operations": list(episode.operations) if self.trace_operations else None,
            "frames_fetched": episode.frames_fetched,
        }


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


_FIRST_VIEWS = _LRU(32)
"""First views of task images by (file, mtime, size, token rule, resize): RL resets the same task once per
rollout of its group, and decoding a large PNG costs far more than the rest of a reset."""


async def _discard_session(opening: asyncio.Future[AsyncSession] | None) -> None:
    """Close a session whether it is still opening (cancelled), failed to open, or open (None: never opened)."""
    if opening is None:
        return
    if not opening.done():
        opening.cancel()
    results = await asyncio.gather(opening, return_exceptions=True)
    if isinstance(results[0], AsyncSession):
        await results[0].close()


def protocol_for(protocol: str | Protocol, options: Mapping[str, Any] | None, system_prompt: str | None
                 ) -> Protocol:
    """The protocol an environment speaks: ``protocol`` with its options, the system prompt replaced if given."""
    options = dict(options or {})
    if system_prompt is not None:
        options["system_prompt"] = system_prompt
    return get_protocol(protocol, **options)


def _milliseconds(**seconds: float) -> dict[str, float]:
    """``{"parse": 0.0012}`` -> ``{"parse_ms": 1.2}`` (rounded to microseconds)."""
    return {f"{phase}_ms": round(value * 1e3, 3) for phase, value in seconds.items()}
