"""The ``pyvision`` command, run as a real subprocess where it matters."""

from __future__ import annotations

import json
import subprocess
import sys

from PIL import Image

from pyvision_env.cli import main, split_cells


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "pyvision_env.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_help_explains_itself(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "agentic vision" in out and "demo" in out and "exec" in out and "doctor" in out
    done = run_cli("exec", "--help")
    assert done.returncode == 0 and "# %%" in done.stdout


def test_split_cells():
    source = "a = 1\n# %% second\nb = a + 1\n\n# %%\n\n# %%\nprint(b)\n"
    assert split_cells(source) == ["a = 1", "b = a + 1", "print(b)"]


def test_exec_runs_cells_in_one_sandboxed_kernel(tmp_path):
    script = tmp_path / "cells.py"
    script.write_text("x = image_clue_0.width\n# %%\nprint(x * 2)\n# %%\nimage_clue_0.crop((0, 0, 4, 4))\n"
                      "# %%\n1/0\n")
    image = tmp_path / "in.png"
    Image.new("RGB", (21, 10)).save(image)
    done = run_cli("exec", str(script), "--image", f"image_clue_0={image}", "--json",
                   "--save-images", str(tmp_path / "shown"))
    cells = [json.loads(line) for line in done.stdout.splitlines()]
    assert [c["status"] for c in cells] == ["ok", "ok", "ok", "error"]
    assert cells[1]["stdout"] == "42\n"
    assert Image.open(cells[2]["images"][0]).size == (4, 4)
    assert cells[3]["error"] == "ZeroDivisionError"
    assert done.returncode == 1  # a cell failed


def test_exec_reports_bad_arguments_clearly(tmp_path):
    done = run_cli("exec", str(tmp_path / "missing.py"))
    assert done.returncode != 0 and "cannot read" in done.stderr
    done = run_cli("exec", "-", "--image", "noequals", stdin="1\n")
    assert done.returncode != 0 and "NAME=PATH" in done.stderr


def test_demo_runs_end_to_end(tmp_path):
    done = run_cli("demo", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "blocked: ConnectionRefusedError" in done.stdout or "not sandboxed" in done.stdout.lower()
    assert (tmp_path / "cell3_image0.png").exists()
    assert "crop still here: (80, 60)" in done.stdout
    assert "fresh kernel" in done.stdout


def test_tasks_lists_the_builtin_suites():
    done = run_cli("tasks")
    assert done.returncode == 0
    for env_id in ("PyVision/Zoom-v0", "PyVision/Orientation-v0", "PyVision/Count-v0", "PyVision/Contrast-v0",
                   "PyVision/VideoEvent-v0", "PyVision/VideoNeedle-v0"):
        assert env_id in done.stdout


def test_run_prints_the_summary_and_records_the_episodes(tmp_path):
    out = tmp_path / "run"
    done = run_cli("run", "--suite", "count", "--policy", "scripted", "--episodes", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| count | scripted-count | pyvision | 2 | 100.0% |" in done.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["episodes"] == 2 and summary["accuracy"] == 1.0 and summary["tool_calls"] >= 1
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 2
    assert (out / "episodes.html").stat().st_size > 0
    bad = run_cli("run", "--suite", "nope", "--episodes", "1", "--no-record")
    assert bad.returncode != 0 and "unknown suite 'nope'" in bad.stderr


def test_run_video_suite_on_demand_and_uniform(tmp_path):
    for policy, row in (("scripted", "| video-measure | scripted-video-measure | pyvision | 1 | 100.0% |"),
                        ("uniform", "| video-measure | uniform-video | pyvision | 1 |")):
        out = tmp_path / policy
        done = run_cli("run", "--suite", "video-measure", "--policy", policy, "--episodes", "1", "--out", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
        assert row in done.stdout
        assert json.loads((out / "summary.json").read_text())["episodes"] == 1
