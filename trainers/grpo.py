"""Multi-turn GRPO over PyVision environments, with OFR batch selection and the accumulative tool reward.

One update (:meth:`GRPOTrainer.step`):

1. **Rollouts** — rounds of ``prompts_per_round`` training tasks × ``group_size`` episodes are played by the
   :class:`~trainers.rollout.RolloutCollector` (one asyncio loop per episode, batched generation, token ids
   kept as sampled). Group advantages (reward − group mean; ÷ std optional) are computed per round, before
   any filtering.
2. **OFR** — :class:`~trainers.ofr.OFRSelector` oversamples rounds until ``ofr.target_size`` trajectories
   survive its filters (zero-std groups, over-length, image-limit and placeholder-mismatch trajectories) and
   keeps the top ones by group reward std; with ``ofr.enabled: false`` one round is trained on as generated.
3. **Update** — old log-probs (recomputed, or the sampler's), then mini-batch steps of the clipped, token-mean
   surrogate with separate low/high clips and an optional KL to the initial policy; episodes that hit the turn
   limit can be masked out (Mini-o3).
4. **Sync** — the generation backend gets the new weights (vLLM: under a timeout, duration logged).

Every update logs reward and its components, accuracy, tool calls and turns per episode (the interaction-
collapse signal, with an alarm), OFR's kept ratio and solve-none/all/partial, visual tokens, tokens/s and the
step-time breakdown; evaluations on held-out tasks run greedily; checkpoints allow a killed run to resume.

Example::

    config = load_config(GRPOConfig, "trainers/configs/demo_grpo.yaml", ["steps=5"])
    with GRPOTrainer(config) as trainer:
        trainer.train()
"""

from __future__ import annotations

import random
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.hf import Sampling
from pyvision_env.pools import EnvPool, make_pool
from pyvision_env.vector import PyVisionVectorEnv

from .backends import GenerationBackend, HFBackend, PixelCache, VLLMBackend
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import GRPOConfig
from .metrics import CollapseAlarm, MetricsLogger, plot_run
from .modeling import load_policy, make_optimizer, start_run
from .objective import collate, grpo_loss, sequence_logprobs
from .ofr import OFRSelector, Rollout, group_advantages
from .rollout import EpisodeSpec, RolloutCollector, Trajectory
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


def episode_summary(trajectories: Sequence[Trajectory]) -> dict[str, float]:
    """Means per episode: reward and its components, accuracy, tool calls, turns, visual tokens, tokens."""
    if not trajectories:
        return {}
    out = {"reward/mean": _mean(t.reward for t in trajectories),
           "accuracy": _mean(float(t.correct) for t in trajectories),
           "tool_calls": _mean(t.tool_calls for t in trajectories),
           "turns": _mean(t.turns for t in trajectories),
           "visual_tokens": _mean(t.info.get("visual_tokens", 0) for t in trajectories),
           "response_tokens": _mean(t.sampled_tokens for t in trajectories),
           "over_length": _mean(float(t.end_reason == "over_length") for t in trajectories)}
    components: dict[str, list[float]] = defaultdict(list)
    for t in trajectories:
        for name, value in (t.info.get("episode", {}).get("components") or {}).items():
            components[name].append(float(value))
    for name, values in components.items():
        out[f"reward/{name}"] = _mean(values)
    return out


def _mean(values: Any) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


