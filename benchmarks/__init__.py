"""Measuring agents and the system, in two subpackages:

* :mod:`benchmarks.evaluation` — how well a policy does: the evaluation harness behind ``pyvision run`` and
  ``pyvision eval`` (k samples, concurrency, resume, breakdowns, ``pyvision compare``), the public benchmark
  loaders (:mod:`benchmarks.evaluation.public`) and the robustness variants of the suites;
* :mod:`benchmarks.performance` — how fast and how heavy the system is: ``python -m benchmarks`` (``make
  bench``), one module per benchmark, their report collected in ``report.md``.

``benchmarks.commands`` adds ``run``, ``eval`` and ``compare`` to the ``pyvision`` command.
"""
