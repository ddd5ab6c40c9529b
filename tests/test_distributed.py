"""Data-parallel GRPO on torch.distributed: 2 and 3 CPU processes on gloo, started by torchrun, against one
process.

The runs replay one recorded set of episodes (``tests/distributed_grpo.py``: real kernels when recorded), so every
layout trains on the same trajectories; global OFR, the spread over ranks, FSDP2-sharded forward and backward
passes, the optimizer and the sharded checkpoints are the real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from trainers.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "distributed_grpo.py"
LR = 1e-3
SETTINGS = ["steps=2", "rollout.group_size=2", "env.num_envs=2", "rollout.max_new_tokens=48",
            "ofr.target_size=6", "ofr.oversampling=1.0", "ofr.max_generation_rounds=3", "ofr.exhaustion=partial",
            "eval.every=0", "checkpoint.every=1", "checkpoint.keep=3", "logging.tensorboard=false",
            "logging.progress=false", "algorithm.mini_batch_size=4", "algorithm.micro_batch_size=1",
            f"algorithm.lr={LR}", "algorithm.kl_coef=0.05", "algorithm.importance_correction=truncated"]
"""Two updates of 6 trajectories in mini-batches of 4 and micro-batches of 1 (so ranks make different numbers
of passes and pad), with a KL reference and the importance correction."""


def launch(ranks: int, *arguments: str, timeout: float = 300) -> None:
    starter = [sys.executable] if ranks == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc-per-node={ranks}"]
    result = subprocess.run([*starter, str(SCRIPT), *arguments], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-5000:]


def train(ranks: int, run_dir: Path, model_dir: Path, episodes: Path, *overrides: str, record: bool = False) -> None:
    settings = [f"output_dir={run_dir}", f"model.path={model_dir}", *SETTINGS, *overrides]
    launch(ranks, "--record" if record else "--replay", str(episodes), *(f"--set={s}" for s in settings))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    (weights,) = latest_checkpoint(run_dir).glob("*.safetensors")
    return load_file(weights)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, model_dir):
    """The reference: two updates in one process, every episode played for real and recorded."""
    folder = tmp_path_factory.mktemp("one-process")
    episodes = folder / "episodes.pkl"
    train(1, folder / "run", model_dir, episodes, record=True)
    return folder / "run", episodes


def assert_engines_get_the_checkpoints_weights(run_dir: Path) -> None:
    """The weights the ranks stream to their generation engines are the model the last checkpoint saved (read
    back by transformers, so both are under the in-memory names)."""
    from transformers import AutoModelForImageTextToText

    saved = AutoModelForImageTextToText.from_pretrained(latest_checkpoint(run_dir), dtype=torch.float32).state_dict()
    streamed = load_file(run_dir / "engine_weights.safetensors")
    assert saved.keys() == streamed.keys()
    for name, value in saved.items():
        assert torch.equal(streamed[name], value), name


def assert_same_updates(run_dir: Path, reference: Path, model_dir: Path, first_step: int = 1) -> None:
    """The same OFR selections (of the updates from ``first_step`` on: a resumed run made only those) and equal
    weights after the updates, up to float rounding. Adam divides each gradient by its own scale, so
    gradients that are zero but for rounding (attention key biases) become steps of rounding size; the
    tolerance is a hundredth of the learning rate, while the updates moved most weights by about it."""
    expected, got = final_weights(reference), final_weights(run_dir)
    (initial_file,) = model_dir.glob("*.safetensors")
    initial = load_file(initial_file)
    moved = [float((expected[key] - initial[key]).abs().max()) for key in expected]
    assert sum(m > LR / 2 for m in moved) > 0.8 * len(moved)
    for key, value in expected.items():
        assert torch.allclose(got[key], value, rtol=0, atol=LR / 100), (key, float((got[key] - value).abs().max()))
    assert json.loads((run_dir / "selections.json").read_text()) == \
        json.loads((reference / "selections.json").read_text())[first_step - 1:]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("ranks, overrides", [(2, ()), (3, ()), (2, ("algorithm.micro_batch_tokens=300",)),
                                              (2, ("rollout.staleness=1",))], ids=["2", "3", "2-packed", "2-ahead"])
def test_ranks_make_the_updates_of_one_process(one_process, tmp_path, model_dir, ranks, overrides):
    """The same trajectories give the same OFR selection and, after two updates, the same weights — also with
    micro-batches packed without padding (against the padded ones of the reference), and with the next update's
    batch played in a thread of every rank while this one trains (its exchanges on a process group of its own)."""
    reference, episodes = one_process
    train(ranks, tmp_path / "run", model_dir, episodes, *overrides)
    assert_same_updates(tmp_path / "run", reference, model_dir)
    assert_engines_get_the_checkpoints_weights(tmp_path / "run")
    assert torch.load(latest_checkpoint(tmp_path / "run") / "trainer_state.pt", weights_only=False)["ranks"] == ranks
    rows = [json.loads(line) for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert [row["staleness"] for row in rows] == ([0, 1] if "rollout.staleness=1" in overrides else [0, 0])


@pytest.mark.timeout(600)
def test_a_checkpoint_of_two_ranks_resumes_on_one_and_on_three(one_process, tmp_path, model_dir):
    reference, episodes = one_process
    train(2, tmp_path / "first", model_dir, episodes, "steps=1")
    assert sorted(p.name for p in (latest_checkpoint(tmp_path / "first") / "rng").iterdir()) == \
        ["rank-0.pt", "rank-1.pt"]
    for ranks in (1, 3):
        run_dir = tmp_path / f"resumed-on-{ranks}"
        shutil.copytree(tmp_path / "first", run_dir)
        train(ranks, run_dir, model_dir, episodes)
        assert [json.loads(line)["step"] for line in (run_dir / "train.jsonl").read_text().splitlines()] == [1, 2]
        assert_same_updates(run_dir, reference, model_dir, first_step=2)


@pytest.mark.timeout(600)
def test_a_killed_rank_fails_the_run_and_the_same_command_resumes_it(tmp_path, model_dir):
    """``pyvision train --nproc 2``: one rank killed mid-run stops the run with an error that says how to resume;
    the same command resumes from the last checkpoint, and no update is lost or logged twice."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "pyvision_env.cli", "train", str(ROOT / "trainers/configs/demo_grpo.yaml"),
               "--nproc", "2", "--set", f"output_dir={run}", "--set", f"model.path={model_dir}", "--set", "steps=8",
               "--set", "ofr.enabled=false", "--set", "prompts_per_round=4", "--set", "rollout.group_size=2",
               "--set", "env.num_envs=2", "--set", "rollout.max_new_tokens=32", "--set", "eval.every=0",
               "--set", "checkpoint.every=1", "--set", "checkpoint.keep=2", "--set", "logging.tensorboard=false",
               "--set", "distributed.timeout_s=60"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, start_new_session=True)
    deadline = time.monotonic() + 240
    while latest_checkpoint(run) is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    victim = next(p for p in psutil.Process(first.pid).children(recursive=True)
                  if "pyvision_env.cli" in " ".join(p.cmdline()) and p.environ().get("RANK") == "1")
    victim.send_signal(signal.SIGKILL)
    try:
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    killed_at = latest_checkpoint(run)
    assert first.returncode != 0 and killed_at is not None and killed_at.name != "step-000008"
    assert "Run the same command again to resume from its last checkpoint" in stderr, stderr[-3000:]
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    steps = [json.loads(line)["step"] for line in (run / "train.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert torch.load(latest_checkpoint(run) / "trainer_state.pt", weights_only=False)["step"] == 8


@pytest.mark.timeout(600)
def test_lora_on_two_ranks_makes_the_updates_of_one_process(one_process, tmp_path, model_dir):
    """LoRA under FSDP2 (each adapter a unit of its own): the adapters after two updates on 2 ranks are those of
    one process, with a KL term whose reference is the model with its adapters off."""
    _, episodes = one_process
    lora = ("model.lora_rank=4", "model.lora_alpha=8")
    train(1, tmp_path / "one", model_dir, episodes, *lora)
    train(2, tmp_path / "two", model_dir, episodes, *lora)
    expected, got = (load_file(latest_checkpoint(tmp_path / run) / "adapters.safetensors") for run in ("one", "two"))
    assert expected.keys() == got.keys() and len(expected) > 0
    assert all(float(value.abs().max()) > 0 for name, value in expected.items() if ".lora_B." in name)  # from 0
    for name, value in expected.items():
        assert torch.allclose(got[name], value, rtol=0, atol=LR / 100), name
    assert_engines_get_the_checkpoints_weights(tmp_path / "two")


@pytest.mark.timeout(400)
def test_each_rank_plays_its_share_on_ray_actors_of_its_own(tmp_path, model_dir):
    """``pool.backend: ray`` under torchrun: both ranks join one Ray cluster, each plays its episodes on its own
    environment workers (real kernels in the actors), and the update trains on the groups of both."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "object_store_memory": 100 * 2**20})
    try:
        train(2, tmp_path / "run", model_dir, tmp_path / "played.pkl", "steps=1", "pool.backend=ray",
              f"pool.address={cluster.address}", "pool.workers=1", "pool.envs_per_worker=2",
              "pool.cpus_per_worker=0.25", "pool.call_timeout=120", record=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    pools = json.loads((tmp_path / "run" / "pools.json").read_text())
    assert [pool["pool"] for pool in pools] == ["RayEnvPool", "RayEnvPool"]
    assert None not in {pool["ray_job"] for pool in pools} and len({pool["ray_job"] for pool in pools}) == 2
    [row] = [json.loads(line) for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    # the scripted sampler calls the tool in every other episode: only kernels that ran make those right
    assert row["trained_trajectories"] == 6 and 0 < row["tool_calls"] < 1
    assert row["accuracy"] == pytest.approx(row["tool_calls"])


def test_ranks_sharing_an_engine_generate_in_lockstep(tmp_path, model_dir):
    """Four ranks, two blocks of two sharing an engine each (``tests/distributed_shared_engine.py``): every rank
    gets the results of its own prompts, the two ranks of a block make the same engine calls (prompts of the same
    sampling together, in rank order), a refused request fails only its sender, and ranks that play different
    numbers of episodes (one none) all finish; a block's group keeps its ranks' timeout."""
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                          str(ROOT / "tests" / "distributed_shared_engine.py"), str(model_dir), str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-5000:]
    found = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(4)]
    direct = [rank["direct"] for rank in found]
    # block 0: rank 0 samples one prompt while rank 1 asks greedily for two: two calls in that round; then rank 1's
    # last prompt alone while rank 0 waits with nothing
    assert direct[0]["calls"] == direct[1]["calls"] == [[1, 1.0], [2, 0.0], [1, 0.0]]
    assert direct[2]["calls"] == direct[3]["calls"] == [[1, 0.0], [1, 0.0], [1, 0.0]]  # rank 2 asks nothing
    assert [d["rounds"] for d in direct] == [2, 2, 3, 3]
    [sampled] = direct[0]["got"]  # rank 0's one sampled answer, a log-prob per token
    assert len(sampled["ids"]) == 1 and len(sampled["ids"][0]) == sampled["lengths"][0] > 0
    for rank in (1, 3):
        answered = [got for got in direct[rank]["got"] if "ids" in got]
        assert answered and all(got["ids"] == got["alone"] for got in answered), direct[rank]["got"]
    assert direct[3]["got"][1] == {"error": "IndexError"}  # the refused request, between two answered ones
    played = [rank["played"] for rank in found]
    assert [len(p["episodes"]) for p in played] == [3, 0, 1, 2]
    episodes = [episode for p in played for episode in p["episodes"]]
    # a tool user answers what the tool printed for its own question: right only if it got its own responses
    assert all(reason == "answered" and correct == (tool_calls > 0) for reason, correct, tool_calls in episodes), played
    assert sum(tool_calls > 0 for _, _, tool_calls in episodes) >= 2
    assert played[0]["calls"] == played[1]["calls"] and played[2]["calls"] == played[3]["calls"]
    assert played[0]["rounds"] == played[1]["rounds"] > 0 and played[2]["rounds"] == played[3]["rounds"] > 0
    assert 1 < found[0]["waited"] < 30  # the block's own timeout, not the default group's 120 s
