"""The :class:`Policy` interface: a policy reads observations and writes responses.

A policy keeps its own conversation. ``act(observation, info)`` receives the messages the environment just
returned (at ``info["turn"] == 0`` a new episode starts with the initial messages) and returns the next
response text in the environment's protocol. ``act_batch`` serves several environments at once, one
conversation per slot; the default keeps one copy of the policy per slot.

Example:
    >>> class Echo(Policy):
    ...     def act(self, observation, info):
    ...         return "<answer>\\\\boxed{42}</answer>"
    >>> Echo().act_batch([[], []], [{"turn": 0}, {"turn": 0}])
    ['<answer>\\\\boxed{42}</answer>', '<answer>\\\\boxed{42}</answer>']
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from pyvision_env.messages import Message


class Policy(ABC):
    """Maps the latest observation (and info) to a response."""

    name: str = "policy"

    @abstractmethod
    def act(self, observation: list[Message], info: dict[str, Any]) -> str:
        """The response to the messages the environment just returned."""

    def act_batch(self, observations: Sequence[list[Message]], infos: Sequence[dict[str, Any]]) -> list[str]:
        """One response per slot; slot ``i`` always continues the conversation of slot ``i``."""
        slots = self.__dict__.get("_slots", [])
        while len(slots) < len(observations):
            clone = object.__new__(type(self))
            clone.__dict__.update(copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "_slots"}))
            slots.append(clone)
        self._slots = slots
        return [slot.act(obs, info) for slot, obs, info in zip(slots, observations, infos)]


class Conversation:
    """The messages of one episode so far (observations and the policy's own responses)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def observe(self, observation: list[Message], info: dict[str, Any]) -> None:
        """Append the new messages; a reset observation (``turn == 0``) starts over."""
        if info.get("turn") == 0:
            self.messages = []
        self.messages.extend(observation)

    def respond(self, message: Message) -> None:
        self.messages.append(message)

    @property
    def last_text(self) -> str:
        """The text of the latest message that is not from the assistant."""
        for message in reversed(self.messages):
            if message.role != "assistant":
                return message.plain_text
        return ""
