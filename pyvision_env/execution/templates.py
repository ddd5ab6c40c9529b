"""The engine's input templates: one process per recent task holding its input images decoded, to fork the
kernels of that task's episodes from (the G episodes of a GRPO group decode their images once, and share them).

A template is keyed by its inputs (names, files, sizes and modification times), made on the first session that
needs it, kept for the ``capacity`` most recently used tasks, and closed when evicted and no lease on it is left
(each kernel it forks holds one from before its start to its end). Sessions with in-memory images (``PIL.Image`` objects) or without images do not use templates.

Example (what the engine does for a session's kernel):
    >>> template = await templates.lease({"image_clue_0": "/data/task-17.png"})  # doctest: +SKIP
    >>> kernel = await start_kernel(template)  # forked by the template; images bound without decoding
    >>> templates.release(template)            # when the kernel ends
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from .factory import FactoryError, InputTemplate, KernelFactory
from .kernel import run_on_spawner

log = logging.getLogger(__name__)

InputsKey = tuple[tuple[str, str, int, int], ...]


def inputs_key(images: Mapping[str, Any]) -> InputsKey | None:
    """What identifies a task's input images: name, real path, size and modification time of each file; None
    when there are none or one is an in-memory image."""
    if not images or not all(isinstance(image, (str, os.PathLike)) for image in images.values()):
        return None
    key = []
    for name, image in sorted(images.items()):
        try:
            path = Path(image).resolve()
            stat = path.stat()
        except OSError:
            return None  # gone since the session checked it: loading it in the kernel says so
        key.append((name, str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(key)


def stage_inputs(images: dict[str, Any], inputs_dir: Path) -> dict[str, str]:
    """Expose input files (and in-memory images, as PNG) in ``inputs_dir`` (a kernel's, mounted read-only in its
    sandbox, or an input template's): hard links, else copies."""
    staged = {}
    for name, image in images.items():
        if isinstance(image, Image.Image):
            target = inputs_dir / f"{name}.png"
            if not target.exists():
                image.save(target, format="PNG")
                os.chmod(target, 0o444)
        else:
            source = Path(image)
            target = inputs_dir / f"{name}{source.suffix.lower()}"
            if not target.exists():
                try:  # a hard link shares the caller's file: its permissions are left alone (the sandbox
                    os.link(source, target)  # mounts the inputs directory read-only)
                except OSError:
                    shutil.copyfile(source, target)
                    os.chmod(target, 0o444)
        staged[name] = str(target)
    return staged


class InputTemplates:
    """Input templates by task, most recently used last. All methods run on the engine's event loop."""

    def __init__(self, factory: KernelFactory, capacity: int, root: Path) -> None:
        self.factory = factory
        self.capacity = capacity
        self.root = root
        """Where each template's inputs are linked (the factory sees the engine's directory, not the task's)."""
        self._templates: OrderedDict[InputsKey, InputTemplate] = OrderedDict()
        self._making: dict[InputsKey, asyncio.Future[InputTemplate | None]] = {}
        self._retired: set[InputTemplate] = set()
        self.made = 0

    @property
    def count(self) -> int:
        return len(self._templates) + len(self._retired)

    async def lease(self, images: Mapping[str, Any]) -> InputTemplate | None:
        """The template of these images, made now if needed, leased to the caller — an evicted template is not
        closed while leased — or None when they cannot have one. Give the lease back with :meth:`release`
        (when the kernel it started ends, or when starting it failed)."""
        key = inputs_key(images)
        if key is None or self.capacity == 0:
            return None
        template = self._templates.get(key)
        if template is not None and template.alive:
            self._templates.move_to_end(key)
            return self._leased(template)
        if template is not None:
            self.drop(template)
        if key in self._making:  # the group's other episodes wait for the one being made
            return self._leased(await asyncio.shield(self._making[key]))
        making = self._making[key] = asyncio.get_running_loop().create_future()
        directory = self.root / f"t-{uuid.uuid4().hex[:12]}"
        try:
            directory.mkdir()
            staged = await asyncio.to_thread(stage_inputs, dict(images), directory)
            template = await run_on_spawner(lambda: self.factory.make_template(staged, directory))
        except (FactoryError, OSError) as exc:
            log.warning("no input template (its episodes load their images themselves): %s", exc)
            shutil.rmtree(directory, ignore_errors=True)
            template = None
        finally:
            del self._making[key]
        making.set_result(template)
        if template is None:
            return None
        self.made += 1
        self._templates[key] = template
        leased = self._leased(template)  # before any eviction: the newest is never the one evicted
        while len(self._templates) > self.capacity:
            _, oldest = self._templates.popitem(last=False)
            self._retire(oldest)
        return leased

    @staticmethod
    def _leased(template: InputTemplate | None) -> InputTemplate | None:
        if template is not None:
            template.users += 1
        return template

    def release(self, template: InputTemplate) -> None:
        """Give back a lease of :meth:`lease`; an evicted template closes when its last lease is back."""
        template.users -= 1
        if template in self._retired and template.users <= 0:
            self._retired.discard(template)
            template.close()

    def drop(self, template: InputTemplate) -> None:
        """Forget a template that failed (dead); its kernels, if any, died with it."""
        for key, held in list(self._templates.items()):
            if held is template:
                del self._templates[key]
        self._retired.discard(template)
        template.close()

    def _retire(self, template: InputTemplate) -> None:
        if template.users <= 0:
            template.close()
        else:
            self._retired.add(template)  # closed when its last kernel ends

    def close(self) -> None:
        for template in [*self._templates.values(), *self._retired]:
            template.close()
        self._templates.clear()
        self._retired.clear()
