"""What every public-benchmark loader shares: the registry of loaders, layout errors that show the expected
files, readers for the released formats (JSON, JSONL, TSV, Parquet) and embedded images written once to a
cache.

A loader is a function ``load(root: Path) -> TaskSet`` registered with :func:`public_benchmark`::

    @public_benchmark("vstar", "V* Bench", layout=\"\"\"
        direct_attributes/<stem>.jpg + <stem>.json
        relative_position/<stem>.jpg + <stem>.json\"\"\")
    def load(root: Path) -> TaskSet: ...

Problems with the files raise :class:`LayoutError`, whose message names the benchmark, the file and the
expected layout.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import sys
import textwrap
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

from PIL import Image, UnidentifiedImageError

from pyvision_env.graders import Grade
from pyvision_env.suites.common import cache_root
from pyvision_env.tasks import Task, TaskFormatError, TaskSet

Loader = Callable[[Path], TaskSet]


class LayoutError(TaskFormatError):
    """A benchmark's local copy is missing or malformed; the message shows the layout the loader expects."""


DATA_ENV = "PYVISION_BENCHMARKS"
"""Environment variable naming the folder that holds one sub-folder per benchmark (its name)."""


@dataclass(frozen=True)
class PublicBenchmark:
    """A public benchmark the project can read from a local copy of its released files: a
    :class:`~pyvision_env.tasks.TaskSource` whose ``load()`` reads ``root``, by default
    ``$PYVISION_BENCHMARKS/<name>``."""

    name: str
    description: str
    """The benchmark's title (``"V* Bench"``)."""
    layout: str
    """The files the loader reads, relative to the benchmark's folder (shown in every :class:`LayoutError`)."""
    loader: Loader
    video: bool = False
    root: Path | None = None
    """The local copy ``load()`` reads when given no folder (:meth:`at` sets it)."""

    @property
    def tags(self) -> tuple[str, ...]:
        return ("public", "video") if self.video else ("public",)

    def at(self, root: str | os.PathLike) -> PublicBenchmark:
        """This benchmark read from ``root``."""
        return dataclasses.replace(self, root=Path(root))

    def load(self, root: str | os.PathLike | None = None) -> TaskSet:
        """The benchmark's tasks from ``root`` (its local folder; default: :attr:`root`, else
        ``$PYVISION_BENCHMARKS/<name>``)."""
        if root is None:
            root = self.root or (Path(os.environ[DATA_ENV]) / self.name if os.environ.get(DATA_ENV) else None)
            if root is None:
                raise self.error(f"no local copy given (pass its folder or set ${DATA_ENV})", Path("<folder>"))
        root = Path(root)
        if not root.is_dir():
            raise self.error(f"{root} is not a folder", root)
        return self.loader(root)

    def error(self, problem: str, root: Path) -> LayoutError:
        return LayoutError(f"{self.description} ({self.name}): {problem}.\nExpected layout under {root}:\n"
                           f"{textwrap.indent(self.layout, '  ')}")


PUBLIC_BENCHMARKS: dict[str, PublicBenchmark] = {}
"""Every public benchmark loader, by name (filled as the loader modules are imported)."""


def public_benchmark(name: str, title: str, layout: str, *, video: bool = False) -> Callable[[Loader], Loader]:
    """Register the decorated ``load(root) -> TaskSet`` as benchmark ``name`` (see the module example)."""

    def register(loader: Loader) -> Loader:
        if name in PUBLIC_BENCHMARKS:
            raise ValueError(f"public benchmark {name!r} is registered twice")
        PUBLIC_BENCHMARKS[name] = PublicBenchmark(name, title, textwrap.dedent(layout).strip("\n"), loader, video)
        return loader

    return register


def benchmark(name: str) -> PublicBenchmark:
    if name not in PUBLIC_BENCHMARKS:
        raise KeyError(f"unknown public benchmark {name!r}; known: {', '.join(sorted(PUBLIC_BENCHMARKS))}")
    return PUBLIC_BENCHMARKS[name]


