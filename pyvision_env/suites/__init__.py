"""The built-in synthetic suites: generated offline from a seed (no downloads), cached as PNG files.

===============  ===========================  ======================================================
``zoom``         ``PyVision/Zoom-v0``         a small number on a red-bordered tag in a large image
``orientation``  ``PyVision/Orientation-v0``  a code on a card rotated by 90/180/270 degrees or mirrored
``count``        ``PyVision/Count-v0``        count the small shapes of one colour and kind
``contrast``     ``PyVision/Contrast-v0``     a code printed in ink barely darker than its paper
``tally``        ``PyVision/Tally-v0``        count coloured squares in a small image (the trainer demo)
===============  ===========================  ======================================================

The video suites (``video-event``, ``video-count``, ``video-measure``, ``video-needle``; see
:mod:`.video`) are registered the same way, as ``PyVision/VideoEvent-v0`` and so on.

Each registered image suite holds 100 tasks of seed 0 (``tally``: 500), split 80/20 into ``train`` and
``held-out`` by index: what the suite's ``load()`` returns (a :class:`SyntheticSuite` is a
:class:`~pyvision_env.tasks.TaskSource`). They are generated on first use into ``$PYVISION_CACHE`` (default ``~/.cache/pyvision``) under
``suites/<name>/v<version>/seed<seed>-n<count>/`` with a ``tasks.jsonl`` that
:func:`~pyvision_env.tasks.load_jsonl` reads. Every task has ground-truth ``regions`` and
``metadata["required_ops"]`` (``["crop"]``, ``["rotate"]`` or ``["flip"]``, ``["count"]``, ``["enhance"]``).

Example::

    import gymnasium as gym, pyvision_env
    env = gym.make("PyVision/Orientation-v0", split="held-out")   # the 20 held-out tasks
    SUITES["count"].load(count=20, seed=7)                        # another set, cached on its own
    # -> TaskSet('count', 20 tasks)
"""

from __future__ import annotations

from .. import registry
from . import contrast, count, orientation, tally, zoom
from .common import CACHE_ENV, SyntheticSuite, cache_root
from .video import VIDEO_SUITES

SUITES: dict[str, SyntheticSuite] = {suite.name: suite for suite in (zoom.SUITE, orientation.SUITE,
                                                                     count.SUITE, contrast.SUITE,
                                                                     tally.SUITE)}


def register_builtin_suites() -> list[str]:
    """Register the built-in suites not registered yet (re-import safe); returns all their Gymnasium ids."""
    registered = {suite.name for suite in registry.list_suites()}
    for name, suite in {**SUITES, **VIDEO_SUITES}.items():
        if name not in registered:
            registry.register_suite(name, suite)
    return [registry.env_id_for(name) for name in (*SUITES, *VIDEO_SUITES)]


__all__ = [
    "CACHE_ENV",
    "SUITES",
    "VIDEO_SUITES",
    "SyntheticSuite",
    "cache_root",
    "register_builtin_suites",
]
