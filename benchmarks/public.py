"""Deprecated path: the public benchmark loaders are in :mod:`benchmarks.evaluation.public` (this stub goes in
0.3; it offers the package's functions, not its loader modules)."""

from pyvision_env.deprecation import warn_moved

from .evaluation.public import load_public_benchmark, public_benchmarks, register_public_benchmarks

warn_moved(__name__, "benchmarks.evaluation.public")

__all__ = ["load_public_benchmark", "public_benchmarks", "register_public_benchmarks"]
