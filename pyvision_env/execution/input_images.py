"""How an input image is opened for model code: one function, run inside kernels and in the factory's input
templates (sent to both as source; the engine never imports it).

Example (inside a kernel):
    >>> image = _pyvision_open_input("/inputs/image_clue_0.png")                 # doctest: +SKIP
    >>> image.mode
    'RGB'
"""


def _pyvision_open_input(path):
    """The image at ``path``, decoded, as RGB, RGBA or L (other modes are converted to RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.copy() if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
