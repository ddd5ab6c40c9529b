"""What image operations code performed, read two ways: from the code's syntax, and from the kernel's record.

* :func:`operations_in_code` walks a cell's syntax tree (numpy slicing, OpenCV and PIL calls, import aliases):
  it sees what the code says, whatever library it uses, but a crop box only when it is a constant.
* :func:`read_operations` reads what the kernel recorded while the cell ran (ask for
  :data:`OPERATIONS_EXPRESSION` among the cell's ``expressions``): PIL operations only, but every crop box in
  input-image pixels, even when computed at run time or taken from a resized, turned or flipped copy. The
  recorder is installed by the engine in every kernel (``_pyvision_install_operation_trace`` in
  :mod:`.kernel_side`).

The environment's ``trace_operations=True`` puts the kernel's record of each step in ``info["operations"]``;
the CodeVision reward merges both sources.

Example:
    >>> sorted(operations_in_code("x = image_clue_0.rotate(90).crop((0, 0, 8, 8))").kinds)
    ['crop', 'rotate']
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# --- the kernel's record ---------------------------------------------------------------------------

OPERATIONS_EXPRESSION = "_pyvision_operations()"
"""Ask for this among a cell's ``expressions`` to get the image operations it ran (see
:func:`read_operations`)."""

OPERATION_KINDS = ("crop", "resize", "rotate", "flip", "enhance")
"""The kinds of operation both readers report."""


def read_operations(text: str | None) -> list[dict[str, Any]]:
    """The image operations a cell ran, from the text of :data:`OPERATIONS_EXPRESSION`.

    Each record has ``"op"`` (one of :data:`OPERATION_KINDS`); crops of an input image (or of anything derived
    from one by crops, resizes, copies, conversions, point maps and 90-degree turns or flips) also have
    ``"image"`` (its index) and ``"box"`` (``[x0, y0, x1, y1]`` in that input's pixels). Malformed text or
    records are skipped: the kernel runs the model's code, which could have replaced the function.

    >>> read_operations(repr('[{"op": "crop", "image": 0, "box": [1, 2, 3, 4]}, {"op": "rotate"}, 7]'))
    [{'op': 'crop', 'image': 0, 'box': [1.0, 2.0, 3.0, 4.0]}, {'op': 'rotate'}]
    """
    try:
        records = json.loads(ast.literal_eval(text)) if text else []
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return []
    operations = []
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict) or record.get("op") not in OPERATION_KINDS:
            continue
        operation: dict[str, Any] = {"op": record["op"]}
        index, box = record.get("image"), record.get("box")
        if type(index) is int and index >= 0 and isinstance(box, list) and len(box) == 4 \
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
            operation["image"], operation["box"] = index, [float(v) for v in box]
        operations.append(operation)
    return operations


# --- the code's syntax ------------------------------------------------------------------------------

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


def operations_in_code(code: str, state: dict[str, Any] | None = None, *, image_names: Sequence[str] = ()
                       ) -> Operations:
    """The image operations ``code`` performs, found by walking its syntax tree.

    Calls count by the called name whatever the module alias (``O.mirror(x)``, ``from PIL.ImageOps import
    mirror as m``), ``transpose`` by its argument (``Image.FLIP_LEFT_RIGHT``, ``Image.Transpose.ROTATE_90``, the
    integer codes; unknown at parse time counts as both rotate and flip), ``a[::-1]`` as a flip and ``a[y0:y1,
    x0:x1]`` as a crop. A crop's box is known when it is constant (names bound to constants earlier count) and
    its image is an input (``image_clue_N``, a name in ``image_names``, copies and crops of these, chained
    crops shifted). Pass the same ``state`` (a dict, empty at first) for the cells of one episode: names bound
    in one cell are known in the next. Code that does not parse does nothing.

    >>> ops = operations_in_code("from PIL import ImageOps as O\\nx = O.mirror(image_clue_0.crop((10, 20, 50, 60)))")
    >>> sorted(ops.kinds), ops.crops
    (['crop', 'flip'], [(0, (10.0, 20.0, 50.0, 60.0))])
    """
    state = {} if state is None else state
    for key in ("aliases", "consts", "origins"):
        state.setdefault(key, {})
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