class GRPOTrainer:
    """The modular multi-turn GRPO trainer (see the module docstring).

    Args:
        config: the run's settings (:class:`~trainers.config.GRPOConfig`).
        backend: a generation backend to use instead of the one ``config.rollout.backend`` names.
    """

    def __init__(self, config: GRPOConfig, backend: GenerationBackend | None = None) -> None:
        self.config = config
        self.run_dir = start_run(config)
        self.policy = load_policy(config.model)
        self.chat = self.policy.chat
        algorithm = config.algorithm
        if algorithm.old_logprobs not in ("recompute", "rollout"):
            raise ValueError(f"algorithm.old_logprobs must be 'recompute' or 'rollout', got {algorithm.old_logprobs!r}")
        self.importance_cap = importance_cap(config)
        self.optimizer, self.scheduler = make_optimizer(self.policy, algorithm.lr, algorithm.weight_decay,
                                                        algorithm.warmup_steps)
        self.reference = None
        if algorithm.kl_coef > 0:
            import copy

            import torch

            reference = copy.deepcopy(self.policy.model).eval().requires_grad_(False)
            self.reference = reference.to(getattr(torch, self.policy.compute_dtype))  # no master weights needed
        self.pixels = PixelCache(self.chat.image_processor)
        self.pool = make_pool(config.pool, concurrency=config.env.num_envs)
        self.train_envs = make_envs(config, config.env.split, self.pool)
        self.eval_envs = make_envs(config, config.env.eval_split, self.pool) if config.eval.every else None
        self.backend = backend or self._make_backend()
        rollout = config.rollout
        self.sampling = Sampling(max_new_tokens=rollout.max_new_tokens, temperature=rollout.temperature,
                                 top_p=rollout.top_p)
        self.collector = RolloutCollector(self.train_envs, self.backend, self.chat, self.sampling,
                                          rollout.max_length, rollout.max_batch, self.pool.episode_attempts)
        self.eval_collector = (RolloutCollector(self.eval_envs, self.backend, self.chat, self.sampling,
                                                rollout.max_length, rollout.max_batch, self.pool.episode_attempts)
                               if self.eval_envs else None)
        self.sampler = TaskSampler(len(self.train_envs.envs[0].unwrapped.tasks), config.seed)
        self.ofr = OFRSelector(config.ofr, group_size=rollout.group_size) if config.ofr.enabled else None
        self.logger = MetricsLogger(self.run_dir, tensorboard=config.logging.tensorboard)
        self.alarm = CollapseAlarm("tool_calls", config.logging.collapse_window, config.logging.collapse_ratio)
        self.step_number = 0
        self.episodes_started = 0
        self.last_eval: list[Trajectory] = []

    def _make_backend(self) -> GenerationBackend:
        rollout = self.config.rollout
        if rollout.backend == "hf":
            return HFBackend(self.policy.model, self.chat, self.policy.autocast)
        if rollout.backend == "vllm":
            return VLLMBackend(self.config.model.path, self.chat, seed=self.config.seed,
                               **rollout.vllm)
        raise ValueError(f"rollout.backend must be 'hf' or 'vllm', got {rollout.backend!r}")

    # --- the loop ---------------------------------------------------------------------------------

    def train(self, on_update: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
        """Run (or resume) to ``config.steps`` updates; returns the last train and eval metrics.

        ``on_update(step, metrics)`` is called after each update with its metrics and, when it evaluated, the
        evaluation's as ``eval/<name>`` (a Ray Tune trial reports them this way, see
        :mod:`trainers.tune_sweep`)."""
        from tqdm.auto import tqdm

        config = self.config
        if config.checkpoint.resume:
            self.resume()
        last_eval: dict[str, float] = {}
        if self.step_number == 0 and config.eval.every:
            last_eval = self.evaluate()
        bar = tqdm(total=config.steps, initial=self.step_number, desc="GRPO", unit="update",
                   disable=not config.logging.progress)
        metrics: dict[str, float] = {}
        try:
            while self.step_number < config.steps:
                self.step_number += 1
                metrics = self.step()
                self.logger.log(self.step_number, metrics)
                warning = self.alarm.update(self.step_number, metrics)
                if warning:
                    warnings.warn(warning, stacklevel=2)
                bar.update()
                bar.set_postfix_str(self.logger.summary_line(metrics))
                final = self.step_number == config.steps
                evaluated = {}
                if config.eval.every and (final or self.step_number % config.eval.every == 0):
                    last_eval = evaluated = self.evaluate()
                if final or self.step_number % config.checkpoint.every == 0:
                    self.save()
                if on_update is not None:
                    on_update(self.step_number, {**metrics, **{f"eval/{k}": v for k, v in evaluated.items()}})
        finally:
            bar.close()
            plot_run(self.run_dir)
        return {"train": metrics, "eval": last_eval}

    def step(self) -> dict[str, float]:
        """One update: rollouts (with OFR), loss, optimizer steps, weight sync. Returns its metrics."""
        started = time.perf_counter()
        clock = {"generation": 0.0, "environment": 0.0, "scoring": 0.0}
        generated: list[Trajectory] = []
        tokens = [0]

        def generate_round(groups: int) -> list[list[Rollout]]:
            specs = [EpisodeSpec(task, self._next_seed(), (self.step_number, len(generated), g))
                     for g, task in enumerate(self.sampler.take(groups)) for _ in range(self.config.rollout.group_size)]
            trajectories = self.collector.collect(specs)
            stats = self.collector.stats
            clock["generation"] += stats.generate
            clock["environment"] += stats.wall - stats.generate
            tokens[0] += stats.generated_tokens
            generated.extend(trajectories)
            scoring = time.perf_counter()
            rollouts = self._to_rollouts(trajectories)
            clock["scoring"] += time.perf_counter() - scoring
            return rollouts

        if self.ofr is not None:
            selection = self.ofr.collect(generate_round)
            kept = list(selection.kept)
            ofr_metrics = {f"ofr/{key}": value for key, value in selection.metrics.items()
                           if isinstance(value, (int, float))}
        else:
            kept = [r for group in generate_round(self.config.prompts_per_round) for r in group]
            ofr_metrics = {}
        update_metrics = self._update(kept, clock)
        sync = self.backend.sync_weights(self.policy.model, self.config.rollout.weight_sync_timeout)
        metrics = {**episode_summary(generated), **ofr_metrics, **update_metrics,
                   "episodes": len(generated), "trained_trajectories": len(kept),
                   "time/generation": clock["generation"], "time/environment": clock["environment"],
                   "time/scoring": clock["scoring"], "time/update": clock["update"], "time/weight_sync": sync,
                   "time/step": time.perf_counter() - started,
                   "throughput/tokens_per_s": tokens[0] / clock["generation"] if clock["generation"] else 0.0,
                   "throughput/update_tokens_per_s": clock["update_tokens"] / clock["update"] if clock["update"] else 0.0,
                   "lr": self.scheduler.get_last_lr()[0]}
        return metrics

    def _next_seed(self) -> int:
        self.episodes_started += 1
        return self.config.seed * 1_000_003 + self.episodes_started

    def _to_rollouts(self, trajectories: list[Trajectory]) -> list[list[Rollout]]:
        return rollout_groups(trajectories, self.config.algorithm.normalize_std, self._images_consistent)

    def _images_consistent(self, trajectory: Trajectory) -> bool:
        grids = self.pixels(trajectory.images).get("image_grid_thw")
        try:
            check_visual_parity(trajectory.ids, trajectory.images, trajectory.image_records,
                                grids.tolist() if grids is not None else [], self.chat, trajectory.label)
        except VisualParityError:
            return False
        return True

    def _update(self, kept: list[Rollout], clock: dict[str, float]) -> dict[str, float]:
        import torch

        algorithm = self.config.algorithm
        items = [(r.extra["trajectory"], r.extra["advantage"]) for r in kept]
        if algorithm.mask_truncated:
            items = [(t, a) for t, a in items if t.end_reason != "max_turns"]
        items = [(t, a) for t, a in items if t.sampled_tokens > 0 and t.end_reason != "error"]
        random.shuffle(items)
        clock["update"], clock["update_tokens"] = 0.0, float(sum(len(t.ids) for t, _ in items))
        if not items:
            return {"loss": float("nan")}
        scoring = time.perf_counter()
        model = self.policy.model
        temperature, chunk_size = self.config.rollout.temperature, algorithm.logprob_chunk_size
        old: dict[int, Any] = {}
        reference: dict[int, Any] = {}
        mismatch = []
        with torch.no_grad(), self.policy.autocast():
            for chunk in _chunks(items, algorithm.micro_batch_size):
                batch = collate([t for t, _ in chunk], [a for _, a in chunk], self.chat, self.pixels)
                mask = batch["loss_mask"].bool()
                if algorithm.old_logprobs == "recompute":
                    recomputed = sequence_logprobs(model, batch, temperature, chunk_size).cpu()
                    mismatch.append((recomputed - batch["old_logprobs"]).abs()[mask])
                    for row, (t, _) in enumerate(chunk):
                        old[id(t)] = recomputed[row, :len(t.ids)]
                if self.reference is not None:
                    ref = sequence_logprobs(self.reference, batch, temperature, chunk_size).cpu()
                    for row, (t, _) in enumerate(chunk):
                        reference[id(t)] = ref[row, :len(t.ids)]
        clock["scoring"] += time.perf_counter() - scoring
        updating = time.perf_counter()
        totals: dict[str, float] = defaultdict(float)
        minibatches = 0
        model.train()
        for mini in _chunks(items, algorithm.mini_batch_size):
            token_count = float(sum(t.sampled_tokens for t, _ in mini))
            self.optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for micro in _chunks(mini, algorithm.micro_batch_size):
                batch = collate([t for t, _ in micro], [a for _, a in micro], self.chat, self.pixels)
                if old:
                    batch["behaviour_logprobs"] = batch["old_logprobs"]  # the sampler's, as collated
                    batch["old_logprobs"] = _pad_rows([old[id(t)] for t, _ in micro], batch["input_ids"].shape)
                ref = _pad_rows([reference[id(t)] for t, _ in micro], batch["input_ids"].shape) if reference else None
                with self.policy.autocast():
                    logprobs = sequence_logprobs(model, batch, temperature, chunk_size)
                loss, stats = grpo_loss(logprobs, batch, clip_low=algorithm.clip_low, clip_high=algorithm.clip_high,
                                        token_count=token_count, ref_logprobs=ref, kl_coef=algorithm.kl_coef,
                                        importance_cap=self.importance_cap)
                loss.backward()
                loss_sum += float(loss.detach())
                for key, value in stats.items():
                    totals[key] += value
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters, algorithm.max_grad_norm)
            self.optimizer.step()
            totals["loss"] += loss_sum
            totals["grad_norm"] += float(grad_norm)
            minibatches += 1
        self.scheduler.step()
        clock["update"] = time.perf_counter() - updating
        out = {key: value / minibatches for key, value in totals.items()}
        if mismatch:
            out["logprob_mismatch"] = float(torch.cat(mismatch).mean()) if sum(m.numel() for m in mismatch) else 0.0
        return out

    # --- evaluation, checkpoints ------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Greedy episodes on the first ``eval.episodes`` tasks of the evaluation split; logged as ``eval``."""
        if self.eval_collector is None:
            return {}
        tasks = self.eval_envs.envs[0].unwrapped.tasks
        count = min(self.config.eval.episodes, len(tasks))
        sampling = Sampling(max_new_tokens=self.config.rollout.max_new_tokens,
                            temperature=self.config.eval.temperature)
        trajectories = self.eval_collector.collect([EpisodeSpec(i, i, i) for i in range(count)], sampling)
        self.last_eval = trajectories
        metrics = episode_summary(trajectories)
        self.logger.log(self.step_number, metrics, kind="eval")
        return metrics

    def save(self) -> Path:
        extra = {"sampler": self.sampler.state(), "episodes_started": self.episodes_started}
        return save_checkpoint(self.run_dir, self.step_number, self.policy.model, self.policy.processors,
                               self.optimizer, self.scheduler, extra, keep=self.config.checkpoint.keep)

    def resume(self) -> bool:
        """Continue from the newest checkpoint of the run folder, if any (returns whether it did)."""
        folder = latest_checkpoint(self.run_dir)
        if folder is None:
            return False
        state = load_checkpoint(folder, self.policy.model, self.optimizer, self.scheduler)
        self.step_number = int(state["step"])
        self.sampler.load(state["extra"]["sampler"])
        self.episodes_started = int(state["extra"]["episodes_started"])
        self.logger.truncate(self.step_number)
        self.backend.sync_weights(self.policy.model, self.config.rollout.weight_sync_timeout)
        return True

    def close(self) -> None:
        for envs in (self.train_envs, self.eval_envs):
            if envs is not None:
                envs.close()
        self.backend.close()
        self.pool.close()
        self.logger.close()

    def __enter__(self) -> GRPOTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def importance_cap(config: GRPOConfig) -> float | None:
    """The truncation of the importance weights the update applies, or None when it does not correct the
    sampler (``algorithm.importance_correction``; ``auto`` corrects the vLLM backend only).

    >>> from trainers.config import load_config
    >>> importance_cap(load_config(GRPOConfig, overrides=["rollout.backend=vllm"]))
    2.0
    """
    algorithm = config.algorithm
    if algorithm.importance_correction not in ("auto", "truncated", "none"):
        raise ValueError("algorithm.importance_correction must be 'auto', 'truncated' or 'none', got "
                         f"{algorithm.importance_correction!r}")
    if algorithm.importance_correction == "truncated" and algorithm.old_logprobs != "recompute":
        raise ValueError("algorithm.importance_correction: truncated corrects recomputed old log-probs; set "
                         "algorithm.old_logprobs: recompute")
    corrected = algorithm.importance_correction == "truncated" or (
        algorithm.importance_correction == "auto" and config.rollout.backend == "vllm"
        and algorithm.old_logprobs == "recompute")
    return algorithm.importance_cap if corrected else None


