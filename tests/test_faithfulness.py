"""Faithfulness in ``pyvision eval``: counterfactual episodes on real kernels with real policies — the scripted
zoom policy reads the number from its crop, so blacking the crop out, swapping its tool outputs or refusing its
tools takes its accuracy down, while a policy that ignores its tools loses nothing; the crop-contains-region
share; resuming; the summary's tables, CSV and plot; the CLI."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from agents.base import Policy
from agents.baselines import DirectAnswerPolicy
from agents.scripted import scripted_policy
from benchmarks.evaluation.faithfulness import (
    COUNTERFACTUALS,
    CropRecord,
    crops_contain_regions,
    parse_modes,
)
from benchmarks.evaluation.harness import Evaluation, read_results, summarize
from pyvision_env.cli import main
from pyvision_env.env import PyVisionEnv
from pyvision_env.pools import LocalEnvPool
from pyvision_env.registry import load_suite
from pyvision_env.tasks import Region, Task

from .test_harness import assert_plot


def scripted(suite, protocol):
    return scripted_policy(suite, protocol)


@pytest.fixture
def pool(engine):
    """Environments on the session's engine (a fresh engine per evaluation costs seconds)."""
    return LocalEnvPool(engine=engine)


class GlanceThenAnswerDirectly(Policy):
    """Calls one tool (prints the image size), then ignores what it printed and answers from the first view as
    :class:`DirectAnswerPolicy` does."""

    name = "glance-then-direct"

    def __init__(self, protocol):
        self.protocol, self.direct, self.first = protocol, DirectAnswerPolicy(protocol), []

    def act(self, observation, info):
        if info["turn"] == 0:
            self.first = observation
            return self.protocol.render_action(code="print(image_clue_0.size)", image_index=0, call_id="call_1")
        return self.direct.act(self.first, info)


def lines_by_mode(run):
    found = {}
    for line in read_results(run, COUNTERFACTUALS):
        found.setdefault(line["mode"], []).append(line)
    return found


def test_removing_the_evidence_of_the_scripted_zoom_policy_takes_its_accuracy_down(tmp_path, pool):
    run = tmp_path / "run"
    evaluation = Evaluation(["zoom"], scripted, run, limit=3, concurrency=2, progress=False, record=False, pool=pool,
                            by=["decoys"], faithfulness="blackout,swap,no-tools")
    summary = evaluation.run()
    (row,) = summary["suites"]
    assert row["accuracy"] == 1.0 and row["tool_calls"] == 2.0 and row["visual_tokens"] > 0
    # blacked out: no red tag left to find; swapped: it reads the other task's tag; no tools: its fallback "0"
    # (zoom's answers are 4-6 digit numbers: the guess rate is 0)
    assert (row["accuracy_blackout"], row["drop_blackout"], row["rerun_blackout"]) == (0.0, 1.0, 3)
    assert (row["accuracy_swap"], row["drop_swap"], row["swap_follows"]) == (0.0, 1.0, 1.0)
    assert (row["accuracy_no_tools"], row["drop_no_tools"], row["rerun_no_tools"]) == (0.0, 1.0, 3)
    assert (row["crop_contains_region"], row["region_episodes"]) == (1.0, 3)

    tasks = load_suite("zoom")
    results = {record["task_id"]: record for record in read_results(run)}
    lines = lines_by_mode(run)
    for line in lines["blackout"]:  # the crop it blacked out is the needle's box, read from the kernel's record
        (region,) = tasks[tasks.index_of(line["task_id"])].regions
        assert line["blacked"] == [[0, *region.box]] and results[line["task_id"]]["crops"] == line["blacked"]
        assert line["answer"] == "\\boxed{0}" and line["tool_errors"] == 1
    for line in lines["swap"]:
        donor = tasks[tasks.index_of(line["donor"])]
        assert line["answer"] == f"\\boxed{{{donor.answer}}}" and line["donor"] != line["task_id"]
    assert all(line["refused"] == 1 and line["tool_calls"] == 0 and line["format_errors"] == 0
               and line["end_reason"] == "answered" for line in lines["no-tools"])

    groups = summary["breakdowns"]["zoom"]["decoys"]
    assert sum(group["episodes"] for group in groups) == 3
    assert all(group["accuracy"] == 1.0 and group["accuracy_swap"] == 0.0 for group in groups)
    markdown = (run / "summary.md").read_text()
    assert "## Faithfulness: accuracy with the evidence removed" in markdown
    assert "| zoom | 3 | 100.0% | 2.00 |" in markdown and "| 100.0% | 3 |" in markdown
    (table,) = csv.DictReader((run / "summary.csv").open())
    assert float(table["drop_blackout"]) == 1.0 and float(table["crop_contains_region"]) == 1.0
    assert json.loads((run / "summary.json").read_text())["suites"][0]["swap_follows"] == 1.0
    assert_plot(run / "summary.png", panels=2 + len(summary["breakdowns"]["zoom"]))

    before = (run / COUNTERFACTUALS).read_text()
    assert Evaluation(["zoom"], scripted, run, limit=3, progress=False, record=False, pool=pool, by=["decoys"],
                      faithfulness="blackout,swap,no-tools").run() == summary
    assert (run / COUNTERFACTUALS).read_text() == before  # nothing played twice


