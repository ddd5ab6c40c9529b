"""Rewards paid at an episode's last step, against interaction collapse.

* :class:`AccumulativeToolReward` (PyVision-RL): ``R = R_acc + c * n * 1[correct]``, ``n`` the tool turns.
* :class:`CodeVisionReward` (CodeVision's dense reward): outcome + format + crop-IoU shaping, minus penalties
  for excess calls, spurious rotate/flip and tool errors, with the accuracy gate for a missed crop.

Both pay their whole reward at the episode's last step (0 before) and put the named terms in
``info["reward_components"]`` at every step (zeros until the end);
:class:`~pyvision_env.wrappers.EpisodeStatistics` outside them sums those into ``info["episode"]``.

Example::

    import gymnasium as gym, pyvision_env
    env = gym.make("PyVision/Zoom-v0", reward="accumulative")               # or reward={"name": "codevision"}
    env = EpisodeStatistics(AccumulativeToolReward(PyVisionEnv("zoom"), coefficient=0.1, count="successful"))
    ...                                                                     # step until the episode ends
    info["episode"]["return"], info["episode"]["components"]                # 1.2, {'accuracy': 1.0, ...}
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, ClassVar

import gymnasium as gym

from ..execution.operations import Operations, box_iou, operations_in_code
from ..messages import Message
from ..tasks import Task
from .core import PyVisionWrapper, StepResult


class EpisodeReward(PyVisionWrapper):
    """Base of the rewards: tracks an episode's tool turns and pays :meth:`components` (summed with
    :attr:`weights`) at its last step.

    Subclasses set :attr:`weights` and implement :meth:`components`; they may see each turn that ran code
    (:meth:`on_tool_turn`) and reset their own state per episode (:meth:`on_episode_start`).
    """

    weights: dict[str, float]
    """Each component's weight in the reward (0: logged only)."""
    env_options: ClassVar[dict[str, Any]] = {}
    """:class:`~pyvision_env.env.PyVisionEnv` options the reward needs (:func:`~pyvision_env.make.make_env`
    sets them)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._start_episode(None)

    def after_reset(self, observation: list[Message], info: dict[str, Any], seed: int | None
                    ) -> tuple[list[Message], dict[str, Any]]:
        self._start_episode(info)
        return observation, info

    def after_step(self, action: str, observation: list[Message], reward: float, terminated: bool,
                   truncated: bool, info: dict[str, Any]) -> StepResult:
        calls, errors = info["tool_calls"] - self._tool_calls, info["tool_errors"] - self._tool_errors
        self._tool_calls, self._tool_errors = info["tool_calls"], info["tool_errors"]
        if calls:
            self._tool_turns += 1
            self._successful_turns += errors == 0
            self.on_tool_turn(action, info, errors == 0)
        components = dict.fromkeys(self.weights, 0.0)
        total = 0.0
        if terminated or truncated:
            components = self.components(info)
            total = sum(self.weights[name] * value for name, value in components.items())
        info["reward_components"] = components
        return observation, total, terminated, truncated, info

    def _start_episode(self, info: Mapping[str, Any] | None) -> None:
        self._task: Task | None = None
        if info is not None:
            tasks = self.env.unwrapped.tasks
            self._task = tasks[tasks.index_of(info["task_id"])]
        self._tool_turns = self._successful_turns = self._tool_calls = self._tool_errors = 0
        self.on_episode_start()

    def on_episode_start(self) -> None:
        """Reset per-episode state of a subclass."""

    def on_tool_turn(self, action: str, info: Mapping[str, Any], ok: bool) -> None:
        """See a turn that ran code: its ``action`` and ``info`` (``ok``: no call of it failed)."""

    def components(self, info: Mapping[str, Any]) -> dict[str, float]:
        """The named terms of the reward, from the last step's ``info``."""
        raise NotImplementedError


