"""Multi-turn GRPO over PyVision environments, with OFR batch selection and the accumulative tool reward.

One update (:meth:`GRPOTrainer.step`):

1. **Rollouts** — rounds of ``prompts_per_round`` training tasks × ``group_size`` episodes are played by the
   :class:`~trainers.rollout.RolloutCollector` (one asyncio loop per episode, batched generation, token ids
   kept as sampled). Group advantages (reward − group mean; ÷ std optional) are computed per round, before
   any filtering. Other objectives, each off by default (docs/training.md, "Other objectives"): HDPO's
   tool-efficiency advantage among correct rollouts (``algorithm.tool_efficiency_weight``), Thyme's greedy code
   (``rollout.greedy_code``) and AXPO's resampling of all-wrong tool-using groups (``rollout.prefix_resamples``).
2. **OFR** — :class:`~trainers.ofr.OFRSelector` oversamples rounds until ``ofr.target_size`` trajectories
   survive its filters (zero-std groups, over-length, image-limit and placeholder-mismatch trajectories) and
   keeps the top ones by group reward std; with ``ofr.enabled: false`` one round is trained on as generated.
3. **Update** — old log-probs (recomputed, or the sampler's), then mini-batch steps of the clipped, token-mean
   surrogate with separate low/high clips and an optional KL to the initial policy; episodes that hit the turn
   limit can be masked out (Mini-o3).
4. **Sync** — the generation backend gets the new weights (vLLM: under a timeout, duration logged).

Under ``torchrun`` (``pyvision train CONFIG --nproc N``) the same loop runs on every rank, data-parallel
(:mod:`trainers.distributed`): each rank plays its share of every round's groups on its own environments and
generation engine, OFR selects once from all ranks' groups, each mini-batch is spread over the ranks by token
budget, and the model, its gradients and the optimizer's state are sharded (FSDP2). N ranks make the update one
process makes from the same trajectories (tested to float rounding at 2 and 3 ranks).

Every update logs reward and its components, accuracy, tool calls and turns per episode (the interaction-
collapse signal, with an alarm), OFR's kept ratio and solve-none/all/partial, visual tokens, tokens/s and the
step-time breakdown; evaluations on held-out tasks run greedily; checkpoints allow a killed run to resume.

Example::

    config = load_config(GRPOConfig, "trainers/configs/demo_grpo.yaml", ["steps=5"])
    with GRPOTrainer(config) as trainer:      # also under torchrun: one per rank
        trainer.train()
"""

from __future__ import annotations

import contextlib
import os
import random
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from agents.hf import Sampling
from pyvision_env.pools import EnvPool, make_pool
from pyvision_env.vector import PyVisionVectorEnv

from .backends import GenerationBackend, HFBackend, PixelCache, SharedEngine, VLLMBackend
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import GRPOConfig, code_markers
from .distributed import Ranks, load_from_main, model_class, shard_model, spread, state_bytes_per_parameter
from .lora import adapters_off
from .metrics import CollapseAlarm, MetricsLogger, plot_run
from .modeling import PolicyModel, load_policy, make_optimizer, start_run
from .objective import collate, grpo_loss, lay_out, pack, rows, sequence_logprobs
from .offpolicy import RolloutProducer
from .ofr import OFRSelector, Rollout, group_advantages, tool_efficiency_advantages
from .rollout import EpisodeSpec, RolloutCollector, Trajectory, resampling_specs
from .tokens import VisualParityError, check_visual_parity


