"""Reward wrappers for :class:`~pyvision_env.env.PyVisionEnv`, with the same episode statistics for every user.

* :class:`AccumulativeToolReward` (PyVision-RL): ``R = R_acc + c * n * 1[correct]``, ``n`` the tool turns.
* :class:`CodeVisionReward` (CodeVision's dense reward): outcome + format + crop-IoU shaping, minus penalties
  for excess calls, spurious rotate/flip and tool errors, with the accuracy gate for a missed crop.

Both pay their whole reward at the episode's last step (0 before), put the named terms in
``info["reward_components"]`` at every step (zeros until the end) and, at the last step,
``info["episode"] = {"return", "turns", "tool_calls", "tool_successes", "tool_errors", "images",
"visual_tokens", "components"}``. They offer ``areset``/``astep``, so
:class:`~pyvision_env.vector.PyVisionVectorEnv` accepts them.

Example::

    import gymnasium as gym, pyvision_env
    env = gym.make("PyVision/Zoom-v0", reward="accumulative")               # or reward={"name": "codevision"}
    env = AccumulativeToolReward(PyVisionEnv("zoom"), coefficient=0.1, count="successful", cap=3)
    ...                                                                     # step until the episode ends
    info["episode"]["return"], info["episode"]["components"]                # 1.2, {'accuracy': 1.0, ...}

Operations (for CodeVision) are read from the code of the turns that ran without error with
:func:`trace_operations` (an ``ast`` walk that resolves import aliases; see there for its limits).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from .tasks import Task

EPISODE_KEYS = ("return", "turns", "tool_calls", "tool_successes", "tool_errors", "images", "visual_tokens",
                "components")
"""The keys of ``info["episode"]`` at an episode's last step."""

# --- operation tracing ----------------------------------------------------------------------------

_CALL_OPS = {
    "crop": "crop",
    "rotate": "rotate", "rot90": "rotate",
    "mirror": "flip", "flip": "flip", "fliplr": "flip", "flipud": "flip",
    "autocontrast": "enhance", "equalize": "enhance", "equalizeHist": "enhance", "createCLAHE": "enhance",
    "Contrast": "enhance", "Brightness": "enhance", "Sharpness": "enhance", "invert": "enhance",
    "resize": "resize", "thumbnail": "resize",
}
_TRANSPOSE_OPS = {"FLIP_LEFT_RIGHT": ("flip",), "FLIP_TOP_BOTTOM": ("flip",), "ROTATE_90": ("rotate",),
                  "ROTATE_180": ("rotate",), "ROTATE_270": ("rotate",), "TRANSPOSE": ("flip",),
                  "TRANSVERSE": ("flip",)}
_TRANSPOSE_CODES = dict(enumerate(("FLIP_LEFT_RIGHT", "FLIP_TOP_BOTTOM", "ROTATE_90", "ROTATE_180", "ROTATE_270",
                                   "TRANSPOSE", "TRANSVERSE")))
_KEEPS_COORDINATES = {"copy", "convert", "array", "asarray", "load"}
"""Calls whose result has the pixel coordinates of their image (``img.copy()``, ``np.array(img)``)."""


@dataclass
class Operations:
    """What code did: operation kinds (``crop``, ``rotate``, ``flip``, ``enhance``, ``resize``) and the crop boxes
    whose coordinates are known, as ``(image_index, (x0, y0, x1, y1))`` in original-image pixels."""

    kinds: set[str] = field(default_factory=set)
    crops: list[tuple[int, tuple[float, float, float, float]]] = field(default_factory=list)


