"""The collapse experiment: its task mixture on real kernels, its statistics on hand-built numbers, and the whole
path (`pyvision experiment collapse --quick`) end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.episodes import play_episode
from agents.scripted import scripted_policy
from benchmarks.experiments.collapse import (
    ARMS,
    SUITE,
    HintReadingTeacher,
    Settings,
    _spread,
    collapsed,
    run_collapse,
    verdict,
    wilson,
)
from pyvision_env.env import PyVisionEnv
from pyvision_env.messages import Message

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    import os

    previous = os.environ.get("PYVISION_CACHE")
    os.environ["PYVISION_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    try:
        yield SUITE.load()
    finally:
        if previous is None:
            del os.environ["PYVISION_CACHE"]
        else:
            os.environ["PYVISION_CACHE"] = previous


def test_the_mixture_has_hinted_tasks_and_failing_tools_at_its_stated_shares(tasks):
    hinted = [t for t in tasks if t.metadata["kind"] == "hinted"]
    failing = [t for t in tasks if t.metadata["tool_fails"]]
    assert 0.42 < len(hinted) / len(tasks) < 0.58 and 0.26 < len(failing) / len(tasks) < 0.40
    assert all(t.question.endswith(f"There are {t.answer}.") for t in hinted)
    assert all("There are" not in t.question for t in tasks if t.metadata["kind"] == "count")


def test_the_cold_start_code_fails_exactly_on_rgba_images(tasks, engine):
    env = PyVisionEnv(tasks, on_tool_error="end", max_turns=3, engine=engine)
    try:
        policy = scripted_policy("tally", env.protocol)
        for task in [next(t for t in tasks if t.metadata["tool_fails"]),
                     next(t for t in tasks if not t.metadata["tool_fails"])]:
            result = play_episode(env, policy, options={"task_id": task.id})
            if task.metadata["tool_fails"]:
                assert result.end_reason == "tool_error" and not result.correct
            else:
                assert result.end_reason == "answered" and result.correct
    finally:
        env.close()


def test_the_teacher_answers_the_stated_count_when_it_does_not_use_the_tool():
    teacher = HintReadingTeacher(scripted_policy("tally"), ["1", "2"], guess_rate=1.0, seed=0)
    hinted = teacher.act([Message.text("user", "How many red squares are in the image? There are 7.")], {"turn": 0})
    guessed = teacher.act([Message.text("user", "How many red squares are in the image?")], {"turn": 0})
    assert "boxed{7}" in hinted and ("boxed{1}" in guessed or "boxed{2}" in guessed)


def test_statistics_on_hand_built_numbers():
    low, high = wilson(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0 and wilson(0, 0)[0] != wilson(0, 0)[0]  # nan
    spread = _spread([[1.0, 0.5, 0.0], [3.0, 0.5, None]])
    assert {key: spread[key] for key in ("mean", "min", "max")} == {"mean": [2.0, 0.5, 0.0], "min": [1.0, 0.5, 0.0],
                                                                    "max": [3.0, 0.5, 0.0]}
    assert spread["runs"][0] == [1.0, 0.5, 0.0] and spread["runs"][1][:2] == [3.0, 0.5]
    assert verdict("outcome", [1.0, 0.8, 0.3, 0.2, 0.1], 2, 3) == \
        "2/3 runs collapsed; tool calls per episode 1.00 -> 0.20: as the paper predicts (collapse)"
    assert verdict("outcome", [1.0, 1.0, 1.0], 1, 3).endswith("NOT as the paper predicts (collapse)")
    assert verdict("both", [1.0, 0.8, 0.3, 0.2, 0.1], 1, 3).endswith("NOT as the paper predicts (no collapse)")
    assert verdict("ofr", [0.5, 0.6, 0.5, 0.55], 0, 3).endswith(": as the paper predicts (no collapse)")
    assert verdict("ofr", [0.5], 0, 1) == "0/1 runs collapsed; too few updates to tell"
    ran = {"end_reason": "answered"}
    assert collapsed({"eval": [{**ran, "tool_calls": 0}, {**ran, "tool_calls": 0.1}]})
    assert not collapsed({"eval": [{**ran, "tool_calls": 1}, {**ran, "tool_calls": 0},
                                   {"end_reason": "error", "tool_calls": 0}]})  # errors are not the model's


def test_unknown_arms_and_changed_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown arms"):
        run_collapse(tmp_path, Settings(), arms=("outcome", "no-such-arm"))
    (tmp_path / "settings.json").write_text(json.dumps({"updates": 99}))
    with pytest.raises(ValueError, match="other settings"):
        run_collapse(tmp_path, Settings())


@pytest.mark.timeout(600)
def test_the_quick_experiment_runs_every_arm_and_writes_its_report(tmp_path):
    out = tmp_path / "collapse"
    done = subprocess.run([sys.executable, "-m", "pyvision_env.cli", "experiment", "collapse", "--quick",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=580,
                          env={**__import__("os").environ, "PYVISION_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["curves"]) == set(ARMS) and set(results["verdicts"]) == set(ARMS)
    for arm in ARMS:
        assert len(results["curves"][arm]["tool_calls"]["mean"]) == 1  # one update in quick mode
        run = json.loads((out / "runs" / f"{arm}-seed0" / "run.json").read_text())
        assert len(run["eval"]) == 6 and {e["kind"] for e in run["eval"]} <= {"count", "hinted"}
    assert [row["model"] for row in results["held_out"]] == list(ARMS)
    assert results["baseline"]["episodes"] == 6
    page = (out / "report.html").read_text()
    assert "Interaction collapse" in page and page.count("<img") == 4 and "too few updates to tell" in page
    assert f"report: {out / 'report.html'}" in done.stdout
