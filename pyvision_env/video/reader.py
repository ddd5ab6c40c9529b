"""Frame-exact video readers with decord's interface, used by the environment and sent into every kernel.

This module imports only numpy, PyAV and (optionally) decord at the top, so that its source can run inside a
sandboxed kernel as the module ``pyvision_video`` (the engine does that for sessions with videos).

* :class:`PyAVVideoReader` indexes the video's packets once (no decoding), so frame ``i`` is the ``i``-th
  frame in presentation order even at a variable frame rate, then seeks to the keyframe before each wanted
  frame and decodes forward. Same interface as decord's ``VideoReader``: ``len(vr)``, ``vr[i]``, ``vr[a:b]``,
  ``vr.get_batch(indices).asnumpy()``, ``vr.get_avg_fps()``, ``vr.get_frame_timestamp(i)``,
  ``vr.get_key_indices()``.
* :func:`open_video` picks decord (the API PyVision-Video was trained with) or PyAV per video: PyAV for
  short keyframe intervals, variable frame rates or when decord is missing; decord for long keyframe
  intervals, where it decodes faster. Both are guarded: an index out of range raises :class:`IndexError`
  with the valid range, and a call that would decode more than ``max_batch_bytes`` raises
  :class:`VideoReadError` instead of filling the memory.
* :func:`get_frames` and :func:`show_frames` are the helpers the prompts document.

Example::

    >>> vr = open_video("clip.mp4")                                              # doctest: +SKIP
    >>> len(vr), vr.get_avg_fps(), vr.get_batch([0, 10]).asnumpy().shape
    (300, 10.0, (2, 240, 320, 3))
    >>> show_frames(get_frames(vr, times=[0.0, 12.5]))                          # a grid, via plt.show()
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import av
import numpy as np

DEFAULT_MAX_BATCH_BYTES = 512 * 1024 * 1024
"""A single call may decode at most this many bytes of RGB frames (10 full-HD frames are 62 MB)."""

PYAV_KEYFRAME_INTERVAL = 60
"""``backend="auto"`` uses PyAV when keyframes are at most this many frames apart (it seeks faster there)."""


class VideoReadError(RuntimeError):
    """A video cannot be opened or a frame cannot be decoded, or a call would decode too much."""


@dataclass
class FrameBudget:
    """Frames the readers sharing it may still decode (``limit`` None: no limit); counts them in ``used``."""

    limit: int | None = None
    used: int = 0

    def take(self, count: int) -> None:
        if self.limit is not None and self.used + count > self.limit:
            raise VideoReadError(f"the episode's frame budget is used up: {self.used} of {self.limit} frames "
                                 f"fetched, {count} more asked for; answer with what you have seen")
        self.used += count


@dataclass(frozen=True)
class VideoOptions:
    """How a kernel opens its videos: ``backend`` (``"auto"``, ``"pyav"``, ``"decord"``), the decode limit of
    one call, and the frames an episode may fetch in all (``max_frames``; None: no limit)."""

    backend: str = "auto"
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_frames: int | None = None


class VideoFrames(np.ndarray):
    """Frames as a numpy array ``(n, height, width, 3)`` (or one frame), with decord's ``asnumpy()``."""

    def asnumpy(self) -> np.ndarray:
        return np.asarray(self)


@dataclass(frozen=True)
class VideoInfo:
    """What the model is told about a video before it fetches any frame."""

    width: int
    height: int
    frames: int
    fps: float
    """Average frames per second (frames over duration)."""
    duration: float
    """Seconds from the first frame's start to the last frame's end."""
    keyframe_interval: float
    """Mean frames between keyframes (how costly a random seek is)."""
    variable_frame_rate: bool
    codec: str

    def describe(self) -> str:
        """One line for a prompt: ``320x240, 300 frames, 10 fps, 30.0 s``."""
        rate = "variable frame rate, average " if self.variable_frame_rate else ""
        return (f"{self.width}x{self.height}, {self.frames} frames, {rate}{self.fps:.3g} fps, "
                f"{self.duration:.1f} s")


