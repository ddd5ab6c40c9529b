"""The trainer's vLLM backend on vLLM's real engine, on CPU (``make test-vllm`` runs these in ``.venv-vllm``), in one
process and on two torchrun ranks.

vLLM cannot run the tiny Qwen2.5-VL on CPU (its processors need torchvision, unusable beside the CPU torch), so the model is the
tiny text-only Qwen2 of :mod:`agents.tiny_text_model`, its weights held by a Hugging Face model as the trainer
holds them: token prompts in, sampled ids and log-probs out; the log-probs are those the trainer recomputes;
weights changed on the trainer's side reach the engine through :meth:`VLLMBackend.sync_weights`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (make test-vllm builds .venv-vllm)")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from agents.hf import Sampling  # noqa: E402
from agents.tiny_text_model import make_tiny_text_model  # noqa: E402
from pyvision_env.messages import Message  # noqa: E402
from trainers.backends import VLLMBackend, WeightSyncTimeout, token_logprobs  # noqa: E402
from trainers.objective import grpo_loss  # noqa: E402
from trainers.tokens import ChatTokenizer  # noqa: E402

from .test_vllm_policy import ENGINE_ARGS, ENGINE_ENV  # noqa: E402

NEW_TOKENS = 12
MISMATCH = 1e-2
"""Largest |engine - trainer| log-prob accepted: vLLM's CPU kernels and Hugging Face's differ by a few 1e-3 nats
(measured up to 0.005 here) — the training/inference mismatch the trainer reports as ``logprob_mismatch`` and
removes by recomputing the old log-probs (``algorithm.old_logprobs: recompute``, the default)."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The engine (started from the model folder) and the trainer-side model with the same weights."""
    model_dir = make_tiny_text_model(tmp_path_factory.mktemp("tiny-qwen2-text"))
    chat = ChatTokenizer(AutoTokenizer.from_pretrained(model_dir), image_processor=None)
    trainer_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENGINE_ENV.items():
            patch.setenv(key, value)
        backend = VLLMBackend(str(model_dir), chat, seed=0, **ENGINE_ARGS)
        yield backend, chat, trainer_model
        backend.close()


def prompt(chat):
    return chat.prompt([Message.text("system", "Count."), Message.text("user", "How many red squares are there?")])


def recomputed(model, prompt_ids, ids, temperature=1.0):
    """The trainer's log-probs of ``ids`` after ``prompt_ids``."""
    sequence = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        logits = model(input_ids=sequence).logits
    return token_logprobs(logits[0, len(prompt_ids) - 1:-1], sequence[0, len(prompt_ids):], temperature).tolist()


def greedy(model, prompt_ids, chat):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=NEW_TOKENS,
                             suppress_tokens=chat.never_sampled, eos_token_id=chat.end_token_id,
                             pad_token_id=chat.pad_token_id)
    return out[0, len(prompt_ids):].tolist()


def test_the_declared_vllm_floor_has_the_weight_reload_the_backend_calls():
    """setup.cfg's vllm extra, the backend's own check and the installed engine agree: its workers reload
    weights from memory (``weights_iterator``), the call ``VLLMBackend.sync_weights`` makes."""
    import configparser
    import inspect

    from packaging.version import Version
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from trainers.backends import VLLM_FLOOR

    extras = configparser.ConfigParser()
    extras.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    assert extras["options.extras_require"]["vllm"].split() == [f"vllm>={VLLM_FLOOR}"]
    assert Version(vllm.__version__).release >= Version(VLLM_FLOOR).release
    assert {"weights_iterator", "is_checkpoint_format"} <= set(inspect.signature(GPUModelRunner.reload_weights).parameters)


def test_sampled_log_probs_are_the_ones_the_trainer_recomputes(setup):
    backend, chat, model = setup
    encoded = prompt(chat)
    for temperature in (1.0, 0.7):
        samples = backend.generate([encoded] * 3, Sampling(max_new_tokens=NEW_TOKENS, temperature=temperature))
        assert len({tuple(s.ids) for s in samples}) > 1  # three different samples of one prompt
        for sample in samples:
            assert len(sample.ids) == len(sample.logprobs) and sample.ids
            assert not set(sample.ids) & set(chat.never_sampled)
            assert sample.logprobs == pytest.approx(recomputed(model, encoded.ids, sample.ids, temperature), abs=MISMATCH)


def test_the_importance_weights_of_the_engines_samples_stay_near_one(setup):
    """The truncated importance-sampling correction (on with vLLM) weights each sampled token by
    min(pi_trainer / pi_engine, cap): on the engine's real samples the weights differ from 1 by the kernels'
    mismatch only, and none reaches the cap."""
    backend, chat, model = setup
    encoded = prompt(chat)
    samples = backend.generate([encoded] * 3, Sampling(max_new_tokens=NEW_TOKENS, temperature=1.0))
    behaviour = torch.tensor([s.logprobs for s in samples if len(s.ids) == len(samples[0].ids)])
    trainer = torch.tensor([recomputed(model, encoded.ids, s.ids) for s in samples
                            if len(s.ids) == len(samples[0].ids)])
    batch = {"loss_mask": torch.ones_like(trainer), "old_logprobs": trainer, "advantages": torch.ones_like(trainer),
             "behaviour_logprobs": behaviour}
    _, stats = grpo_loss(trainer.clone(), batch, clip_low=0.2, clip_high=0.2, token_count=float(trainer.numel()),
                         importance_cap=2.0)
    assert stats["importance_weight"] == pytest.approx(1.0, abs=MISMATCH) and stats["importance_capped"] == 0.0


