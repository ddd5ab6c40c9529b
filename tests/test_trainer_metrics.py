"""Training metrics on disk (JSONL, CSV, TensorBoard), resume and truncate, the collapse alarm and the plots."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
from PIL import Image

from trainers.metrics import CollapseAlarm, MetricsLogger, MetricsWarning, plot_run


def _csv(path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_rows_go_to_jsonl_and_csv_with_the_union_of_columns(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, {"reward/mean": 0.5, "tool_calls": 2})
    logger.log(2, {"reward/mean": 0.25, "kl": 0.01, "tool_calls": None})
    logger.log(3, {"tool_calls": 1.5, "loss": math.nan})
    logger.log(2, {"accuracy": 0.4}, kind="eval")
    logger.close()
    lines = (tmp_path / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "reward/mean": 0.5, "tool_calls": 2},
        {"step": 2, "reward/mean": 0.25, "kl": 0.01, "tool_calls": None},
        {"step": 3, "tool_calls": 1.5, "loss": None}]  # NaN is stored as null: the file stays strict JSON
    with (tmp_path / "train.csv").open(newline="", encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == ["step", "reward/mean", "tool_calls", "kl", "loss"]
    assert _csv(tmp_path / "train.csv") == [
        {"step": "1", "reward/mean": "0.5", "tool_calls": "2", "kl": "", "loss": ""},
        {"step": "2", "reward/mean": "0.25", "tool_calls": "", "kl": "0.01", "loss": ""},
        {"step": "3", "reward/mean": "", "tool_calls": "1.5", "kl": "", "loss": ""}]
    assert _csv(tmp_path / "eval.csv") == [{"step": "2", "accuracy": "0.4"}]
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(ValueError, match="kind"):
        logger.log(4, {"loss": 1.0}, kind="test")
    with pytest.raises(TypeError, match="'note'"):
        logger.log(4, {"note": "text"})


def test_resume_reads_history_and_truncate_drops_later_rows(tmp_path):
    first = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 6):
        first.log(step, {"loss": float(step), **({"late": 1.0} if step == 5 else {})})
    first.log(2, {"accuracy": 0.3}, kind="eval")
    first.log(4, {"accuracy": 0.5}, kind="eval")
    first.close()  # the process ends; the next one resumes from a checkpoint at step 3

    resumed = MetricsLogger(tmp_path, tensorboard=False)
    assert [row["step"] for row in resumed.history("train")] == [1, 2, 3, 4, 5]
    assert resumed.history("eval") == [{"step": 2, "accuracy": 0.3}, {"step": 4, "accuracy": 0.5}]
    resumed.truncate(3)
    resumed.log(4, {"loss": 40.0})
    resumed.close()
    train = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert train == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}, {"step": 3, "loss": 3.0},
                     {"step": 4, "loss": 40.0}]
    assert [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()] == [
        {"step": 2, "accuracy": 0.3}]
    assert [row["loss"] for row in _csv(tmp_path / "train.csv")] == ["1.0", "2.0", "3.0", "40.0"]
    assert "late" not in _csv(tmp_path / "train.csv")[0]  # the column of the dropped row went with it
    assert _csv(tmp_path / "eval.csv") == [{"step": "2", "accuracy": "0.3"}]
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]
    assert MetricsLogger(tmp_path, tensorboard=False).history() == resumed.history()


def test_a_line_cut_by_a_killed_writer_is_skipped_with_a_warning(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, {"loss": 1.0})
    logger.log(2, {"loss": 2.0})
    with (tmp_path / "train.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "loss": 0.')  # killed mid-line
    with pytest.warns(MetricsWarning, match=r"train.jsonl: skipped 1 unreadable line"):
        resumed = MetricsLogger(tmp_path, tensorboard=False)
    assert resumed.history() == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 2.0}]
    resumed.log(3, {"loss": 3.0})  # starts on a new line: the cut line does not swallow it
    with pytest.warns(MetricsWarning, match="skipped 1"):
        again = MetricsLogger(tmp_path, tensorboard=False)
    assert [row["step"] for row in again.history()] == [1, 2, 3]


def test_tensorboard_scalars_are_readable_and_truncate_purges_later_steps(tmp_path):
    pytest.importorskip("torch.utils.tensorboard", reason="needs tensorboard and torch (the train extra)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = MetricsLogger(tmp_path)
    for step in range(1, 6):
        logger.log(step, {"reward/mean": step / 10, "kl": None if step == 2 else 0.5, "loss": math.inf})
    logger.log(5, {"accuracy": 0.75}, kind="eval")
    logger.truncate(3)  # resumed from a checkpoint at step 3: steps 4 and 5 are redone
    logger.log(4, {"reward/mean": 0.9})
    logger.close()

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert set(tags) == {"train/reward/mean", "train/kl", "eval/accuracy"}  # inf and None are not scalars
    rewards = [(event.step, round(event.value, 6)) for event in events.Scalars("train/reward/mean")]
    assert rewards == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.9)]
    assert [event.step for event in events.Scalars("train/kl")] == [1, 3]


def test_without_tensorboard_the_files_are_still_written_after_one_warning(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what an absent package raises
    with pytest.warns(MetricsWarning, match="TensorBoard logging is off") as caught:
        logger = MetricsLogger(tmp_path)
        logger.log(1, {"loss": 1.0})
        logger.log(2, {"loss": 0.5})
        logger.truncate(1)
        logger.close()
    assert len(caught) == 1
    assert logger.history() == [{"step": 1, "loss": 1.0}] and not (tmp_path / "tensorboard").exists()


def test_collapse_alarm_fires_once_on_a_falling_series():
    alarm = CollapseAlarm(window=3, ratio=0.5)
    falling = [2.0, 2.2, 1.8, 1.5, 1.0, 0.6, 0.3, 0.2, 0.1, 0.0, 0.0]
    messages = [alarm.update(step, {"tool_calls": value}) for step, value in enumerate(falling, 1)]
    fired = [(step, message) for step, message in enumerate(messages, 1) if message is not None]
    assert len(fired) == 1
    step, message = fired[0]
    # early level 2.0; at step 7 the last three are (1.0 + 0.6 + 0.3) / 3 = 0.633 < 1.0
    assert step == 7
    assert "tool_calls" in message and "2" in message and "0.633" in message and "step 7" in message


def test_collapse_alarm_fires_again_only_after_a_recovery():
    alarm = CollapseAlarm(key="turns", window=2, ratio=0.5)
    series = [4, 4, 1, 1, 1, 4, 4, 1, 1]
    fired = [step for step, value in enumerate(series, 1) if alarm.update(step, {"turns": value})]
    assert fired == [4, 9]


def test_collapse_alarm_is_silent_on_flat_rising_and_short_series():
    for series in ([1.0] * 20, [0.5 + 0.1 * k for k in range(20)], [0.0] * 20):
        alarm = CollapseAlarm(window=5)
        assert all(alarm.update(step, {"tool_calls": value}) is None for step, value in enumerate(series))
    alarm = CollapseAlarm(window=5)  # falls to zero at once, but 2 x window values are needed to judge
    assert [alarm.update(step, {"tool_calls": value}) for step, value in enumerate([3] * 5 + [0] * 4)] == \
        [None] * 9
    assert alarm.update(9, {"tool_calls": 0}) is not None
    assert alarm.update(10, {"loss": 1.0}) is None  # rows without the key are ignored


def test_summary_line_shows_the_main_metrics_present():
    line = MetricsLogger.summary_line({"reward/mean": 0.4567, "accuracy": 0.351, "tool_calls": 1.8,
                                       "turns": 2.6, "ofr/kept_ratio": 0.62, "time/step": 41.04,
                                       "loss": 3.0, "kl": None})
    assert line == "reward 0.457 acc 35.1% tools 1.80 turns 2.60 kept 62% step 41.0s"
    assert MetricsLogger.summary_line({"accuracy": None, "turns": math.nan}) == ""


def test_plot_run_writes_the_plots_whose_metrics_are_present(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 9):
        logger.log(step, {
            "reward/mean": 0.1 * step, "reward/accuracy": 0.08 * step, "reward/tool_bonus": 0.02 * step,
            "accuracy": 0.05 * step, "tool_calls": 3 - 0.3 * step, "turns": 4 - 0.3 * step,
            "ofr/kept_ratio": 0.6, "ofr/solve_none": 0.2, "ofr/solve_all": 0.1, "ofr/solve_partial": 0.7,
            "time/generation": 20.0, "time/environment": 5.0, "time/update": 10.0, "time/step": 36.0,
            "loss": 1 / step, "kl": 0.01 * step, "grad_norm": 2.0})
        if step % 4 == 0:
            logger.log(step, {"accuracy": 0.06 * step, "tool_calls": 2.0}, kind="eval")
    logger.close()  # no visual_tokens and no throughput: those two plots are skipped
    written = plot_run(tmp_path)
    names = ["reward", "accuracy", "interaction", "ofr", "step_time", "loss"]
    assert written == [tmp_path / "plots" / f"{name}.png" for name in names]
    assert sorted(path.name for path in (tmp_path / "plots").iterdir()) == sorted(f"{n}.png" for n in names)
    for path in written:
        assert 0 < path.stat().st_size < 150_000
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 300
    with Image.open(tmp_path / "plots" / "loss.png") as loss, Image.open(written[0]) as reward:
        assert loss.height > reward.height  # three stacked panels


def test_plot_run_needs_a_metrics_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl or eval\.jsonl"):
        plot_run(tmp_path)