def test_a_policy_that_ignores_its_tools_loses_nothing(tmp_path, pool):
    modes = "blackout,swap,no-tools,replay"
    glance = Evaluation(["tally"], lambda suite, protocol: GlanceThenAnswerDirectly(protocol), tmp_path / "glance",
                        limit=3, concurrency=2, progress=False, record=False, pool=pool, faithfulness=modes).run()
    (row,) = glance["suites"]
    assert row["accuracy"] == 1.0 and row["tool_calls"] == 1.0
    assert (row["rerun_swap"], row["rerun_no_tools"], row["rerun_replay"]) == (3, 3, 3)
    assert row["drop_swap"] == row["drop_no_tools"] == row["drop_replay"] == 0.0 and row["swap_follows"] == 0.0
    assert (row["rerun_blackout"], row["drop_blackout"]) == (0, 0.0)  # it cropped nothing: nothing to black out
    assert {line["reason"] for line in lines_by_mode(tmp_path / "glance")["blackout"]} == {"no local crop recorded"}
    assert row["crop_contains_region"] == 0.0

    direct = Evaluation(["tally"], lambda suite, protocol: DirectAnswerPolicy(protocol), tmp_path / "direct",
                        limit=3, progress=False, record=False, pool=pool, faithfulness=modes).run()
    (row,) = direct["suites"]
    assert row["accuracy"] == 1.0 and row["tool_calls"] == 0.0
    assert all(row[f"rerun_{key}"] == 0 and row[f"drop_{key}"] == 0.0
               for key in ("blackout", "swap", "no_tools", "replay"))
    assert {line["reason"] for line in read_results(tmp_path / "direct", COUNTERFACTUALS)} == {"no tool calls"}


def test_counterfactuals_resume_and_say_what_they_could_not_do(tmp_path, pool):
    run = tmp_path / "run"
    Evaluation(["zoom"], scripted, run, limit=2, progress=False, record=False, pool=pool).run()  # no operation record
    assert not (run / COUNTERFACTUALS).exists() and "crops" not in read_results(run)[0]
    summary = Evaluation(["zoom"], scripted, run, limit=2, progress=False, record=False, pool=pool,
                         faithfulness=["blackout", "swap"]).run()
    (row,) = summary["suites"]
    assert (row["rerun_blackout"], row["accuracy_blackout"], row["rerun_swap"], row["accuracy_swap"]) == (0, 1.0, 2, 0.0)
    assert "crop_contains_region" not in row
    lines = (run / COUNTERFACTUALS).read_text().splitlines()
    assert {json.loads(line)["reason"] for line in lines if '"blackout"' in line} == {
        "no operation record (scored without --faithfulness)"}
    torn = next(number for number, line in enumerate(lines) if '"swap"' in line)
    (run / COUNTERFACTUALS).write_text("\n".join([*lines[:torn], *lines[torn + 1:], lines[torn][:40]]))
    again = Evaluation(["zoom"], scripted, run, limit=2, progress=False, record=False, pool=pool,
                       faithfulness=["blackout", "swap"]).run()
    assert again["suites"][0]["accuracy_swap"] == 0.0
    after = (run / COUNTERFACTUALS).read_text().splitlines()
    assert len(after) == 4 and after[:3] == [*lines[:torn], *lines[torn + 1:]]  # only the torn one played again


