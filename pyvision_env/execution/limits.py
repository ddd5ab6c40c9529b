"""What model-written code may use, and how the kernel is isolated.

Two frozen dataclasses, both validated on construction:

* :class:`ExecutionLimits` — budgets per cell (time, output, images) and per session, i.e. per episode
  (execution time, cells, images), plus the resources of one kernel (memory, disk, processes).
* :class:`SandboxConfig` — how kernels are isolated (bubblewrap or the reported weaker mode),
  which modules are pre-imported, and which host paths are hidden.

Example:
    >>> limits = ExecutionLimits(cell_timeout=5.0, max_images_per_cell=4)
    >>> limits.cell_timeout
    5.0
    >>> ExecutionLimits(cell_timeout=-1)
    Traceback (most recent call last):
    ...
    ValueError: ExecutionLimits.cell_timeout must be > 0, got -1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..deprecation import renamed_keywords

KERNEL_SIDE_CODE = (Path(__file__).with_name("kernel_side.py")).read_text()
INPUT_IMAGES_CODE = (Path(__file__).with_name("input_images.py")).read_text()
KERNEL_FLAGS = ("--HistoryManager.enabled=False", "--InteractiveShell.colors=nocolor",
                "--IPKernelApp.log_level=ERROR", "--Application.log_level=ERROR")
"""ipykernel's command-line options for every kernel, started as a new interpreter or forked."""
MiB = 1 << 20
GiB = 1 << 30


def _check_positive(owner: object, names: tuple[str, ...], allow_none: bool = False) -> None:
    for name in names:
        value = getattr(owner, name)
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ValueError(f"{type(owner).__name__}.{name} must be > 0, got {value!r}")


@renamed_keywords(episode_timeout="max_execution_time", max_images_per_episode="max_images_per_session")
@dataclass(frozen=True)
class ExecutionLimits:
    """Budgets for model-written code. Every field has a sane default; sizes are in bytes, times in seconds."""

    # --- per cell -------------------------------------------------------------------------------
    cell_timeout: float = 30.0
    """Wall-clock deadline of one cell. On expiry the cell is interrupted over the control channel."""
    interrupt_grace: float = 2.0
    """How long an interrupted cell may take to reply before the kernel is killed (state lost)."""
    max_text_chars: int = 12_000
    """Characters of stdout (and separately stderr) kept per cell: the head and the tail, with a marker."""
    text_tail_fraction: float = 0.25
    """Share of ``max_text_chars`` kept from the end of the output."""
    max_output_bytes: int = 8 * MiB
    """Hard budget on everything a cell sends back (text and images). Exceeding it stops the cell."""
    max_images_per_cell: int = 16
    """Images kept per cell; later ones are dropped and the result is marked truncated."""
    max_image_pixels: int = 4096 * 4096
    """Largest image (width x height) accepted back from the kernel; checked before decoding. Never more
    than PIL's decompression-bomb threshold (``PIL.Image.MAX_IMAGE_PIXELS``)."""
    max_image_bytes: int = 16 * MiB
    """Largest encoded image accepted back from the kernel."""
    max_aspect_ratio: float = 200.0
    """Images whose long side exceeds ``max_aspect_ratio`` times the short side are rejected."""

    # --- per session (one episode's kernel, restarts included) ------------------------------------
    max_execution_time: float | None = 600.0
    """Total execution time of all cells of a session; ``None`` for no limit. (Not the environment's
    ``episode_timeout``, which bounds an episode's wall clock, model time included.)"""
    max_cells: int | None = 200
    """Cells per session; ``None`` for no limit."""
    max_images_per_session: int | None = 128
    """Images returned per session; ``None`` for no limit. (Not the environment's ``max_images``, which
    truncates the episode; this one only stops returning images.)"""

    # --- resources of one kernel -----------------------------------------------------------------
    memory_bytes: int = 2 * GiB
    """Address-space limit of the kernel (a memory bomb gets MemoryError); also a cgroup limit where available."""
    max_file_bytes: int = 256 * MiB
    """Largest file the kernel may write (RLIMIT_FSIZE)."""
    disk_bytes: int = 512 * MiB
    """Size of the kernel's private working directory and of its private /tmp (sandboxed mode)."""
    max_processes: int = 64
    """Processes and threads of one kernel (cgroup ``pids.max`` where available)."""
    max_open_files: int = 1024
    """File descriptors of the kernel (RLIMIT_NOFILE)."""

    def __post_init__(self) -> None:
        _check_positive(self, ("cell_timeout", "interrupt_grace", "max_text_chars", "max_output_bytes",
                               "max_images_per_cell", "max_image_pixels", "max_image_bytes", "max_aspect_ratio",
                               "memory_bytes", "max_file_bytes", "disk_bytes", "max_processes",
                               "max_open_files"))
        _check_positive(self, ("max_execution_time", "max_cells", "max_images_per_session"), allow_none=True)
        if not 0.0 <= self.text_tail_fraction < 1.0:
            raise ValueError(f"ExecutionLimits.text_tail_fraction must be in [0, 1), got {self.text_tail_fraction}")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"ExecutionLimits.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")

    def replace(self, **changes: object) -> ExecutionLimits:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


