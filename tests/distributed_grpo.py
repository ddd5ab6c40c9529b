"""A GRPO run for the data-parallel tests, started in one process or under ``torchrun``.

``--record FILE``: play every episode for real (real kernels, the scripted tally generation) and keep them,
by episode spec, in FILE. ``--replay FILE``: play nothing; every rank's collector returns the recorded episodes
of the specs it is given — so runs on any number of ranks train on exactly the trajectories of the recording,
and the rest (OFR, the spread over ranks, sharded forward and backward passes, optimizer, checkpoints) is real.
Rank 0 writes ``selections.json`` (what OFR kept, per update), ``engine_weights.safetensors`` (what a generation
engine is loaded with after the last update: the weights gathered from every rank's shards, adapters merged) and
``pools.json`` (each rank's environment pool, and its Ray job when the pool is on Ray) into the run folder.

    torchrun --nproc_per_node 2 tests/distributed_grpo.py --replay episodes.pkl --set output_dir=run ...
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path

from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tests.scripted_generation import ScriptedTallyGeneration  # noqa: E402
from trainers.config import GRPOConfig, load_config  # noqa: E402
from trainers.grpo import GRPOTrainer  # noqa: E402


class Recorder:
    """Plays episodes with the trainer's collector and keeps them by spec."""

    def __init__(self, collector):
        self.collector, self.episodes = collector, {}

    @property
    def stats(self):
        return self.collector.stats

    def collect(self, specs, sampling=None):
        trajectories = self.collector.collect(specs, sampling)
        self.episodes.update(zip(specs, trajectories))
        return trajectories


class Replayer:
    """Returns the recorded episode of each spec (a spec that was never recorded is an error)."""

    def __init__(self, episodes, stats):
        self.episodes, self.stats = episodes, stats

    def collect(self, specs, sampling=None):
        missing = [spec for spec in specs if spec not in self.episodes]
        if missing:
            raise KeyError(f"no recorded episode for {missing[:3]}")
        return [self.episodes[spec] for spec in specs]


def ray_job() -> str | None:
    """This process's Ray job, if it joined a Ray cluster."""
    ray = sys.modules.get("ray")
    return ray.get_runtime_context().get_job_id() if ray is not None and ray.is_initialized() else None


def main() -> None:
    parser = argparse.ArgumentParser()
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path)
    mode.add_argument("--replay", type=Path)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    config = load_config(GRPOConfig, ROOT / "trainers/configs/demo_grpo.yaml", args.overrides)
    with GRPOTrainer(config) as trainer:
        trainer.backend = trainer.collector.backend = ScriptedTallyGeneration(trainer.chat)
        if args.record:
            trainer.collector = Recorder(trainer.collector)
        else:
            recorded = pickle.loads(args.replay.read_bytes())
            trainer.collector = Replayer(recorded, trainer.collector.stats)
        selections = []
        if trainer.ofr is not None:
            collect = trainer.ofr.collect

            def recording_collect(generate_round):
                selection = collect(generate_round)
                selections.append(sorted([str(r.group_id), r.reward, r.extra["length"]] for r in selection.kept))
                return selection

            trainer.ofr.collect = recording_collect
        trainer.train()
        engine_weights = {name: value.clone() for name, value in trainer.policy.plain_weights()}  # every rank
        pools = trainer.ranks.gather({"pool": type(trainer.pool).__name__, "ray_job": ray_job()})
        if trainer.ranks.is_main:
            (trainer.run_dir / "pools.json").write_text(json.dumps(pools))
            (trainer.run_dir / "selections.json").write_text(json.dumps(selections))
            save_file(engine_weights, trainer.run_dir / "engine_weights.safetensors")
            if args.record:
                args.record.write_bytes(pickle.dumps(trainer.collector.episodes))


if __name__ == "__main__":
    main()
