"""Public benchmarks read from local copies of their released files — nothing is downloaded.

Each loader reads one benchmark's released format into a :class:`~pyvision_env.tasks.TaskSet` (multiple-choice
options as ``choices``, the authors' categories in ``metadata``) and raises a
:class:`~benchmarks.evaluation.public.common.LayoutError` naming the expected layout when files are missing or
malformed. Each benchmark is a :class:`~benchmarks.evaluation.public.common.PublicBenchmark`, a
:class:`~pyvision_env.tasks.TaskSource`. :func:`register_public_benchmarks` registers every benchmark found
under a data folder as a Gymnasium environment.

Example::

    from benchmarks.evaluation.public import register_public_benchmarks, load_public_benchmark
    register_public_benchmarks("/data/benchmarks")       # /data/benchmarks/vstar, .../hr-bench-4k, ...
    env = gym.make("PyVision/Vstar-v0", protocol="pyvision", max_turns=6)
    load_public_benchmark("vstar", "/data/benchmarks/vstar")   # -> TaskSet('vstar', 191 tasks)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from pyvision_env import registry
from pyvision_env.tasks import TaskSet

from .common import DATA_ENV, PUBLIC_BENCHMARKS, LayoutError, PublicBenchmark, benchmark

LOADER_MODULES = ("vstar", "hrbench", "mme_realworld", "mathvista", "mathverse", "wemath", "dynamath", "vsibench",
                  "videomme")
"""Modules whose import registers their loaders (``@public_benchmark``)."""


def _import_loaders() -> None:
    for module in LOADER_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def public_benchmarks() -> dict[str, PublicBenchmark]:
    """Every public benchmark the project can read, by name."""
    _import_loaders()
    return dict(sorted(PUBLIC_BENCHMARKS.items()))


def load_public_benchmark(name: str, root: str | os.PathLike) -> TaskSet:
    """The tasks of benchmark ``name`` from its local folder ``root``."""
    _import_loaders()
    return benchmark(name).load(Path(root))


def register_from_environment() -> list[str]:
    """Register the public benchmarks under ``$PYVISION_BENCHMARKS`` (none when it is not set); the
    ``pyvision.suites`` entry point of this package, so ``pyvision tasks`` lists them."""
    return register_public_benchmarks() if os.environ.get(DATA_ENV) else []


def register_public_benchmarks(data_root: str | os.PathLike | None = None, *, replace: bool = True) -> list[str]:
    """Register, as ``PyVision/<Name>-v0`` environments, each benchmark whose folder ``data_root/<name>``
    exists (``data_root`` defaults to ``$PYVISION_BENCHMARKS``); returns their Gymnasium ids. Tasks load on
    first use."""
    if data_root is None:
        if not os.environ.get(DATA_ENV):
            raise ValueError(f"give a data folder or set ${DATA_ENV}")
        data_root = os.environ[DATA_ENV]
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise FileNotFoundError(f"benchmark data folder {data_root} does not exist")
    ids = []
    for name, bench in public_benchmarks().items():
        folder = data_root / name
        if folder.is_dir():
            ids.append(registry.register_suite(name, bench.at(folder), replace=replace))
    return ids


__all__ = ["DATA_ENV", "PUBLIC_BENCHMARKS", "LayoutError", "PublicBenchmark", "load_public_benchmark",
           "public_benchmarks", "register_public_benchmarks"]