class _Tracer(ast.NodeVisitor):
    """Walks code, resolving import aliases, constant names and which names hold an input image at an offset."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state  # {"aliases": {...}, "consts": {...}, "origins": {name: (index, dx, dy)}}
        self.ops = Operations()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.state["aliases"][alias.asname or alias.name] = alias.name.rsplit(".", 1)[-1]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.state["aliases"][alias.asname or alias.name] = alias.name

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            if isinstance(target, ast.Name):
                value, origin = self._const(node.value), self._origin(node.value)
                self.state["consts"].pop(target.id, None)
                self.state["origins"].pop(target.id, None)
                if value is not None:
                    self.state["consts"][target.id] = value
                if origin is not None:
                    self.state["origins"][target.id] = origin

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        name = self._name(node.func)
        kind = _CALL_OPS.get(name)
        if name == "transpose" and isinstance(node.func, ast.Attribute) and node.args:
            self.ops.kinds.update(self._transpose_kinds(node.args[0]))
        elif name in ("transpose", "rotate") and not node.args:  # np.transpose(a) / cv2.rotate without code
            self.ops.kinds.add("flip" if name == "transpose" else "rotate")
        elif kind is not None:
            self.ops.kinds.add(kind)
        if name == "crop" and isinstance(node.func, ast.Attribute) and node.args:
            box, origin = self._const(node.args[0]), self._origin(node.func.value)
            if origin is not None and _is_box(box):
                index, dx, dy = origin
                self.ops.crops.append((index, (box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy)))

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self.generic_visit(node)
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        slices = [part for part in parts if isinstance(part, ast.Slice)]
        if any(part.step is not None and (self._const(part.step) or 0) < 0 for part in slices):
            self.ops.kinds.add("flip")
        elif len(parts) >= 2 and all(isinstance(part, ast.Slice) for part in parts[:2]) \
                and any(part.lower is not None or part.upper is not None for part in parts[:2]):
            self.ops.kinds.add("crop")
            rows, cols = parts[:2]
            bounds = tuple(self._const(b) for b in (cols.lower, rows.lower, cols.upper, rows.upper) if b is not None)
            origin = self._origin(node.value)
            if origin is not None and len(bounds) == 4 and _is_box(bounds):
                index, dx, dy = origin
                self.ops.crops.append((index, (bounds[0] + dx, bounds[1] + dy, bounds[2] + dx, bounds[3] + dy)))

    def _name(self, func: ast.expr) -> str:
        if isinstance(func, ast.Attribute):
            return func.attr
        if isinstance(func, ast.Name):
            return self.state["aliases"].get(func.id, func.id)
        return ""

    def _transpose_kinds(self, arg: ast.expr) -> tuple[str, ...]:
        if isinstance(arg, ast.Attribute) and arg.attr in _TRANSPOSE_OPS:
            return _TRANSPOSE_OPS[arg.attr]
        value = self._const(arg)
        if isinstance(value, int) and value in _TRANSPOSE_CODES:
            return _TRANSPOSE_OPS[_TRANSPOSE_CODES[value]]
        if isinstance(arg, ast.Name) and arg.id in _TRANSPOSE_OPS:  # from PIL.Image import ROTATE_90
            return _TRANSPOSE_OPS[arg.id]
        if isinstance(value, tuple) or (isinstance(arg, ast.Constant) and arg.value is None):
            return ("flip",)  # numpy's arr.transpose(1, 0, 2): a swap of axes
        return ("rotate", "flip")  # chosen at run time (Image.Transpose[name])

    def _origin(self, node: ast.expr) -> tuple[int, float, float] | None:
        """(image index, x offset, y offset) when ``node`` is an input image (or a crop of one) in its pixels."""
        if isinstance(node, ast.Name):
            if node.id.startswith("image_clue_") and node.id[11:].isdigit():
                return int(node.id[11:]), 0.0, 0.0
            return self.state["origins"].get(node.id)
        if isinstance(node, ast.Call):
            name = self._name(node.func)
            if name in _KEEPS_COORDINATES:
                source = node.func.value if isinstance(node.func, ast.Attribute) and name in ("copy", "convert") \
                    else (node.args[0] if node.args else None)
                return self._origin(source) if source is not None else None
            if name == "crop" and isinstance(node.func, ast.Attribute) and node.args:
                base, box = self._origin(node.func.value), self._const(node.args[0])
                if base is not None and _is_box(box):
                    return base[0], base[1] + box[0], base[2] + box[1]
        return None

    def _const(self, node: ast.expr | None) -> Any:
        """The value of a constant expression (numbers, tuples, known names, arithmetic), else None."""
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.Name):
            return self.state["consts"].get(node.id)
        if isinstance(node, (ast.Tuple, ast.List)):
            values = [self._const(element) for element in node.elts]
            return tuple(values) if all(v is not None for v in values) else None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            value = self._const(node.operand)
            return -value if isinstance(value, (int, float)) else None
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv)):
            left, right = self._const(node.left), self._const(node.right)
            if isinstance(left, (int, float)) and isinstance(right, (int, float)):
                if isinstance(node.op, ast.FloorDiv):
                    return left // right if right else None
                return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
        return None


def trace_operations(code: str, state: dict[str, Any] | None = None, *, image_names: Sequence[str] = ()
                     ) -> Operations:
    """The image operations ``code`` performs, found by walking its syntax tree.

    Calls count by the called name whatever the module alias (``O.mirror(x)``, ``from PIL.ImageOps import
    mirror as m``), ``transpose`` by its argument (``Image.FLIP_LEFT_RIGHT``, ``Image.Transpose.ROTATE_90``, the
    integer codes; unknown at parse time counts as both rotate and flip), ``a[::-1]`` as a flip and ``a[y0:y1,
    x0:x1]`` as a crop. A crop's box is known when it is constant (names bound to constants earlier count) and
    its image is an input (``image_clue_N``, a name in ``image_names``, copies and crops of these, chained
    crops shifted). Pass the same ``state`` for the cells of one episode. Code that does not parse does nothing.

    >>> ops = trace_operations("from PIL import ImageOps as O\\nx = O.mirror(image_clue_0.crop((10, 20, 50, 60)))")
    >>> sorted(ops.kinds), ops.crops
    (['crop', 'flip'], [(0, (10.0, 20.0, 50.0, 60.0))])
    """
    if state is None:
        state = {"aliases": {}, "consts": {}, "origins": {}}
    for name in image_names:
        state["origins"].setdefault(name, (0, 0.0, 0.0))
    tracer = _Tracer(state)
    try:
        tracer.visit(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        pass
    return tracer.ops


def _is_box(box: Any) -> bool:
    return isinstance(box, tuple) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box) \
        and box[0] < box[2] and box[1] < box[3]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes.

    >>> box_iou((0, 0, 10, 10), (5, 0, 15, 10))
    0.3333333333333333
    """
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# --- wrappers -------------------------------------------------------------------------------------


