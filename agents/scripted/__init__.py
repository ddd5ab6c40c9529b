"""Scripted tool-using policies, one per built-in suite: they solve each task by sending real code through the
environment (locate, crop and zoom; undo a rotation or flip; count connected components; enhance contrast;
fetch video frames on demand) and reading the printed results — never the answer.

* :mod:`.common` — the analysis routines the kernel receives as source, and :class:`ScriptedPolicy`;
* :mod:`.images` — the image suites' policies; :mod:`.video` — the video suites'.

Example:
    >>> scripted_policy("zoom", "pyvision").name
    'scripted-zoom'
"""

from __future__ import annotations

from pyvision_env.protocols import Protocol

from .common import HELPER_SOURCE, ScriptedPolicy
from .images import IMAGE_POLICIES, TallyScriptedPolicy
from .video import VIDEO_HELPER_SOURCE, VIDEO_POLICIES, VideoScriptedPolicy

SCRIPTED_POLICIES: dict[str, type[ScriptedPolicy]] = {**IMAGE_POLICIES, **VIDEO_POLICIES}
"""The scripted policy of each built-in suite, image and video."""


def scripted_policy(suite: str, protocol: Protocol | str = "pyvision") -> ScriptedPolicy:
    """The scripted policy of a built-in suite (image or video), speaking ``protocol`` (a name or the env's
    instance)."""
    if suite not in SCRIPTED_POLICIES:
        raise KeyError(f"no scripted policy for suite {suite!r}; known: {sorted(SCRIPTED_POLICIES)}")
    return SCRIPTED_POLICIES[suite](protocol)


__all__ = ["HELPER_SOURCE", "IMAGE_POLICIES", "SCRIPTED_POLICIES", "VIDEO_HELPER_SOURCE", "VIDEO_POLICIES",
           "ScriptedPolicy", "TallyScriptedPolicy", "VideoScriptedPolicy", "scripted_policy"]
