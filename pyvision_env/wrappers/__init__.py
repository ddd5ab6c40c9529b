"""Wrappers around :class:`~pyvision_env.env.PyVisionEnv`, in Gymnasium's manner, each usable on its own and
under :class:`~pyvision_env.vector.PyVisionVectorEnv` (they run the same hooks for the asyncio API):

=============================  =========================================================================
:class:`PyVisionWrapper`       the base: reset/step hooks written once for the sync and async APIs
:class:`EpisodeStatistics`     ``info["episode"]`` (return, turns, tool calls, images...) at the last step
:class:`AccumulativeToolReward` PyVision-RL's reward ``R = R_acc + c * n * 1[correct]``
:class:`CodeVisionReward`      CodeVision's dense reward (format, crop IoU, penalties, gate)
:class:`RecordEpisodes`        every episode as one JSONL line, images as PNG files (``pyvision view``)
=============================  =========================================================================

Example::

    env = RecordEpisodes(EpisodeStatistics(AccumulativeToolReward(PyVisionEnv("zoom"))), "runs/zoom")
"""

from .core import PyVisionWrapper
from .recording import EpisodeFileError, EpisodeRecord, RecordEpisodes, RecordingWarning, read_episodes
from .rewards import (
    REWARDS,
    AccumulativeToolReward,
    CodeVisionReward,
    EpisodeReward,
    make_reward_wrapper,
    reward_spec,
)
from .statistics import EPISODE_KEYS, EpisodeStatistics

__all__ = [
    "EPISODE_KEYS",
    "REWARDS",
    "AccumulativeToolReward",
    "CodeVisionReward",
    "EpisodeFileError",
    "EpisodeRecord",
    "EpisodeReward",
    "EpisodeStatistics",
    "PyVisionWrapper",
    "RecordEpisodes",
    "RecordingWarning",
    "make_reward_wrapper",
    "read_episodes",
    "reward_spec",
]
