"""Videos: frame-exact readers with decord's interface, metadata probing and writing.

See :mod:`.reader` (also sent into kernels as ``pyvision_video``) and :mod:`.writer`.
"""

from .reader import (
    FrameBudget,
    PyAVVideoReader,
    VideoFrames,
    VideoInfo,
    VideoOptions,
    VideoReadError,
    available_backends,
    choose_backend,
    get_frames,
    open_video,
    show_frames,
)
from .writer import write_video

__all__ = ["FrameBudget", "PyAVVideoReader", "VideoFrames", "VideoInfo", "VideoOptions", "VideoReadError",
           "available_backends", "choose_backend", "get_frames", "open_video", "show_frames", "write_video"]
