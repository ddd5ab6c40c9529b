"""Code that runs *inside* every kernel right after start (sent as a silent cell, never imported here).

It installs the display hooks the engine relies on and the helpers that load inputs:

* ``plt.show()`` sends every open figure as a PNG at the figure's own size, then closes them;
* ``display(fig)`` and a figure as a cell's last expression render as PNG;
* ``input()`` and ``breakpoint()`` fail at once instead of waiting for a person;
* ``exit()`` and ``quit()`` do not shut the kernel down.

Names start with ``_pyvision_`` so model code is unlikely to clash with them.
"""
# ruff: noqa: F821  (get_ipython exists inside the kernel)
import io as _pyvision_io
import json as _pyvision_json
import sys as _pyvision_sys

import matplotlib as _pyvision_mpl

_pyvision_mpl.use("Agg")
import matplotlib.pyplot as _pyvision_plt
from matplotlib.figure import Figure as _PyvisionFigure
from PIL import Image as _PyvisionImage


def _pyvision_figure_png(fig):
    buffer = _pyvision_io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    return buffer.getvalue()


def _pyvision_show(*args, **kwargs):
    """Show every open figure (as PNG, in creation order) and close them."""
    from IPython.display import display

    for number in _pyvision_plt.get_fignums():
        display(_pyvision_plt.figure(number))
    _pyvision_plt.close("all")


_pyvision_plt.show = _pyvision_show
get_ipython().display_formatter.formatters["image/png"].for_type(_PyvisionFigure, _pyvision_figure_png)


def _pyvision_no_debugger(*args, **kwargs):
    raise RuntimeError("breakpoint() is not available: there is no interactive terminal in this sandbox")


_pyvision_sys.breakpointhook = _pyvision_no_debugger


def _pyvision_keep_kernel_on_exit():
    """``exit()``/``quit()`` would shut the kernel down (ipykernel 7); keep it alive, as after ``sys.exit()``."""


get_ipython().ask_exit = _pyvision_keep_kernel_on_exit


def _pyvision_drop_output_copies():
    """ipykernel copies output written to file descriptors 1 and 2 (``os.write``, subprocesses, C code) to
    the kernel's original stdout/stderr: the engine's ``kernel.log`` on the host's disk. Send those copies
    to /dev/null, so that a flood neither fills the host's disk nor, at ``RLIMIT_FSIZE``, kills the thread
    that forwards such output to the cell (after which a larger write blocks the kernel)."""
    import os

    null = os.open(os.devnull, os.O_WRONLY)
    for stream in (_pyvision_sys.stdout, _pyvision_sys.stderr):
        copy = getattr(stream, "_original_stdstream_copy", None)
        if isinstance(copy, int):
            os.dup2(null, copy)
    os.close(null)


_pyvision_drop_output_copies()


def _pyvision_load_inputs(images_json, values_json):
    """Bind PIL images (opened from read-only files) and JSON values to names in the user namespace."""
    namespace = get_ipython().user_ns
    for name, path in _pyvision_json.loads(images_json).items():
        with _PyvisionImage.open(path) as image:
            image.load()
            namespace[name] = image.copy() if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    namespace.update(_pyvision_json.loads(values_json))
