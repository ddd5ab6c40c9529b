"""Record episodes of :class:`~pyvision_env.env.PyVisionEnv` as JSONL, with images as PNG files.

:class:`RecordEpisodes` wraps an environment (any wrapper stack around a ``PyVisionEnv``) and appends one
JSON line per episode to ``out_dir/episodes.jsonl`` when the episode ends. Images go to
``out_dir/images/<sha256>.png``, named by the hash of their pixels, so an image shown again (the task's
image in every episode of a task) is stored once. Several wrappers, threads or processes may share one
``out_dir``: every line is written whole under a lock.

A line holds::

    {"format": "pyvision-episode/1", "episode_id": "…", "finished": true, "task_id": "q1",
     "question": "…", "answer": "42", "choices": null, "seed": 0, "metadata": {…},
     "started_at": "2025-…Z", "ended_at": "…", "duration_s": 3.2,
     "messages": [{"step": 0, "role": "user", "content": [{"type": "text", "text": "…"},
                   {"type": "image", "path": "images/ab…12.png", "width": 640, "height": 480}]}, …],
     "reset_info": {…}, "steps": [{"reward": 0.0, "terminated": false, "truncated": false,
                                   "info": {"turn": 1, "action_kind": "code", "code": "…", …},
                                   "timings": {"total_ms": 41.2, …}}, …],
     "totals": {"return": 1.0, "turns": 3, "tool_calls": 2, "tool_errors": 0, "format_errors": 0,
                "images_shown": 1, "visual_tokens": 1290, "end_reason": "answered", "correct": true,
                "score": 1.0}}

``messages`` is the whole conversation in order; ``step`` is 0 for the observation of ``reset()`` and
``k`` for the assistant response of step ``k`` and the observation it got; ``timings`` are the environment's
(``env.timings``, milliseconds per phase). An episode abandoned by a new ``reset()`` or by ``close()`` is
written too, with ``"finished": false`` and ``"abandoned_by"``.

Example::

    env = RecordEpisodes(PyVisionEnv("Zoom"), "runs/zoom", metadata={"model": "qwen2.5-vl-7b"})
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(response)   # ... until the episode ends
    record = read_episodes("runs/zoom")[-1]
    record["totals"]["end_reason"], record.messages()               # 'answered', [Message(...), ...]
"""

from __future__ import annotations

import copy
import datetime
import fcntl
import hashlib
import json
import math
import os
import threading
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from PIL import Image

from ..messages import ImagePart, Message, TextPart
from .core import PyVisionWrapper, StepResult

FORMAT = "pyvision-episode/1"
EPISODES_FILE = "episodes.jsonl"
IMAGES_DIR = "images"
TOTAL_KEYS = ("tool_calls", "tool_errors", "format_errors", "images_shown", "visual_tokens", "end_reason",
              "correct", "score")

_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class EpisodeFileError(ValueError):
    """An episodes file is unreadable; the message names the file and line."""


class RecordingWarning(UserWarning):
    """Lines of an episodes file were skipped (typically the last line of a killed process)."""


