"""Public benchmarks as environments: every loader is registered with its layout, a data folder registers
what it holds, and ``pyvision eval`` scores a benchmark with its categories and its own metrics."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest

from benchmarks.evaluation.public import LayoutError, public_benchmarks, register_public_benchmarks
from pyvision_env import TaskSource
from pyvision_env.cli import main

from .conftest import quiet_engine
from .test_public_vstar import write_release

EXPECTED = {"vstar", "hr-bench-4k", "hr-bench-8k", "mme-realworld", "mme-realworld-lite", "vsi-bench",
            "vsi-bench-debiased", "video-mme", "mathvista", "mathverse", "wemath", "dynamath"}


pytestmark = pytest.mark.usefixtures("private_cache")


def test_every_loader_is_listed_with_the_layout_it_expects():
    benchmarks = public_benchmarks()
    assert set(benchmarks) >= EXPECTED
    for bench in benchmarks.values():
        assert bench.description and bench.layout.strip(), bench.name
    assert benchmarks["video-mme"].video and not benchmarks["vstar"].video


def test_a_data_folder_registers_its_benchmarks_and_eval_scores_them(tmp_path, capsys):
    data = tmp_path / "data"
    write_release(data / "vstar")
    (data / "unrelated").mkdir()
    assert register_public_benchmarks(data) == ["PyVision/Vstar-v0"]
    with quiet_engine(spare_kernels=1) as engine:
        env = gym.make("PyVision/Vstar-v0", max_turns=2, kernel_start="first-call", engine=engine)
        observation, info = env.reset(options={"task_index": 0})
        assert "(A)" in observation[-1].plain_text and info["task_id"] == "0"
        env.close()
    assert main(["eval", "--benchmarks", str(data), "--suite", "vstar", "--policy", "random", "--max-turns", "2",
                 "--out", str(tmp_path / "run"), "--no-record"]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["suites"][0]["suite"] == "vstar" and summary["suites"][0]["episodes"] == 3
    assert {group["category"] for group in summary["breakdowns"]["vstar"]["category"]} == {
        "direct_attributes", "relative_position"}
    assert "overall" in summary["benchmark_metrics"]["vstar"]
    assert "## vstar: the benchmark's own metrics" in capsys.readouterr().out


def test_public_benchmarks_are_task_sources_that_pyvision_tasks_lists(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    write_release(data / "vstar")
    vstar = public_benchmarks()["vstar"]
    assert isinstance(vstar, TaskSource) and vstar.tags == ("public",) and vstar.description == "V* Bench"
    with pytest.raises(LayoutError, match=r"set \$PYVISION_BENCHMARKS"):
        vstar.load()
    assert len(vstar.at(data / "vstar").load()) == 3
    monkeypatch.setenv("PYVISION_BENCHMARKS", str(data))  # what the pyvision.suites entry point reads
    assert len(vstar.load()) == 3
    assert main(["tasks"]) == 0
    listed = capsys.readouterr().out
    assert "vstar" in listed and "PyVision/Vstar-v0" in listed and "V* Bench" in listed
    monkeypatch.setenv("PYVISION_BENCHMARKS", str(tmp_path / "nowhere"))
    assert main(["tasks"]) == 1  # the other suites are still listed, the problem is named
    captured = capsys.readouterr()
    assert "PyVision/Zoom-v0" in captured.out and "nowhere does not exist" in captured.err


def test_a_broken_copy_is_a_clear_error_from_the_cli(tmp_path):
    (tmp_path / "data" / "vstar").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"(?s)V\* Bench \(vstar\).*Expected layout"):
        main(["eval", "--benchmarks", str(tmp_path / "data"), "--suite", "vstar", "--policy", "random",
              "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit, match="does not exist"):
        main(["eval", "--benchmarks", str(tmp_path / "nowhere"), "--suite", "vstar", "--out", str(tmp_path / "r")])


def test_released_tables_are_read_a_row_at_a_time(tmp_path):
    """Gigabyte TSV/Parquet releases (HR-Bench 8K) stream: rows come before a damage further down is read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.evaluation.public.common import LayoutError, read_parquet, read_tsv

    public_benchmarks()  # imports every loader module, which registers its benchmarks
    tsv = tmp_path / "hr_bench_4k.tsv"
    tsv.write_bytes(b"index\tquestion\n1\tfirst?\n" + b"2\t" + b"x" * (1 << 20) + b"\xff\xfe\n")
    rows = read_tsv("hr-bench-4k", tmp_path, tsv)
    assert next(rows) == {"index": "1", "question": "first?"}
    with pytest.raises(LayoutError, match=r"hr_bench_4k\.tsv is not a readable TSV file"):
        next(rows)

    table = tmp_path / "hr_bench_4k.parquet"
    pq.write_table(pa.table({"index": list(range(100)), "question": [f"q{i}" for i in range(100)]}), table)
    assert [row["index"] for row in read_parquet("hr-bench-4k", tmp_path, table)] == list(range(100))
    table.write_bytes(b"PAR1 not really")
    with pytest.raises(LayoutError, match=r"hr_bench_4k\.parquet is not a readable Parquet file"):
        list(read_parquet("hr-bench-4k", tmp_path, table))
