"""Oversampling–filtering–ranking (OFR) of rollout groups before a policy update (PyVision-RL).

Pure Python + numpy (no torch), so it can be tested and used by any trainer. One update's data is chosen in
three steps:

1. oversample — :meth:`OFRSelector.collect` calls a generator for ``ceil(oversampling × target groups)`` groups
   per round, round after round, until enough rollouts survive or ``max_generation_rounds`` is reached;
2. filter — drop groups whose rewards are all equal (zero std: zero advantage under a group baseline) and
   rollouts that ended by a dropped end reason, are longer than ``max_length``, have an image-placeholder
   mismatch, never received a tool image (optional) or fail a user predicate;
3. rank — order the survivors by their group's ranking key (population reward std, highest first) and keep the
   top ``target_size`` trajectories or groups.

If too few survive, the exhaustion policy decides: ``"raise"`` (:class:`OFRExhausted`), ``"partial"`` (train
on what survived) or ``"backfill"`` (fill up with zero-std groups; see :class:`OFRConfig`). It never loops
forever. :class:`OFRConfig` is also the ``ofr:`` section of the trainer's configuration.

Advantages are not computed here: compute them with :func:`group_advantages` on each group as generated,
before filtering (PyVision-RL computes them per generation batch, so dropping a trajectory never moves its
group's baseline), and carry them in :attr:`Rollout.extra` (HDPO adds :func:`tool_efficiency_advantages`).

Example::

    >>> groups = [[Rollout("a", 1.0), Rollout("a", 0.0)], [Rollout("b", 1.0), Rollout("b", 1.0)]]
    >>> selection = OFRSelector(OFRConfig(target_size=2)).select(groups)
    >>> [r.group_id for r in selection.kept], selection.metrics["solve_all"]
    (['a', 'a'], 0.5)
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from typing import Any, Literal

import numpy as np

from pyvision_env.deprecation import REMOVED_IN

DEFAULT_DROP_END_REASONS = ("over_length", "max_images", "max_visual_tokens", "error")
"""End reasons dropped by default. ``over_length`` is the generator's (the response hit the length limit);
``max_images`` and ``max_visual_tokens`` are the env's image limits (``pyvision_env.env.TRUNCATING``); ``error``
is the trainer's (the generation backend failed, so the trajectory holds nothing to learn from). PyVision-RL
drops over-length and image-limit trajectories and keeps ``answered``, ``max_turns`` and the model's errors
(``format_error``, ``tool_error``); ``timeout`` and ``execution_budget`` are kept too unless listed."""

DEFAULT_GROUP_SIZE = 8
"""Rollouts per group when the selector is not told (PyVision-RL's G)."""

UNITS = ("trajectories", "groups")
EXHAUSTION_POLICIES = ("raise", "partial", "backfill")


@dataclass(frozen=True)
class Rollout:
    """One trajectory of a group (all rollouts of one prompt share ``group_id``).

    ``images_consistent`` says the image-placeholder token count matches the image count;
    ``received_tool_image`` that a tool call produced at least one image; ``extra`` holds anything else
    (advantages, token ids, user fields read by predicates).

    >>> Rollout("task-7", 1.2, tool_calls=2, length=900, received_tool_image=True, extra={"advantage": 0.4})
    ... # doctest: +ELLIPSIS
    Rollout(group_id='task-7', reward=1.2, end_reason='answered', tool_calls=2, length=900, ...)
    """

    group_id: Hashable
    reward: float
    end_reason: str = "answered"
    tool_calls: int = 0
    length: int = 0
    images_consistent: bool = True
    received_tool_image: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


Group = Sequence[Rollout]
"""The rollouts of one prompt, in generation order."""


def group_reward_std(group: Group) -> float:
    """Population std (ddof 0, as verl) of the group's rewards; exactly 0.0 when all rewards are equal.

    >>> group_reward_std([Rollout("a", 1.0), Rollout("a", 0.0)])
    0.5
    """
    rewards = [r.reward for r in group]
    return 0.0 if max(rewards) == min(rewards) else float(np.std(rewards))


def group_advantages(rewards: Sequence[float], normalize_std: bool = False, eps: float = 1e-6) -> np.ndarray:
    """Advantages of one group: reward minus the group mean, divided by ``std + eps`` if ``normalize_std``.

    PyVision-RL uses the mean baseline only (std normalisation made training unstable there). Call it on
    each group as generated, before filtering.

    >>> group_advantages([1.0, 0.0, 0.5, 0.5]).tolist()
    [0.5, -0.5, 0.0, 0.0]
    """
    values = np.asarray(rewards, dtype=float)
    advantages = values - values.mean()
    return advantages / (values.std() + eps) if normalize_std else advantages


def tool_efficiency_advantages(tool_calls: Sequence[int], correct: Sequence[bool], eps: float = 1e-6) -> np.ndarray:
    """HDPO's conditional tool-efficiency advantages of one group (Metis, "Act Wisely", arXiv 2604.08545).

    The efficiency reward ``1 / (tool calls + 1)`` is compared among the group's correct rollouts only: minus their
    mean, divided by their sample std (ddof 1, as the released code) plus ``eps``. Incorrect rollouts get 0, and so
    does every rollout of a group with fewer than 2 correct ones (nothing to compare).

    >>> tool_efficiency_advantages([0, 1, 3, 2], [True, True, True, False]).round(4).tolist()
    [1.0911, -0.2182, -0.8729, 0.0]
    >>> tool_efficiency_advantages([0, 4], [True, False]).tolist()
    [0.0, 0.0]
    """
    efficiency = 1.0 / (np.asarray(tool_calls, dtype=float) + 1.0)
    qualifying = np.asarray(correct, dtype=bool)
    advantages = np.zeros(len(efficiency))
    if qualifying.sum() >= 2:
        compared = efficiency[qualifying]
        advantages[qualifying] = (compared - compared.mean()) / (compared.std(ddof=1) + eps)
    return advantages


@dataclass(frozen=True)
class OFRConfig:
    """What one update keeps and how hard :meth:`OFRSelector.collect` tries (also the trainer's ``ofr:``
    section; the rollouts per group are the selector's ``group_size``, the trainer's ``rollout.group_size``).

    >>> OFRConfig(target_size=512, oversampling=0.5).groups_per_round(group_size=8)  # PyVision-RL: 32 prompts
    32
    """

    enabled: bool = True
    """Whether the trainer selects with OFR (off: it trains on one round of groups as generated)."""
    target_size: int = 32
    """Trajectories (``unit="trajectories"``, PyVision-RL: 512) or groups (``unit="groups"``) per update."""
    unit: Literal["trajectories", "groups"] = "trajectories"
    """``trajectories``: rank all surviving rollouts by their group's key, keep the top ``target_size`` (a
    group may be cut at the boundary). ``groups``: keep the top ``target_size`` groups, each with its surviving
    rollouts."""
    oversampling: float = 1.0
    """Groups generated per round per group kept: ``ceil(oversampling × target groups)`` (at least 1), target
    groups being ``target_size`` or ``ceil(target_size / group_size)``. PyVision-RL: 32 of 64 → 0.5."""
    max_generation_rounds: int = 4
    """Bound on generator calls per :meth:`OFRSelector.collect` (no bound is the known way to stall)."""
    drop_zero_std: bool = True
    """Drop groups whose rewards are all equal. With the accumulative tool bonus, an all-correct group with
    different tool counts has std > 0 and survives."""
    drop_end_reasons: tuple[str, ...] = DEFAULT_DROP_END_REASONS
    """Trajectories that ended so are not trained on (see :data:`DEFAULT_DROP_END_REASONS`)."""
    max_length: int | None = None
    """Drop rollouts longer than this many tokens (PyVision-RL: 128k); ``None``: no limit."""
    drop_image_mismatch: bool = True
    require_tool_image: bool = False
    """Drop rollouts that never received a tool-produced image (PyVision-RL: on for its image tasks)."""
    predicates: tuple[Callable[[Rollout], bool], ...] = ()
    """User filters (in Python, not in YAML): a rollout is kept only if every predicate returns true (drop
    reason ``predicate:<function name>``)."""
    rank_key: Callable[[Group], float] = group_reward_std
    """Ranking key of a group (all its rollouts as generated), highest first; ties keep generation order (in
    Python, not in YAML)."""
    exhaustion: Literal["raise", "partial", "backfill"] = "partial"
    """When fewer than ``target_size`` survive: ``raise`` :class:`OFRExhausted`; ``partial``: return the survivors;
    ``backfill``: add rollouts of groups dropped *only* for zero std (they pass every other filter), best key
    first then generation order, up to the target — they carry zero advantage under a group baseline, so they
    keep the batch size without adding signal; rollouts dropped by any other filter are never used. If still
    short, the result is partial."""
    success_threshold: float = 1.0
    """A rollout solved its task if ``reward >= success_threshold`` (for the solve-none/all/partial metrics)."""
    group_size: InitVar[int | None] = None
    """Deprecated: give ``OFRSelector(config, group_size=...)``."""

    def __post_init__(self, group_size: int | None) -> None:
        if group_size is not None:
            warnings.warn(f"OFRConfig(group_size=...) is deprecated and goes in {REMOVED_IN}; use "
                          "OFRSelector(config, group_size=...)", DeprecationWarning, stacklevel=3)
        object.__setattr__(self, "_legacy_group_size", group_size)
        if self.target_size < 1:
            raise ValueError(f"target_size must be >= 1, got {self.target_size}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if not self.oversampling > 0:
            raise ValueError(f"oversampling must be > 0, got {self.oversampling}")
        if self.max_generation_rounds < 1:
            raise ValueError("max_generation_rounds must be >= 1")
        if self.exhaustion not in EXHAUSTION_POLICIES:
            raise ValueError(f"exhaustion must be one of {EXHAUSTION_POLICIES}, got {self.exhaustion!r}")
        if isinstance(self.drop_end_reasons, str):
            raise TypeError("drop_end_reasons must be a tuple of end reasons, not a string")

    def target_groups(self, group_size: int) -> int:
        """The target in groups of ``group_size`` rollouts."""
        return self.target_size if self.unit == "groups" else math.ceil(self.target_size / group_size)

    def groups_per_round(self, group_size: int) -> int:
        """Groups asked of the generator per round, for groups of ``group_size`` rollouts."""
        return max(1, math.ceil(self.oversampling * self.target_groups(group_size)))


class OFRExhausted(RuntimeError):
    """Too few rollouts survived filtering and the exhaustion policy is ``"raise"``."""

    def __init__(self, message: str, survived: int, target: int, generated_groups: int, rounds: int | None):
        super().__init__(message)
        self.survived, self.target, self.generated_groups, self.rounds = survived, target, generated_groups, rounds


@dataclass
class Selection:
    """The outcome of one selection.

    ``kept``: the rollouts to train on, in rank order (backfilled ones last); ``kept_groups``: the same
    rollouts grouped, in rank order; ``dropped``: every other input rollout with its reason (``zero_std``,
    ``end_reason:<reason>``, ``max_length``, ``image_mismatch``, ``no_tool_image``, ``predicate:<name>`` — the
    first that applies, in that order — or ``over_target`` for survivors ranked out); ``short``: fewer than
    the target were kept; ``metrics``: see :meth:`OFRSelector.select`.
    """

    kept: list[Rollout]
    kept_groups: list[list[Rollout]]
    dropped: list[tuple[Rollout, str]]
    metrics: dict[str, float]
    short: bool


@dataclass
class _Screened:
    """One group after filtering: per rollout ``None`` (survives) or its drop reason."""

    group: Group
    std: float
    key: float
    reasons: list[str | None]
    zero_std_only: list[bool]
    """Per rollout: dropped for zero std but passes every trajectory filter (a backfill candidate)."""

    def survivors(self) -> list[Rollout]:
        return [r for r, reason in zip(self.group, self.reasons) if reason is None]


class OFRSelector:
    """Filters and ranks groups of ``group_size`` rollouts into one update's batch (see the module docstring).

    >>> selector = OFRSelector(OFRConfig(target_size=1, unit="groups"), group_size=2)
    >>> selection = selector.collect(lambda n: [[Rollout("t", 0.0), Rollout("t", 0.0)]] * n)
    >>> selection.short, selection.metrics["generation_rounds"], selection.metrics["solve_none"]
    (True, 4.0, 1.0)
    """

    def __init__(self, config: OFRConfig, group_size: int | None = None):
        group_size = group_size or config._legacy_group_size or DEFAULT_GROUP_SIZE
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.config, self.group_size = config, group_size

    @property
    def groups_per_round(self) -> int:
        """Groups asked of the generator per round."""
        return self.config.groups_per_round(self.group_size)

    def select(self, groups: Sequence[Group]) -> Selection:
        """Filter, rank and truncate ``groups``; apply the exhaustion policy if too few survive.

        Metrics (floats): ``groups``, ``rollouts`` (input sizes); ``solve_none``, ``solve_all``,
        ``solve_partial`` (fractions of input groups by ``reward >= success_threshold``); ``kept``,
        ``kept_groups``, ``kept_ratio`` (kept / input rollouts); ``std_mean_before`` (mean reward std of the
        input groups), ``std_mean_after`` (of the kept groups); ``tool_calls_kept``, ``tool_calls_dropped``
        (mean tool calls per rollout); ``backfilled`` (rollouts); ``short`` (0/1); ``dropped/<reason>``
        (counts). Means over nothing are NaN.
        """
        return self._finish([self._screen(group) for group in groups], rounds=None)

    def collect(self, generate_batch: Callable[[int], Sequence[Group]]) -> Selection:
        """Call ``generate_batch(groups_per_round)`` until the target survives or after
        ``max_generation_rounds`` calls, then select from everything generated (metrics of :meth:`select`
        plus ``generation_rounds`` and ``generated_groups``)."""
        config = self.config
        screened: list[_Screened] = []
        survived = 0
        rounds = 0
        while rounds < config.max_generation_rounds and survived < config.target_size:
            rounds += 1
            for group in generate_batch(self.groups_per_round):
                item = self._screen(group)
                screened.append(item)
                if config.unit == "groups":
                    survived += bool(item.survivors())
                else:
                    survived += len(item.survivors())
        return self._finish(screened, rounds=rounds)

    def _screen(self, group: Group) -> _Screened:
        config = self.config
        if not group:
            raise ValueError("a group must hold at least one rollout")
        if any(r.group_id != group[0].group_id for r in group):
            raise ValueError(f"a group mixes group ids: {sorted({str(r.group_id) for r in group})}")
        if not all(math.isfinite(r.reward) for r in group):
            raise ValueError(f"non-finite reward in group {group[0].group_id!r}")
        std = group_reward_std(group)
        zero_std = config.drop_zero_std and std == 0.0
        trajectory_reasons = [self._trajectory_reason(r) for r in group]
        return _Screened(group=group, std=std, key=float(config.rank_key(group)),
                         reasons=["zero_std" if zero_std else reason for reason in trajectory_reasons],
                         zero_std_only=[zero_std and reason is None for reason in trajectory_reasons])

    def _trajectory_reason(self, rollout: Rollout) -> str | None:
        config = self.config
        if rollout.end_reason in config.drop_end_reasons:
            return f"end_reason:{rollout.end_reason}"
        if config.max_length is not None and rollout.length > config.max_length:
            return "max_length"
        if config.drop_image_mismatch and not rollout.images_consistent:
            return "image_mismatch"
        if config.require_tool_image and not rollout.received_tool_image:
            return "no_tool_image"
        for predicate in config.predicates:
            if not predicate(rollout):
                return f"predicate:{getattr(predicate, '__name__', repr(predicate))}"
        return None

    def _finish(self, screened: list[_Screened], rounds: int | None) -> Selection:
        config = self.config
        order = sorted(range(len(screened)), key=lambda i: -screened[i].key)  # stable: ties in generation order
        taken: dict[int, list[Rollout]] = {}  # group index -> kept rollouts, in rank order of the groups
        count = 0
        for i in order:
            survivors = screened[i].survivors()
            if not survivors or count >= config.target_size:
                continue
            if config.unit == "trajectories":
                survivors = survivors[:config.target_size - count]
            taken[i] = survivors
            count += len(survivors) if config.unit == "trajectories" else 1
        survived = sum(len(s.survivors()) for s in screened)
        if config.unit == "groups":
            survived = sum(bool(s.survivors()) for s in screened)

        backfilled: dict[int, list[Rollout]] = {}
        if count < config.target_size and config.exhaustion == "raise":
            reasons = Counter(reason for s in screened for reason in s.reasons if reason is not None)
            where = f" in {rounds} generation rounds" if rounds is not None else ""
            raise OFRExhausted(
                f"OFR: only {survived} of the {config.target_size} target {config.unit} survived filtering "
                f"({len(screened)} groups, {sum(len(s.group) for s in screened)} rollouts generated{where}; "
                f"dropped: {dict(sorted(reasons.items()))}). Use exhaustion='partial' or 'backfill', or more "
                "max_generation_rounds.",
                survived=survived, target=config.target_size, generated_groups=len(screened), rounds=rounds)
        if count < config.target_size and config.exhaustion == "backfill":
            for i in order:
                candidates = [r for r, ok in zip(screened[i].group, screened[i].zero_std_only) if ok]
                if not candidates or count >= config.target_size:
                    continue
                if config.unit == "trajectories":
                    candidates = candidates[:config.target_size - count]
                backfilled[i] = candidates
                count += len(candidates) if config.unit == "trajectories" else 1

        kept_groups = list(taken.values()) + list(backfilled.values())
        kept = [r for group in kept_groups for r in group]
        kept_ids = {id(r) for r in kept}
        dropped = [(r, reason or "over_target") for s in screened for r, reason in zip(s.group, s.reasons)
                   if id(r) not in kept_ids]
        short = count < config.target_size
        kept_std = [screened[i].std for i in (*taken, *backfilled)]
        metrics = self._metrics(screened, kept, dropped, kept_std, short)
        metrics["backfilled"] = float(sum(len(g) for g in backfilled.values()))
        if rounds is not None:
            metrics["generation_rounds"] = float(rounds)
            metrics["generated_groups"] = float(len(screened))
        return Selection(kept=kept, kept_groups=kept_groups, dropped=dropped, metrics=metrics, short=short)

    def _metrics(self, screened: list[_Screened], kept: list[Rollout], dropped: list[tuple[Rollout, str]],
                 kept_std: list[float], short: bool) -> dict[str, float]:
        threshold = self.config.success_threshold
        solved = [sum(r.reward >= threshold for r in s.group) for s in screened]
        groups = len(screened)
        rollouts = sum(len(s.group) for s in screened)
        metrics = {
            "groups": float(groups),
            "rollouts": float(rollouts),
            "solve_none": _ratio(sum(n == 0 for n in solved), groups),
            "solve_all": _ratio(sum(n == len(s.group) for n, s in zip(solved, screened)), groups),
            "solve_partial": _ratio(sum(0 < n < len(s.group) for n, s in zip(solved, screened)), groups),
            "kept": float(len(kept)),
            "kept_groups": float(len(kept_std)),
            "kept_ratio": _ratio(len(kept), rollouts),
            "std_mean_before": _mean([s.std for s in screened]),
            "std_mean_after": _mean(kept_std),
            "tool_calls_kept": _mean([r.tool_calls for r in kept]),
            "tool_calls_dropped": _mean([r.tool_calls for r, _ in dropped]),
            "short": float(short),
        }
        metrics.update({f"dropped/{reason}": float(n) for reason, n in sorted(Counter(
            reason for _, reason in dropped).items())})
        return metrics


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else math.nan


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan
