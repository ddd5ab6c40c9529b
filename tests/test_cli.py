"""The ``pyvision`` command, run as a real subprocess where it matters: its composition from the layers' command
groups (entry points), and the environment layer's and the evaluation layer's commands."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata

import pytest
from PIL import Image

from pyvision_env.cli import ENTRY_POINT_GROUP, build_parser, command_groups, main
from pyvision_env.commands import split_cells


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "pyvision_env.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_help_explains_itself(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "agentic vision" in out and "sandbox-demo" in out and "exec" in out and "doctor" in out
    done = run_cli("exec", "--help")
    assert done.returncode == 0 and "# %%" in done.stdout


def test_each_layer_adds_its_own_commands_in_layer_order():
    groups = {entry.name: entry.value for entry in command_groups()}
    assert list(groups)[:4] == ["env", "agents", "trainers", "benchmarks"]
    assert groups["env"].startswith("pyvision_env.") and groups["benchmarks"].startswith("benchmarks.")
    commands = build_parser()._subparsers._group_actions[0].choices
    owners = {"exec": "pyvision_env.commands", "view": "pyvision_env.viewer", "serve": "agents.commands",
              "make-tiny-model": "agents.commands", "train-demo": "trainers.commands", "sft": "trainers.commands",
              "run": "benchmarks.commands", "eval": "benchmarks.commands", "compare": "benchmarks.commands"}
    for command, module in owners.items():
        assert commands[command].get_default("handler").__module__ == module, command


def add_hello(commands):
    """A user's command group (what another package's ``pyvision.commands`` entry point would name)."""
    hello = commands.add_parser("hello", help="say hello")
    hello.add_argument("--name", default="world")
    hello.set_defaults(handler=lambda args: print(f"hello {args.name}") or 0)


def test_a_package_adds_commands_and_a_broken_group_is_reported(capsys):
    user = metadata.EntryPoint("user", f"{__name__}:add_hello", ENTRY_POINT_GROUP)
    broken = metadata.EntryPoint("broken", "no_such_module_here:add_commands", ENTRY_POINT_GROUP)
    parser = build_parser([*command_groups(), broken, user])
    assert "broken" in capsys.readouterr().err  # reported, and the other groups still work
    args = parser.parse_args(["hello", "--name", "you"])
    assert args.handler(args) == 0 and capsys.readouterr().out == "hello you\n"
    assert parser.parse_args(["doctor"]).handler.__name__ == "run_doctor"
    with pytest.raises(SystemExit):
        build_parser([]).parse_args(["hello"])  # without the group there is no such command


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


def test_sandbox_demo_runs_end_to_end_and_its_old_name_still_works(tmp_path):
    done = run_cli("sandbox-demo", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "blocked: ConnectionRefusedError" in done.stdout or "not sandboxed" in done.stdout.lower()
    assert (tmp_path / "cell3_image0.png").exists()
    assert "crop still here: (80, 60)" in done.stdout
    assert "fresh kernel" in done.stdout
    old = run_cli("demo", "--out", str(tmp_path / "old"))
    assert old.returncode == 0 and (tmp_path / "old" / "cell3_image0.png").exists()
    assert "DeprecationWarning: `pyvision demo` is now `pyvision sandbox-demo`" in old.stderr


def test_tasks_lists_the_builtin_suites():
    done = run_cli("tasks")
    assert done.returncode == 0
    for env_id in ("PyVision/Zoom-v0", "PyVision/Orientation-v0", "PyVision/Count-v0", "PyVision/Contrast-v0",
                   "PyVision/VideoEvent-v0", "PyVision/VideoNeedle-v0"):
        assert env_id in done.stdout


def test_run_prints_the_summary_and_records_the_episodes(tmp_path):
    out = tmp_path / "run"
    done = run_cli("run", "--suite", "count", "--policy", "scripted", "--episodes", "2", "--first-task", "79",
                   "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| count | scripted-count | pyvision | 2 | 1 | 100.0% |" in done.stdout  # tasks 79 and 80, k = 1
    (row,) = json.loads((out / "summary.json").read_text())["suites"]  # the run folder of `pyvision eval`
    assert row["episodes"] == 2 and row["accuracy"] == 1.0 and row["tool_calls"] >= 1
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["task_id"] for r in results] == ["count-0079", "count-0080"] and results[0]["protocol"] == "pyvision"
    assert len((out / "episodes" / "episodes.jsonl").read_text().splitlines()) == 2
    assert (out / "episodes" / "episodes.html").stat().st_size > 0
    bad = run_cli("run", "--suite", "nope", "--episodes", "1", "--no-record")
    assert bad.returncode != 0 and "unknown suite 'nope'" in bad.stderr


def test_run_video_suite_on_demand_and_uniform(tmp_path):
    for policy, row in (("scripted", "| video-measure | scripted-video-measure | pyvision | 1 | 1 | 100.0% |"),
                        ("uniform", "| video-measure | uniform-video | pyvision | 1 | 1 |")):
        out = tmp_path / policy
        done = run_cli("run", "--suite", "video-measure", "--policy", policy, "--episodes", "1", "--out", str(out))
        assert done.returncode == 0, done.stderr[-2000:]
        assert row in done.stdout
        assert json.loads((out / "summary.json").read_text())["suites"][0]["episodes"] == 1