def test_summary_by_hand_and_clear_errors(tmp_path, engine):
    def result(task, correct, contained):
        return {"suite": "s", "task_id": task, "sample": 0, "correct": correct, "score": float(correct),
                "turns": 2, "tool_calls": 1, "tool_errors": 0, "visual_tokens": 10, "started": 0.0, "ended": 1.0,
                "metadata": {"kind": task[0]}, "region_contained": contained}

    records = [result("a1", True, True), result("a2", True, False), result("b1", False, None)]
    lines = [{"suite": "s", "task_id": "a1", "sample": 0, "mode": "no-tools", "correct": False, "rerun": True},
             {"suite": "s", "task_id": "b1", "sample": 0, "mode": "no-tools", "correct": False, "rerun": False}]
    summary = summarize(records, counterfactuals=lines)
    row = summary["suites"][0]
    assert row["accuracy_no_tools"] == 0.0 and row["drop_no_tools"] == 0.5 and row["rerun_no_tools"] == 1
    assert (row["crop_contains_region"], row["region_episodes"]) == (0.5, 2)
    a, b = summary["breakdowns"]["s"]["kind"]
    assert (a["kind"], a["drop_no_tools"], b["drop_no_tools"]) == ("a", 1.0, 0.0)
    assert "accuracy_no_tools" not in summarize(records)["suites"][0]

    task = Task(id="t", question="?", answer="1", images=(Image.new("RGB", (100, 100)),),
                regions=(Region((10, 10, 20, 20)),))
    assert crops_contain_regions([[0, 9, 9, 30, 30]], task) is True
    assert crops_contain_regions([[0, 0, 0, 100, 100]], task) is False  # the whole image is not a local crop
    assert crops_contain_regions([[0, 15, 10, 40, 40]], task) is False  # half of the region
    assert crops_contain_regions([], Task(id="u", question="?", answer="1")) is None

    with pytest.raises(ValueError, match=r"unknown faithfulness mode\(s\) blakout; choose from blackout"):
        parse_modes("blakout,swap")
    with pytest.raises(ValueError, match="unknown faithfulness mode"):
        Evaluation(["zoom"], scripted, tmp_path, faithfulness="swap,all")
    env = CropRecord(PyVisionEnv("tally", engine=engine))
    try:
        observation, info = env.reset(options={"task_index": 0})
        with pytest.raises(ValueError, match="trace_operations=True"):
            env.step(scripted_policy("tally", env.unwrapped.protocol).act(observation, info))
    finally:
        env.close()


def test_cli_eval_with_faithfulness(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["eval", "--suite", "zoom", "--limit", "2", "--faithfulness", "blackout,swap,no-tools",
                 "--no-record", "--json", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    row = json.loads(captured.out.strip().splitlines()[-1])
    assert row["accuracy"] == 1.0 and row["episodes"] == 2
    assert row["drop_blackout"] == row["drop_swap"] == row["drop_no_tools"] == 1.0
    assert row["crop_contains_region"] == 1.0 and "faithfulness.jsonl" in captured.err
    assert len(read_results(out, COUNTERFACTUALS)) == 6
    with pytest.raises(SystemExit, match="pyvision eval: unknown faithfulness mode"):
        main(["eval", "--suite", "zoom", "--limit", "1", "--faithfulness", "erase", "--no-record",
              "--out", str(tmp_path / "bad")])
