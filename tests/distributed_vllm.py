"""Two ranks with colocated vLLM engines, and a trainer model sharded over them (FSDP2 on gloo): the test of
``make test-vllm`` for the data-parallel weight sync and for tensor-parallel engines. Started by
``torchrun --nproc-per-node 2``.

With ``TENSOR_PARALLEL`` 1 each rank has its own engine; with 2 the ranks share one engine, a shard each, through a
:class:`~trainers.backends.SharedEngine`. Each rank samples (rank 1 more than rank 0), the sharded model is changed
(every rank its own shard), the engine sleeps, then loads the whole new weights gathered one tensor at a time from
the shards (:meth:`~trainers.modeling.PolicyModel.plain_weights`) and wakes; each rank's greedy text is then the
changed model's. Rank 0 writes what it found to ``RESULT`` (JSON).

    torchrun --nproc-per-node 2 tests/distributed_vllm.py MODEL_DIR RESULT TENSOR_PARALLEL
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402
from torch.distributed.tensor import distribute_tensor  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from agents.hf import Sampling  # noqa: E402
from pyvision_env.messages import Message  # noqa: E402
from trainers.backends import SharedEngine, VLLMBackend  # noqa: E402
from trainers.distributed import Ranks, shard_model  # noqa: E402
from trainers.modeling import PolicyModel  # noqa: E402
from trainers.tokens import ChatTokenizer  # noqa: E402

ENGINE = {"max_model_len": 2048, "kv_cache_memory_bytes": 64 << 20, "enforce_eager": True, "dtype": "float32",
          "distributed_executor_backend": "external_launcher"}
TOKENS = 12


def main() -> None:
    model_dir, result, tensor_parallel = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    for key, value in {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                       "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
        os.environ.setdefault(key, value)
    ranks = Ranks.from_environment(timeout_s=300, device="cpu")
    chat = ChatTokenizer(AutoTokenizer.from_pretrained(model_dir), image_processor=None)
    engine = VLLMBackend(str(model_dir), chat, seed=ranks.rank // tensor_parallel, tensor_parallel_size=tensor_parallel,
                         **ENGINE)
    backend = SharedEngine(engine, ranks.blocks(tensor_parallel)) if tensor_parallel > 1 else engine
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()  # unsharded copy
    shard_model(model, ranks, "float32", blank_image=None)
    policy = PolicyModel(model, chat, "cpu", sharded=True)
    prompt = chat.prompt([Message.text("user", f"Count the squares, rank {ranks.rank}.")])
    greedy = Sampling(max_new_tokens=TOKENS, temperature=0.0)
    [before] = backend.generate([prompt], greedy)
    if ranks.rank == 1:  # independent engines: no rank waits for another's requests; a shared one serves them
        backend.generate([prompt] * 3, Sampling(max_new_tokens=TOKENS, temperature=1.0))
    backend.finish_requests()
    initial = greedy_text(reference, prompt.ids, chat)
    torch.manual_seed(11)
    with torch.no_grad():  # an "update": the same on every rank, each keeping its own shard of it
        for parameter, copy in zip(model.parameters(), reference.parameters()):
            copy.add_(torch.randn_like(copy) * 0.05)
            parameter.to_local().copy_(distribute_tensor(copy, parameter.device_mesh, parameter.placements).to_local())
    backend.sleep()
    seconds = backend.sync_weights(policy.plain_weights(), timeout=120)
    [after] = backend.generate([prompt], greedy)
    backend.finish_requests()
    found = ranks.gather({"rank": ranks.rank, "changed": after.ids != before.ids, "seconds": seconds,
                          "matches_initial": before.ids == initial,
                          "matches": after.ids == greedy_text(reference, prompt.ids, chat)})
    if ranks.is_main:
        result.write_text(json.dumps(found))
    backend.close()
    ranks.close()


def greedy_text(model, prompt_ids, chat) -> list[int]:
    """The Hugging Face model's greedy continuation (the tokens the sampler never draws suppressed)."""
    with torch.no_grad():
        return model.generate(torch.tensor([prompt_ids]), do_sample=False, max_new_tokens=TOKENS,
                              suppress_tokens=chat.never_sampled, eos_token_id=chat.end_token_id,
                              pad_token_id=chat.pad_token_id)[0, len(prompt_ids):].tolist()


if __name__ == "__main__":
    main()
