"""Deprecated path: recording is in :mod:`pyvision_env.wrappers.recording` (this stub goes in 0.3)."""

from .deprecation import warn_moved
from .wrappers.recording import (
    EpisodeFileError,
    EpisodeRecord,
    RecordEpisodes,
    RecordingWarning,
    episodes_file,
    image_digest,
    read_episodes,
)

warn_moved(__name__, "pyvision_env.wrappers.recording")

__all__ = ["EpisodeFileError", "EpisodeRecord", "RecordEpisodes", "RecordingWarning", "episodes_file",
           "image_digest", "read_episodes"]