class _EpisodeRewardWrapper(gym.Wrapper[list, str, list, str]):
    """Tracks an episode's turns and pays :meth:`_components` (summed with :attr:`weights`) at its end."""

    weights: dict[str, float]

    def __init__(self, env: gym.Env) -> None:
        gym.Wrapper.__init__(self, env)
        if not hasattr(env.unwrapped, "protocol") or not hasattr(env.unwrapped, "tasks"):
            raise TypeError(f"{type(self).__name__} wraps a PyVisionEnv, got {type(env.unwrapped).__name__}")
        self._begin(None)

    in_spec = False
    """Set when the environment's own ``reward=`` argument applied this wrapper: its spec already says so."""

    @property
    def spec(self) -> gym.envs.registration.EnvSpec | None:
        return self.env.spec if self.in_spec else super().spec

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[list, dict[str, Any]]:
        observation, info = self.env.reset(seed=seed, options=options)
        self._begin(info)
        return observation, info

    def step(self, action: str) -> tuple[list, float, bool, bool, dict[str, Any]]:
        self._action = action
        return self._after_step(*self.env.step(action))

    async def areset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                     ) -> tuple[list, dict[str, Any]]:
        """Like :meth:`reset`, around the wrapped environment's ``areset`` coroutine."""
        observation, info = await self.env.get_wrapper_attr("areset")(seed=seed, options=options)
        self._begin(info)
        return observation, info

    async def astep(self, action: str) -> tuple[list, float, bool, bool, dict[str, Any]]:
        """Like :meth:`step`, around the wrapped environment's ``astep`` coroutine."""
        self._action = action
        return self._after_step(*await self.env.get_wrapper_attr("astep")(action))

    def _begin(self, info: Mapping[str, Any] | None) -> None:
        self._task: Task | None = None
        if info is not None:
            tasks = self.env.unwrapped.tasks
            self._task = tasks[tasks.index_of(info["task_id"])]
        self._tool_turns = self._successful_turns = self._tool_calls = self._tool_errors = 0
        self._action = ""
        self._on_begin()

    def _after_step(self, observation: list, reward: float, terminated: bool, truncated: bool,
                    info: dict[str, Any]) -> tuple[list, float, bool, bool, dict[str, Any]]:
        calls, errors = info["tool_calls"] - self._tool_calls, info["tool_errors"] - self._tool_errors
        self._tool_calls, self._tool_errors = info["tool_calls"], info["tool_errors"]
        if calls:
            self._tool_turns += 1
            self._successful_turns += errors == 0
            self._on_tool_turn(info, errors == 0)
        components = dict.fromkeys(self.weights, 0.0)
        total = 0.0
        if terminated or truncated:
            components = self._components(info)
            total = sum(self.weights[name] * value for name, value in components.items())
            info["episode"] = {"return": total, "turns": info["turn"], "tool_calls": info["tool_calls"],
                               "tool_successes": info["tool_calls"] - info["tool_errors"],
                               "tool_errors": info["tool_errors"], "images": info["images_shown"],
                               "visual_tokens": info["visual_tokens"], "components": components}
        info["reward_components"] = components
        return observation, total, terminated, truncated, info

    def _on_begin(self) -> None:
        """Reset per-episode state of a subclass."""

    def _on_tool_turn(self, info: Mapping[str, Any], ok: bool) -> None:
        """See the ``info`` of a turn that ran code (``ok``: no call of it failed)."""

    def _components(self, info: Mapping[str, Any]) -> dict[str, float]:
        raise NotImplementedError