class AccumulativeToolReward(EpisodeReward, gym.utils.RecordConstructorArgs):
    """PyVision-RL's reward ``R = R_acc + c * n * 1[correct]``, paid at the episode's last step.

    Args:
        env: a PyVisionEnv or a wrapper stack around one.
        coefficient: ``c``, the bonus per tool turn.
        count: ``"executed"`` (every turn that ran code, as in the paper) or ``"successful"`` (turns none of
            whose calls failed) for ``n``.
        cap: at most this many turns earn the bonus (``None``: the turn limit is the cap).

    Components (weights): ``accuracy`` (the grader's score; 1), ``tool_bonus`` (the paid turns when correct,
    else 0; ``c``), ``tool_turns`` (``n`` whatever the outcome; 0, logged only).

    >>> env = AccumulativeToolReward(PyVisionEnv("zoom"), count="successful", cap=3)  # doctest: +SKIP
    """

    def __init__(self, env: gym.Env, coefficient: float = 0.1, count: str = "executed", cap: int | None = None
                 ) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, coefficient=coefficient, count=count, cap=cap)
        if count not in ("executed", "successful"):
            raise ValueError(f"count must be 'executed' or 'successful', got {count!r}")
        if cap is not None and cap < 0:
            raise ValueError(f"cap must be None or non-negative, got {cap}")
        self.coefficient, self.count, self.cap = coefficient, count, cap
        self.weights = {"accuracy": 1.0, "tool_bonus": coefficient, "tool_turns": 0.0}
        super().__init__(env)

    def components(self, info: Mapping[str, Any]) -> dict[str, float]:
        n = self._tool_turns if self.count == "executed" else self._successful_turns
        paid = n if self.cap is None else min(n, self.cap)
        return {"accuracy": float(info["score"] or 0.0), "tool_bonus": float(paid if info["correct"] else 0),
                "tool_turns": float(n)}


