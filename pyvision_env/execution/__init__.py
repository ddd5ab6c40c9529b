"""Sandboxed, stateful Jupyter kernels for model-written code, started ahead of demand.

The public names are re-exported here; see :mod:`.engine` for the entry points.
"""

from .engine import (
    AsyncEngine,
    AsyncSession,
    Engine,
    EpisodeLimitError,
    ForkError,
    InputError,
    Session,
    WeakIsolationWarning,
    default_engine,
    set_default_engine,
)
from .factory import FactoryError
from .kernel import KernelStartError
from .limits import ExecutionLimits, SandboxConfig
from .operations import OPERATIONS_EXPRESSION, Operations, box_iou, operations_in_code, read_operations
from .records import CellResult, CellStatus, EngineStatus
from .sandbox import SandboxUnavailableError, probe_bubblewrap

__all__ = [
    "OPERATIONS_EXPRESSION", "AsyncEngine", "AsyncSession", "CellResult", "CellStatus", "Engine", "EngineStatus",
    "EpisodeLimitError", "ExecutionLimits", "FactoryError", "ForkError", "InputError", "KernelStartError", "Operations", "SandboxConfig",
    "SandboxUnavailableError", "Session", "WeakIsolationWarning", "box_iou", "default_engine", "operations_in_code",
    "probe_bubblewrap", "read_operations", "set_default_engine",
]