class AccumulativeToolReward(_EpisodeRewardWrapper, gym.utils.RecordConstructorArgs):
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

    def _components(self, info: Mapping[str, Any]) -> dict[str, float]:
        n = self._tool_turns if self.count == "executed" else self._successful_turns
        paid = n if self.cap is None else min(n, self.cap)
        return {"accuracy": float(info["score"] or 0.0), "tool_bonus": float(paid if info["correct"] else 0),
                "tool_turns": float(n)}


class CodeVisionReward(_EpisodeRewardWrapper, gym.utils.RecordConstructorArgs):
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

    Operations come from two sources, merged: the kernel's record of what ran (the wrapper turns on the
    environment's ``trace_operations``): PIL crops with their boxes in input pixels even when computed at run
    time or taken from a turned, flipped or resized copy; and :func:`trace_operations` on the code (numpy
    slicing, OpenCV). The kernel runs the policy's code, which could forge that record, so a kernel crop box
    counts only when the turn's code visibly crops, and once code mentions the kernel's private
    ``_pyvision_`` names the record is ignored for the rest of the episode.

    >>> env = CodeVisionReward(PyVisionEnv("zoom"), usage_weight=0.5)  # doctest: +SKIP
    """

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
        super().__init__(env)
        env.unwrapped.trace_operations = True

    def _on_begin(self) -> None:
        self._trace_state: dict[str, Any] = {"aliases": {}, "consts": {}, "origins": {}}
        self._kernel_trusted = True
        self.operations = Operations()

    def _on_tool_turn(self, info: Mapping[str, Any], ok: bool) -> None:
        code = info.get("code") or ""
        image_names: tuple[str, ...] = ()
        if self.env.unwrapped.protocol.name == "codevision":  # stateless: a fresh namespace with `image`
            self._trace_state = {"aliases": {}, "consts": {}, "origins": {}}
            calls = self.env.unwrapped.protocol.parse(self._action).calls
            image_names = ("image",) if calls and (calls[0].image_index or 0) == 0 else ()
        ops = trace_operations(code, self._trace_state, image_names=image_names)
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

    def _components(self, info: Mapping[str, Any]) -> dict[str, float]:
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


REWARDS: dict[str, type[_EpisodeRewardWrapper]] = {"accumulative": AccumulativeToolReward,
                                                   "codevision": CodeVisionReward}


def make_reward_wrapper(env: gym.Env, spec: str | Mapping[str, Any] | None, *, in_spec: bool = False
                        ) -> gym.Env:
    """Wrap ``env`` in the reward named by ``spec``: a name of :data:`REWARDS` or ``{"name": ..., **kwargs}``;
    ``None`` returns ``env``. ``in_spec``: the environment's spec holds ``reward=spec`` (``gym.make``), so the
    wrapper adds nothing to it (re-making from the spec wraps once).

    >>> make_reward_wrapper(PyVisionEnv("zoom"), {"name": "accumulative", "cap": 3})  # doctest: +SKIP
    """
    if spec is None:
        return env
    options = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = options.pop("name", None)
    if name not in REWARDS:
        raise ValueError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
    wrapper = REWARDS[name](env, **options)
    wrapper.in_spec = in_spec
    return wrapper