class RecordEpisodes(PyVisionWrapper, gym.utils.RecordConstructorArgs):
    """Write every episode of a ``PyVisionEnv`` to ``out_dir/episodes.jsonl``, images to ``out_dir/images``.

    Args:
        env: a :class:`~pyvision_env.env.PyVisionEnv`, or a wrapper stack around one.
        out_dir: the run folder (created if needed); may be shared by several wrappers and processes.
        metadata: JSON-serialisable data stored in every record (model name, run id, sampling settings).

    Example::

        env = RecordEpisodes(PyVisionEnv(tasks), "runs/r1", metadata={"model": "x"})
    """

    blocking_hooks = True  # files are written in a worker thread under the asyncio API

    def __init__(self, env: gym.Env, out_dir: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None
                 ) -> None:
        gym.utils.RecordConstructorArgs.__init__(self, out_dir=os.fspath(out_dir), metadata=metadata)
        super().__init__(env)
        self.out_dir = Path(out_dir)
        self.images_dir = self.out_dir / IMAGES_DIR
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / EPISODES_FILE
        self.metadata_json = _jsonable(dict(metadata or {}))
        self._record: dict[str, Any] | None = None
        self._started = 0.0

    # --- hooks ------------------------------------------------------------------------------------

    def before_reset(self) -> None:
        self._abandon("reset")

    def after_reset(self, observation: list[Message], info: dict[str, Any], seed: int | None
                    ) -> tuple[list[Message], dict[str, Any]]:
        self._begin(observation, info, seed)
        return observation, info

    def after_step(self, action: str, observation: list[Message], reward: float, terminated: bool,
                   truncated: bool, info: dict[str, Any]) -> StepResult:
        self._record_step(action, observation, reward, terminated, truncated, info)
        return observation, reward, terminated, truncated, info

    def before_close(self) -> None:
        self._abandon("close")

    def after_fork(self) -> None:
        """The fork records its own episode: the same beginning, a new id, and the id it was forked from."""
        if self._record is not None:
            original = self._record
            self._record = copy.deepcopy(original)
            self._record.update(episode_id=uuid.uuid4().hex, forked_from=original["episode_id"])

    # --- recording --------------------------------------------------------------------------------

    def _begin(self, observation: Sequence[Message], info: Mapping[str, Any], seed: int | None) -> None:
        base = self.env.unwrapped
        task = base.tasks[base.tasks.index_of(info["task_id"])]
        self._started = time.perf_counter()
        self._record = {
            "format": FORMAT, "episode_id": uuid.uuid4().hex, "finished": False, "task_id": task.id,
            "question": task.question, "answer": task.answer,
            "choices": list(task.choices) if task.choices is not None else None, "seed": seed,
            "protocol": base.protocol.name, "metadata": self.metadata_json, "started_at": _now(),
            "messages": self._messages(observation, 0), "reset_info": _jsonable(info), "steps": [],
        }

    def _record_step(self, action: str, observation: list[Message], reward: float, terminated: bool,
                     truncated: bool, info: dict[str, Any]) -> None:
        record = self._record
        if record is None:  # the episode began before this wrapper saw a reset()
            return
        step = len(record["steps"]) + 1
        response = self.env.unwrapped.protocol.assistant_message(action)
        record["messages"] += self._messages([response, *observation], step)
        record["steps"].append({"reward": float(reward), "terminated": bool(terminated),
                                "truncated": bool(truncated), "info": _jsonable(info),
                                "timings": dict(self.env.unwrapped.timings)})
        if terminated or truncated:
            record["finished"] = True
            self._write()

    def _abandon(self, by: str) -> None:
        if self._record is not None:
            self._record["abandoned_by"] = by
            self._write()

    def _write(self) -> None:
        record, self._record = self._record, None
        assert record is not None
        last = record["steps"][-1]["info"] if record["steps"] else record["reset_info"]
        record["ended_at"] = _now()
        record["duration_s"] = round(time.perf_counter() - self._started, 3)
        record["totals"] = {"return": sum(step["reward"] for step in record["steps"]),
                            "turns": len(record["steps"]), **{key: last.get(key) for key in TOTAL_KEYS}}
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        append_line(self.path, line)

    def _messages(self, messages: Sequence[Message], step: int) -> list[dict[str, Any]]:
        out = []
        for message in messages:
            content = [{"type": "text", "text": part.text} if isinstance(part, TextPart)
                       else self._image_ref(part.image) for part in message.content]
            entry: dict[str, Any] = {"step": step, "role": message.role, "content": content}
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
            if message.tool_calls:
                entry["tool_calls"] = _jsonable(list(message.tool_calls))
            out.append(entry)
        return out

    def _image_ref(self, image: Image.Image) -> dict[str, Any]:
        name = f"{image_digest(image)}.png"
        target = self.images_dir / name
        if not target.exists():
            temporary = target.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
            image.save(temporary, format="PNG")
            os.replace(temporary, target)  # atomic: a concurrent writer of the same image wins harmlessly
        return {"type": "image", "path": f"{IMAGES_DIR}/{name}", "width": image.width, "height": image.height}


