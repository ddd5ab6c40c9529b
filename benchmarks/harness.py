"""Deprecated path: the harness is :mod:`benchmarks.evaluation.harness` (this stub goes in 0.3)."""

from pyvision_env.deprecation import warn_moved

from .evaluation.harness import (
    Evaluation,
    compare,
    plot_comparison,
    read_results,
    summarize,
    summary_markdown,
)

warn_moved(__name__, "benchmarks.evaluation.harness")

__all__ = ["Evaluation", "compare", "plot_comparison", "read_results", "summarize", "summary_markdown"]