def require(name: str, root: Path, *relative: str) -> Path:
    """``root / relative[0]``, or the first of several alternatives that exists; a :class:`LayoutError` if none."""
    for candidate in relative:
        if (root / candidate).exists():
            return root / candidate
    raise benchmark(name).error(f"{' or '.join(relative)} not found", root)


def read_json(name: str, root: Path, path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise benchmark(name).error(f"{path} is not readable JSON ({error})", root) from None


def read_jsonl(name: str, root: Path, path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` for each non-blank line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise benchmark(name).error(f"{path} is not readable ({error})", root) from None
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise benchmark(name).error(f"{path} line {number} is not JSON ({error})", root) from None
            if not isinstance(record, dict):
                raise benchmark(name).error(f"{path} line {number} is not a JSON object", root)
            yield number, record


def read_tsv(name: str, root: Path, path: Path) -> Iterator[dict[str, str]]:
    """Rows of a tab-separated file with a header (VLMEvalKit's format; cells may hold base64 images), one at
    a time: HR-Bench 8K's TSV is gigabytes of base64, and only the row being read is ever in memory."""
    csv.field_size_limit(sys.maxsize)
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            yield from csv.DictReader(handle, delimiter="\t")
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise benchmark(name).error(f"{path} is not a readable TSV file ({error})", root) from None


PARQUET_BATCH_ROWS = 32
"""Rows decoded at a time by :func:`read_parquet` (cells may hold whole images)."""


def read_parquet(name: str, root: Path, path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a Parquet file (Hugging Face's release format) as dicts, :data:`PARQUET_BATCH_ROWS` decoded at
    a time."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise benchmark(name).error(f"reading {path} needs pyarrow (pip install 'pyvision-rl[benchmarks]')",
                                    root) from None
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            yield from batch.to_pylist()
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise benchmark(name).error(f"{path} is not a readable Parquet file ({error})", root) from None


def require_fields(name: str, root: Path, record: dict[str, Any], fields: Sequence[str], where: str) -> None:
    missing = [field for field in fields if field not in record]
    if missing:
        raise benchmark(name).error(f"{where} lacks the field(s) {', '.join(missing)}", root)


def cached_image(name: str, root: Path, data: bytes | str, where: str) -> str:
    """Write an embedded image (bytes, base64 text or a Hugging Face ``{"bytes": ...}`` cell) once into the
    cache (``$PYVISION_CACHE/public/<name>/<digest>.png``) and return its path."""
    if isinstance(data, dict):
        data = data.get("bytes") or b""
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise benchmark(name).error(f"{where}: the image is not valid base64", root) from None
    digest = hashlib.sha256(data).hexdigest()[:24]
    path = cache_root() / "public" / name / f"{digest}.png"
    if not path.is_file():
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except (UnidentifiedImageError, OSError) as error:
            raise benchmark(name).error(f"{where}: the embedded image cannot be decoded ({error})", root) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        image.save(partial, format="PNG")
        partial.replace(path)
    return str(path)


_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Z])[).:]\s*")


def option_texts(options: Sequence[str]) -> tuple[str, ...]:
    """Options without their letter prefix: ``["A. cat", "(B) dog"]`` -> ``("cat", "dog")``."""
    return tuple(_OPTION_PREFIX.sub("", str(option), count=1).strip() for option in options)


def letters(count: int) -> str:
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:count]


def accuracy_by(results: Iterable[Mapping[str, Any]], field: str) -> dict[str, float]:
    """Mean correctness per value of ``metadata[field]`` (as text, in order of appearance); a list value
    counts toward each of its items."""
    outcomes: dict[str, list[float]] = defaultdict(list)
    for result in results:
        values = result["metadata"].get(field)
        for value in values if isinstance(values, list) else [values]:
            outcomes[str(value)].append(float(bool(result["correct"])))
    return {value: fmean(scores) for value, scores in outcomes.items()}


def letter_grade(letter: str | None, task: Task, *, shown: str = "", unread: str = "") -> Grade:
    """The grade of the option letter a benchmark's rule read from a response. When it read none (``None``
    or ``""``), ``shown`` stands as what was read and ``unread`` says why."""
    correct = letter == task.answer
    return Grade(float(correct), correct, letter or shown, "" if letter else unread)
