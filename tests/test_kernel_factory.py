"""The kernel factory: kernels forked from one process, each isolated as a sandbox of its own.

Real factories, real namespaces, real kernels. (Every test of ``test_hostile_code.py`` also runs against
forked kernels.)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from pyvision_env.cli import main
from pyvision_env.execution import CellStatus, FactoryError, SandboxConfig

from .conftest import FAST_LIMITS, kernel_processes, quiet_engine, requires_sandbox, wait_until

FORK = SandboxConfig(start_method="fork")


@pytest.fixture(scope="module")
def forked():
    eng = quiet_engine(spare_kernels=2, max_kernels=16, sandbox=FORK)
    yield eng
    eng.close()


def factory_process(engine) -> psutil.Process:
    return psutil.Process(engine.core._factory.process.pid)


def test_the_engine_forks_and_says_so(forked):
    status = forked.status()
    assert status.start_method == "fork" and "kernel factory" in status.start_method_reason
    assert status.factory_starts == 1
    with forked.session(values={"n": 4}) as s:
        result = s.run("print(n * 2, os.getcwd().endswith('/work'))")
        assert result.ok and result.stdout == "8 True\n", result.summary()
        result = s.run("import sys\nprint(sys.modules.get('debugpy'), hasattr(get_ipython().kernel, 'debugger'))")
        assert result.stdout == "None False\n", result.summary()  # no debugger: the factory never imports debugpy
        kernel = psutil.Process(s.kernel_pid)
        init = kernel.parent()
        assert kernel.name() == "pyvision-kernel" and init.name() == "sleep"
        assert init.parent().name() == "pyvision-forks"  # the factory: a kernel is two processes


@requires_sandbox
def test_siblings_see_nothing_of_each_other(forked, tmp_path):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    with forked.session(images={"secret_image": tmp_path / "red.png"}) as first, forked.session() as second:
        planted = first.run(
            "import os, json\n"
            "for path in ('/tmp/planted', '/dev/shm/planted', 'planted'):\n"
            "    open(path, 'w').write('first')\n"
            "print(json.dumps(os.path.abspath('planted')))")
        assert planted.ok, planted.summary()
        work_file = json.loads(planted.stdout)
        input_file = str(next(first._session._kernel.inputs_dir.iterdir()))
        probe = second.run(
            "import os, json, signal\n"
            f"paths = ['/tmp/planted', '/dev/shm/planted', {work_file!r}, {input_file!r}]\n"
            "visible = [p for p in paths if os.path.exists(p)]\n"
            "pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "try:\n    open('/dev/planted', 'w')\n    dev = 'writable'\nexcept OSError as e:\n    dev = type(e).__name__\n"
            "print(json.dumps([visible, pids, dev]))")
        assert probe.ok, probe.summary()
        visible, pids, dev = json.loads(probe.stdout)
        assert visible == [] and pids == [1, 2] and dev == "OSError"
        assert first.run("print(open('/tmp/planted').read())").stdout == "first\n"


@requires_sandbox
def test_a_kernel_s_crash_and_bombs_touch_neither_the_factory_nor_its_siblings():
    limits = FAST_LIMITS.replace(memory_bytes=1 << 30, max_processes=32, cell_timeout=5.0, interrupt_grace=0.5)
    eng = quiet_engine(spare_kernels=1, max_kernels=8, sandbox=FORK, limits=limits)
    with eng, eng.session() as sibling, eng.session() as attacker:
        sibling.run("kept = 'sibling state'")
        factory = factory_process(eng)
        bombs = {"segfault": "import ctypes\nctypes.string_at(0)",
                 "memory bomb": "chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))",
                 "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"}
        for name, code in bombs.items():
            result = attacker.run(code)
            assert result.status is not CellStatus.OK, (name, result.summary())
            assert attacker.run("print('next')").stdout == "next\n", name
        assert sibling.run("print(kept)").stdout == "sibling state\n"
        assert factory.is_running() and eng.status().factory_starts == 1


def test_forked_kernels_do_not_share_random_state(forked):
    draws = []
    for _ in range(2):
        with forked.session() as s:
            result = s.run("import random\nprint(json.dumps([np.random.rand(), random.random()]))")
            assert result.ok, result.summary()
            draws.append(json.loads(result.stdout))
    assert draws[0][0] != draws[1][0] and draws[0][1] != draws[1][1]


def test_a_killed_factory_is_replaced_and_no_episode_hangs():
    eng = quiet_engine(spare_kernels=1, max_kernels=8, sandbox=FORK,
                       limits=FAST_LIMITS.replace(cell_timeout=30.0))
    with eng, eng.session() as idle, eng.session() as busy:
        idle.run("x = 1")
        victim = factory_process(eng)
        future = eng.submit(busy._session.run("import time\ntime.sleep(20)"))
        time.sleep(0.5)
        victim.send_signal(signal.SIGKILL)
        started = time.monotonic()
        result = future.result(timeout=10)
        assert result.status is CellStatus.CRASHED and result.state_lost, result.summary()
        assert time.monotonic() - started < 5
        assert wait_until(lambda: not psutil.pid_exists(idle.kernel_pid), timeout=5)  # it dies with the factory
        again = idle.run("print('x' in dir())")  # so this runs in a fresh kernel, and says so
        assert again.ok and again.stdout == "False\n" and any("fresh kernel" in note for note in again.notes)
        assert eng.status().factory_starts == 2 and factory_process(eng).pid != victim.pid
        with eng.session() as later:
            assert later.run("print(6 * 7)").stdout == "42\n"


def test_a_factory_that_cannot_fork_falls_back_and_says_why():
    threaded = SandboxConfig(preload=("import threading, time",
                                      "threading.Thread(target=time.sleep, args=(600,), daemon=True).start()"))
    eng = quiet_engine(spare_kernels=0, sandbox=threaded)
    with eng, eng.session() as s:
        status = eng.status()
        assert status.start_method == "exec" and "threads" in status.start_method_reason
        assert s.run("print('still works')").stdout == "still works\n"
    with pytest.raises(FactoryError, match="threads"):
        quiet_engine(spare_kernels=0, sandbox=SandboxConfig(start_method="fork", preload=threaded.preload))


def test_forking_without_a_sandbox_still_limits_each_kernel():
    eng = quiet_engine(spare_kernels=0, sandbox=SandboxConfig(isolation="none", start_method="fork"),
                       limits=FAST_LIMITS.replace(memory_bytes=1 << 30))
    with eng, eng.session() as s:
        assert eng.status().start_method == "fork" and eng.status().weak
        bomb = s.run("b = bytearray(2 * 1024**3)")
        assert bomb.status is CellStatus.ERROR and bomb.error_name == "MemoryError"
        assert s.run("print('alive')").stdout == "alive\n"


def test_doctor_reports_how_kernels_start(capsys):
    code = main(["doctor"])
    out = capsys.readouterr().out
    assert "kernels   : fork (forked by the kernel factory" in out
    assert code == 0


def test_five_hundred_episodes_leave_nothing_behind():
    eng = quiet_engine(spare_kernels=2, max_kernels=8, sandbox=FORK)
    with eng:
        root = eng.core._root
        factory = factory_process(eng)
        for episode in range(500):
            with eng.session() as s:
                result = s.run(f"x = {episode}")
                assert result.ok, result.summary()
        eng.warm_up()

        def forked_by_this_factory(name: str) -> list[psutil.Process]:
            return [p for p in factory.children(recursive=True) if p.name() == name]

        assert wait_until(lambda: len(forked_by_this_factory("pyvision-kernel")) == 2, timeout=10)
        assert wait_until(lambda: len(forked_by_this_factory("sleep")) == 2, timeout=10)  # an init per kernel
        assert len(list(root.glob("k-*"))) == 2
        cgroups = eng.core._cgroups
        parents = cgroups.parents if cgroups is not None else ()
        assert [len(list(parent.glob("k-*"))) for parent in parents] == [2] * len(parents)
        assert eng.status().kernels_started >= 500 and eng.status().factory_starts == 1
    assert wait_until(lambda: not factory.is_running(), timeout=10)
    assert not [p for p in kernel_processes() if p.ppid() == factory.pid]
    assert not root.exists()
    assert not any(parent.exists() for parent in parents)


# --- input templates: the episodes of a task share its decoded images ---------------------------------

@pytest.fixture(scope="module")
def large_image(tmp_path_factory):
    """A 4000x3000 RGB noise PNG: 36 MiB once decoded."""
    path = tmp_path_factory.mktemp("inputs") / "large.png"
    Image.frombytes("RGB", (4000, 3000), os.urandom(4000 * 3000 * 3)).save(path, compress_level=1)
    return path


def template_processes(engine) -> list[psutil.Process]:
    factory = psutil.Process(engine.core._factory.process.pid)
    return [p for p in factory.children(recursive=True) if p.name() == "pyvision-inputs"]


def test_a_group_decodes_its_images_once_and_shares_them(large_image):
    eng = quiet_engine(spare_kernels=0, sandbox=FORK)
    plain = quiet_engine(spare_kernels=0, sandbox=SandboxConfig(start_method="fork", input_templates=0))
    with eng, plain:
        group = [eng.session(images={"image_clue_0": large_image}) for _ in range(4)]
        probe = "import hashlib\nprint(image_clue_0.size, image_clue_0.mode, hashlib.md5(image_clue_0.tobytes()).hexdigest())"
        with plain.session(images={"image_clue_0": large_image}) as reference:
            expected = reference.run(probe).stdout
        try:
            assert eng.status().input_templates == 1 and eng.core._templates.made == 1
            assert len(template_processes(eng)) == 1
            for session in group:  # the kernels hold the pixels without a private copy of them
                assert psutil.Process(session.kernel_pid).memory_full_info().uss < 36 * 2**20
            assert [session.run(probe).stdout for session in group] == [expected] * 4
            crop = group[0].run("print(image_clue_0.crop((0, 0, 8, 8)).size)\n"
                                "image_clue_0.paste((0, 0, 0), (0, 0, 4000, 3000))\nprint(image_clue_0.getpixel((5, 5)))")
            assert crop.stdout == "(8, 8)\n(0, 0, 0)\n"
            assert group[1].run(probe).stdout == expected  # a kernel's writes stay its own
        finally:
            for session in group:
                session.close()


def test_evicted_templates_wait_for_their_kernels(large_image, tmp_path):
    small = tmp_path / "small.png"
    Image.new("RGB", (32, 32), "green").save(small)
    eng = quiet_engine(spare_kernels=0, sandbox=SandboxConfig(start_method="fork", input_templates=1))
    with eng:
        first = eng.session(images={"image_clue_0": large_image})
        first_template = template_processes(eng)[0]
        with eng.session(images={"image_clue_0": small}) as second:  # evicts the first task's template
            assert second.run("print(image_clue_0.size)").stdout == "(32, 32)\n"
            assert first_template.is_running() and eng.status().input_templates == 2
            assert first.run("print(image_clue_0.size)").stdout == "(4000, 3000)\n"
        first.close()
        assert wait_until(lambda: not first_template.is_running(), timeout=5)
        assert eng.status().input_templates == 1


def test_templates_evicted_while_their_kernels_start_wait_for_them(tmp_path, caplog):
    """More tasks than templates, all starting at once: each template is leased before its kernel starts, so
    eviction never closes one under a starting kernel (which used to fail it: EBADF, or killed by SIGKILL)."""
    paths = []
    for i, colour in enumerate(["red", "green", "blue", "white", "black", "yellow"]):
        paths.append(tmp_path / f"task{i}.png")
        Image.new("RGB", (24 + i, 16), colour).save(paths[-1])
    eng = quiet_engine(spare_kernels=0, sandbox=SandboxConfig(start_method="fork", input_templates=1))

    async def group() -> list[str]:
        sessions = await asyncio.gather(*(eng.core.open_session(images={"image_clue_0": path})
                                          for path in paths for _ in range(2)))
        try:
            return [(await s.run("print(image_clue_0.size, image_clue_0.getpixel((0, 0)))")).stdout for s in sessions]
        finally:
            await asyncio.gather(*(s.close() for s in sessions))

    with eng, caplog.at_level(logging.WARNING, logger="pyvision_env.execution"):
        printed = eng.run_coroutine(group(), timeout=120)
        expected = [f"{Image.open(path).size} {Image.open(path).getpixel((0, 0))}\n" for path in paths for _ in range(2)]
        assert printed == expected
        assert not [r for r in caplog.records if "template" in r.getMessage()], caplog.text
        assert eng.core._templates.made == len(paths)  # one per task, each shared by its two sessions
        assert wait_until(lambda: len(template_processes(eng)) == 1, timeout=10)  # the evicted ones closed


def test_a_dead_template_is_replaced_and_in_memory_images_need_none(large_image):
    eng = quiet_engine(spare_kernels=0, sandbox=FORK)
    with eng:
        with eng.session(images={"image_clue_0": large_image}) as s:
            s.run("x = 1")
        victim = template_processes(eng)[0]
        victim.kill()
        victim.wait(timeout=5)
        with eng.session(images={"image_clue_0": large_image}) as again:
            assert again.run("print(image_clue_0.size)").stdout == "(4000, 3000)\n"
        assert eng.core._templates.made == 2
        with eng.session(images={"image_clue_0": Image.new("RGB", (5, 4))}) as in_memory:
            assert in_memory.run("print(image_clue_0.size)").stdout == "(5, 4)\n"
        assert eng.core._templates.made == 2


def test_the_default_engine_and_its_factory_end_cleanly_at_exit():
    script = ("import psutil\nfrom pyvision_env.execution import default_engine\n"
              "engine = default_engine()\nwith engine.session() as s:\n    assert s.run('x = 1').ok\n"
              "print(engine.core._factory.pid, flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert wait_until(lambda: not psutil.pid_exists(int(done.stdout.split()[0])), timeout=10)
