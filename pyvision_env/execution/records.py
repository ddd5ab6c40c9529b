"""Typed records the engine returns: one :class:`CellResult` per cell and an :class:`EngineStatus`."""

from __future__ import annotations

import enum
import textwrap
from dataclasses import dataclass, field

from PIL import Image


class CellStatus(str, enum.Enum):
    """How a cell ended."""

    OK = "ok"
    ERROR = "error"
    """The code raised; ``error_name``, ``error_value`` and ``traceback`` say what."""
    TIMEOUT = "timeout"
    """The deadline passed; the cell was interrupted (or the kernel killed: see ``state_lost``)."""
    CRASHED = "crashed"
    """The kernel process died during the cell (segfault, ``os._exit``, killed). State is lost."""
    OUTPUT_LIMIT = "output-limit"
    """The cell sent more than the hard output budget and was stopped."""


@dataclass
class CellResult:
    """Everything one cell produced, already capped and sanitised.

    Example:
        >>> r = CellResult(status=CellStatus.OK, stdout="hi\\n")
        >>> r.ok, r.text
        (True, 'hi\\n')
    """

    status: CellStatus
    stdout: str = ""
    stderr: str = ""
    result: str = ""
    """Text of the cell's last expression value (``Out[n]``), when it has no image form."""
    error_name: str = ""
    error_value: str = ""
    traceback: str = ""
    """Colour-free traceback text."""
    images: list[Image.Image] = field(default_factory=list)
    """Images the cell showed, in order, as decoded PIL images."""
    truncated: bool = False
    """Whether any output (text or images) was cut or dropped."""
    duration: float = 0.0
    """Seconds from sending the cell to its result."""
    state_lost: bool = False
    """The kernel was killed or died: the next cell runs in a fresh kernel (inputs re-loaded)."""
    notes: list[str] = field(default_factory=list)
    """Human-readable remarks: dropped images, limits hit, restarts."""
    expressions: dict[str, str] = field(default_factory=dict)
    """Text forms of the ``expressions`` asked for with the cell (only those that evaluated, and only when
    the cell succeeded)."""

    @property
    def ok(self) -> bool:
        return self.status is CellStatus.OK

    @property
    def text(self) -> str:
        """stdout followed by the value of the last expression, as a notebook would show them."""
        if self.result:
            return f"{self.stdout}{self.result}\n" if self.stdout.endswith("\n") or not self.stdout \
                else f"{self.stdout}\n{self.result}\n"
        return self.stdout

    def describe(self) -> str:
        """The result as a person would read it in a terminal: text, stderr, the error, image sizes, notes.

        >>> print(CellResult(status=CellStatus.ERROR, error_name="NameError", error_value="x").describe(), end="")
        NameError: x
        """
        parts = []
        if self.text:
            parts.append(self.text if self.text.endswith("\n") else self.text + "\n")
        if self.stderr:
            parts.append(textwrap.indent(self.stderr, "stderr| "))
        if self.error_name:
            parts.append(f"{self.error_name}: {self.error_value}\n")
        if self.images:
            sizes = ", ".join(f"{image.width}x{image.height}" for image in self.images)
            parts.append(f"[{len(self.images)} image(s): {sizes}]\n")
        parts += [f"note: {note}\n" for note in self.notes]
        return "".join(parts)

    def summary(self) -> str:
        """One line for logs: status, duration, sizes."""
        extra = f" {self.error_name}: {self.error_value}" if self.error_name else ""
        return (f"{self.status.value} in {self.duration * 1000:.1f} ms, {len(self.stdout)} chars, "
                f"{len(self.images)} images{' (truncated)' if self.truncated else ''}{extra}")


@dataclass(frozen=True)
class EngineStatus:
    """What the engine can guarantee right now. ``isolation`` is ``"bubblewrap"`` or ``"none"`` (weak)."""

    isolation: str
    isolation_reason: str
    """Why the isolation is what it is (e.g. the probe's error when bubblewrap failed)."""
    cgroups: str
    """``"v1"``, ``"v2"`` or ``"none"``: whether per-kernel process/memory cgroups are enforced."""
    live_kernels: int
    ready_kernels: int
    max_kernels: int
    kernels_started: int
    kernels_failed: int
    start_method: str = "exec"
    """``"fork"`` (from the kernel factory) or ``"exec"`` (a new interpreter per kernel)."""
    start_method_reason: str = ""
    """Why kernels start as they do (e.g. why the factory could not work here)."""
    factory_starts: int = 0
    """Times the kernel factory was started (more than one: it died and was replaced)."""
    input_templates: int = 0
    """Input templates alive (tasks whose images the factory holds decoded for their episodes' kernels)."""

    @property
    def weak(self) -> bool:
        return self.isolation != "bubblewrap"