class CodeVisionReward(EpisodeReward, gym.utils.RecordConstructorArgs):
    """CodeVision's dense reward, paid at the episode's last step::

        R = gate * R_acc + format_weight * R_fmt + a * R_mandatory + b * R_necessity
            + exact_weight * R_exact + emerge_weight * R_emerge
            - g * (C_usage + R_spurious) - tool_error_weight * errors

    * ``R_fmt``: 1 when the episode ended with an answer and had no format error.
    * ``R_mandatory``: the mean over the task's checkable ``required_ops`` (crop, rotate, flip, enhance) of
      their score: for crop the best IoU of a crop box with the task's regions, else 1 when done.
    * ``R_necessity``: the share of the performed kinds (crop, rotate, flip, enhance) that were required.
    * ``R_exact``: 1 when the performed kinds are exactly the required ones and a required crop reached
      ``exact_iou``.
    * ``R_emerge``: 1 for a correct answer that also used a crop or enhancement the task did not require
      (tool use beyond the annotation; rotate and flip are left to ``R_spurious``).
    * ``C_usage``: code calls beyond ``max(2, len(required_ops))``, over that allowance, at most 1.
    * ``R_spurious``: 1 when rotate or flip ran and neither was required.
    * gate: when a crop was required and ``R_mandatory < gate_threshold``, ``R_acc`` is multiplied by it.

    The released script publishes the weights (``exact`` 0.1, ``emerge`` 0.2) but not the definitions of
    ``R_exact``, ``R_emerge`` and the usage scale; the ones above are ours.

    Operations come from two sources, merged (:mod:`pyvision_env.execution.operations`): the kernel's record
    of what ran, which needs the environment's ``trace_operations=True`` (``gym.make(..., reward="codevision")``
    sets it): PIL crops with their boxes in input pixels even when computed at run time or taken from a turned,
    flipped or resized copy; and :func:`~pyvision_env.execution.operations_in_code` on the code (numpy slicing,
    OpenCV). The kernel runs the policy's code, which could forge that record, so a kernel crop box counts only
    when the turn's code visibly crops, and once code mentions the kernel's private ``_pyvision_`` names the
    record is ignored for the rest of the episode.

    >>> env = CodeVisionReward(PyVisionEnv("zoom", trace_operations=True), usage_weight=0.5)  # doctest: +SKIP
    """

    env_options = {"trace_operations": True}

    def __init__(self, env: gym.Env, format_weight: float = 0.1, mandatory_weight: float = 1.0,
                 necessity_weight: float = 0.0, exact_weight: float = 0.1, emerge_weight: float = 0.2,
                 usage_weight: float = 0.5, tool_error_weight: float = 0.05, gate_threshold: float = 0.1,
                 exact_iou: float = 0.5) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, format_weight=format_weight, mandatory_weight=mandatory_weight, necessity_weight=necessity_weight,
            exact_weight=exact_weight, emerge_weight=emerge_weight, usage_weight=usage_weight,
            tool_error_weight=tool_error_weight, gate_threshold=gate_threshold, exact_iou=exact_iou)
        self.gate_threshold, self.exact_iou = gate_threshold, exact_iou
        self.weights = {"accuracy": 1.0, "format": format_weight, "mandatory": mandatory_weight,
                        "necessity": necessity_weight, "exact": exact_weight, "emerge": emerge_weight,
                        "usage": -usage_weight, "spurious": -usage_weight, "tool_errors": -tool_error_weight,
                        "crop_iou": 0.0, "gate": 0.0}
        if not getattr(env.unwrapped, "trace_operations", False):
            raise ValueError("CodeVisionReward reads the kernel's record of image operations: create the "
                             "environment with trace_operations=True (gym.make(..., reward='codevision') does)")
        super().__init__(env)

    def on_episode_start(self) -> None:
        self._code_state: dict[str, Any] = {}
        self._kernel_trusted = True
        self.operations = Operations()

    def after_fork(self) -> None:
        self._code_state = copy.deepcopy(self._code_state)
        self.operations = copy.deepcopy(self.operations)

    def on_tool_turn(self, action: str, info: Mapping[str, Any], ok: bool) -> None:
        code = info.get("code") or ""
        image_names: tuple[str, ...] = ()
        if self.env.unwrapped.protocol.name == "codevision":  # stateless: a fresh namespace with `image`
            self._code_state = {}
            calls = self.env.unwrapped.protocol.parse(action).calls
            image_names = ("image",) if calls and (calls[0].image_index or 0) == 0 else ()
        ops = operations_in_code(code, self._code_state, image_names=image_names)
        if not ok:  # a failed cell's operations do not count
            return
        self.operations.kinds |= ops.kinds
        self.operations.crops += ops.crops
        self._kernel_trusted = self._kernel_trusted and "_pyvision" not in code
        if self._kernel_trusted:
            for record in info.get("operations") or ():
                self.operations.kinds.add(record["op"])
                if "box" in record and "crop" in ops.kinds:
                    self.operations.crops.append((record["image"], tuple(record["box"])))

    def components(self, info: Mapping[str, Any]) -> dict[str, float]:
        assert self._task is not None
        checkable = {"crop", "rotate", "flip", "enhance"}
        required = set(self._task.metadata.get("required_ops") or ()) & checkable
        done = self.operations.kinds & checkable
        iou = max((box_iou(box, region.box) for index, box in self.operations.crops
                   for region in self._task.regions if region.image == index), default=0.0)
        scores = [iou if op == "crop" else float(op in done) for op in sorted(required)]
        mandatory = sum(scores) / len(scores) if scores else 0.0
        gate = mandatory if "crop" in required and mandatory < self.gate_threshold else 1.0
        allowed = max(2, len(self._task.metadata.get("required_ops") or ()))
        return {
            "accuracy": gate * float(info["score"] or 0.0),
            "format": float(info["end_reason"] == "answered" and info["format_errors"] == 0),
            "mandatory": mandatory,
            "necessity": len(done & required) / len(done) if done else 0.0,
            "exact": float(bool(required) and done == required and ("crop" not in required or iou >= self.exact_iou)),
            "emerge": float(bool(info["correct"]) and bool((done - required) & {"crop", "enhance"})),
            "usage": min(1.0, max(0, info["tool_calls"] - allowed) / allowed),
            "spurious": float(bool(done & {"rotate", "flip"}) and not required & {"rotate", "flip"}),
            "tool_errors": float(info["tool_errors"]),
            "crop_iou": iou,
            "gate": gate,
        }


REWARDS: dict[str, type[EpisodeReward]] = {"accumulative": AccumulativeToolReward, "codevision": CodeVisionReward}


def reward_spec(spec: str | Mapping[str, Any]) -> tuple[type[EpisodeReward], dict[str, Any]]:
    """The reward class and its options named by ``spec``: a name of :data:`REWARDS` or
    ``{"name": ..., **options}``.

    >>> reward_spec({"name": "accumulative", "cap": 3})
    (<class 'pyvision_env.wrappers.rewards.AccumulativeToolReward'>, {'cap': 3})
    """
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = options.pop("name", None)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
    return REWARDS[name], options


def make_reward_wrapper(env: gym.Env, spec: str | Mapping[str, Any] | None) -> gym.Env:
    """Wrap ``env`` in the reward named by ``spec`` (see :func:`reward_spec`); ``None`` returns ``env``.

    >>> make_reward_wrapper(PyVisionEnv("zoom"), {"name": "accumulative", "cap": 3})  # doctest: +SKIP
    """
    if spec is None:
        return env
    reward, options = reward_spec(spec)
    return reward(env, **options)