def test_weights_changed_by_the_trainer_reach_the_engine(setup):
    backend, chat, model = setup
    encoded = prompt(chat)
    greedy_sampling = Sampling(max_new_tokens=NEW_TOKENS, temperature=0.0)
    [before] = backend.generate([encoded], greedy_sampling)
    assert before.ids == greedy(model, encoded.ids, chat)
    torch.manual_seed(7)
    with torch.no_grad():  # an "update": every weight moves
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    changed = greedy(model, encoded.ids, chat)
    assert changed != before.ids
    seconds = backend.sync_weights(model.state_dict().items(), timeout=120)
    [after] = backend.generate([encoded], greedy_sampling)
    assert after.ids == changed and seconds > 0
    assert after.logprobs == pytest.approx(recomputed(model, encoded.ids, after.ids), abs=MISMATCH)


def test_a_weight_sync_past_its_timeout_is_an_error(setup):
    backend, _, model = setup
    with pytest.raises(WeightSyncTimeout, match="took over"):
        backend.sync_weights(model.state_dict().items(), timeout=1e-4)
    deadline = time.monotonic() + 120  # let the abandoned load finish before the engine is closed
    while any(t.name.startswith("pyvision-weight-sync") for t in threading.enumerate()):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_sleeping_engine_refuses_to_generate_and_wakes_with_the_new_weights(setup):
    """The update-time cycle: sleep (level 2: weights and KV cache released; on CPU vLLM accepts the calls and
    frees nothing), then the weight sync wakes the weights, loads the trainer's from its iterator, wakes the
    cache; the engine then samples from the new weights."""
    backend, chat, model = setup
    encoded = prompt(chat)
    greedy_sampling = Sampling(max_new_tokens=NEW_TOKENS, temperature=0.0)
    backend.generate([encoded], greedy_sampling)
    backend.sleep()
    assert backend.llm.llm_engine.engine_core.engine_core.model_executor.is_sleeping
    with pytest.raises(RuntimeError, match="asleep"):
        backend.generate([encoded], greedy_sampling)
    torch.manual_seed(8)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    handed = []
    weights = ((name, handed.append(name) or value) for name, value in model.state_dict().items())
    backend.sync_weights(weights, timeout=120)
    assert handed == list(model.state_dict())  # the whole iterator, one tensor at a time
    assert not backend.llm.llm_engine.engine_core.engine_core.model_executor.is_sleeping
    [after] = backend.generate([encoded], greedy_sampling)
    assert after.ids == greedy(model, encoded.ids, chat)
    assert after.logprobs == pytest.approx(recomputed(model, encoded.ids, after.ids), abs=MISMATCH)


@pytest.mark.parametrize("tensor_parallel", [1, 2])
def test_two_ranks_engines_load_the_weights_gathered_from_the_shards(tmp_path, tensor_parallel):
    """torchrun, 2 ranks on gloo beside a trainer model sharded with FSDP2, each rank with its own engine
    (``external_launcher``), or both sharing one tensor-parallel engine, a shard each (``SharedEngine``): each
    rank's greedy text is the model's, and after a change to the shards, the sleeping engine is woken with the
    whole new weights, gathered one tensor at a time, and samples what the changed model samples
    (``tests/distributed_vllm.py``)."""
    import json
    import os
    import subprocess
    import sys

    model_dir = make_tiny_text_model(tmp_path / "model")
    result = tmp_path / "result.json"
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                          str(root / "tests" / "distributed_vllm.py"), str(model_dir), str(result), str(tensor_parallel)],
                         cwd=root, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-4000:]
    found = json.loads(result.read_text())
    assert [rank["rank"] for rank in found] == [0, 1]
    assert all(rank["matches_initial"] and rank["changed"] and rank["matches"] and rank["seconds"] > 0
               for rank in found), found


def test_an_engine_over_several_gpus_runs_only_inside_the_ranks(tmp_path):
    model_dir = make_tiny_text_model(tmp_path / "model")
    chat = ChatTokenizer(AutoTokenizer.from_pretrained(model_dir), image_processor=None)
    with pytest.raises(ValueError, match="one shard per rank"):
        VLLMBackend(str(model_dir), chat, tensor_parallel_size=2)
    with pytest.raises(ValueError, match="pipeline-parallel engines are not supported"):
        VLLMBackend(str(model_dir), chat, pipeline_parallel_size=2)
