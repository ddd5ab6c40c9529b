"""``pyvision eval --ray local`` end to end in its own process: it scores through actors, and once it exits no
Ray process (GCS, raylet, workers) and no kernel it started is left running."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""


def test_eval_through_ray_scores_and_leaves_no_process_behind(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "pyvision_env.cli", "eval", "--suite", "count,zoom", "--limit", "2",
               "--concurrency", "2", "--max-turns", "4", "--ray", "local", "--ray-workers", "2",
               "--cpus-per-worker", "0.25", "--out", str(run)]
    driver = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    seen: dict[int, tuple[psutil.Process, str]] = {}
    deadline = time.monotonic() + 300
    while driver.poll() is None and time.monotonic() < deadline:
        try:
            for process in psutil.Process(driver.pid).children(recursive=True):
                if process.pid not in seen or not seen[process.pid][1]:  # (a command line can come late)
                    seen[process.pid] = (process, command_line(process))
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 0, stderr[-3000:]
    assert "| count | scripted-count | pyvision | 2 | 1 | 100.0% |" in stdout
    assert "| zoom | scripted-zoom | pyvision | 2 | 1 | 100.0% |" in stdout
    lines = [line for _, line in seen.values()]
    for kind in ("gcs_server", "raylet", "factory_process.py", "bwrap"):  # the kernels are forked by the factory
        assert any(kind in line for line in lines), f"no {kind} process was seen: {lines}"
    _, alive = psutil.wait_procs([process for process, _ in seen.values()], timeout=60)
    assert [command_line(process) for process in alive if process.status() != psutil.STATUS_ZOMBIE] == []
