"""Videos on real files: frame-exact readers (PyAV and decord), variable frame rates, bad input, the frame budget
in real kernels, and video tasks end to end in the environment.

Every video is generated here (tiny, so the whole file runs in seconds). Frames encode their own index, so a
reader that returns a neighbouring frame fails: the short clip has a bright bar at ``x = 3 * i`` and a flat
strip of gray ``8 * i``; the long clip (300 frames, one keyframe every 250) has a bar at ``x = 8 + i % 64`` and a
strip of gray ``40 * (i // 64)``.
"""

from __future__ import annotations

import re
import subprocess
import time
import tracemalloc

import av
import numpy as np
import pytest
from PIL import Image

from pyvision_env import PyVisionEnv, Task, TaskSet
from pyvision_env.execution import CellStatus, InputError
from pyvision_env.video import (
    FrameBudget,
    PyAVVideoReader,
    VideoInfo,
    VideoOptions,
    VideoReadError,
    available_backends,
    choose_backend,
    get_frames,
    open_video,
    write_video,
)
from pyvision_env.video.reader import PYAV_KEYFRAME_INTERVAL, check_batch_size

HAS_DECORD = "decord" in available_backends()
needs_decord = pytest.mark.skipif(not HAS_DECORD, reason="decord is not installed")
BACKENDS = ["pyav", pytest.param("decord", marks=needs_decord)]

WIDTH, HEIGHT = 96, 64
SHORT_FRAMES, SHORT_FPS = 30, 10
LONG_FRAMES, LONG_FPS = 300, 25
TEXTURE = np.random.default_rng(7).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
"""A fixed noisy background: real-looking content, so the encoder keeps the keyframe interval it is given."""
VFR_TIMES = [0.0, 0.1, 0.2, 0.9, 1.0, 1.5, 1.55, 2.5]


def short_frame(i: int) -> np.ndarray:
    frame = TEXTURE.copy()
    frame[:40, 3 * i:3 * i + 4] = 255
    frame[48:] = 8 * i
    return frame


