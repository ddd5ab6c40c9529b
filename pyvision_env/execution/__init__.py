"""Sandboxed, pooled, stateful Jupyter kernels for model-written code.

The public names are re-exported here; see :mod:`.engine` for the entry points.
"""

from .engine import (
    AsyncEngine,
    AsyncSession,
    Engine,
    EpisodeLimitError,
    InputError,
    Session,
    WeakIsolationWarning,
    default_engine,
    set_default_engine,
)
from .kernel import KernelStartError
from .limits import ExecutionLimits, SandboxConfig
from .records import OPERATIONS_EXPRESSION, CellResult, CellStatus, EngineStatus, read_operations
from .sandbox import SandboxUnavailableError, probe_bubblewrap

__all__ = [
    "OPERATIONS_EXPRESSION", "AsyncEngine", "AsyncSession", "CellResult", "CellStatus", "Engine", "EngineStatus", "EpisodeLimitError",
    "ExecutionLimits", "InputError", "KernelStartError", "SandboxConfig", "SandboxUnavailableError", "Session",
    "WeakIsolationWarning", "default_engine", "probe_bubblewrap", "read_operations",
    "set_default_engine",
]
