"""The engine's everyday behaviour: state, outputs, images, inputs, errors, limits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from pyvision_env.execution import (
    AsyncEngine,
    CellStatus,
    Engine,
    EpisodeLimitError,
    ExecutionLimits,
    InputError,
    SandboxConfig,
)

from .conftest import FAST_LIMITS


def test_state_persists_across_cells(session):
    assert session.run("x = 41").ok
    result = session.run("x += 1\nprint(x)")
    assert result.status is CellStatus.OK
    assert result.stdout == "42\n"


def test_every_session_gets_a_fresh_kernel(engine):
    with engine.session() as first:
        first.run("leftover = 1")
        first_pid = first.kernel_pid
    with engine.session() as second:
        assert second.kernel_pid != first_pid
        result = second.run("leftover")
    assert result.status is CellStatus.ERROR and result.error_name == "NameError"


def test_last_expression_value_and_text(session):
    result = session.run("print('a')\n6 * 7")
    assert result.stdout == "a\n"
    assert result.result == "42"
    assert result.text == "a\n42\n"


def test_error_record_is_colour_free(session):
    result = session.run("def f():\n    raise ValueError('bad value')\nf()")
    assert result.status is CellStatus.ERROR
    assert (result.error_name, result.error_value) == ("ValueError", "bad value")
    assert "\x1b" not in result.traceback
    assert "raise ValueError('bad value')" in result.traceback


def test_stderr_is_separate(session):
    result = session.run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_plt_show_returns_figures_in_order_at_their_size(session):
    result = session.run(
        "fig1 = plt.figure(figsize=(4, 3), dpi=50); plt.plot([0, 1])\n"
        "fig2 = plt.figure(figsize=(2, 2), dpi=50); plt.plot([1, 0])\n"
        "plt.show()\nprint(len(plt.get_fignums()))")
    assert [im.size for im in result.images] == [(200, 150), (100, 100)]
    assert result.stdout == "0\n"  # figures are closed once shown


def test_display_of_pil_image_and_figure_and_last_expression(session):
    result = session.run(
        "from IPython.display import display\n"
        "display(Image.new('RGB', (30, 20), 'red'))\n"
        "fig = plt.figure(figsize=(1, 1), dpi=40)\n"
        "display(fig)\n"
        "Image.new('L', (7, 9))")
    assert [im.size for im in result.images] == [(30, 20), (40, 40), (7, 9)]
    assert result.images[0].convert("RGB").getpixel((0, 0)) == (255, 0, 0)
    assert result.result == ""  # the image is the value; no text repr is kept


def test_matplotlib_backend_is_non_interactive(session):
    assert session.run("import matplotlib\nprint(matplotlib.get_backend())").stdout.strip().lower() == "agg"


def test_preloaded_modules(session):
    result = session.run("print(np.__name__, Image.__name__, plt.__name__, io.__name__, base64.__name__)")
    assert result.stdout.split() == ["numpy", "PIL.Image", "matplotlib.pyplot", "io", "base64"]


def test_image_and_value_inputs(engine, tmp_path):
    path = tmp_path / "clue.png"
    Image.fromarray(np.arange(12 * 8 * 3, dtype=np.uint8).reshape(8, 12, 3)).save(path)
    values = {"question": "how many?", "box": [1, 2, 3, 4], "meta": {"k": None, "f": 0.5}}
    in_memory = Image.new("RGB", (5, 5), "blue")
    with engine.session(images={"image_clue_0": path, "image_clue_1": in_memory}, values=values) as s:
        result = s.run("print(image_clue_0.size, image_clue_0.mode, image_clue_1.getpixel((0, 0)))\n"
                       "print(question, box, meta)")
        assert result.stdout == "(12, 8) RGB (0, 0, 255)\nhow many? [1, 2, 3, 4] {'k': None, 'f': 0.5}\n"
        same = s.run("print(int(np.asarray(image_clue_0)[7, 11, 2]))")
        assert same.stdout == f"{((7 * 12 + 11) * 3 + 2) % 256}\n"


def test_input_files_are_read_only_in_the_kernel(engine, tmp_path):
    path = tmp_path / "clue.png"
    Image.new("RGB", (4, 4)).save(path)
    with engine.session(images={"image_clue_0": path}) as s:
        result = s.run("import glob\nf = glob.glob('../inputs/*')[0]\nopen(f, 'ab').write(b'x')")
    assert result.status is CellStatus.ERROR
    assert path.stat().st_size == len(path.read_bytes()) and Image.open(path).size == (4, 4)


@pytest.mark.parametrize("images, values, message", [
    ({"1bad": "x.png"}, {}, "not a valid Python identifier"),
    ({}, {"class": 1}, "not a valid Python identifier"),
    ({}, {"_pyvision_x": 1}, "reserved prefix"),
    ({"image_clue_0": "/no/such/file.png"}, {}, "no such file"),
    ({}, {"f": object()}, "JSON-serialisable"),
    ({}, {"big": "x" * (2 << 20)}, "limit"),
])
def test_bad_inputs_are_rejected_clearly(engine, images, values, message):
    with pytest.raises(InputError, match=message):
        engine.session(images=images, values=values)


def test_corrupt_image_input_is_rejected(engine, tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match="not a readable image"):
        engine.session(images={"image_clue_0": bad})
    with engine.session() as s:  # the engine is fine afterwards
        assert s.run("1").ok


def test_episode_budgets(engine):
    limits = FAST_LIMITS.replace(max_cells=2)
    with engine.session(limits=limits) as s:
        s.run("1")
        s.run("2")
        with pytest.raises(EpisodeLimitError, match="2 cells"):
            s.run("3")
    limits = FAST_LIMITS.replace(max_execution_time=0.6, cell_timeout=5.0, interrupt_grace=0.5)
    with engine.session(limits=limits) as s:
        result = s.run("import time\ntime.sleep(3)")
        assert result.status is CellStatus.TIMEOUT and result.duration < 2.5
        with pytest.raises(EpisodeLimitError, match="execution time"):
            s.run("1")


def test_images_per_episode_budget(engine):
    with engine.session(limits=FAST_LIMITS.replace(max_images_per_session=3)) as s:
        first = s.run("for i in range(2): display(Image.new('RGB', (4, 4)))")
        second = s.run("for i in range(2): display(Image.new('RGB', (4, 4)))")
    assert len(first.images) == 2 and not first.truncated
    assert len(second.images) == 1 and second.truncated
    assert s.images_shown == 3


def test_limits_validation():
    with pytest.raises(ValueError, match="cell_timeout"):
        ExecutionLimits(cell_timeout=0)
    with pytest.raises(ValueError, match="isolation"):
        SandboxConfig(isolation="docker")


def test_async_core_runs_sessions_concurrently():
    async def main():
        async with AsyncEngine(limits=FAST_LIMITS, spare_kernels=3) as engine:
            await engine.warm_up()
            async def episode(i):
                async with engine.session(values={"i": i}) as s:
                    await s.run("import time\ntime.sleep(0.3)")
                    return (await s.run("print(i * 10)")).stdout
            started = asyncio.get_running_loop().time()
            outputs = await asyncio.gather(*(episode(i) for i in range(3)))
            return outputs, asyncio.get_running_loop().time() - started
    outputs, elapsed = asyncio.run(main())
    assert outputs == ["0\n", "10\n", "20\n"]
    assert elapsed < 0.9 * 3  # the three sleeps overlapped


def test_cancelling_a_caller_mid_cell_leaves_a_usable_session():
    async def main():
        async with AsyncEngine(limits=FAST_LIMITS, spare_kernels=1) as engine, engine.session() as s:
            await s.run("x = 1")
            task = asyncio.create_task(s.run("import time\ntime.sleep(30)"))
            await asyncio.sleep(0.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            after = await s.run("print('alive')")
            return after
    after = asyncio.run(main())
    assert after.ok and after.stdout == "alive\n"
    assert any("fresh kernel" in note for note in after.notes)


def test_using_a_closed_engine_is_a_clear_error():
    engine = Engine(limits=FAST_LIMITS, spare_kernels=1)
    session = engine.session()
    engine.close()
    with pytest.raises(RuntimeError, match="engine is closed"):
        session.run("1")
    with pytest.raises(RuntimeError, match="engine is closed"):
        engine.session()
    engine.close()  # idempotent