def long_frame(i: int) -> np.ndarray:
    frame = TEXTURE.copy()
    x = 8 + i % 64
    frame[:40, x:x + 4] = 255
    frame[48:] = 40 * (i // 64)
    return frame


def bar_x(frame) -> float:
    """Left edge of the bright bar in the top rows (its 4 columns average over 200; the texture about 128)."""
    columns = np.asarray(frame)[:40].astype(float).mean(axis=(0, 2))
    hot = np.flatnonzero(columns > 200)
    assert 3 <= len(hot) <= 5, f"no clean bar in this frame: bright columns {hot.tolist()}"
    return float(hot.mean()) - 1.5


def strip_gray(frame) -> float:
    return float(np.asarray(frame)[52:60, 8:-8].mean())


def short_index(frame) -> int:
    """The index a short-clip frame shows; both encodings must agree (bar to a pixel, gray within 6)."""
    x = bar_x(frame)
    index = round(x / 3)
    assert abs(x - 3 * index) <= 1, f"bar at x={x}, between frames"
    assert abs(strip_gray(frame) - 8 * index) <= 6, f"bar says frame {index}, gray {strip_gray(frame):.1f}"
    return index


def long_index(frame) -> int:
    x = bar_x(frame)
    assert abs(x - round(x)) <= 0.5
    return 64 * round(strip_gray(frame) / 40) + round(x) - 8


def array(frames) -> np.ndarray:
    """decord NDArray, VideoFrames or PIL image as a plain numpy array."""
    return frames.asnumpy() if hasattr(frames, "asnumpy") else np.asarray(frames)


def exactly(message: str) -> str:
    """A ``match=`` pattern for exactly this message."""
    return f"^{re.escape(message)}$"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True, timeout=60)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    paths = {
        "short": write_video(folder / "short.mp4", (short_frame(i) for i in range(SHORT_FRAMES)), fps=SHORT_FPS,
                             keyframe_interval=10),
        "long": write_video(folder / "long.mp4", (long_frame(i) for i in range(LONG_FRAMES)), fps=LONG_FPS,
                            keyframe_interval=250),
        "vfr": write_video(folder / "vfr.mp4", (short_frame(i) for i in range(len(VFR_TIMES))), fps=10,
                           keyframe_interval=3, timestamps=VFR_TIMES),
    }
    corrupt = folder / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(20_000))
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    data = paths["short"].read_bytes()
    truncated = folder / "truncated.mp4"  # the index (moov) is written last: 40% of the bytes has none
    truncated.write_bytes(data[:len(data) * 2 // 5])
    faststart = folder / "faststart.mp4"  # the index first: 40% of the bytes has the index and some frames
    ffmpeg("-i", str(paths["short"]), "-c", "copy", "-movflags", "+faststart", str(faststart))
    data = faststart.read_bytes()
    truncated_faststart = folder / "truncated-faststart.mp4"
    truncated_faststart.write_bytes(data[:len(data) * 2 // 5])
    long_faststart = folder / "long-faststart.mp4"
    ffmpeg("-i", str(paths["long"]), "-c", "copy", "-movflags", "+faststart", str(long_faststart))
    data = long_faststart.read_bytes()
    truncated_long = folder / "truncated-long-faststart.mp4"
    truncated_long.write_bytes(data[:len(data) * 2 // 5])
    bframes = folder / "bframes.mp4"  # as most real videos: B-frames, decode order differs from presentation
    raw = b"".join(short_frame(i).tobytes() for i in range(SHORT_FRAMES))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{WIDTH}x{HEIGHT}",
                    "-r", str(SHORT_FPS), "-i", "-", "-c:v", "libx264", "-bf", "3", "-g", "10", "-pix_fmt", "yuv420p",
                    str(bframes)], input=raw, check=True, timeout=60)
    audio = folder / "audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "1", "-c:a", "aac", str(audio))
    return {**paths, "corrupt": corrupt, "empty": empty, "truncated": truncated,
            "truncated_faststart": truncated_faststart, "truncated_long": truncated_long, "audio": audio, "bframes": bframes,
            "missing": folder / "no-such-video.mp4"}


@pytest.fixture(scope="module")
def huge_video(tmp_path_factory):
    """Two 4096x2160 frames (left half light, then right half light)."""
    frame = np.zeros((2160, 4096, 3), np.uint8)
    frame[:, :2048] = 200
    return write_video(tmp_path_factory.mktemp("huge") / "huge.mp4", [frame, frame[:, ::-1]], fps=1, codec="mpeg4")


def video_task(path, task_id: str = "clip", answer: str = str(SHORT_FRAMES)) -> TaskSet:
    return TaskSet("videos", [Task(id=task_id, question="How many frames does the video have?", answer=answer,
                                   grader="numeric", videos=(str(path),))])


@pytest.fixture
def make_env(engine):
    made = []

    def make(tasks, **kwargs):
        env = PyVisionEnv(tasks, engine=engine, **kwargs)
        made.append(env)
        return env

    yield make
    for env in made:
        env.close()


def code(env, source: str) -> str:
    return env.protocol.render_action(code=source, call_id="call_1")


# --- 1. reader correctness ---------------------------------------------------------------------------------


def test_the_generated_clips_are_what_the_tests_assume(videos):
    reader = PyAVVideoReader(str(videos["short"]))
    assert reader.get_key_indices() == [0, 10, 20]
    assert PyAVVideoReader(str(videos["long"])).get_key_indices() == [0, 250]
    assert short_index(short_frame(17)) == 17 and long_index(long_frame(299)) == 299


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_exact_indexing(videos, backend):
    reader = open_video(str(videos["short"]), backend=backend)
    if backend == "pyav":
        assert isinstance(reader, PyAVVideoReader)
    else:
        import decord
        assert isinstance(reader, decord.VideoReader) and not isinstance(reader, PyAVVideoReader)
    assert len(reader) == SHORT_FRAMES and reader.get_avg_fps() == pytest.approx(SHORT_FPS)
    # one at a time, in an order that goes forwards within a GOP, backwards, across GOPs and back to the start
    for i in [5, 6, 7, 3, 12, 11, 29, 0, 20, 19, 10, 9, 28, 1]:
        assert short_index(array(reader[i])) == i
    assert [short_index(f) for f in array(reader.get_batch(list(range(SHORT_FRAMES))))] == list(range(30))

    wanted = [17, 3, 3, 29, 0, 17, 12]
    batch = array(reader.get_batch(wanted))
    assert batch.shape == (7, HEIGHT, WIDTH, 3) and batch.dtype == np.uint8
    assert [short_index(f) for f in batch] == wanted
    assert np.array_equal(batch[1], batch[2]) and np.array_equal(batch[0], batch[5])
    assert [short_index(f) for f in array(reader.get_batch(np.array([[2, 1], [0, 28]])))] == [2, 1, 0, 28]

    assert short_index(array(reader[-1])) == 29 and short_index(array(reader[-30])) == 0
    assert [short_index(f) for f in array(reader.get_batch([-1, -2, 4]))] == [29, 28, 4]
    assert [short_index(f) for f in array(reader[5:11])] == [5, 6, 7, 8, 9, 10]
    assert [short_index(f) for f in array(reader[::7])] == [0, 7, 14, 21, 28]
    assert [short_index(f) for f in array(reader[-3:])] == [27, 28, 29]

    assert np.asarray(reader.get_frame_timestamp(0)).reshape(-1, 2) == pytest.approx(np.array([[0.0, 0.1]]),
                                                                                      abs=1e-3)
    assert np.asarray(reader.get_frame_timestamp([12, 29])) == pytest.approx(np.array([[1.2, 1.3], [2.9, 3.0]]),
                                                                             abs=1e-3)
    pil = get_frames(reader, indices=[4, 25])
    assert [image.size for image in pil] == [(WIDTH, HEIGHT)] * 2 and [short_index(im) for im in pil] == [4, 25]
    assert [short_index(im) for im in get_frames(reader, times=[0.0, 0.45, 2.99])] == [0, 4, 29]


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_exact_seeking_with_a_long_keyframe_interval(videos, backend):
    reader = open_video(str(videos["long"]), backend=backend)
    assert len(reader) == LONG_FRAMES
    wanted = [299, 0, 157, 157, 61, 249, 250, 251, 248, 1, 120, 64, 63]
    assert [long_index(array(reader[i])) for i in wanted] == wanted
    assert [long_index(f) for f in array(reader.get_batch(wanted))] == wanted
    assert [long_index(f) for f in array(reader[245:256:5])] == [245, 250, 255]


@needs_decord
def test_frame_timestamp_of_one_index_has_the_same_shape_on_both_backends(videos):
    pyav = open_video(str(videos["short"]), backend="pyav").get_frame_timestamp(12)
    decord = open_video(str(videos["short"]), backend="decord").get_frame_timestamp(12)
    assert np.shape(pyav) == np.shape(decord)
    assert np.asarray(pyav) == pytest.approx(np.asarray(decord), abs=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_exact_indexing_with_b_frames(videos, backend):
    path = str(videos["bframes"])
    with av.open(path) as container:
        order = [packet.pts for packet in container.demux(video=0) if packet.pts is not None]
    assert order != sorted(order)  # the premise: packets come out of presentation order
    reader = open_video(path, backend=backend)
    assert len(reader) == SHORT_FRAMES and reader.get_avg_fps() == pytest.approx(SHORT_FPS)
    wanted = [5, 6, 7, 3, 12, 11, 29, 0, 20, 19, 1, 2]
    assert [short_index(array(reader[i])) for i in wanted] == wanted
    assert [short_index(f) for f in array(reader.get_batch(list(range(SHORT_FRAMES))))] == list(range(30))
    assert [short_index(f) for f in array(reader.get_batch(wanted))] == wanted
    assert np.asarray(reader.get_frame_timestamp([0, 1, 29])) == pytest.approx(
        np.array([[0.0, 0.1], [0.1, 0.2], [2.9, 3.0]]), abs=1e-3)


def test_info_fields(videos):
    info = PyAVVideoReader(str(videos["short"])).info()
    assert info == VideoInfo(width=WIDTH, height=HEIGHT, frames=SHORT_FRAMES, fps=pytest.approx(SHORT_FPS),
                             duration=pytest.approx(3.0), keyframe_interval=pytest.approx(10.0),
                             variable_frame_rate=False, codec="h264")
    assert info.describe() == "96x64, 30 frames, 10 fps, 3.0 s"
    info = PyAVVideoReader(str(videos["long"])).info()
    assert (info.frames, info.fps, info.duration, info.keyframe_interval) == (300, pytest.approx(25),
                                                                              pytest.approx(12.0), 150.0)
    assert PyAVVideoReader(str(videos["long"])).get_frame_timestamp(299) == pytest.approx(np.array([11.96, 12.0]))


def test_choose_backend_rules(videos):
    def info(keyframe_interval: float, variable: bool = False) -> VideoInfo:
        return VideoInfo(width=WIDTH, height=HEIGHT, frames=300, fps=25.0, duration=12.0,
                         keyframe_interval=keyframe_interval, variable_frame_rate=variable, codec="h264")

    long_gop = "decord" if HAS_DECORD else "pyav"
    assert choose_backend(info(10)) == "pyav"
    assert choose_backend(info(PYAV_KEYFRAME_INTERVAL)) == "pyav"
    assert choose_backend(info(PYAV_KEYFRAME_INTERVAL + 1)) == long_gop
    assert choose_backend(info(250, variable=True)) == "pyav"  # decord cannot index a variable frame rate
    assert choose_backend(info(250), backend="pyav") == "pyav"
    with pytest.raises(ValueError, match="backend must be 'auto', 'pyav' or 'decord', got 'ffmpeg'"):
        choose_backend(info(10), backend="ffmpeg")
    if HAS_DECORD:
        assert choose_backend(info(10), backend="decord") == "decord"
    else:
        with pytest.raises(VideoReadError, match="decord is not installed"):
            choose_backend(info(10), backend="decord")

    # the same rules on real files, through open_video
    assert isinstance(open_video(str(videos["short"])), PyAVVideoReader)
    assert isinstance(open_video(str(videos["vfr"])), PyAVVideoReader)
    long_reader = open_video(str(videos["long"]))
    assert isinstance(long_reader, PyAVVideoReader) is (not HAS_DECORD)
    assert long_index(array(long_reader[200])) == 200
    assert isinstance(open_video(str(videos["long"]), backend="pyav"), PyAVVideoReader)


# --- 2. variable frame rate ----------------------------------------------------------------------------------


def test_variable_frame_rate(videos):
    reader = open_video(str(videos["vfr"]))
    assert isinstance(reader, PyAVVideoReader) and len(reader) == len(VFR_TIMES)
    info = reader.info()
    assert info.variable_frame_rate is True and info.frames == 8
    # duration: last timestamp plus the mean gap (2.5 / 7), and the average rate is frames over that
    assert info.duration == pytest.approx(2.5 + 2.5 / 7) and info.fps == pytest.approx(8 / (2.5 + 2.5 / 7))
    assert "variable frame rate, average 2.8 fps" in info.describe()
    assert choose_backend(info) == "pyav"
    assert [short_index(f) for f in array(reader.get_batch(list(range(8))))] == list(range(8))
    assert reader.get_frame_timestamp(list(range(8)))[:, 0] == pytest.approx(VFR_TIMES, abs=1e-3)

    shown = {0.0: 0, 0.05: 0, 0.15: 1, 0.5: 2, 0.899: 2, 0.9: 3, 0.95: 3, 1.2: 4, 1.52: 5, 1.6: 6, 2.0: 6,
             2.5: 7, 100.0: 7, -1.0: 0}
    assert {t: reader.index_at(t) for t in shown} == shown
    with pytest.raises(ValueError, match="finite"):
        reader.index_at(float("nan"))
    times = [0.5, 1.52, 2.6, 0.95, 0.0]
    assert [short_index(image) for image in get_frames(reader, times=times)] == [2, 5, 7, 3, 0]
    with pytest.raises(ValueError, match="either indices or times"):
        get_frames(reader)


# --- 3. bad input ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_unreadable_files_raise_clear_errors(videos, backend):
    for name in ("missing", "corrupt", "empty", "truncated"):
        path = str(videos[name])
        started = time.monotonic()
        with pytest.raises(VideoReadError, match="cannot open video") as raised:
            open_video(path, backend=backend)
        assert path in str(raised.value) and time.monotonic() - started < 5
    with pytest.raises(VideoReadError, match="has no video stream \\(an audio-only or data file\\?\\)") as raised:
        open_video(str(videos["audio"]), backend=backend)
    assert str(videos["audio"]) in str(raised.value)
    with pytest.raises(VideoReadError, match="No such file"):
        open_video(str(videos["missing"]))


@pytest.mark.timeout(60)
def test_truncated_faststart_file(videos):
    """40% of a faststart mp4 (index first): the frames whose data is there decode exactly; one that is cut off
    raises a clear VideoReadError (not a hang, not garbage), and past the indexed frames an IndexError."""
    path = str(videos["truncated_faststart"])
    reader = open_video(path, backend="pyav")
    count = len(reader)
    assert 2 <= count < SHORT_FRAMES
    readable, failures = [], []
    for i in range(count):
        try:
            readable.append(short_index(array(reader[i])))
        except VideoReadError as error:
            failures.append((i, str(error)))
    assert readable == list(range(len(readable))) and len(readable) >= count - 2  # a prefix, exact
    for i, message in failures:
        assert message.startswith(f"frame {i} of {path} cannot be decoded"), message
    with pytest.raises(IndexError, match=f"frame index {count} is out of range: this video has {count} frames "
                                         f"\\(0\\.\\.{count - 1}\\)"):
        reader[count]
    assert short_index(array(reader[0])) == 0  # still usable after the failure


@needs_decord
@pytest.mark.timeout(60)
def test_truncated_long_gop_file_gives_a_clear_error_or_a_reader(videos):
    path = str(videos["truncated_long"])
    probe = PyAVVideoReader(path)  # PyAV indexes the frames that are there, with one keyframe: auto picks decord
    assert choose_backend(probe.info()) == "decord"
    try:
        reader = open_video(path)
    except VideoReadError as error:
        assert path in str(error)
    else:
        assert long_index(array(reader[0])) == 0


@needs_decord
@pytest.mark.timeout(60)
def test_env_with_a_truncated_long_gop_video_fails_at_reset_or_works(videos, make_env):
    env = make_env(video_task(videos["truncated_long"], answer="1"))
    try:
        env.reset(seed=0)
    except ValueError as error:
        assert "clip" in str(error)
        return
    _, _, _, _, info = env.step(code(env, "print(len(video_clue_0))"))
    assert info["tool_errors"] == 0


@pytest.mark.parametrize("name, message", [
    ("missing", "cannot load video {path}: \\[Errno 2\\] No such file"),
    ("corrupt", "cannot load video: cannot open video {path}: .*Invalid data"),
    ("empty", "cannot load video: cannot open video {path}"),
    ("truncated", "cannot load video: cannot open video {path}"),
    ("audio", "cannot load video: {path} has no video stream"),
])
def test_env_reset_names_the_task_and_the_file(videos, make_env, name, message):
    env = make_env(video_task(videos[name], task_id=f"bad-{name}"))
    path = str(videos[name])
    with pytest.raises(ValueError, match=f"^task bad-{name}: " + message.format(path=re.escape(path))):
        env.reset(seed=0)


def test_engine_session_rejects_bad_videos(videos, engine):
    missing = str(videos["missing"])
    with pytest.raises(InputError, match=f"video input 'video_clue_0': no such file '{missing}'"):
        engine.session(videos={"video_clue_0": missing})
    # (the kernel opens its own copy of the file, named after the input)
    with pytest.raises(InputError, match=r"^could not load the inputs into the kernel: VideoReadError: "
                                         r"cannot open video .*/video_clue_0\.mp4: .*Invalid data"):
        engine.session(videos={"video_clue_0": str(videos["corrupt"])})
    with pytest.raises(InputError, match=r"VideoReadError: .*/clip\.mp4 has no video stream"):
        engine.session(videos={"clip": str(videos["audio"])})


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_out_of_range_names_the_valid_range(videos, backend):
    reader = open_video(str(videos["short"]), backend=backend, budget=FrameBudget())
    valid = "this video has 30 frames \\(0\\.\\.29\\)"
    for bad in (30, -31, 10**9):
        with pytest.raises(IndexError, match=f"^frame index {bad} is out of range: {valid}$"):
            reader[bad]
    with pytest.raises(IndexError, match=f"frame index 30 is out of range: {valid}"):
        reader.get_batch([0, 5, 30])
    with pytest.raises(IndexError, match=f"frame index -31 is out of range: {valid}"):
        get_frames(reader, indices=[-31])
    assert reader.budget.used == 0  # nothing was decoded or counted
    if backend == "pyav":
        with pytest.raises(IndexError, match=valid):
            reader.get_frame_timestamp([1, 30])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_batch_over_max_batch_bytes_is_refused(videos, backend):
    limit = 2 * 2**20
    reader = open_video(str(videos["short"]), backend=backend, max_batch_bytes=limit)
    per_call = limit // (WIDTH * HEIGHT * 3)
    assert per_call == 113
    with pytest.raises(VideoReadError, match=exactly("decoding 120 frames of 96x64 at once would take 2 MiB "
                                                     "(limit 2 MiB): fetch at most 113 frames per call")):
        reader.get_batch([0, 1] * 60)
    assert reader.budget.used == 0
    assert array(reader.get_batch([3] * per_call)).shape == (per_call, HEIGHT, WIDTH, 3)
    small = open_video(str(videos["short"]), backend=backend, max_batch_bytes=10 * WIDTH * HEIGHT * 3)
    assert len(array(small[:10])) == 10
    with pytest.raises(VideoReadError, match="fetch at most 10 frames per call"):
        small[:11]
    with pytest.raises(VideoReadError, match="fetch at most 10 frames per call"):
        get_frames(small, times=np.linspace(0, 2.9, 11))


def test_check_batch_size():
    check_batch_size(10, 1920, 1080, 10 * 1920 * 1080 * 3)
    with pytest.raises(VideoReadError, match=exactly("decoding 11 frames of 1920x1080 at once would take 65 MiB "
                                                     "(limit 59 MiB): fetch at most 10 frames per call")):
        check_batch_size(11, 1920, 1080, 10 * 1920 * 1080 * 3)
    with pytest.raises(VideoReadError, match="fetch at most 1 frames per call"):  # never "at most 0"
        check_batch_size(2, 1920, 1080, 1000)


@pytest.mark.parametrize("backend", BACKENDS)
def test_frame_budget_in_a_kernel(videos, engine, backend):
    count = {"n": "_pyvision_frames_fetched()"}
    options = VideoOptions(backend=backend, max_frames=5)
    with engine.session(videos={"video_clue_0": str(videos["short"])}, video_options=options) as session:
        result = session.run("frames = video_clue_0.get_batch([0, 1, 2, 2]).asnumpy()\n"
                             "print(type(video_clue_0).__name__, len(video_clue_0), frames.shape)",
                             expressions=count)
        assert result.status is CellStatus.OK, result.error_value
        reader_class = "PyAVVideoReader" if backend == "pyav" else "GuardedDecordReader"
        assert result.stdout == f"{reader_class} 30 (4, 64, 96, 3)\n" and result.expressions == {"n": "3"}

        result = session.run("video_clue_0.get_batch([3, 4, 5])", expressions=count)
        assert result.status is CellStatus.ERROR and result.error_name == "VideoReadError"
        assert result.error_value == ("the episode's frame budget is used up: 3 of 5 frames fetched, 3 more asked "
                                      "for; answer with what you have seen")
        assert session.run("pass", expressions=count).expressions == {"n": "3"}  # the refused call took none

        result = session.run("a = video_clue_0[3]; b = get_frames(video_clue_0, indices=[4])", expressions=count)
        assert result.status is CellStatus.OK and result.expressions == {"n": "5"}
        result = session.run("show_frames(get_frames(video_clue_0, times=[0.0]))")
        assert result.error_name == "VideoReadError" and "budget is used up: 5 of 5 frames" in result.error_value
        assert result.images == []
        result = session.run("video_clue_0[30]")
        assert result.error_name == "IndexError" and "this video has 30 frames (0..29)" in result.error_value


def test_frames_shown_from_a_kernel(videos, engine):
    with engine.session(videos={"video_clue_0": str(videos["short"])}) as session:
        result = session.run("import numpy as np\n"
                             "frames = get_frames(video_clue_0, indices=[3, 21])\n"
                             "print([f.size for f in frames], int(np.asarray(frames[1])[52:60, 8:-8].mean()))\n"
                             "show_frames(frames, titles=['a', 'b'])",
                             expressions={"n": "_pyvision_frames_fetched()"})
        assert result.status is CellStatus.OK, result.error_value
        assert result.stdout.startswith("[(96, 64), (96, 64)] ") and abs(int(result.stdout.split()[-1]) - 168) <= 6
        assert len(result.images) == 1 and result.expressions == {"n": "2"}


@pytest.mark.timeout(60)
def test_huge_resolution(huge_video, make_env):
    reader = open_video(str(huge_video))
    assert (reader.width, reader.height, len(reader)) == (4096, 2160, 2)
    tracemalloc.start()
    try:
        with pytest.raises(VideoReadError, match=exactly("decoding 100 frames of 4096x2160 at once would take "
                                                         "2531 MiB (limit 512 MiB): fetch at most 20 frames "
                                                         "per call")):
            reader.get_batch([0, 1] * 50)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 * 2**20 and reader.budget.used == 0  # refused before decoding or allocating anything
    frame = array(reader[1])
    assert frame.shape == (2160, 4096, 3)
    assert abs(int(frame[1000, 100].mean())) <= 6 and abs(int(frame[1000, 4000].mean()) - 200) <= 6

    env = make_env(video_task(huge_video, answer="2"), video_context="uniform", video_frames=2)
    obs, info = env.reset(seed=0)
    images = obs[-1].images
    shown = env.token_rule.resized_size(4096, 2160)
    assert shown[0] * shown[1] <= env.token_rule.max_pixels and shown[0] < 4096
    assert [image.size for image in images] == [shown, shown]
    assert info["visual_tokens"] == 2 * env.token_rule.count(*shown)
    assert np.asarray(images[0])[:, :shown[0] // 4].mean() > 190 and np.asarray(images[1])[:, :shown[0] // 4].mean() < 10
    obs, _, _, _, info = env.step(code(env, "print(video_clue_0[1].shape)"))
    assert "(2160, 4096, 3)" in obs[0].plain_text and info["frames_fetched"] == 1 and info["tool_errors"] == 0


# --- 4. the environment, end to end ---------------------------------------------------------------------------


def test_on_demand_episode(videos, make_env):
    env = make_env(video_task(videos["short"]))
    obs, info = env.reset(seed=0)
    assert obs[-1].images == [] and info["visual_tokens"] == 0 and info["frames_fetched"] == 0
    text = obs[-1].plain_text
    assert "`video_clue_0` (96x64, 30 frames, 10 fps, 3.0 s)" in text and "get_frames(video" in text
    obs, _, terminated, _, info = env.step(code(env, "print(len(video_clue_0), video_clue_0.get_avg_fps())"))
    assert not terminated and info["tool_errors"] == 0 and "30 10.0" in obs[0].plain_text
    assert info["frames_fetched"] == 0
    obs, _, _, _, info = env.step(code(env, "show_frames(get_frames(video_clue_0, indices=[0, 29]))"))
    assert info["tool_errors"] == 0 and info["images_shown"] == 1 and info["frames_fetched"] == 2
    assert sum(len(message.images) for message in obs) == 1
    _, reward, terminated, _, info = env.step(env.protocol.render_action(answer="30"))
    assert (reward, terminated, info["correct"]) == (1.0, True, True)


def test_uniform_episode(videos, make_env):
    env = make_env(video_task(videos["short"]), video_context="uniform", video_frames=4)
    obs, info = env.reset(seed=0)
    images = obs[-1].images
    assert len(images) == 4
    width, height = images[0].size
    assert (width, height) == env.token_rule.resized_size(WIDTH, HEIGHT)
    assert all(image.size == (width, height) for image in images)
    assert info["visual_tokens"] == 4 * env.token_rule.count(width, height) and info["frames_fetched"] == 0
    text = obs[-1].plain_text
    assert "4 frames of it, sampled uniformly" in text
    assert [text.count(f"[{t} s]") for t in ("0.0", "0.7", "1.5", "2.2")] == [1, 1, 1, 1]  # frames 0, 7, 15, 22
    strips = [float(np.asarray(image)[-height // 8:, width // 8:-width // 8].mean()) for image in images]
    assert strips == pytest.approx([0, 56, 120, 176], abs=8)

    fps_env = make_env(video_task(videos["short"]), video_context="uniform", video_fps=2.0)
    assert len(fps_env.reset(seed=0)[0][-1].images) == 6  # 3 s at 2 frames a second
    thumbs = make_env(video_task(videos["short"]), video_thumbnails=2)
    obs, info = thumbs.reset(seed=0)
    assert len(obs[-1].images) == 2 and "2 frames of it, sampled uniformly" in obs[-1].plain_text


def test_openai_tools_video_episode(videos, make_env):
    env = make_env(video_task(videos["short"]), protocol="openai-tools", max_frames=3)
    obs, info = env.reset(seed=0)
    assert obs[-1].images == [] and "video_clue_0" in obs[-1].plain_text
    obs, _, terminated, _, info = env.step(code(env, "print(len(video_clue_0), video_clue_0[12].shape)"))
    assert not terminated and info["tool_errors"] == 0 and info["frames_fetched"] == 1
    assert obs[0].role == "tool" and "30 (64, 96, 3)" in obs[0].plain_text
    obs, _, terminated, _, info = env.step(code(env, "video_clue_0.get_batch([0, 1, 2])"))
    assert not terminated and info["tool_errors"] == 1 and "frame budget is used up: 1 of 3" in obs[0].plain_text
    _, reward, terminated, _, info = env.step(env.protocol.render_action(answer="30"))
    assert (reward, terminated) == (1.0, True)


def test_codevision_refuses_video_tasks(videos, engine):
    with pytest.raises(ValueError, match="protocol 'codevision' does not support video, and 1 tasks of 'videos' "
                                         "have videos; use 'pyvision' or 'openai-tools'"):
        PyVisionEnv(video_task(videos["short"]), protocol="codevision", engine=engine)


def test_bad_video_settings(videos, engine):
    for kwargs, message in [({"video_context": "all"}, "video_context must be"),
                            ({"video_frames": 0}, "video_frames must be None or >= 1"),
                            ({"video_backend": "opencv"}, "video_backend must be"),
                            ({"max_frames": -1}, "max_frames None or >= 0")]:
        with pytest.raises(ValueError, match=message):
            PyVisionEnv(video_task(videos["short"]), engine=engine, **kwargs)


def test_first_views_are_decoded_frames_as_images(videos, make_env):
    env = make_env(video_task(videos["vfr"], answer="8"), video_context="uniform", video_frames=8,
                   resize_images=False)
    obs, _ = env.reset(seed=0)
    assert all(isinstance(image, Image.Image) and image.size == (WIDTH, HEIGHT) for image in obs[-1].images)
    assert [short_index(image) for image in obs[-1].images] == list(range(8))
    text = obs[-1].plain_text
    positions = [text.find(f"[{t:.1f} s] ") for t in VFR_TIMES]  # each frame labelled with its own time
    assert -1 not in positions and positions == sorted(positions)