class TaskSampler:
    """Task indices in a seeded random order, epoch after epoch; its state is ``(epoch, position)``.

    >>> sampler = TaskSampler(4, seed=0)
    >>> first = sampler.take(6)
    >>> sorted(first[:4]), sampler.state()
    ([0, 1, 2, 3], {'epoch': 1, 'position': 2})
    """

    def __init__(self, count: int, seed: int) -> None:
        if count < 1:
            raise ValueError("there are no training tasks")
        self.count, self.seed, self.epoch, self.position = count, seed, 0, 0

    def _order(self) -> list[int]:
        return np.random.default_rng((self.seed, self.epoch)).permutation(self.count).tolist()

    def take(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            order = self._order()
            chunk = order[self.position:self.position + n - len(out)]
            out += chunk
            self.position += len(chunk)
            if self.position >= self.count:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def make_envs(config: GRPOConfig, split: str | None, pool: EnvPool) -> PyVisionVectorEnv:
    env = config.env
    kwargs: dict[str, Any] = {"split": split, "protocol": env.protocol, "max_turns": env.max_turns,
                              "on_tool_error": env.on_tool_error, **env.options}
    if env.system_prompt is not None:
        kwargs["system_prompt"] = env.system_prompt
    if env.reward is not None:
        kwargs["reward"] = env.reward
    return pool.vector_env(env.num_envs, env.suite, **kwargs)


def episode_record(trajectory: Trajectory) -> dict[str, Any]:
    """The numbers of one episode that :func:`episode_summary` averages (small: ranks exchange them)."""
    return {"reward": trajectory.reward, "correct": float(trajectory.correct), "tool_calls": trajectory.tool_calls,
            "turns": trajectory.turns, "visual_tokens": trajectory.info.get("visual_tokens", 0),
            "response_tokens": trajectory.sampled_tokens, "over_length": float(trajectory.end_reason == "over_length"),
            "components": dict(trajectory.info.get("episode", {}).get("components") or {}), "error": trajectory.error,
            "resampled": bool(trajectory.spec.prefix)}


def episode_summary(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means per episode (of :func:`episode_record`\\ s): reward and its components, accuracy, tool calls, turns,
    visual tokens, tokens. Episodes resampled from a prefix (AXPO) are chosen from failures, so they stay out of
    these means; ``resampling/episodes`` and ``resampling/accuracy`` describe them."""
    resampled = [r for r in records if r["resampled"]]
    records = [r for r in records if not r["resampled"]]
    out = {"resampling/episodes": float(len(resampled)),
           "resampling/accuracy": _mean(r["correct"] for r in resampled)} if resampled else {}
    if not records:
        return out
    out.update({"reward/mean": _mean(r["reward"] for r in records), "accuracy": _mean(r["correct"] for r in records)})
    out.update({key: _mean(r[key] for r in records)
                for key in ("tool_calls", "turns", "visual_tokens", "response_tokens", "over_length")})
    components: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for name, value in record["components"].items():
            components[name].append(float(value))
    for name, values in components.items():
        out[f"reward/{name}"] = _mean(values)
    return out


def _mean(values: Any) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


@dataclass
class RolloutBatch:
    """One update's data: OFR's kept rollouts (the same on every rank, each naming where its trajectory lives),
    this rank's played trajectories with their advantages, every rank's episode records, and how it was made."""

    kept: list[Rollout]
    played: dict[tuple[int, int], tuple[Trajectory, float]]
    records: list[dict[str, Any]]
    ofr_metrics: dict[str, float]
    clock: dict[str, float]
    """Seconds in generation, environments and scoring (this rank's)."""
    generated_tokens: float
    data_position: dict[str, Any]
    """The task sampler's state and the episodes started after this batch: what a checkpoint after its update
    resumes from."""
    version: int
    """The updates whose weights played it (set by the producer; without one, the previous update's)."""


class GRPOTrainer:
    """The modular multi-turn GRPO trainer (see the module docstring).

    Args:
        config: the run's settings (:class:`~trainers.config.GRPOConfig`).
        backend: a generation backend to use instead of the one ``config.rollout.backend`` names.

    Started by ``torchrun``, every rank builds one: the model is sharded over the ranks (FSDP2), each rank plays
    its share of every round's groups on its own environments and generation engine, OFR selects from all ranks'
    groups at once (the same choice on every rank), and each mini-batch's trajectories are spread over the ranks
    by token budget. The loss is the same token-mean over the whole mini-batch as in one process, so N ranks
    make the update one process would make from the same trajectories.
    """

    def __init__(self, config: GRPOConfig, backend: GenerationBackend | None = None) -> None:
        import copy

        import torch

        self.config = config
        algorithm = config.algorithm
        if algorithm.old_logprobs not in ("recompute", "rollout"):
            raise ValueError(f"algorithm.old_logprobs must be 'recompute' or 'rollout', got {algorithm.old_logprobs!r}")
        if config.rollout.staleness < 0:
            raise ValueError(f"rollout.staleness must be 0 or more, got {config.rollout.staleness}")
        if config.rollout.staleness and backend is not None and backend.shares_trainer_weights:
            raise ValueError("rollout.staleness > 0 generates while the update changes the weights: it needs a "
                             "generation backend with weights of its own, not one sharing the trainer's")
        if config.rollout.greedy_code and backend is not None:
            raise ValueError("rollout.greedy_code configures the HF backend the trainer builds; a backend given to "
                             "the trainer chooses its own sampling (HFBackend(..., greedy_between=markers))")
        self.importance_cap = importance_cap(config)
        self.ranks = Ranks.from_environment(config.distributed.timeout_s, config.model.device)
        if config.distributed.offload and self.ranks.size == 1:
            raise ValueError("distributed.offload keeps the shards of a sharded model in CPU memory: it needs "
                             "several processes (pyvision train --nproc N, or torchrun)")
        self.engine_shards = engine_shards(config, self.ranks.size,
                                           int(os.environ.get("LOCAL_WORLD_SIZE", self.ranks.size)))
        """Ranks per generation engine (tensor parallel), checked before the model loads."""
        self.run_dir = start_run(config, self.ranks.rank)
        self.policy = load_policy(config.model, device=self.ranks.device, weights=self.ranks.size == 1)
        """Several ranks build the model on the meta device, shard it, and then get rank 0's weights."""
        self.engine_sleeps = engine_sleeps(config, self.policy.device)
        """The generation engine releases its memory during updates (``rollout.engine_sleep``)."""
        self.chat = self.policy.chat
        compute_dtype = getattr(torch, self.policy.compute_dtype)
        self.reference = None
        """The KL reference: a frozen copy of the initial model (in the compute dtype: it needs no master
        weights); a LoRA policy is its own, with the adapters off."""
        if algorithm.kl_coef > 0 and not self.policy.lora_scaling:
            self.reference = copy.deepcopy(self.policy.model).eval().requires_grad_(False).to(compute_dtype)
        generation_copy = None
        if backend is None and config.rollout.backend == "hf" and (self.ranks.size > 1 or config.rollout.staleness):
            # generate() cannot run on a sharded model, nor on weights that an update changes meanwhile
            generation_copy = model_class(self.policy.model).from_pretrained(
                config.model.path, dtype=compute_dtype).to(self.policy.device).eval().requires_grad_(False)
        if self.ranks.size > 1:
            blank = blank_image(self.policy)
            # only rank 0 reads the weights (in CPU memory; the start-up canary runs on them there)
            source = load_policy(config.model, device="cpu").model if self.ranks.is_main else None
            for model in (self.policy.model, self.reference):
                if model is not None:
                    shard_model(model, self.ranks, self.policy.compute_dtype, blank, config.distributed.offload)
                    load_from_main(model, source, self.ranks)
            del source
            self.policy.sharded = True
        self.optimizer, self.scheduler = make_optimizer(self.policy, algorithm.lr, algorithm.weight_decay,
                                                        algorithm.warmup_steps)
        backbone = getattr(self.policy.model, "model", None)
        self._rope_index = (lambda ids, token_types, grids: backbone.get_rope_index(ids, token_types, grids)[0]) \
            if self.chat.token_types and hasattr(backbone, "get_rope_index") else None
        """Image tokens' 3D positions for packed micro-batches (:func:`~trainers.objective.pack`)."""
        self.pixels = PixelCache(self.chat.image_processor)
        self.pool = make_pool(config.pool, concurrency=config.env.num_envs)
        self.train_envs = make_envs(config, config.env.split, self.pool)
        self.eval_envs = make_envs(config, config.env.eval_split, self.pool) if config.eval.every else None
        self.backend = backend or self._make_backend(generation_copy)
        rollout = config.rollout
        self.sampling = Sampling(max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature,
                                 top_p=rollout.top_p, top_k=rollout.top_k)
        self.collector = RolloutCollector(self.train_envs, self.backend, self.chat, self.sampling,
                                          rollout.max_length, rollout.max_batch, self.pool.episode_attempts)
        self.eval_collector = (RolloutCollector(self.eval_envs, self.backend, self.chat, self.sampling,
                                                rollout.max_length, rollout.max_batch, self.pool.episode_attempts)
                               if self.eval_envs else None)
        self.sampler = TaskSampler(len(self.train_envs.envs[0].unwrapped.tasks), config.seed)
        self.ofr = OFRSelector(config.ofr, group_size=rollout.group_size) if config.ofr.enabled else None
        self.logger = (MetricsLogger(self.run_dir, tensorboard=config.logging.tensorboard)
                       if self.ranks.is_main else None)
        self.alarm = CollapseAlarm("tool_calls", config.logging.collapse_window, config.logging.collapse_ratio)
        self.step_number = 0
        self.episodes_started = 0
        self.data_position = {"sampler": self.sampler.state(), "episodes_started": 0}
        """Where the data of the last trained batch ends (what a checkpoint saves)."""
        self._producer: RolloutProducer | None = None
        self._producer_ranks = self.ranks.subgroup() if rollout.staleness else self.ranks
        """The producer thread's own process group: two threads' collectives must never share one."""
        self.last_eval: list[Trajectory] = []
        """The episodes this rank played in the last evaluation."""
        if self.policy.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()  # memory/peak_gib: the updates', not the model loading's

    def _make_backend(self, generation_copy: Any) -> GenerationBackend:
        rollout = self.config.rollout
        if rollout.backend == "hf":
            greedy_between = code_markers(self.config.env.protocol) if rollout.greedy_code else None
            if generation_copy is not None:
                return HFBackend(generation_copy, self.chat, shares_trainer_weights=False,
                                 greedy_between=greedy_between)
            return HFBackend(self.policy.model, self.chat, self.policy.autocast, greedy_between=greedy_between)
        if rollout.backend == "vllm":
            options = dict(rollout.vllm)
            if self.engine_sleeps and self.policy.device.startswith("cuda"):
                options.setdefault("enable_sleep_mode", True)  # vLLM refuses it on CPU, where sleep frees nothing
            if self.ranks.size > 1:  # the engines run inside torchrun's processes
                options.setdefault("distributed_executor_backend", "external_launcher")
            shards = self.engine_shards
            engine = VLLMBackend(self.config.model.path, self.chat, seed=self.config.seed + self.ranks.rank // shards,
                                 **options)  # the shards of one engine must draw the same samples
            return SharedEngine(engine, self.ranks.blocks(shards)) if shards > 1 else engine
        raise ValueError(f"rollout.backend must be 'hf' or 'vllm', got {rollout.backend!r}")

    # --- the loop ---------------------------------------------------------------------------------

    def train(self, on_update: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Run (or resume) to ``config.steps`` updates; returns the last train and eval metrics.

        ``on_update(step, metrics)`` is called after each update with its metrics and, when it evaluated, the
        evaluation's as ``eval/<name>`` (a Ray Tune trial reports them this way, see
        :mod:`trainers.tune_sweep`)."""
        from tqdm.auto import tqdm

        config = self.config
        main = self.ranks.is_main
        if config.checkpoint.resume:
            self.resume()
        last_eval: dict[str, float] = {}
        if self.step_number == 0 and config.eval.every and config.eval.before_first:
            last_eval = self.evaluate()
        bar = tqdm(total=config.steps, initial=self.step_number, desc="GRPO", unit="update",
                   disable=not (config.logging.progress and main))
        metrics: dict[str, float] = {}
        if config.rollout.staleness and self.step_number < config.steps:
            self._producer = RolloutProducer(lambda step: self._generate(step, self._producer_ranks),
                                             self.step_number + 1, config.steps, config.rollout.staleness)
        try:
            while self.step_number < config.steps:
                self.step_number += 1
                metrics = self.step()
                if main:
                    self.logger.log(self.step_number, metrics)
                    warning = self.alarm.update(self.step_number, metrics)
                    if warning:
                        warnings.warn(warning, stacklevel=2)
                bar.update()
                bar.set_postfix_str(MetricsLogger.summary_line(metrics))
                final = self.step_number == config.steps
                evaluated = {}
                if config.eval.every and (final or self.step_number % config.eval.every == 0):
                    with self._engine():
                        last_eval = evaluated = self.evaluate()
                if final or self.step_number % config.checkpoint.every == 0:
                    self.save()
                if on_update is not None:
                    on_update(self.step_number, {**metrics, **{f"eval/{k}": v for k, v in evaluated.items()}})
        finally:
            bar.close()
            if self._producer:
                self._producer.close()
                self._producer = None
            if main and (self.logger.history("train") or self.logger.history("eval")):  # else nothing to plot
                plot_run(self.run_dir)
        return {"train": metrics, "eval": last_eval}

    def step(self) -> dict[str, float]:
        """One update: its batch (rollouts with OFR; with ``rollout.staleness``, generated while the previous
        update trained), loss, optimizer steps, weight sync. Returns its metrics (the same on every rank)."""
        started = time.perf_counter()
        batch = self._producer.take() if self._producer else self._generate(self.step_number, self.ranks)
        failed = [record["error"] for record in batch.records if record["error"]]
        if batch.records and len(failed) == len(batch.records):  # a broken engine, not bad episodes
            raise RuntimeError(f"every episode of update {self.step_number} failed ({len(failed)} on all ranks); "
                               f"the first: {failed[0]}")
        self.data_position = batch.data_position
        clock = dict(batch.clock)
        sleeping = time.perf_counter()
        if self.engine_sleeps:
            self.backend.sleep()
        clock["engine_sleep"] = time.perf_counter() - sleeping
        update_metrics = self._update(batch.kept, batch.played, clock)
        syncing = time.perf_counter()
        with self._engine():
            self._sync_weights()
        if self._producer:
            self._producer.synced(self.step_number)
        sync = time.perf_counter() - syncing
        metrics = {**episode_summary(batch.records), **batch.ofr_metrics, **update_metrics,
                   "episodes": len(batch.records), "trained_trajectories": len(batch.kept),
                   "staleness": self.step_number - 1 - batch.version,
                   "time/generation": clock["generation"], "time/environment": clock["environment"],
                   "time/scoring": clock["scoring"], "time/update": clock["update"], "time/weight_sync": sync,
                   "time/engine_sleep": clock["engine_sleep"],
                   "time/step": time.perf_counter() - started,
                   "throughput/tokens_per_s": batch.generated_tokens / clock["generation"] if clock["generation"]
                   else 0.0,
                   "throughput/update_tokens_per_s": clock["update_tokens"] / clock["update"] if clock["update"] else 0.0,
                   "lr": self.scheduler.get_last_lr()[0]}
        if self.policy.device.startswith("cuda"):
            import torch

            metrics["memory/peak_gib"] = torch.cuda.max_memory_allocated() / 2**30  # rank 0's, this update
            torch.cuda.reset_peak_memory_stats()
        return self.ranks.broadcast(metrics)  # rank 0's clock; the rest is the same everywhere

    def _generate(self, step: int, ranks: Ranks) -> RolloutBatch:
        """The batch of update ``step``: rounds of groups played (each rank its share), OFR's selection from
        all of them, with ``ranks`` for the exchanges (the producer thread has its own)."""
        clock = {"generation": 0.0, "environment": 0.0, "scoring": 0.0}
        generated: list[Trajectory] = []
        played: dict[tuple[int, int], tuple[Trajectory, float]] = {}
        tokens = [0]
        rounds = [0]

        def play(specs: list[EpisodeSpec]) -> list[Trajectory]:
            trajectories = self.collector.collect(specs)
            stats = self.collector.stats
            clock["generation"] += stats.generate
            clock["environment"] += stats.wall - stats.generate
            tokens[0] += stats.generated_tokens
            return trajectories

        def generate_round(groups: int) -> list[list[Rollout]]:
            rounds[0] += 1
            rollout = self.config.rollout
            specs = [EpisodeSpec(task, self._next_seed(), (step, rounds[0], g))
                     for g, task in enumerate(self.sampler.take(groups)) for _ in range(rollout.group_size)]
            trajectories = play([spec for spec in specs if spec.group[-1] % ranks.size == ranks.rank])
            if rollout.prefix_resamples:  # AXPO: each rank resamples its own groups
                opening, _ = code_markers(self.config.env.protocol)
                trajectories += play(resampling_specs(trajectories, self.chat.decode, opening,
                                                      rollout.prefix_resamples))
            generated.extend(trajectories)
            scoring = time.perf_counter()
            shared = [[self._share(rollout, played) for rollout in group] for group in self._to_rollouts(trajectories)]
            clock["scoring"] += time.perf_counter() - scoring
            everyone = [group for groups_of_rank in ranks.gather(shared) for group in groups_of_rank]
            return sorted(everyone, key=lambda group: group[0].group_id)  # generation order, as in one process

        if self.ofr is not None:
            selection = self.ofr.collect(generate_round)
            kept = list(selection.kept)
            ofr_metrics = {f"ofr/{key}": value for key, value in selection.metrics.items()
                           if isinstance(value, (int, float))}
        else:
            kept = [r for group in generate_round(self.config.prompts_per_round) for r in group]
            ofr_metrics = {}
        records = [record for part in ranks.gather([episode_record(t) for t in generated]) for record in part]
        return RolloutBatch(kept, played, records, ofr_metrics, clock, ranks.sum({"tokens": tokens[0]})["tokens"],
                            {"sampler": self.sampler.state(), "episodes_started": self.episodes_started},
                            version=step - 1)

    def _engine(self) -> Any:
        """Hold the generation engine against the producer thread (nothing to hold without one)."""
        return self._producer.engine() if self._producer else contextlib.nullcontext()

    def _next_seed(self) -> int:
        self.episodes_started += 1
        return self.config.seed * 1_000_003 + self.episodes_started

    def _to_rollouts(self, trajectories: list[Trajectory]) -> list[list[Rollout]]:
        algorithm = self.config.algorithm
        return rollout_groups(trajectories, algorithm.normalize_std, self._images_consistent,
                              algorithm.tool_efficiency_weight)

    def _share(self, rollout: Rollout, played: dict[tuple[int, int], tuple[Trajectory, float]]) -> Rollout:
        """What the other ranks learn of one of this rank's trajectories: its rollout summary, where it lives
        and its sizes; the trajectory itself stays in ``played`` until a rank trains on it."""
        trajectory, advantage = rollout.extra["trajectory"], rollout.extra["advantage"]
        key = (self.ranks.rank, len(played))
        played[key] = (trajectory, advantage)
        return replace(rollout, extra={"key": key, "advantage": advantage, "length": len(trajectory.ids),
                                       "sampled_tokens": trajectory.sampled_tokens})

    def _images_consistent(self, trajectory: Trajectory) -> bool:
        grids = self.pixels(trajectory.images).get("image_grid_thw")
        try:
            check_visual_parity(trajectory.ids, trajectory.images, trajectory.image_records,
                                grids.tolist() if grids is not None else [], self.chat, trajectory.label)
        except VisualParityError:
            return False
        return True

    def _update(self, kept: list[Rollout], played: dict[tuple[int, int], tuple[Trajectory, float]],
                clock: dict[str, float]) -> dict[str, float]:
        """Old (and reference) log-probs, then one optimizer step per mini-batch. Every rank holds the same
        ``kept``; each mini-batch is spread over the ranks (:func:`~trainers.distributed.spread`), and every rank
        makes the same number of forward passes (padding with an empty batch) since sharded weights are
        gathered by all ranks at once."""
        import torch

        algorithm = self.config.algorithm
        items = [r for r in kept if r.extra["sampled_tokens"] > 0 and r.end_reason != "error"
                 and not (algorithm.mask_truncated and r.end_reason == "max_turns")]
        random.Random(self.config.seed * 1_000_003 + self.step_number).shuffle(items)
        clock["update"], clock["update_tokens"] = 0.0, float(sum(r.extra["length"] for r in items))
        if not items:
            return {"loss": float("nan")}
        scoring = time.perf_counter()
        minibatches = _chunks(items, algorithm.mini_batch_size)
        shares = [self._spread(minibatch) for minibatch in minibatches]
        trajectories = self._gather_trajectories(shares, played)
        model = self.policy.model
        temperature, chunk_size = self.config.rollout.temperature, algorithm.logprob_chunk_size
        old: dict[Any, Any] = {}
        reference: dict[Any, Any] = {}
        mismatch = {"sum": 0.0, "count": 0.0}
        everyones = [[r for share in shares for r in share[rank]] for rank in range(self.ranks.size)]
        with torch.no_grad(), self.policy.autocast():
            for chunk in self._passes(everyones):
                batch = self._batch(chunk, trajectories)
                mask = batch["loss_mask"].bool()
                if algorithm.old_logprobs == "recompute":
                    recomputed = sequence_logprobs(model, batch, temperature, chunk_size).cpu()
                    mismatch["sum"] += float((recomputed - batch["old_logprobs"]).abs()[mask].sum())
                    mismatch["count"] += float(mask.sum())
                    old.update((r.extra["key"], values) for r, values in zip(chunk, rows(recomputed, batch)))
                if algorithm.kl_coef > 0:
                    with self._reference_model() as reference_model:
                        ref = sequence_logprobs(reference_model, batch, temperature, chunk_size).cpu()
                    reference.update((r.extra["key"], values) for r, values in zip(chunk, rows(ref, batch)))
        clock["scoring"] += time.perf_counter() - scoring
        updating = time.perf_counter()
        totals: dict[str, float] = defaultdict(float)
        model.train()
        for minibatch, share in zip(minibatches, shares):
            token_count = float(sum(r.extra["sampled_tokens"] for r in minibatch))
            self.optimizer.zero_grad(set_to_none=True)
            for chunk in self._passes(share):
                batch = self._batch(chunk, trajectories, old if algorithm.old_logprobs == "recompute" else None,
                                    reference if algorithm.kl_coef > 0 else None)
                with self.policy.autocast():
                    logprobs = sequence_logprobs(model, batch, temperature, chunk_size)
                loss, stats = grpo_loss(logprobs, batch, clip_low=algorithm.clip_low, clip_high=algorithm.clip_high,
                                        token_count=token_count, ref_logprobs=batch.get("ref_logprobs"),
                                        kl_coef=algorithm.kl_coef, importance_cap=self.importance_cap)
                (loss * self.ranks.size).backward()  # the ranks' gradients are averaged; the loss is a share
                totals["loss"] += float(loss.detach())
                for key, value in stats.items():
                    totals[key] += value
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters, algorithm.max_grad_norm)
            self.optimizer.step()
            totals["grad_norm"] += _scalar(grad_norm) / self.ranks.size  # the same on every rank
        self.scheduler.step()
        clock["update"] = time.perf_counter() - updating
        held = state_bytes_per_parameter(model, self.optimizer)
        totals = self.ranks.sum({**totals, **{f"mismatch_{key}": value for key, value in mismatch.items()},
                                 "held": held})
        mismatch_sum, mismatch_count, held = totals.pop("mismatch_sum"), totals.pop("mismatch_count"), totals.pop("held")
        out = {key: value / len(minibatches) for key, value in totals.items()}
        out["memory/state_bytes_per_parameter"] = held / self.ranks.size  # the mean over ranks
        if algorithm.old_logprobs == "recompute":
            out["logprob_mismatch"] = mismatch_sum / mismatch_count if mismatch_count else 0.0
        return out

    @contextlib.contextmanager
    def _reference_model(self) -> Iterator[Any]:
        if self.reference is not None:
            yield self.reference
        else:
            with adapters_off(self.policy.model) as initial:
                yield initial

    def _spread(self, minibatch: Sequence[Rollout]) -> list[list[Rollout]]:
        """The mini-batch's trajectories each rank trains on."""
        ranks = spread([r.extra["length"] for r in minibatch], [r.extra["key"][0] for r in minibatch],
                       self.ranks.size)
        return [[r for r, rank in zip(minibatch, ranks) if rank == mine] for mine in range(self.ranks.size)]

    def _gather_trajectories(self, shares: Sequence[Sequence[Sequence[Rollout]]],
                             played: dict[tuple[int, int], tuple[Trajectory, float]]
                             ) -> dict[Any, tuple[Trajectory, float]]:
        """This rank's trajectories and advantages for its shares: those it ``played``, and those that other ranks
        played (each rank sends the ones it played for others; everyone receives them all and keeps its own)."""
        rank = self.ranks.rank
        leaving = {r.extra["key"]: played[r.extra["key"]] for share in shares
                   for other, part in enumerate(share) if other != rank for r in part if r.extra["key"][0] == rank}
        arriving = {key: value for part in self.ranks.gather(leaving) for key, value in part.items()}
        return {r.extra["key"]: played.get(r.extra["key"]) or arriving[r.extra["key"]]
                for share in shares for r in share[rank]}

    def _batch(self, chunk: Sequence[Rollout], trajectories: dict[Any, tuple[Trajectory, float]],
               old: dict[Any, Any] | None = None, reference: dict[Any, Any] | None = None) -> dict[str, Any]:
        """The collated micro-batch of ``chunk`` (an empty chunk: a two-token batch outside the loss, for a rank
        with nothing left to pass while the others still have), with the recomputed old log-probs (the sampler's
        become ``behaviour_logprobs``) and the reference's, where given."""
        import torch

        if chunk:
            pairs = [trajectories[r.extra["key"]] for r in chunk]
            chosen, advantages = [t for t, _ in pairs], [a for _, a in pairs]
            batch = (pack(chosen, advantages, self.chat, self.pixels, self._rope_index)
                     if self.config.algorithm.micro_batch_tokens else
                     collate(chosen, advantages, self.chat, self.pixels))
        else:
            shape = (1, 2)
            batch = {"input_ids": torch.full(shape, self.chat.pad_token_id, dtype=torch.long),
                     "attention_mask": torch.ones(shape, dtype=torch.long), "loss_mask": torch.zeros(shape),
                     "old_logprobs": torch.zeros(shape), "advantages": torch.zeros(shape), "lengths": []}
        if old is not None:
            batch["behaviour_logprobs"] = batch["old_logprobs"]  # the sampler's, as collated
            batch["old_logprobs"] = lay_out([old[r.extra["key"]] for r in chunk], batch)
        if reference is not None:
            batch["ref_logprobs"] = lay_out([reference[r.extra["key"]] for r in chunk], batch)
        return batch

    def _passes(self, everyones: Sequence[Sequence[Rollout]]) -> list[list[Rollout]]:
        """This rank's forward passes over its trajectories (``everyones[rank]``), padded with empty passes to the
        most any rank makes: ``micro_batch_size`` trajectories each, or packed up to ``micro_batch_tokens``
        (longest first, each into the first pass with room; a longer trajectory passes alone)."""
        algorithm = self.config.algorithm

        def passes(items: Sequence[Rollout]) -> list[list[Rollout]]:
            if algorithm.micro_batch_tokens is None:
                return [list(chunk) for chunk in _chunks(items, algorithm.micro_batch_size)]
            out: list[list[Rollout]] = []
            room: list[int] = []
            for item in sorted(items, key=lambda r: -r.extra["length"]):
                fits = next((i for i, left in enumerate(room) if item.extra["length"] <= left), None)
                if fits is None:
                    out.append([item])
                    room.append(algorithm.micro_batch_tokens - item.extra["length"])
                else:
                    out[fits].append(item)
                    room[fits] -= item.extra["length"]
            return out

        mine = passes(everyones[self.ranks.rank])
        return mine + [[] for _ in range(max(len(passes(items)) for items in everyones) - len(mine))]

    # --- evaluation, checkpoints ------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Greedy episodes on the first ``eval.episodes`` tasks of the evaluation split (shared out over the
        ranks); logged as ``eval``."""
        if self.eval_collector is None:
            return {}
        tasks = self.eval_envs.envs[0].unwrapped.tasks
        count = min(self.config.eval.episodes, len(tasks))
        sampling = Sampling(max_new_tokens=self.config.rollout.max_new_tokens,
                            temperature=self.config.eval.temperature)
        specs = [EpisodeSpec(i, i, i) for i in range(count) if i % self.ranks.size == self.ranks.rank]
        self.last_eval = self.eval_collector.collect(specs, sampling)
        records = [r for part in self.ranks.gather([episode_record(t) for t in self.last_eval]) for r in part]
        metrics = episode_summary(records)
        if self.ranks.is_main:
            self.logger.log(self.step_number, metrics, kind="eval")
        return metrics

    def save(self) -> Path:
        return save_checkpoint(self.run_dir, self.step_number, self.policy, self.optimizer, self.scheduler,
                               self.data_position, keep=self.config.checkpoint.keep, ranks=self.ranks)

    def resume(self) -> bool:
        """Continue from the newest checkpoint of the run folder, if any (returns whether it did); it may have
        been written by another number of ranks."""
        folder = self.ranks.broadcast(latest_checkpoint(self.run_dir))
        if folder is None:
            return False
        state = load_checkpoint(folder, self.policy, self.optimizer, self.scheduler, self.ranks)
        self.step_number = int(state["step"])
        self.sampler.load(state["extra"]["sampler"])
        self.episodes_started = int(state["extra"]["episodes_started"])
        self.data_position = state["extra"]
        if self.ranks.is_main:
            self.logger.truncate(self.step_number)
        self._sync_weights()
        return True

    def _sync_weights(self) -> None:
        """Load the trained weights into the generation engine (waking it), gathered one tensor at a time."""
        if not self.backend.shares_trainer_weights:
            import torch

            self.backend.sync_weights(self.policy.plain_weights(getattr(torch, self.policy.compute_dtype)),
                                      self.config.rollout.weight_sync_timeout)

    def close(self) -> None:
        for envs in (self.train_envs, self.eval_envs):
            if envs is not None:
                envs.close()
        self.backend.close()
        self.pool.close()
        if self.logger is not None:
            self.logger.close()
        self.ranks.close()

    def __enter__(self) -> GRPOTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def blank_image(policy: PolicyModel) -> dict[str, Any] | None:
    """The processor's inputs for a small blank image (what a sharded model's vision tower runs on in forward
    passes without images), or None for a model without a vision tower."""
    from PIL import Image

    if not hasattr(policy.model, "get_image_features"):
        return None
    return PixelCache(policy.chat.image_processor)([Image.new("RGB", (56, 56), "white")])


def importance_cap(config: GRPOConfig) -> float | None:
    """The truncation of the importance weights the update applies, or None when it does not correct the
    sampler (``algorithm.importance_correction``; ``auto`` corrects the vLLM backend, whose numerics differ from
    the trainer's, and batches played by older weights, ``rollout.staleness`` > 0).

    >>> from trainers.config import load_config
    >>> importance_cap(load_config(GRPOConfig, overrides=["rollout.backend=vllm"]))
    2.0
    >>> importance_cap(load_config(GRPOConfig, overrides=["rollout.staleness=1"]))
    2.0
    >>> importance_cap(load_config(GRPOConfig)) is None
    True
    """
    algorithm = config.algorithm
    if algorithm.importance_correction not in ("auto", "truncated", "none"):
        raise ValueError("algorithm.importance_correction must be 'auto', 'truncated' or 'none', got "
                         f"{algorithm.importance_correction!r}")
    if algorithm.importance_correction == "truncated" and algorithm.old_logprobs != "recompute":
        raise ValueError("algorithm.importance_correction: truncated corrects recomputed old log-probs; set "
                         "algorithm.old_logprobs: recompute")
    corrected = algorithm.importance_correction == "truncated" or (
        algorithm.importance_correction == "auto" and algorithm.old_logprobs == "recompute"
        and (config.rollout.backend == "vllm" or config.rollout.staleness > 0))
    return algorithm.importance_cap if corrected else None


def engine_sleeps(config: GRPOConfig, device: str) -> bool:
    """Whether the generation engine sleeps during updates (``rollout.engine_sleep``; ``auto``: a vLLM engine
    on a GPU, on-policy).

    >>> from trainers.config import load_config
    >>> engine_sleeps(load_config(GRPOConfig, overrides=["rollout.backend=vllm"]), "cuda:0")
    True
    >>> engine_sleeps(load_config(GRPOConfig, overrides=["rollout.backend=vllm", "rollout.staleness=1"]), "cuda:0")
    False
    """
    rollout = config.rollout
    if rollout.engine_sleep not in ("auto", "on", "off"):
        raise ValueError(f"rollout.engine_sleep must be 'auto', 'on' or 'off', got {rollout.engine_sleep!r}")
    if rollout.engine_sleep == "on" and rollout.staleness:
        raise ValueError("rollout.engine_sleep: on releases the engine during updates, while rollout.staleness > 0 "
                         "generates then; choose one")
    if rollout.engine_sleep == "auto":
        return rollout.backend == "vllm" and device.startswith("cuda") and not rollout.staleness
    return rollout.engine_sleep == "on"


def engine_shards(config: GRPOConfig, world: int, local_world: int) -> int:
    """How many ranks share one vLLM engine (``rollout.vllm.tensor_parallel_size``, 1 by default): consecutive
    ranks of one node, each holding a shard (:class:`~trainers.backends.SharedEngine`).

    >>> from trainers.config import load_config
    >>> engine_shards(load_config(GRPOConfig, overrides=["rollout.backend=vllm",
    ...                                                   "rollout.vllm={tensor_parallel_size: 2}"]), 8, 8)
    2
    >>> engine_shards(load_config(GRPOConfig), 1, 1)
    1
    """
    rollout = config.rollout
    size = rollout.vllm.get("tensor_parallel_size", 1) if rollout.backend == "vllm" else 1
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"rollout.vllm.tensor_parallel_size must be a positive integer, got {size!r}")
    if size == 1:
        return 1
    launch = f"launch {size} ranks per engine: `pyvision train CONFIG --nproc N` with N a multiple of {size}"
    if world == 1:
        raise ValueError(f"rollout.vllm.tensor_parallel_size {size}: a tensor-parallel engine has one shard per "
                         f"rank, and this is one process; {launch}")
    if world % size or local_world % size:
        raise ValueError(f"rollout.vllm.tensor_parallel_size {size} must divide the ranks per node ({local_world}) "
                         f"and in all ({world}): the ranks sharing an engine are consecutive ranks of one node")
    if rollout.staleness:
        raise ValueError("rollout.staleness > 0 with a tensor-parallel engine is not supported: the ranks sharing "
                         "an engine must generate in lockstep, and the producer thread's batches and the "
                         "evaluations would meet in a different order on each rank; use tensor_parallel_size 1 "
                         "or staleness 0")
    return size


def rollout_groups(trajectories: Sequence[Trajectory], normalize_std: bool,
                   images_consistent: Callable[[Trajectory], bool] = lambda trajectory: True,
                   tool_efficiency_weight: float = 0.0) -> list[list[Rollout]]:
    """The round's trajectories grouped by prompt, each with its advantage computed now (before any filtering):
    the group advantage of its reward, plus ``tool_efficiency_weight`` × HDPO's tool-efficiency advantage among the
    group's correct trajectories (:func:`~trainers.ofr.tool_efficiency_advantages`). A trajectory that ended in
    ``error`` (the generation backend failed) says nothing about its task: it gets an advantage of 0 and stays out
    of its group's baseline."""
    groups: dict[Any, list[Trajectory]] = defaultdict(list)
    for trajectory in trajectories:
        groups[trajectory.spec.group].append(trajectory)
    out = []
    for group_id, members in groups.items():
        played = [t for t in members if t.end_reason != "error"]
        values = group_advantages([t.reward for t in played], normalize_std) if played else np.zeros(0)
        if tool_efficiency_weight:
            values = values + tool_efficiency_weight * tool_efficiency_advantages(
                [t.tool_calls for t in played], [t.correct for t in played])
        advantage = dict(zip(map(id, played), values))
        out.append([Rollout(group_id, t.reward, t.end_reason, t.tool_calls, len(t.ids), images_consistent(t),
                            t.info.get("images_shown", 0) > 0, {"trajectory": t, "advantage": float(advantage.get(
                                id(t), 0.0))}) for t in members])
    return out


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def _scalar(value: Any) -> float:
    """A float of a (possibly sharded) zero-dimensional tensor."""
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


__all__ = ["GRPOTrainer", "TaskSampler", "episode_record", "episode_summary", "make_envs"]
