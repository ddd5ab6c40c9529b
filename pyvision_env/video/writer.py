"""Write videos from frames (for the synthetic suites, tests and benchmarks).

>>> import numpy as np
>>> frames = (np.full((48, 64, 3), i * 20, np.uint8) for i in range(10))
>>> write_video("/tmp/pyvision-doctest.mp4", frames, fps=5)                       # doctest: +ELLIPSIS
PosixPath('/tmp/pyvision-doctest.mp4')
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 10.0, *,
                codec: str = "libx264", keyframe_interval: int = 10, crf: int = 23,
                timestamps: Sequence[float] | None = None) -> Path:
    """Encode RGB ``frames`` (``(height, width, 3)`` uint8, even sizes for ``yuv420p``) to ``path``.

    ``keyframe_interval`` frames between keyframes (short makes random access cheap). ``timestamps`` (seconds,
    increasing) give a variable frame rate; by default frame ``i`` is at ``i / fps``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = keyframe_interval
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast", "bf": "0"}
        if timestamps is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for number, array in enumerate(frames):
            if number == 0:
                stream.height, stream.width = array.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array, dtype=np.uint8), format="rgb24")
            if timestamps is not None:
                frame.pts, frame.time_base = round(timestamps[number] * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
