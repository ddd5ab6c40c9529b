"""Lifecycle: many episodes without leaks, many at once, the global cap, and cleanup on every exit path.

Leak checks compare the test process (descriptors, threads, child processes) and the engine's own
state (files under its root directory, cgroup directories, kernel processes) before and after, once the
pool is full again. Every wait is bounded.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from pyvision_env.execution import CellStatus, Engine

from .conftest import FAST_LIMITS, kernel_processes, quiet_engine, requires_sandbox, wait_until

REPO = Path(__file__).resolve().parents[1]


# --- helpers ----------------------------------------------------------------------------------------

def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kernel_tree(bwrap_pid: int) -> list[int]:
    """The host pids of a kernel: bubblewrap (or the kernel itself) and everything under it."""
    try:
        return [bwrap_pid] + [p.pid for p in psutil.Process(bwrap_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return [bwrap_pid]


def files_under(root: Path) -> int:
    return sum(len(dirs) + len(files) for _, dirs, files in os.walk(root))


def cgroup_dirs(engine: Engine) -> int:
    manager = engine._async._cgroups
    if manager is None:
        return 0
    return sum(1 for parent in manager.parents if parent.exists() for child in parent.iterdir() if child.is_dir())


def snapshot(engine: Engine) -> dict[str, int]:
    me = psutil.Process()
    return {
        "fds": me.num_fds(),
        "threads": me.num_threads(),
        "children": len(me.children(recursive=True)),
        "kernels": len(kernel_processes()),
        "root_files": files_under(engine._async._root),
        "cgroup_dirs": cgroup_dirs(engine),
        "live_kernels": engine.status().live_kernels,
    }


def settle(engine: Engine, baseline: dict[str, int], tolerance: dict[str, int], timeout: float = 20) -> dict:
    """Wait (bounded) until the pool is full again and the counts are back near ``baseline``."""
    engine.warm_up()
    last = {}

    def close_enough():
        nonlocal last
        last = snapshot(engine)
        return all(last[k] - baseline[k] <= tolerance.get(k, 0) for k in baseline)

    wait_until(close_enough, timeout, interval=0.2)
    return last


TOLERANCE = {"fds": 4, "threads": 2}


def run_episodes(engine: Engine, count: int) -> list[int]:
    """``count`` sequential episodes of two cells each; returns the kernel pids they used."""
    pids = []
    for i in range(count):
        with engine.session(values={"i": i}) as s:
            first = s.run("x = i * 2")
            second = s.run("print(x + 1)")
            assert first.ok and second.ok and second.stdout == f"{i * 2 + 1}\n", second.summary()
            pids.append(s.kernel_pid)
    return pids


# --- many episodes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("episodes", [
    pytest.param(30, id="30-episodes"),
    pytest.param(300, id="300-episodes", marks=[pytest.mark.slow, pytest.mark.timeout(1500)]),
])
def test_sequential_episodes_leak_nothing(episodes):
    engine = quiet_engine(spare_kernels=2)
    try:
        engine.warm_up()
        root = engine._async._root
        run_episodes(engine, 2)  # first use creates per-process state (threads, caches) once
        engine.warm_up()
        assert wait_until(lambda: engine.status().live_kernels == engine.status().ready_kernels == 2, timeout=20)
        baseline = snapshot(engine)
        pids = run_episodes(engine, episodes)
        after = settle(engine, baseline, TOLERANCE)
        growth = {k: after[k] - baseline[k] for k in baseline}
        assert all(growth[k] <= TOLERANCE.get(k, 0) for k in growth), f"growth after {episodes} episodes: {growth}"
        assert after["live_kernels"] == engine.status().ready_kernels == 2
        assert not [pid for pid in pids if running(pid)], "kernels of closed episodes still run"
        assert len(list(root.glob("k-*"))) == 2, "only the ready kernels' directories remain"
        assert engine.status().kernels_failed == 0
        pool_pids = [pid for kernel in engine._async._supply.live for pid in kernel_tree(kernel.process.pid)]
        assert pool_pids
    finally:
        engine.close()
    assert not root.exists()
    assert wait_until(lambda: not [pid for pid in pool_pids if running(pid)], timeout=5)


def test_sessions_closed_by_garbage_or_exceptions_leak_nothing():
    engine = quiet_engine(spare_kernels=1)
    try:
        engine.warm_up()
        baseline = snapshot(engine)
        pids = []
        for _ in range(5):
            with pytest.raises(ZeroDivisionError), engine.session() as s:  # the caller's code fails mid-episode
                pids.append(s.kernel_pid)
                s.run("x = 1")
                raise ZeroDivisionError
        for _ in range(5):  # an episode ending in a crash, a kill and a timeout
            with engine.session(limits=FAST_LIMITS.replace(cell_timeout=0.5, interrupt_grace=0.2)) as s:
                pids.append(s.kernel_pid)
                assert s.run("import os\nos._exit(3)").status is CellStatus.CRASHED
                assert s.run("x = 1").ok  # a fresh kernel
                pids.append(s.kernel_pid)
                assert s.run("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(9)").state_lost
        after = settle(engine, baseline, TOLERANCE)
        growth = {k: after[k] - baseline[k] for k in baseline}
        assert all(growth[k] <= TOLERANCE.get(k, 0) for k in growth), growth
        assert not [pid for pid in pids if pid and running(pid)]
    finally:
        engine.close()


# --- many at once -------------------------------------------------------------------------------------

def test_thirty_two_concurrent_sessions_then_full_cleanup():
    me = psutil.Process()
    before = {"fds": me.num_fds(), "threads": me.num_threads(), "kernels": len(kernel_processes())}
    engine = quiet_engine(spare_kernels=4, max_kernels=40)
    root = engine._async._root
    cgroup_parents = engine._async._cgroups.parents if engine._async._cgroups else ()
    pids: list[int] = []
    lock = threading.Lock()

    def episode(i: int) -> list[str]:
        with engine.session(values={"i": i}) as s:
            with lock:
                pids.append(s.kernel_pid)
            outputs = [s.run("import time\ntime.sleep(0.2)\ny = i ** 2").stdout,
                       s.run("print(y)").stdout,
                       s.run("print(np.arange(i + 1).sum())").stdout]
            return outputs

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
            futures = [pool.submit(episode, i) for i in range(32)]
            results = [f.result(timeout=180) for f in futures]
        assert results == [["", f"{i * i}\n", f"{i * (i + 1) // 2}\n"] for i in range(32)]
        assert len(set(pids)) == 32, "every episode had a kernel of its own"
        status = engine.status()
        assert status.kernels_failed == 0 and status.live_kernels <= 40
    finally:
        engine.close()
    assert wait_until(lambda: not [pid for pid in pids if running(pid)], timeout=10)
    assert not root.exists()
    assert not [p for p in cgroup_parents if p.exists()], "the engine's cgroup directories were removed"
    assert wait_until(lambda: len(kernel_processes()) <= before["kernels"], timeout=10)
    assert wait_until(lambda: me.num_threads() <= before["threads"] + 2, timeout=10), me.num_threads()
    assert wait_until(lambda: me.num_fds() <= before["fds"] + 4, timeout=10), (me.num_fds(), before["fds"])
    assert engine.status().live_kernels == 0


# --- the global cap -----------------------------------------------------------------------------------

def test_global_cap_makes_a_third_session_wait_until_one_closes():
    engine = quiet_engine(spare_kernels=2, max_kernels=2)
    try:
        engine.warm_up()
        first, second = engine.session(), engine.session()
        opened = threading.Event()
        third: list = []

        def open_third():
            third.append(engine.session())
            opened.set()

        waiter = threading.Thread(target=open_third, daemon=True)
        waiter.start()
        assert not opened.wait(timeout=2.0), "a third kernel was started beyond max_kernels=2"
        assert engine.status().live_kernels == 2
        assert first.run("print('still served')").stdout == "still served\n"
        first.close()
        assert opened.wait(timeout=20), "the waiting session did not get the freed place"
        waiter.join(timeout=5)
        assert engine.status().live_kernels <= 2
        result = third[0].run("print('third works')")
        assert result.ok and result.stdout == "third works\n"
        assert second.run("print('second works')").stdout == "second works\n"
        third[0].close()
        second.close()
    finally:
        engine.close()


# --- closing --------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_close_kills_kernels_in_use_and_is_idempotent():
    engine = quiet_engine(spare_kernels=1)
    root = engine._async._root
    session = engine.session()
    session.run("import time")
    tree = kernel_tree(session.kernel_pid)
    assert all(running(pid) for pid in tree) and len(tree) >= 1
    started = time.monotonic()
    engine.close()
    assert time.monotonic() - started < 10
    assert wait_until(lambda: not [pid for pid in tree if running(pid)], timeout=5)
    assert not root.exists()
    engine.close()  # again: nothing happens
    assert engine.status().live_kernels == 0
    with pytest.raises(RuntimeError):
        session.run("print('after close')")


def test_sync_caller_timeout_cancels_the_cell_and_the_session_goes_on():
    engine = quiet_engine(spare_kernels=1)
    try:
        with engine.session() as s:
            s.run("x = 1")
            old = kernel_tree(s.kernel_pid)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                s.run("import time\ntime.sleep(30)", timeout=0.5)
            assert time.monotonic() - started < 3
            assert wait_until(lambda: not [pid for pid in old if running(pid)], timeout=5), \
                "the cancelled cell's kernel (state unknown) was killed"
            after = s.run("print('alive')")
            assert after.ok and after.stdout == "alive\n"
            assert any("fresh kernel" in note for note in after.notes)
    finally:
        engine.close()


def run_script(body: str, timeout: float = 60) -> subprocess.Popen:
    script = textwrap.dedent("""
        import gc, json, sys, time, warnings
        import psutil
        from pyvision_env.execution import Engine, ExecutionLimits, WeakIsolationWarning
        warnings.simplefilter("ignore", WeakIsolationWarning)

        def report(engine):
            pids = [p.pid for p in psutil.Process().children(recursive=True)]  # kernels, their factory and children
            cgroups = [str(p) for p in engine._async._cgroups.parents] if engine._async._cgroups else []
            print(json.dumps({"pids": pids, "root": str(engine._async._root), "cgroups": cgroups}), flush=True)
        """) + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def read_report(proc: subprocess.Popen, timeout: float = 60) -> dict:
    line = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not line or not line[0].strip():
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the script reported nothing: {err[-2000:]}")
    return json.loads(line[0])


def test_engine_left_open_at_exit_is_cleaned_up_by_atexit():
    proc = run_script("""
        engine = Engine(spare_kernels=1)
        session = engine.session()
        session.run("x = 1")
        report(engine)
        # exits without closing anything
    """)
    info = read_report(proc)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr.read()[-2000:]
    assert info["pids"] and wait_until(lambda: not [pid for pid in info["pids"] if running(pid)], timeout=5), \
        "kernels outlived the process that left its engine open"
    assert not Path(info["root"]).exists()
    assert not [p for p in info["cgroups"] if Path(p).exists()]


def test_dropped_engine_is_cleaned_up_by_its_finalizer():
    proc = run_script("""
        engine = Engine(spare_kernels=1)
        session = engine.session()
        session.run("x = 1")
        engine.warm_up()  # no kernel start in flight (a running start task keeps the engine referenced)
        report(engine)
        del session, engine
        gc.collect()
        print("dropped", flush=True)
        time.sleep(30)  # still running while the test checks
    """)
    try:
        info = read_report(proc)
        assert proc.stdout.readline().strip() == "dropped"
        assert wait_until(lambda: not [pid for pid in info["pids"] if running(pid)], timeout=5), \
            "a dropped engine's kernels were not killed by its finalizer"
        assert proc.poll() is None, "the checks ran while the owner process was still alive"
        assert not Path(info["root"]).exists()
    finally:
        proc.kill()
        proc.wait(timeout=10)


@requires_sandbox
def test_owner_killed_with_sigkill_leaves_no_kernel_behind():
    proc = run_script("""
        engine = Engine(spare_kernels=2)
        sessions = [engine.session(), engine.session()]
        for s in sessions:
            s.run("import subprocess, sys\\n"
                  "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True)")
        engine.warm_up()
        report(engine)
        time.sleep(60)
    """)
    info = {}
    try:
        info = read_report(proc)
        pids = info["pids"]
        # per kernel: init and kernel (forked) or bubblewrap (2) and the kernel; the setsid children
        assert len(pids) >= 4 * 2 + 2, pids
        assert all(running(pid) for pid in pids)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert wait_until(lambda: not [pid for pid in pids if running(pid)], timeout=5), \
            f"survived their owner's SIGKILL: {[pid for pid in pids if running(pid)]}"
        # A SIGKILLed engine cannot remove its directory and cgroups: the next engine sweeps them.
        assert Path(info["root"]).exists()
        Engine(spare_kernels=0).close()
        assert not Path(info["root"]).exists()
        assert not any(Path(parent).exists() for parent in info["cgroups"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
