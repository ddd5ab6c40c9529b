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


def _pyvision_seed(seed):
    """Seed ``random`` and NumPy's global generator: a session and its forks draw the same numbers."""
    import random

    random.seed(seed)
    if "numpy" in _pyvision_sys.modules:
        _pyvision_sys.modules["numpy"].random.seed(seed)


def _pyvision_load_inputs(images_json, values_json):
    """Bind PIL images (opened from read-only files, or already decoded by the factory's input template this
    kernel was forked from) and JSON values to names in the user namespace."""
    namespace = get_ipython().user_ns
    decoded = namespace.pop("_pyvision_decoded_inputs", {})
    for name, path in _pyvision_json.loads(images_json).items():
        namespace[name] = decoded[name] if name in decoded else _pyvision_open_input(path)
        if name.startswith("image_clue_") and name[11:].isdigit():
            _pyvision_tag_input(namespace[name], int(name[11:]))
    namespace.update(_pyvision_json.loads(values_json))


def _pyvision_install_operation_trace():
    """Record the image operations cells perform on PIL images, with crop boxes in input-image pixels.

    Input images carry ``_pyvision_origin = (index, affine)``: the affine ``(a, b, c, d, e, f)`` maps a pixel
    ``(x, y)`` of the image to ``(a*x + b*y + c, d*x + e*y + f)`` in input image ``index``. Crops, resizes,
    copies, conversions, point maps and the 90-degree transposes pass it on, so a crop of a rotated, zoomed
    crop is still known in the original's pixels. ``_pyvision_operations()`` returns the records of the last
    non-silent cell as JSON (the engine reads it as a ``user_expressions`` entry after the cell).
    """
    import functools
    import json

    from PIL import Image, ImageEnhance, ImageOps

    records = []
    limit = 256
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

    def record(entry):
        if len(records) < limit:
            records.append(entry)

    def origin(image):
        return getattr(image, "_pyvision_origin", None) if isinstance(image, Image.Image) else None

    def tag(image, value):
        if isinstance(image, Image.Image) and value is not None:
            image._pyvision_origin = value

    def compose(value, local):
        """The origin of an image whose pixel (x, y) is pixel ``local(x, y)`` of an image with ``value``."""
        if value is None or local is None:
            return None
        index, (a, b, c, d, e, f) = value
        la, lb, lc, ld, le, lf = local
        return index, (a * la + b * ld, a * lb + b * le, a * lc + b * lf + c,
                       d * la + e * ld, d * lb + e * le, d * lc + e * lf + f)

    def box_in_input(value, box):
        index, (a, b, c, d, e, f) = value
        corners = [(a * x + b * y + c, d * x + e * y + f) for x in (box[0], box[2]) for y in (box[1], box[3])]
        xs, ys = [p[0] for p in corners], [p[1] for p in corners]
        return index, [min(xs), min(ys), max(xs), max(ys)]

    def patch(owner, name, after):
        original = getattr(owner, name)

        @functools.wraps(original)
        def traced(*args, **kwargs):
            before = args[0].size if args and isinstance(args[0], Image.Image) else None
            result = original(*args, **kwargs)
            try:
                after(result, before, *args, **kwargs)
            except Exception:  # noqa: BLE001  (tracing never changes what the code does)
                pass
            return result

        setattr(owner, name, traced)

    def same_geometry(result, before, image, *args, **kwargs):
        if result is not image:
            tag(result, origin(image))

    def crop(result, before, image, box=None):
        box = tuple(float(v) for v in (box if box is not None else (0, 0, *image.size)))
        value = origin(image)
        if value is None:
            record({"op": "crop"})
            return
        index, input_box = box_in_input(value, box)
        record({"op": "crop", "image": index, "box": input_box})
        tag(result, compose(value, (1.0, 0.0, box[0], 0.0, 1.0, box[1])))

    def resize(result, before, image, size, resample=None, box=None, reducing_gap=None):
        record({"op": "resize"})
        x0, y0, x1, y1 = box if box is not None else (0, 0, *image.size)
        tag(result, compose(origin(image), ((x1 - x0) / size[0], 0.0, x0, 0.0, (y1 - y0) / size[1], y0)))

    def thumbnail(result, before, image, *args, **kwargs):
        record({"op": "resize"})
        value = origin(image)
        if value is not None and image.size != before:
            image._pyvision_origin = compose(
                value, (before[0] / image.size[0], 0.0, 0.0, 0.0, before[1] / image.size[1], 0.0))

    def transpose(result, before, image, method):
        width, height = image.size
        method = int(method)
        local = {0: (-1.0, 0.0, width, 0.0, 1.0, 0.0), 1: (1.0, 0.0, 0.0, 0.0, -1.0, height),
                 2: (0.0, -1.0, width, 1.0, 0.0, 0.0), 3: (-1.0, 0.0, width, 0.0, -1.0, height),
                 4: (0.0, 1.0, 0.0, -1.0, 0.0, height), 5: (0.0, 1.0, 0.0, 1.0, 0.0, 0.0),
                 6: (0.0, -1.0, width, -1.0, 0.0, height)}.get(method)
        record({"op": "rotate" if method in (2, 3, 4) else "flip"})
        tag(result, compose(origin(image), local))

    def rotate(result, before, image, angle, *args, **kwargs):
        if float(angle) % 360:
            record({"op": "rotate"})
        else:
            tag(result, origin(image))

    def enhance(result, before, image, *args, **kwargs):
        record({"op": "enhance"})
        tag(result, origin(image))

    def enhancer(result, before, self, factor):
        record({"op": "enhance"})
        tag(result, origin(getattr(self, "image", None)))

    for name in ("copy", "convert", "point", "filter"):
        patch(Image.Image, name, same_geometry)
    patch(Image.Image, "crop", crop)
    patch(Image.Image, "resize", resize)
    patch(Image.Image, "thumbnail", thumbnail)
    patch(Image.Image, "transpose", transpose)
    patch(Image.Image, "rotate", rotate)
    for name in ("autocontrast", "equalize", "invert", "posterize", "solarize"):
        patch(ImageOps, name, enhance)
    patch(ImageEnhance._Enhance, "enhance", enhancer)

    get_ipython().events.register("pre_run_cell", lambda *info: records.clear())
    get_ipython().user_ns["_pyvision_operations"] = lambda: json.dumps(records)
    get_ipython().user_ns["_pyvision_tag_input"] = lambda image, index: tag(image, (index, identity))


_pyvision_install_operation_trace()
del _pyvision_install_operation_trace


def _pyvision_load_videos(videos_json, reader_source, options_json):
    """Open videos as decord-style readers (module ``pyvision_video``, sent as source) and bind the helpers."""
    import sys
    import types

    module = sys.modules.get("pyvision_video")
    if module is None:
        module = types.ModuleType("pyvision_video")
        sys.modules["pyvision_video"] = module
        exec(compile(reader_source, "pyvision_video.py", "exec"), module.__dict__)
    options = _pyvision_json.loads(options_json)
    budget = module.FrameBudget(options.pop("max_frames"))
    namespace = get_ipython().user_ns
    for name, path in _pyvision_json.loads(videos_json).items():
        namespace[name] = module.open_video(path, budget=budget, **options)
    namespace.update(get_frames=module.get_frames, show_frames=module.show_frames)
    try:
        from decord import VideoReader, cpu

        namespace.update(VideoReader=VideoReader, cpu=cpu)
    except ImportError:
        pass
    namespace["_pyvision_frames_fetched"] = lambda: budget.used
