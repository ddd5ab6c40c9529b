"""Deprecated path: the video suites' scripted policies are in :mod:`agents.scripted.video` and the uniform
baseline in :mod:`agents.baselines` (this stub goes in 0.3)."""

from pyvision_env.deprecation import warn_moved

from .baselines import UniformVideoPolicy
from .scripted.video import VIDEO_HELPER_SOURCE, VIDEO_POLICIES, VideoScriptedPolicy

warn_moved(__name__, "agents.scripted.video and agents.baselines")

__all__ = ["VIDEO_HELPER_SOURCE", "VIDEO_POLICIES", "UniformVideoPolicy", "VideoScriptedPolicy"]