class PyAVVideoReader:
    """Random access to the frames of one video file with PyAV (see the module docstring)."""

    def __init__(self, path: str, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 budget: FrameBudget | None = None) -> None:
        self.path = str(path)
        self.max_batch_bytes = max_batch_bytes
        self.budget = budget or FrameBudget()
        try:
            self._container = av.open(self.path)
        except (av.error.FFmpegError, OSError, ValueError) as error:
            raise VideoReadError(f"cannot open video {self.path}: {error}") from error
        if not self._container.streams.video:
            self._container.close()
            raise VideoReadError(f"{self.path} has no video stream (an audio-only or data file?)")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self._pts, keyframes = self._index()
        if not self._pts:
            self._container.close()
            raise VideoReadError(f"{self.path} has a video stream but no frames (empty or truncated file)")
        self._position = {pts: i for i, pts in enumerate(self._pts)}
        self._key_pts = sorted(keyframes) or [self._pts[0]]
        self._next_pts: int | None = None  # where the decoder stands after the last frame it returned
        self._decoder = None
        base = self._stream.time_base
        start = self._pts[0]
        self._seconds = [float((pts - start) * base) for pts in self._pts]
        step = self._seconds[-1] / (len(self._pts) - 1) if len(self._pts) > 1 else 0.0
        rate = self._stream.average_rate
        self._frame_seconds = step or (1 / float(rate) if rate else 1 / 25)
        context = self._stream.codec_context
        self.width, self.height = int(context.width), int(context.height)
        if self.width <= 0 or self.height <= 0:
            raise VideoReadError(f"{self.path}: the video stream has no frame size")

    def _index(self) -> tuple[list[int], list[int]]:
        """Presentation timestamps of all frames (sorted) and those of keyframes, from packets alone."""
        pts, keyframes = [], []
        try:
            for packet in self._container.demux(self._stream):
                if packet.pts is None or packet.size == 0:
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keyframes.append(packet.pts)
        except av.error.FFmpegError:
            pass  # a truncated or damaged tail: the frames indexed so far stay readable
        return sorted(set(pts)), keyframes

    # --- decord's interface ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pts)

    def __getitem__(self, index: int | slice) -> VideoFrames:
        if isinstance(index, slice):
            return self.get_batch(range(*index.indices(len(self))))
        return self.get_batch([index])[0]

    def get_avg_fps(self) -> float:
        return self.info().fps

    def get_frame_timestamp(self, indices: int | list[int]) -> np.ndarray:
        """``[start, end]`` in seconds of one index, ``[[start, end], ...]`` of a list (decord's layout)."""
        wanted = [self._check(i) for i in np.atleast_1d(indices).tolist()]
        rows = np.array([[self._seconds[i], self._seconds[i] + self._frame_seconds] for i in wanted])
        return rows[0] if np.ndim(indices) == 0 else rows

    def get_key_indices(self) -> list[int]:
        return [self._position[pts] for pts in self._key_pts if pts in self._position]

    def get_batch(self, indices) -> VideoFrames:
        """Frames at ``indices`` (any order, repeats allowed) as ``(n, height, width, 3)`` uint8."""
        wanted = [self._check(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1).tolist()]
        check_batch_size(len(wanted), self.width, self.height, self.max_batch_bytes)
        self.budget.take(len(set(wanted)))
        decoded = {}
        for index in sorted(set(wanted)):
            decoded[index] = self._decode(index)
        frames = np.stack([decoded[i] for i in wanted]) if wanted \
            else np.zeros((0, self.height, self.width, 3), np.uint8)
        return frames.view(VideoFrames)

    # --- extras ---------------------------------------------------------------------------------

    def info(self) -> VideoInfo:
        duration = self._seconds[-1] + self._frame_seconds
        gaps = np.diff(self._seconds)
        variable = bool(len(gaps) > 1 and gaps.max() - gaps.min() > 0.25 * max(float(np.median(gaps)), 1e-9))
        return VideoInfo(width=self.width, height=self.height, frames=len(self), fps=len(self) / duration,
                         duration=duration, keyframe_interval=len(self) / max(1, len(self._key_pts)),
                         variable_frame_rate=variable, codec=self._stream.codec_context.name)

    def index_at(self, seconds: float) -> int:
        """The frame shown at ``seconds`` from the start."""
        if not math.isfinite(seconds):
            raise ValueError(f"a time must be a finite number of seconds, got {seconds!r}")
        return max(0, int(np.searchsorted(self._seconds, seconds, side="right")) - 1)

    def close(self) -> None:
        self._container.close()

    # --- decoding -------------------------------------------------------------------------------

    def _check(self, index: int) -> int:
        count = len(self)
        if not -count <= index < count:
            raise IndexError(f"frame index {index} is out of range: this video has {count} frames "
                             f"(0..{count - 1})")
        return index % count

    def _decode(self, index: int) -> np.ndarray:
        target = self._pts[index]
        key = self._key_pts[max(0, int(np.searchsorted(self._key_pts, target, side="right")) - 1)]
        if self._next_pts is None or not key <= self._next_pts <= target:  # not already on the way there
            self._container.seek(key, stream=self._stream, backward=True, any_frame=False)
            self._decoder = self._container.decode(self._stream)
        try:
            for frame in self._decoder:
                pts = frame.pts if frame.pts is not None else frame.dts
                if pts is None or pts < target:
                    continue
                self._next_pts = pts + 1  # (a damaged stream may skip the wanted timestamp: the next frame)
                return frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as error:
            self._next_pts = None
            raise VideoReadError(f"frame {index} of {self.path} cannot be decoded: {error}") from error
        self._next_pts = None
        raise VideoReadError(f"frame {index} of {self.path} cannot be decoded (the file ends before it)")


