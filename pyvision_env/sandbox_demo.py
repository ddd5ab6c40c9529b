"""``pyvision sandbox-demo``: what the execution engine does, in one short run.

A model answering "what number is written on the small sign?" about a large generated image would
write cells like these; each runs in a fresh, sandboxed, stateful kernel and the results are printed
as the model would receive them. Shown images are saved so a person can look at them.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .execution import CellResult, Engine, ExecutionLimits

SIGN_BOX = (1130, 840, 1190, 880)
"""Where the small sign with the number sits in the generated 1600x1200 image."""

CELLS: list[tuple[str, str]] = [
    ("look at the input", "print(image_clue_0.size, image_clue_0.mode)"),
    ("find the sign: the reddest region", (
        "a = np.asarray(image_clue_0).astype(int)\n"
        "redness = a[..., 0] - (a[..., 1] + a[..., 2]) // 2\n"
        "ys, xs = np.nonzero(redness > 150)\n"
        "box = (xs.min() - 10, ys.min() - 10, xs.max() + 10, ys.max() + 10)\n"
        "print('sign at', tuple(int(v) for v in box))")),
    ("crop, zoom 4x and show with matplotlib", (
        "crop = image_clue_0.crop(box)\n"
        "zoomed = crop.resize((crop.width * 4, crop.height * 4), Image.LANCZOS)\n"
        "plt.figure(figsize=(4, 2.5))\n"
        "plt.imshow(zoomed)\n"
        "plt.axis('off')\n"
        "plt.show()")),
    ("state persists: enhance the zoomed crop and display it", (
        "sharp = ImageEnhance.Contrast(zoomed).enhance(2.0)\n"
        "display(sharp)\n"
        "zoomed.size")),
    ("a mistake the model can recover from", "print(zoomd.size)"),
    ("the sandbox: no network, read-only system", (
        "import socket\n"
        "for target in [lambda: socket.create_connection(('127.0.0.1', 22), timeout=1),\n"
        "               lambda: open('/usr/pyvision-test', 'w')]:\n"
        "    try:\n"
        "        target()\n"
        "        print('allowed!')\n"
        "    except OSError as e:\n"
        "        print('blocked:', type(e).__name__, e.strerror)")),
    ("an endless loop is interrupted at the deadline", "while True:\n    pass"),
    ("the state survived the interrupt", "print('crop still here:', crop.size)"),
    ("a crash is reported at once", "import os\nos._exit(1)"),
    ("the next cell gets a fresh kernel with the inputs reloaded", "print(image_clue_0.size, 'crop' in dir())"),
]


def make_scene(seed: int = 0) -> Image.Image:
    """A 1600x1200 cluttered scene with a small red sign carrying the number 42."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(90, 170, size=(1200, 1600, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        x, y = int(rng.integers(0, 1500)), int(rng.integers(0, 1100))
        colour = tuple(int(c) for c in rng.integers(0, 120, size=3))
        draw.rectangle((x, y, x + int(rng.integers(20, 120)), y + int(rng.integers(20, 120))), fill=colour)
    draw.rectangle(SIGN_BOX, fill=(230, 20, 20))
    draw.text((SIGN_BOX[0] + 22, SIGN_BOX[1] + 14), "42", fill=(255, 255, 255))
    return image


def run_demo(out: Path) -> int:
    """Run the demonstration, saving shown images under ``out``; returns the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    scene_path = out / "scene.png"
    make_scene().save(scene_path)
    limits = ExecutionLimits(cell_timeout=3.0, interrupt_grace=1.0)
    started = time.perf_counter()
    with Engine(limits=limits, spare_kernels=1) as engine:
        status = engine.status()
        print(f"engine: isolation={status.isolation} ({status.isolation_reason}), cgroups={status.cgroups}")
        if status.weak:
            print("WARNING: kernels are NOT sandboxed on this machine; install bubblewrap for isolation.")
        engine.warm_up()
        print(f"kernel pool ready after {time.perf_counter() - started:.2f} s\n")
        rows = []
        with engine.session(images={"image_clue_0": scene_path}) as session:
            for index, (title, code) in enumerate(CELLS, start=1):
                result = session.run(code)
                print(f"[{index}/{len(CELLS)}] {title}")
                print("    " + code.replace("\n", "\n    "))
                print(_indent(_describe(result)))
                for number, image in enumerate(result.images):
                    path = out / f"cell{index}_image{number}.png"
                    image.save(path)
                    print(f"    -> image saved to {path}")
                print()
                rows.append((index, result.status.value, result.duration * 1000, len(result.images),
                             result.state_lost))
    print("cell  status        ms      images  state lost")
    for index, state, ms, images, lost in rows:
        print(f"{index:>4}  {state:<12} {ms:>8.1f}  {images:>6}  {'yes' if lost else ''}")
    print(f"\ndone in {time.perf_counter() - started:.1f} s; images in {out}/")
    return 0


def _describe(result: CellResult) -> str:
    return f"=> {result.status.value} in {result.duration * 1000:.0f} ms\n{result.describe()}".rstrip("\n")


def _indent(text: str) -> str:
    return "    " + text.replace("\n", "\n    ")
