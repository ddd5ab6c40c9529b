"""Tasks (one visual question each), task sets, and where they come from: loaders for JSONL files,
directories, generators and Hugging Face ``datasets``, and the :class:`TaskSource` interface every named
source of tasks offers (the built-in synthetic suites, the public benchmark loaders, the registry's suites).

A JSONL line looks like::

    {"id": "q1", "question": "What number is on the sign?", "answer": "42", "images": ["img/q1.png"],
     "grader": "numeric", "choices": null, "regions": [{"box": [10, 20, 60, 50]}], "split": "train"}

A video task has ``"videos": ["clips/q2.mp4"]`` (or ``"video"``) instead of, or as well as, images.
Relative media paths are resolved against the JSONL file's folder (or ``image_root``).

Example:
    >>> task = Task(id="t1", question="2+2?", answer="4", grader="numeric")
    >>> task.grade(r"\\boxed{4}").correct
    True
    >>> TaskSet("demo", [task]).split("train")  # no split labels: every task is in no named split
    Traceback (most recent call last):
    ...
    ValueError: task set 'demo' has no task with split 'train' (splits: none; use held_out_split())
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, runtime_checkable
from typing import Protocol as Interface

import numpy as np
from PIL import Image

from .deprecation import renamed_attributes
from .graders import Grade, get_grader

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

Media = str | os.PathLike | Image.Image


class TaskFormatError(ValueError):
    """A task source is malformed; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Region:
    """A ground-truth box ``(x0, y0, x1, y1)`` in pixels of input image ``image``."""

    box: tuple[float, float, float, float]
    image: int = 0
    label: str | None = None

    def __post_init__(self) -> None:
        box = tuple(float(v) for v in self.box)
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"a region box is (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {self.box!r}")
        object.__setattr__(self, "box", box)