def image_digest(image: Image.Image) -> str:
    """The sha256 (hex) of an image's mode, size and pixels: the name of its file in a run folder.

    >>> image_digest(Image.new("RGB", (2, 2))) == image_digest(Image.new("RGB", (2, 2)))
    True
    """
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def append_line(path: Path, line: str) -> None:
    """Append one ``\\n``-terminated line whole: a per-file lock in this process and ``flock`` across
    processes; a line left unterminated by a killed writer is ended first, so it never swallows this one."""
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(path.resolve(), threading.Lock())
    data = line.encode("utf-8")
    with lock:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)  # also releases the flock


# --- reading -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EpisodeRecord:
    """One recorded episode: ``data`` is the JSON object; image paths in it are relative to ``root``.

    Index it like the dict (``record["totals"]["return"]``); :meth:`messages` rebuilds the conversation.
    """

    data: dict[str, Any]
    root: Path
    line: int

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def image_path(self, part: Mapping[str, Any]) -> Path:
        """The file of an ``{"type": "image", "path": ...}`` content part."""
        return self.root / part["path"]

    def messages(self) -> list[Message]:
        """The conversation as :class:`~pyvision_env.messages.Message` objects with PIL images.

        Raises FileNotFoundError (naming the file) when an image file is missing.
        """
        out = []
        for entry in self.data["messages"]:
            parts = [TextPart(item["text"]) if item["type"] == "text" else ImagePart(self._load(item))
                     for item in entry["content"]]
            out.append(Message(entry["role"], tuple(parts), entry.get("tool_call_id"),
                               tuple(entry.get("tool_calls") or ())))
        return out

    def _load(self, part: Mapping[str, Any]) -> Image.Image:
        path = self.image_path(part)
        if not path.is_file():
            raise FileNotFoundError(f"episode {self.data.get('episode_id')} (line {self.line}): image {path} "
                                    "is missing")
        with Image.open(path) as image:
            image.load()
            return image.copy()


def episodes_file(path: str | os.PathLike) -> Path:
    """The episodes JSONL of a run folder (``<dir>/episodes.jsonl``, or ``<dir>/episodes/episodes.jsonl`` in an
    evaluation's run folder), or ``path`` itself when it is a file."""
    path = Path(path)
    if path.is_dir():
        nested = path / "episodes" / EPISODES_FILE
        path = nested if nested.is_file() and not (path / EPISODES_FILE).is_file() else path / EPISODES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no episodes file at {path} (give a run folder holding {EPISODES_FILE}, or "
                                "the JSONL file)")
    return path


def read_episodes(path: str | os.PathLike, *, strict: bool = False) -> list[EpisodeRecord]:
    """The records of a run folder or episodes JSONL, in file order.

    Unreadable lines — the last line of a process killed while writing — are skipped with a
    :class:`RecordingWarning` naming them; ``strict=True`` raises :class:`EpisodeFileError` instead. A file
    that holds lines but no record at all (not an episodes file) always raises.

    Example::

        records = read_episodes("runs/zoom")
        accuracy = sum(bool(r["totals"]["correct"]) for r in records) / len(records)
    """
    path = episodes_file(path)
    records, bad = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                data = json.loads(raw)
                if not isinstance(data, dict) or data.get("format") != FORMAT:
                    raise ValueError(f"not a {FORMAT} record")
            except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                if strict:
                    raise EpisodeFileError(f"{path}:{number}: unreadable episode record: {error}") from None
                bad.append((number, str(error)))
                continue
            records.append(EpisodeRecord(data, path.parent, number))
    if bad and not records:
        raise EpisodeFileError(f"{path} holds no episode records ({len(bad)} unreadable lines; line "
                               f"{bad[0][0]}: {bad[0][1]})")
    if bad:
        lines = ", ".join(str(number) for number, _ in bad[:10]) + (" …" if len(bad) > 10 else "")
        warnings.warn(f"{path}: skipped {len(bad)} unreadable line(s) ({lines}; e.g. a writer killed "
                      f"mid-line): {bad[0][1]}", RecordingWarning, stacklevel=2)
    return records


def _jsonable(value: Any) -> Any:
    """Plain JSON data: mappings become dicts, numpy scalars numbers, the rest repr."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return repr(value)


def _now() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
