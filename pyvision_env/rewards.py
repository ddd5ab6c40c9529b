"""Deprecated path: the reward wrappers are in :mod:`pyvision_env.wrappers` (this stub goes in 0.3)."""

from .deprecation import warn_moved
from .execution.operations import box_iou
from .wrappers.rewards import REWARDS, AccumulativeToolReward, CodeVisionReward, make_reward_wrapper
from .wrappers.statistics import EPISODE_KEYS

warn_moved(__name__, "pyvision_env.wrappers")

__all__ = ["EPISODE_KEYS", "REWARDS", "AccumulativeToolReward", "CodeVisionReward", "box_iou",
           "make_reward_wrapper"]
