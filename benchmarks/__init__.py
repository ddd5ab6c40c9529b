"""The project's benchmark suite: ``python -m benchmarks`` (or ``make bench``).

Each benchmark is a module with a ``NAME``, a one-line ``DESCRIPTION`` and a
``run(out_dir, quick=False) -> str`` function that measures, writes its report files into ``out_dir``
(``<NAME>.md``, ``<NAME>.json`` and any plots) and returns the Markdown table it wrote. The runner in
:mod:`benchmarks.__main__` lists them in ``BENCHMARKS``.

The benchmarks:

* :mod:`benchmarks.cluster` — environments on Ray actors against environments in this process (vector
  steps/s as workers are added, one step's round trip, bytes moved per observation, memory per worker);
* :mod:`benchmarks.engine` — the sandboxed kernel execution engine against a bare ``jupyter_client``
  kernel measured side by side in the same run (start-up, pooled acquire, per-cell round trip, image
  display, interrupt, throughput under concurrency, memory per kernel);
* :mod:`benchmarks.env` — the Gymnasium environment: step overhead over a bare engine cell, reset latency
  (cached, uncached, until the kernel is usable), the async vector env's steps/s by number of envs;
* :mod:`benchmarks.ofr` — a seeded simulation of a training run whose task difficulty drifts: the fraction
  of samples with a non-zero advantage per update, with and without OFR batch selection;
* :mod:`benchmarks.trainer` — a real GRPO step of the tiny VLM on CPU (1 torch thread against all of them)
  and on a GPU when present: time in generation, environment, scoring and update, and tokens/s;
* :mod:`benchmarks.video` — on-demand video frames against uniform sampling.

Benchmarks report performance targets as pass/fail in their tables but tests never
assert on them (timings depend on the machine); tests only check that the reports are complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out a report figure, write it to ``path`` (PNG, 110 dpi), close it and return ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