@dataclass(frozen=True)
class Task:
    """One visual question.

    ``images`` are files (or in-memory PIL images); ``videos`` are video files; ``grader`` is a grader name, a
    ``{"name": ..., **params}`` mapping or a callable (see :mod:`pyvision_env.graders`); ``choices`` makes it
    multiple choice (answer is a letter); ``regions`` are ground-truth boxes for shaped rewards.
    """

    id: str
    question: str
    answer: str
    images: tuple[Media, ...] = ()
    grader: Any = "exact"
    choices: tuple[str, ...] | None = None
    regions: tuple[Region, ...] = ()
    split: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    videos: tuple[str | os.PathLike, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise ValueError(f"task id must be a non-empty string, got {self.id!r}")
        if not isinstance(self.question, str):
            raise ValueError(f"task {self.id}: question must be a string")
        object.__setattr__(self, "answer", str(self.answer))
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "videos", tuple(self.videos))
        if any(not isinstance(v, (str, os.PathLike)) for v in self.videos):
            raise ValueError(f"task {self.id}: videos must be file paths")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(str(c) for c in self.choices))
        object.__setattr__(self, "regions", tuple(r if isinstance(r, Region) else Region(**r)
                                                  for r in self.regions))
        get_grader(self.grader)  # fail now, not at the end of an episode

    @classmethod
    def minimal(cls, answer: str, question: str = "?", **kwargs: Any) -> Task:
        return cls(id=kwargs.pop("id", "task"), question=question, answer=answer, **kwargs)

    def grade(self, prediction: str) -> Grade:
        return get_grader(self.grader)(prediction, self)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (image files as strings); raises for in-memory images or callables."""
        if any(isinstance(m, Image.Image) for m in self.images) or callable(self.grader):
            raise TypeError(f"task {self.id}: in-memory images and callable graders cannot be written as JSON")
        return {"id": self.id, "question": self.question, "answer": self.answer,
                "images": [os.fspath(m) for m in self.images], "grader": self.grader,
                "choices": list(self.choices) if self.choices is not None else None,
                "regions": [{"box": list(r.box), "image": r.image, "label": r.label} for r in self.regions],
                "split": self.split, "metadata": dict(self.metadata),
                "videos": [os.fspath(v) for v in self.videos]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], root: Path | None = None) -> Task:
        unknown = set(data) - {"id", "question", "answer", "images", "image", "videos", "video", "grader",
                               "choices", "regions", "split", "metadata"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        missing = {"id", "question", "answer"} - set(data)
        if missing:
            raise ValueError(f"missing required fields {sorted(missing)}")
        def resolve(plural: str, singular: str) -> tuple[str, ...]:
            paths = data.get(plural, [data[singular]] if singular in data else [])
            paths = [paths] if isinstance(paths, str) else paths
            return tuple(str(root / p) if root is not None and not os.path.isabs(p) else str(p) for p in paths)

        return cls(id=str(data["id"]), question=data["question"], answer=data["answer"],
                   images=resolve("images", "image"), videos=resolve("videos", "video"),
                   grader=data.get("grader", "exact"), choices=data.get("choices"),
                   regions=tuple(data.get("regions") or ()), split=data.get("split"),
                   metadata=dict(data.get("metadata") or {}))


class TaskSet(Sequence[Task]):
    """An ordered, named collection of tasks with unique ids (a *suite*)."""

    def __init__(self, name: str, tasks: Iterable[Task], description: str = "") -> None:
        self.name = name
        self.description = description
        self._tasks = list(tasks)
        if not self._tasks:
            raise ValueError(f"task set {name!r} is empty")
        seen: set[str] = set()
        for task in self._tasks:
            if task.id in seen:
                raise ValueError(f"task set {name!r}: duplicate task id {task.id!r}")
            seen.add(task.id)
        self._by_id = {task.id: i for i, task in enumerate(self._tasks)}

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index):  # type: ignore[override]
        return self._tasks[index]

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        return f"TaskSet({self.name!r}, {len(self)} tasks)"

    def index_of(self, task_id: str) -> int:
        if task_id not in self._by_id:
            raise KeyError(f"task set {self.name!r} has no task {task_id!r}")
        return self._by_id[task_id]

    def split(self, name: str) -> TaskSet:
        """The tasks labelled with split ``name``."""
        chosen = [t for t in self._tasks if t.split == name]
        if not chosen:
            splits = sorted({t.split for t in self._tasks if t.split}) or ["none"]
            raise ValueError(f"task set {self.name!r} has no task with split {name!r} "
                             f"(splits: {', '.join(splits)}; use held_out_split())")
        return TaskSet(f"{self.name}:{name}", chosen, self.description)

    def held_out_split(self, fraction: float = 0.2, seed: int = 0) -> tuple[TaskSet, TaskSet]:
        """(train, held_out) by a stable hash of each task id: the same task always lands on the same side."""
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")

        def held(task: Task) -> bool:
            digest = hashlib.sha256(f"{seed}:{task.id}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64 < fraction

        train = [t for t in self._tasks if not held(t)]
        held_out = [t for t in self._tasks if held(t)]
        if not train or not held_out:
            raise ValueError(f"task set {self.name!r} of {len(self)} tasks is too small to split {fraction:g}")
        return TaskSet(f"{self.name}:train", train), TaskSet(f"{self.name}:held-out", held_out)


# --- sources ---------------------------------------------------------------------------------------


@runtime_checkable
class TaskSource(Interface):
    """A named source of tasks: ``load()`` returns its task set (with the source's defaults).

    The built-in synthetic suites (:class:`~pyvision_env.suites.SyntheticSuite`), the public benchmark loaders
    (``benchmarks.evaluation.public``) and the registry's suites (:class:`~pyvision_env.registry.Suite`) are
    task sources; :func:`~pyvision_env.registry.register_suite` accepts any.

    >>> from pyvision_env.suites import SUITES
    >>> isinstance(SUITES["zoom"], TaskSource)
    True
    """

    name: str
    description: str
    tags: tuple[str, ...]

    def load(self) -> TaskSet: ...


def load_jsonl(path: str | os.PathLike, name: str | None = None, image_root: str | os.PathLike | None = None,
               check_files: bool = True) -> TaskSet:
    """Tasks from a JSONL file (one task per line; blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {path} does not exist")
    root = Path(image_root) if image_root is not None else path.parent
    tasks = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("each line must be a JSON object")
                task = Task.from_json(data, root)
            except (ValueError, TypeError) as error:
                raise TaskFormatError(f"{path}:{number}: {error}") from None
            tasks.append(task)
    if check_files:
        _check_files(tasks, str(path))
    return TaskSet(name or path.stem, tasks)


def load_directory(path: str | os.PathLike, name: str | None = None) -> TaskSet:
    """Tasks from a folder: ``tasks.jsonl`` if present, else one ``<stem>.json`` per task whose images default
    to the files with the same stem (``q1.json`` + ``q1.png``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"task directory {path} does not exist")
    if (path / "tasks.jsonl").is_file():
        return load_jsonl(path / "tasks.jsonl", name or path.name)
    tasks = []
    for spec in sorted(path.glob("*.json")):
        try:
            data = json.loads(spec.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("the file must hold one JSON object")
            data.setdefault("id", spec.stem)
            if "images" not in data and "image" not in data:
                data["images"] = [p.name for p in sorted(path.glob(spec.stem + ".*"))
                                  if p.suffix.lower() in IMAGE_SUFFIXES]
            tasks.append(Task.from_json(data, path))
        except (ValueError, TypeError) as error:
            raise TaskFormatError(f"{spec}: {error}") from None
    if not tasks:
        raise TaskFormatError(f"{path} holds neither tasks.jsonl nor any <name>.json task file")
    _check_files(tasks, str(path))
    return TaskSet(name or path.name, tasks)


def generate_tasks(make_task: Callable[[np.random.Generator, int], Task], count: int, seed: int = 0,
                   name: str = "generated") -> TaskSet:
    """``count`` tasks from ``make_task(rng, index)``; task ``index`` gets its own RNG seeded by
    ``(seed, index)``, so it is the same whatever ``count`` is."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    return TaskSet(name, (make_task(np.random.default_rng([seed, i]), i) for i in range(count)))


def load_hf_dataset(dataset: Any, name: str, *, question: str = "question", answer: str = "answer",
                    image: str | None = "image", id: str | None = None, choices: str | None = None,
                    grader: Any = "exact") -> TaskSet:
    """Tasks from a Hugging Face ``datasets.Dataset`` (or any sequence of dict rows), by column names.

    The image column may hold PIL images (``datasets.Image`` feature), file paths, or lists of either.
    """
    tasks = []
    for index, row in enumerate(dataset):
        try:
            media = row[image] if image is not None else []
            media = list(media) if isinstance(media, (list, tuple)) else [media]
            tasks.append(Task(id=str(row[id]) if id else str(index), question=row[question],
                              answer=row[answer], images=tuple(m for m in media if m is not None),
                              choices=row[choices] if choices else None, grader=grader))
        except KeyError as error:
            raise TaskFormatError(f"dataset row {index} has no column {error}; columns: {sorted(row)}") from None
    return TaskSet(name, tasks)


def _check_files(tasks: Sequence[Task], source: str) -> None:
    missing = [(t.id, os.fspath(m)) for t in tasks for m in (*t.images, *t.videos)
               if not isinstance(m, Image.Image) and not os.path.isfile(m)]
    if missing:
        listed = "; ".join(f"{task_id}: {path}" for task_id, path in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{source}: {len(missing)} media files are missing — {listed}{more}")


__getattr__ = renamed_attributes(__name__, {"from_generator": "generate_tasks", "from_hf_dataset": "load_hf_dataset"})
