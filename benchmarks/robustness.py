"""Deprecated path: robustness variants are in :mod:`benchmarks.evaluation.robustness` (this stub goes in 0.3)."""

from pyvision_env.deprecation import warn_moved

from .evaluation.robustness import TRANSFORMS, register_robust_variant, robust_variant

warn_moved(__name__, "benchmarks.evaluation.robustness")

__all__ = ["TRANSFORMS", "register_robust_variant", "robust_variant"]