def rollout_groups(trajectories: Sequence[Trajectory], normalize_std: bool,
                   images_consistent: Callable[[Trajectory], bool] = lambda trajectory: True) -> list[list[Rollout]]:
    """The round's trajectories grouped by prompt, each with its advantage computed now (before any filtering).
    A trajectory that ended in ``error`` (the generation backend failed) says nothing about its task: it gets an
    advantage of 0 and stays out of its group's baseline."""
    groups: dict[Any, list[Trajectory]] = defaultdict(list)
    for trajectory in trajectories:
        groups[trajectory.spec.group].append(trajectory)
    out = []
    for group_id, members in groups.items():
        played = [t for t in members if t.end_reason != "error"]
        advantage = dict(zip(map(id, played), group_advantages([t.reward for t in played], normalize_std)
                             if played else []))
        out.append([Rollout(group_id, t.reward, t.end_reason, t.tool_calls, len(t.ids), images_consistent(t),
                            t.info.get("images_shown", 0) > 0, {"trajectory": t, "advantage": float(advantage.get(
                                id(t), 0.0))}) for t in members])
    return out


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def _pad_rows(rows: Sequence[Any], shape: Sequence[int]) -> Any:
    import torch

    out = torch.zeros(tuple(shape))
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


__all__ = ["GRPOTrainer", "TaskSampler", "episode_summary", "make_envs"]