def check_batch_size(count: int, width: int, height: int, limit: int) -> None:
    """Raise :class:`VideoReadError` when ``count`` RGB frames would take more than ``limit`` bytes."""
    size = count * width * height * 3
    if size > limit:
        per_call = max(1, limit // (width * height * 3))
        raise VideoReadError(f"decoding {count} frames of {width}x{height} at once would take "
                             f"{size / 2**20:.0f} MiB (limit {limit / 2**20:.0f} MiB): fetch at most {per_call} "
                             f"frames per call")


def _decord_reader_class():
    """decord's VideoReader with the same guards as :class:`PyAVVideoReader` (None without decord)."""
    try:
        import decord
    except ImportError:
        return None

    class GuardedDecordReader(decord.VideoReader):
        """Set by :func:`open_video`: the frame size, the decode limit of one call and the frame budget."""

        width = height = 0
        max_batch_bytes = DEFAULT_MAX_BATCH_BYTES
        budget = FrameBudget()

        def _check(self, index: int) -> int:
            count = len(self)
            if not -count <= index < count:
                raise IndexError(f"frame index {index} is out of range: this video has {count} frames "
                                 f"(0..{count - 1})")
            return index % count

        def __getitem__(self, index):
            if isinstance(index, slice):
                return self.get_batch(list(range(*index.indices(len(self)))))
            index = self._check(int(index))
            self.budget.take(1)
            return super().__getitem__(index)

        def get_batch(self, indices):
            wanted = [self._check(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1).tolist()]
            check_batch_size(len(wanted), self.width, self.height, self.max_batch_bytes)
            self.budget.take(len(set(wanted)))
            return super().get_batch(wanted)

    return GuardedDecordReader


def available_backends() -> list[str]:
    """``["pyav"]``, plus ``"decord"`` when it is installed."""
    return ["pyav"] + (["decord"] if _decord_reader_class() is not None else [])


def choose_backend(info: VideoInfo, backend: str = "auto") -> str:
    """The backend :func:`open_video` uses for a video with ``info``."""
    if backend not in ("auto", "pyav", "decord"):
        raise ValueError(f"backend must be 'auto', 'pyav' or 'decord', got {backend!r}")
    if backend == "decord" and _decord_reader_class() is None:
        raise VideoReadError("backend 'decord' was asked for but decord is not installed (pip install decord)")
    if backend != "auto":
        return backend
    if _decord_reader_class() is None or info.variable_frame_rate \
            or info.keyframe_interval <= PYAV_KEYFRAME_INTERVAL:
        return "pyav"
    return "decord"


def open_video(path: str, backend: str = "auto", max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
               budget: FrameBudget | None = None):
    """A reader for ``path``: :class:`PyAVVideoReader` or decord's guarded ``VideoReader`` (see the module).
    Readers given one ``budget`` share its frame limit."""
    reader = PyAVVideoReader(path, max_batch_bytes, budget)  # validates the file; gives the info to choose by
    if choose_backend(reader.info(), backend) == "pyav":
        return reader
    import decord

    try:
        decord_reader = _decord_reader_class()(path, ctx=decord.cpu(0), num_threads=1)
    except Exception:  # decord fails on some files PyAV reads: keep PyAV's reader
        if backend == "decord":
            reader.close()
            raise
        return reader
    reader.close()
    decord_reader.width, decord_reader.height = reader.width, reader.height
    decord_reader.max_batch_bytes, decord_reader.budget = max_batch_bytes, reader.budget
    return decord_reader


def get_frames(video, indices=None, times=None) -> list:
    """Frames of ``video`` as PIL images, by frame ``indices`` or by ``times`` in seconds.

    >>> frames = get_frames(video_clue_0, times=[0, 5.5, 10])                    # doctest: +SKIP
    """
    from PIL import Image

    if (indices is None) == (times is None):
        raise ValueError("give either indices or times")
    if times is not None:
        at = getattr(video, "index_at", None) or (lambda t: min(len(video) - 1, int(t * video.get_avg_fps())))
        indices = [at(max(0.0, float(t))) for t in np.atleast_1d(times).tolist()]
    batch = video.get_batch(list(np.atleast_1d(indices).tolist()))
    return [Image.fromarray(frame) for frame in batch.asnumpy()]


def show_frames(frames, titles=None, columns: int = 4, width: float = 8.0) -> None:
    """Show frames (PIL images or arrays) as one grid image, with optional titles, via ``plt.show()``."""
    import matplotlib.pyplot as plt

    frames = list(frames)
    if not frames:
        raise ValueError("no frames to show")
    columns = max(1, min(columns, len(frames)))
    rows = math.ceil(len(frames) / columns)
    first = np.asarray(frames[0])
    aspect = first.shape[0] / first.shape[1]
    figure, axes = plt.subplots(rows, columns, figsize=(width, width / columns * aspect * rows + 0.3 * rows),
                                squeeze=False)
    for position, axis in enumerate(axes.flat):
        axis.axis("off")
        if position < len(frames):
            axis.imshow(np.asarray(frames[position]))
            if titles is not None and position < len(titles):
                axis.set_title(str(titles[position]), fontsize=8)
    figure.tight_layout()
    plt.show()
