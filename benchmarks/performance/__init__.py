"""The performance benchmarks: ``python -m benchmarks`` (or ``make bench``, or ``python -m benchmarks.performance``).

Each benchmark is a module with a ``NAME``, a one-line ``DESCRIPTION`` and a ``run(out_dir, quick=False) -> str``
function that measures, writes its report files into ``out_dir`` (``<NAME>.md``, ``<NAME>.json`` and its plots)
and returns the Markdown it wrote. The runner in :mod:`.__main__` lists them in ``PERFORMANCE_BENCHMARKS`` and
collects their tables in ``report.md``; :mod:`.report` holds what they share.

The benchmarks:

* :mod:`.cluster` — environments on Ray actors against environments in this process (vector steps/s as workers
  are added, one step's round trip, bytes moved per observation, memory per worker);
* :mod:`.distributed` — the trainer at 1 and 2 data-parallel processes (update tokens/s, scaling efficiency),
  the training state's bytes per parameter in each memory setting (full, LoRA), weight-sync time, and a step
  one step off-policy;
* :mod:`.engine` — the sandboxed kernel execution engine against a bare ``jupyter_client`` kernel measured side
  by side in the same run (start-up, pooled acquire, per-cell round trip, image display, interrupt, throughput
  under concurrency, memory per kernel);
* :mod:`.env` — the Gymnasium environment: step overhead over a bare engine cell, reset latency (cached,
  uncached, until the kernel is usable), the async vector env's steps/s by number of envs;
* :mod:`.ofr` — a seeded simulation of a training run whose task difficulty drifts: the fraction of samples with
  a non-zero advantage per update, with and without OFR batch selection;
* :mod:`.trainer` — a real GRPO step of the tiny VLM on CPU (1 torch thread against all of them) and on a GPU
  when present: time in generation, environment, scoring and update, and tokens/s;
* :mod:`.video` — on-demand video frames against uniform sampling: accuracy, visual tokens, frame-fetch latency.

Benchmarks report performance targets as pass/fail in their tables, but tests never assert on them (timings
depend on the machine); tests only check that the reports are complete.
"""
