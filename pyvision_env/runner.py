"""Run a policy for many episodes and summarise them (what ``pyvision run`` and ``pyvision eval`` print).

Example:
    >>> from agents.scripted import scripted_policy                             # doctest: +SKIP
    >>> env = PyVisionEnv("zoom")
    >>> summary = run_episodes(env, scripted_policy("zoom", env.protocol), episodes=20)
    >>> print(summary.table())
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
from tqdm.auto import tqdm

from agents.base import Policy


@dataclass(frozen=True)
class EpisodeResult:
    """The outcome of one episode, from its last ``info``."""

    task_id: str
    correct: bool
    score: float
    reward: float
    turns: int
    tool_calls: int
    tool_errors: int
    format_errors: int
    images_shown: int
    visual_tokens: int
    end_reason: str
    wall_time: float
    error: str | None = None
    """Why the episode failed outside the environment (the policy raised), else None."""


@dataclass
class RunSummary:
    """Episodes of one policy on one suite, with the aggregate numbers of the summary table."""

    suite: str
    policy: str
    protocol: str
    episodes: list[EpisodeResult] = field(default_factory=list)
    wall_time: float = 0.0

    def _mean(self, key: Callable[[EpisodeResult], float]) -> float:
        return statistics.fmean(key(e) for e in self.episodes) if self.episodes else float("nan")

    @property
    def accuracy(self) -> float:
        return self._mean(lambda e: float(e.correct))

    def row(self) -> dict[str, Any]:
        """The aggregate numbers, keyed by column name."""
        return {
            "suite": self.suite, "policy": self.policy, "protocol": self.protocol, "episodes": len(self.episodes),
            "accuracy": self.accuracy, "turns": self._mean(lambda e: e.turns),
            "tool_calls": self._mean(lambda e: e.tool_calls), "tool_errors": self._mean(lambda e: e.tool_errors),
            "visual_tokens": self._mean(lambda e: e.visual_tokens),
            "episode_s": self._mean(lambda e: e.wall_time), "wall_s": self.wall_time,
            "failed": sum(e.error is not None for e in self.episodes),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.row(), "results": [asdict(e) for e in self.episodes]}

    def table(self) -> str:
        """A Markdown table of the aggregates (means per episode)."""
        return format_table([self.row()])


COLUMNS = (("suite", "suite", "{}"), ("policy", "policy", "{}"), ("protocol", "protocol", "{}"),
           ("episodes", "episodes", "{}"), ("accuracy", "accuracy", "{:.1%}"), ("turns", "turns", "{:.2f}"),
           ("tool_calls", "tool calls", "{:.2f}"), ("tool_errors", "tool errors", "{:.2f}"),
           ("visual_tokens", "visual tokens", "{:.0f}"), ("episode_s", "s/episode", "{:.2f}"),
           ("wall_s", "wall s", "{:.1f}"), ("failed", "failed", "{}"))


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of summary rows (tool calls, errors, tokens and times are means per episode)."""
    header = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" if fmt == "{}" else "---:" for _, _, fmt in COLUMNS) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[key]) for key, _, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def run_episodes(env: gym.Env, policy: Policy, episodes: int, *, suite: str | None = None,
                 first_task: int = 0, progress: bool = True) -> RunSummary:
    """Run ``episodes`` episodes on tasks ``first_task, first_task + 1, ...`` (cycling through the suite).

    The policy sees each observation and info and returns the next response; an episode ends when the
    environment terminates or truncates it.
    """
    unwrapped = env.unwrapped
    tasks = unwrapped.tasks
    summary = RunSummary(suite or tasks.name, getattr(policy, "name", type(policy).__name__),
                         unwrapped.protocol.name)
    started = time.perf_counter()
    bar = tqdm(total=episodes, desc=f"{summary.suite} / {summary.policy}", unit="ep", disable=not progress)
    try:
        for number in range(episodes):
            task_index = (first_task + number) % len(tasks)
            try:
                summary.episodes.append(_one_episode(env, policy, task_index))
            except Exception as error:  # noqa: BLE001  (record what failed and carry on with the next episode)
                summary.episodes.append(_failed_episode(tasks[task_index].id, error))
            bar.update()
            bar.set_postfix(accuracy=f"{summary.accuracy:.0%}")
    finally:
        bar.close()
        summary.wall_time = time.perf_counter() - started
    return summary


def _failed_episode(task_id: str, error: Exception) -> EpisodeResult:
    return EpisodeResult(task_id=task_id, correct=False, score=0.0, reward=0.0, turns=0, tool_calls=0, tool_errors=0,
                         format_errors=0, images_shown=0, visual_tokens=0, end_reason="policy_error",
                         wall_time=0.0, error=f"{type(error).__name__}: {error}")


def _one_episode(env: gym.Env, policy: Policy, task_index: int) -> EpisodeResult:
    started = time.perf_counter()
    observation, info = env.reset(options={"task_index": task_index})
    total, done = 0.0, False
    while not done:
        observation, reward, terminated, truncated, info = env.step(policy.act(observation, info))
        total += float(reward)
        done = terminated or truncated
    return EpisodeResult(
        task_id=info["task_id"], correct=bool(info["correct"]), score=float(info["score"] or 0.0), reward=total,
        turns=info["turn"], tool_calls=info["tool_calls"], tool_errors=info["tool_errors"],
        format_errors=info["format_errors"], images_shown=info["images_shown"],
        visual_tokens=info["visual_tokens"], end_reason=info["end_reason"],
        wall_time=time.perf_counter() - started)
