"""The evaluation harness: several suites, k samples, concurrent workers on real kernels, resume after a kill,
breakdowns, Markdown/CSV/JSON, comparison with published numbers, robustness variants from the CLI."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.scripted import scripted_policy
from benchmarks.evaluation.harness import (
    RESULTS,
    Evaluation,
    ResultsFileError,
    compare,
    pass_at_k,
    read_results,
    summarize,
)
from pyvision_env.cli import main

ROOT = Path(__file__).resolve().parents[1]


def assert_plot(path, panels):
    """A real PNG, as wide as its panels (3 to a row, 5.5 inches each at 110 dpi), with drawn content."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        if panels > 1:
            assert image.width == round(5.5 * min(3, panels) * 110)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50


def scripted(suite, protocol):
    return scripted_policy(suite, protocol)


def test_two_suites_k_samples_concurrent_workers(tmp_path):
    summary = Evaluation(["count", "zoom"], scripted, tmp_path / "run", samples=2, limit=3, concurrency=2,
                         progress=False, env_options={"max_turns": 4}).run()
    rows = {row["suite"]: row for row in summary["suites"]}
    assert set(rows) == {"count", "zoom"}
    for row in rows.values():
        assert (row["tasks"], row["samples"], row["episodes"], row["failed"]) == (3, 2, 6, 0)
        assert row["accuracy"] == 1.0 and row["pass_at_k"] == 1.0 and row["tool_calls"] >= 1
    results = read_results(tmp_path / "run")
    assert sorted((r["suite"], r["task_id"], r["sample"]) for r in results) == sorted(
        {(r["suite"], r["task_id"], r["sample"]) for r in results})  # each episode once
    episodes = (tmp_path / "run" / "episodes" / "episodes.jsonl").read_text().splitlines()
    assert len(episodes) == 12 and (tmp_path / "run" / "episodes" / "episodes.html").is_file()
    markdown = (tmp_path / "run" / "summary.md").read_text()
    assert "| count | scripted-count | pyvision | 3 | 2 | 100.0% | 100.0% |" in markdown
    table = list(csv.DictReader((tmp_path / "run" / "summary.csv").open()))
    assert [row["suite"] for row in table] == ["count", "zoom"] and float(table[0]["accuracy"]) == 1.0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["suites"] == summary["suites"]
    assert "![accuracy by suite and category](summary.png)" in markdown
    assert_plot(tmp_path / "run" / "summary.png", panels=1 + sum(map(len, summary["breakdowns"].values())))


def test_a_number_of_episodes_plays_the_tasks_in_order_and_cycles(tmp_path):
    """What ``pyvision run`` asks: episodes from a first task on, the suite's second round as the next sample."""
    tasks = 100  # the registered count suite
    evaluation = Evaluation(["count"], scripted, tmp_path, episodes=3, first_task=tasks - 2, progress=False)
    assert [(item.task_index, item.sample) for item in evaluation.work()] == [(98, 0), (99, 0), (0, 1)]
    summary = evaluation.run()
    (row,) = summary["suites"]
    assert (row["episodes"], row["tasks"], row["accuracy"]) == (3, 3, 1.0)
    record = read_results(tmp_path)[0]
    assert record["protocol"] == "pyvision" and record["error"] is None and record["attempts"] == 1
    assert record["seconds"] > 0 and record["format_errors"] == 0 and record["images_shown"] >= 1
    for bad in ({"episodes": 0}, {"episodes": 2, "samples": 2}, {"episodes": 2, "limit": 1}, {"first_task": -1}):
        with pytest.raises(ValueError):
            Evaluation(["count"], scripted, tmp_path / "bad", **bad)


