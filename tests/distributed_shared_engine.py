"""Four ranks in two blocks of two, each block sharing one generation engine (:class:`SharedEngine`), as the ranks
of a tensor-parallel vLLM engine do: the test of the lockstep protocol, started by ``torchrun --nproc-per-node 4``.

The ranks make different numbers of requests with different sampling, one of them a request the engine refuses,
then each plays a different number of real episodes through the trainer's collector; last, rank 0 waits alone in
a block whose ranks have a 2-second timeout. Every rank writes what it got and every call its engine made to
``RESULT_DIR/rank<N>.json``.

    torchrun --nproc-per-node 4 tests/distributed_shared_engine.py MODEL_DIR RESULT_DIR
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402

from agents.hf import Sampling  # noqa: E402
from pyvision_env.messages import Message  # noqa: E402
from pyvision_env.vector import PyVisionVectorEnv  # noqa: E402
from tests.conftest import quiet_engine  # noqa: E402
from tests.scripted_generation import ScriptedTallyGeneration  # noqa: E402
from trainers.backends import HFBackend, SharedEngine  # noqa: E402
from trainers.config import ModelConfig  # noqa: E402
from trainers.distributed import RankFailure, Ranks  # noqa: E402
from trainers.modeling import load_policy  # noqa: E402
from trainers.rollout import EpisodeSpec, RolloutCollector  # noqa: E402
from trainers.tokens import Encoded  # noqa: E402

GREEDY = Sampling(max_new_tokens=6, temperature=0.0)
SAMPLED = Sampling(max_new_tokens=6, temperature=1.0)
REQUESTS = {0: [([0], SAMPLED)], 1: [([1, 2], GREEDY), ([3], GREEDY)], 2: [],
            3: [([4], GREEDY), ("refused", GREEDY), ([5], GREEDY)]}
"""Each rank's calls of ``generate``: prompt numbers (or a prompt the engine refuses) and their sampling."""
EPISODES = {0: 3, 1: 0, 2: 1, 3: 2}
"""Each rank's episodes in the collection (the scripted engine calls the counting tool in every other first
turn of the block's, and guesses wrong in the others)."""


class Logged:
    """Notes every call that reaches the engine (prompt count, temperature), the same on every rank of a block."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, sampling):
        self.calls.append([len(prompts), sampling.temperature])
        return self.engine.generate(prompts, sampling)


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    ranks = Ranks.from_environment(timeout_s=120, device="cpu")
    block = ranks.blocks(2)
    torch.manual_seed(0)  # the same sampling on the two ranks of a block, as a vLLM engine's shards share a seed
    policy = load_policy(ModelConfig(path=str(model_dir)))
    chat = policy.chat
    alone = HFBackend(policy.model, chat)
    engine = Logged(HFBackend(policy.model, chat))
    shared = SharedEngine(engine, block)

    def prompt(number: int) -> Encoded:  # prompts of one length: generation alone or batched pads nothing
        return chat.prompt([Message.text("user", f"Count the squares of picture {number}.")])

    got = []
    for numbers, sampling in REQUESTS[ranks.rank]:
        if numbers == "refused":  # a token id past the vocabulary: the model raises, for this rank only
            request = [Encoded([*prompt(9).ids[:-1], 10**6], [], [])]
        else:
            request = [prompt(n) for n in numbers]
        try:
            sampled = shared.generate(request, sampling)
        except Exception as error:  # noqa: BLE001  (the refused request: noted)
            got.append({"error": type(error).__name__})
            continue
        expected = alone.generate(request, sampling) if sampling == GREEDY else None
        got.append({"ids": [s.ids for s in sampled], "alone": [s.ids for s in expected] if expected else None,
                    "lengths": [len(s.logprobs) for s in sampled]})
    shared.finish_requests()
    direct = {"got": got, "calls": engine.calls, "rounds": shared.rounds}

    tally = SharedEngine(Logged(ScriptedTallyGeneration(chat)), block)
    envs = PyVisionVectorEnv(2, "tally", split="train", max_turns=3,
                             engine=quiet_engine(spare_kernels=0, max_kernels=4))
    collector = RolloutCollector(envs, tally, chat, GREEDY)
    tasks = [10 * ranks.rank + i for i in range(EPISODES[ranks.rank])]  # no two ranks ask the same question
    trajectories = collector.collect([EpisodeSpec(task, seed=task, group=task) for task in tasks])
    played = {"episodes": [[t.end_reason, t.correct, t.tool_calls] for t in trajectories],
              "calls": tally.engine.calls, "rounds": tally.rounds}
    envs.close()

    waited = None  # a block's group keeps its ranks' timeout (2 s here, the default group's is 120 s)
    quick = Ranks(ranks.rank, ranks.size, ranks.local_rank, "cpu", timeout_s=2).blocks(2)
    if ranks.rank == 0:  # its partner never joins
        started = time.monotonic()
        try:
            quick.gather("alone")
        except RankFailure:
            waited = time.monotonic() - started
    ranks.barrier()
    (out / f"rank{ranks.rank}.json").write_text(json.dumps({"direct": direct, "played": played, "waited": waited}))
    ranks.close()


if __name__ == "__main__":
    main()
