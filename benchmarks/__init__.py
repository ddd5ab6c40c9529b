"""The project's benchmark suite: ``python -m benchmarks`` (or ``make bench``).

Each benchmark is a module with a ``NAME``, a one-line ``DESCRIPTION`` and a
``run(out_dir, quick=False) -> str`` function that measures, writes its report files into ``out_dir``
(``<NAME>.md``, ``<NAME>.json`` and any plots) and returns the Markdown table it wrote. The runner in
:mod:`benchmarks.__main__` lists them in ``BENCHMARKS``.

For now there is one:

* :mod:`benchmarks.engine` — the sandboxed kernel execution engine against a bare ``jupyter_client``
  kernel measured side by side in the same run (start-up, pooled acquire, per-cell round trip, image
  display, interrupt, throughput under concurrency, memory per kernel).

Later issues add benchmarks of the Gymnasium environment, the vectorised environment, video decoding
and the trainer. Benchmarks report performance targets as pass/fail in their tables but tests never
assert on them (timings depend on the machine); tests only check that the reports are complete.
"""