def test_an_interrupted_evaluation_continues_where_it_stopped(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "pyvision_env.cli", "eval", "--suite", "count", "--limit", "8",
               "--concurrency", "1", "--max-turns", "4", "--out", str(run)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    deadline = time.monotonic() + 120
    while len(read_results(run)) < 2 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    before = (run / RESULTS).read_text().splitlines()
    assert 2 <= len(before) < 8, first.stderr.read().decode()[-2000:]
    with (run / RESULTS).open("a") as handle:
        handle.write('{"suite": "count", "task_id": "torn')  # a line cut by the kill
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{len(before)} episodes already scored, {8 - len(before)} to go" in done.stdout
    after = [line for line in (run / RESULTS).read_text().splitlines() if not line.endswith('"torn')]
    assert after[:len(before)] == before  # nothing scored is recomputed
    assert sorted(json.loads(line)["task_id"] for line in after) == sorted(
        json.loads(line)["task_id"] for line in after[:8]) and len(after) == 8
    assert "| count | scripted-count | pyvision | 8 | 1 | 100.0% |" in done.stdout


def test_a_damaged_results_file_is_a_clear_error(tmp_path):
    (tmp_path / RESULTS).write_text('{"suite": "count"}\nnot json\n{"suite": "count"}\n')
    with pytest.raises(ResultsFileError, match="line 2 is not JSON"):
        read_results(tmp_path)


def test_pass_at_k_and_breakdowns_by_hand():
    assert pass_at_k(4, 1, 1) == 0.25 and pass_at_k(4, 1, 2) == 0.5 and pass_at_k(4, 0, 4) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0

    def result(task, sample, correct, category):
        return {"suite": "s", "task_id": task, "sample": sample, "correct": correct, "score": float(correct),
                "turns": 2, "tool_calls": 1, "tool_errors": 0, "visual_tokens": 100, "started": 0.0,
                "ended": 1.0, "metadata": {"category": category, "image_id": task}}

    records = [result("a", 0, True, "x"), result("a", 1, False, "x"), result("b", 0, False, "y"),
               result("b", 1, False, "y")]
    summary = summarize(records)
    row = summary["suites"][0]
    assert (row["tasks"], row["samples"], row["accuracy"], row["pass_at_k"]) == (2, 2, 0.25, 0.5)
    assert summary["breakdowns"]["s"] == {"category": [
        {"category": "x", "episodes": 2, "accuracy": 0.5, "score": 0.5},
        {"category": "y", "episodes": 2, "accuracy": 0.0, "score": 0.0}]}  # ids are not categories


def test_compare_puts_runs_and_published_numbers_side_by_side(tmp_path):
    for name, accuracy in (("ours", 0.75), ("baseline", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"suites": [
            {"suite": "vstar", "accuracy": accuracy}, {"suite": "hr-bench-4k", "accuracy": accuracy / 2}]}))
    published = tmp_path / "published.csv"
    published.write_text("model,suite,accuracy\nPyVision-7B,vstar,88.7%\nPyVision-7B,hr-bench-4k,0.78\n")
    markdown, rows = compare([tmp_path / "ours", tmp_path / "baseline"], published)
    assert rows == [{"suite": "hr-bench-4k", "ours": 0.375, "baseline": 0.25, "PyVision-7B (published)": 0.78},
                    {"suite": "vstar", "ours": 0.75, "baseline": 0.5, "PyVision-7B (published)": 0.887}]
    assert "| vstar | 75.0% | 50.0% | 88.7% |" in markdown
    assert main(["compare", str(tmp_path / "ours"), "--published", str(published), "--csv",
                 str(tmp_path / "table.csv"), "--plot", str(tmp_path / "table.png")]) == 0
    assert list(csv.DictReader((tmp_path / "table.csv").open()))[1]["PyVision-7B (published)"] == "0.887"
    assert_plot(tmp_path / "table.png", panels=1)
    published.write_text("model,suite,acc\nX,vstar,1\n")
    with pytest.raises(ValueError, match="needs the columns model, suite, accuracy"):
        compare([tmp_path / "ours"], published)
    with pytest.raises(FileNotFoundError, match="evaluation run folder"):
        compare([tmp_path / "nothing"])


def test_cli_evaluates_a_robustness_variant_and_refuses_bad_options(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PYVISION_CACHE", str(tmp_path / "cache"))
    assert main(["eval", "--suite", "count", "--robust", "rot90", "--limit", "2", "--max-turns", "4",
                 "--out", str(tmp_path / "run"), "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["suite"] == "count-rot90" and row["episodes"] == 2 and row["failed"] == 0
    with pytest.raises(SystemExit, match="unknown transform"):
        main(["eval", "--suite", "count", "--robust", "mirror", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="unknown suite 'nope'"):
        main(["eval", "--suite", "nope", "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="samples, concurrency, limit and episodes must be at least 1"):
        main(["eval", "--suite", "count", "--samples", "0", "--out", str(tmp_path / "bad")])