ISOLATION_MODES = ("auto", "bubblewrap", "none")
START_METHODS = ("auto", "fork", "exec")

DEFAULT_PRELOAD = (
    "import io, base64, math, os, sys, json",
    "import numpy as np",
    "import PIL",
    "from PIL import Image, ImageOps, ImageEnhance, ImageFilter, ImageDraw",
    "import matplotlib",
    "matplotlib.use('Agg')",
    "import matplotlib.pyplot as plt",
)
"""Statements run in every new kernel before it is handed out (the names PyVision models expect)."""

DEFAULT_HIDDEN_PATHS = ("/root", "/home", "/etc/ssh", "/run", "/var/run", "/var/lib", "/srv", "/mnt", "/media")
"""Host paths replaced by an empty directory inside the sandbox (the Python installation stays visible)."""


@dataclass(frozen=True)
class SandboxConfig:
    """How kernels are started and isolated.

    ``isolation``:
      * ``"auto"`` (default) — bubblewrap when the probe succeeds, else the weaker mode with a loud warning;
      * ``"bubblewrap"`` — require bubblewrap, raise :class:`SandboxUnavailableError` if it does not work;
      * ``"none"`` — run kernels as plain processes (resource limits only); still reported as weak.
    """

    isolation: str = "auto"
    start_method: str = "auto"
    """How kernels are made: ``"fork"`` from the engine's kernel factory, which imported everything once (tens
    of milliseconds, pages shared; see :mod:`pyvision_env.execution.factory`), or ``"exec"``, a new interpreter
    each (about a second). ``"auto"`` (default) forks where the factory works here and otherwise starts
    interpreters, saying why in ``engine.status()``; ``"fork"`` raises instead."""
    input_templates: int = 8
    """Tasks whose input images the kernel factory keeps decoded in a process of their own, to fork the kernels of
    their episodes from (the episodes of a GRPO group decode their images once and share them); the most recently
    used are kept. 0 turns it off. Only with ``start_method`` fork."""
    use_cgroups: bool = True
    """Put each kernel in its own cgroup (``pids.max``, memory) when the cgroup filesystem is writable."""
    python: str | None = None
    """Python interpreter of the kernels (default: the engine's own)."""
    preload: tuple[str, ...] = DEFAULT_PRELOAD
    hidden_paths: tuple[str, ...] = DEFAULT_HIDDEN_PATHS
    env: tuple[tuple[str, str], ...] = (
        ("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"),
        ("LANG", "C.UTF-8"), ("LC_ALL", "C.UTF-8"),
    )
    """Extra environment of the kernel. Nothing else is inherited from the parent."""
    startup_timeout: float = 60.0
    """Seconds a kernel may take to start and run the preload statements."""
    root_dir: str | None = None
    """Where per-kernel directories are made (default: the system temporary directory). Keep it short:
    IPC socket paths must stay under 108 bytes."""
    extra_readonly_paths: tuple[str, ...] = field(default=())
    """Host paths re-exposed read-only inside the sandbox even if under a hidden path."""

    def setup_code(self) -> str:
        """What every kernel runs before it is handed out: the preload statements, then the helpers of
        ``input_images.py`` and ``kernel_side.py`` (display hooks, input loaders, the operation trace)."""
        return "\n".join([*self.preload, INPUT_IMAGES_CODE, KERNEL_SIDE_CODE])

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"SandboxConfig.isolation must be one of {ISOLATION_MODES}, got {self.isolation!r}")
        if isinstance(self.input_templates, bool) or not isinstance(self.input_templates, int) \
                or self.input_templates < 0:
            raise ValueError(f"SandboxConfig.input_templates must be an int >= 0, got {self.input_templates!r}")
        if self.start_method not in START_METHODS:
            raise ValueError(f"SandboxConfig.start_method must be one of {START_METHODS}, "
                             f"got {self.start_method!r}")
        _check_positive(self, ("startup_timeout",))
