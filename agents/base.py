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
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from pyvision_env.deprecation import renamed_keywords
from pyvision_env.messages import ImagePart, Message, TextPart
from pyvision_env.protocols import Protocol, get_protocol
from pyvision_env.protocols.base import merge_text
from pyvision_env.visual_tokens import VisualTokenRule


class Policy(ABC):
    """Maps the latest observation (and info) to a response."""

    name: str = "policy"

    @abstractmethod
    def act(self, observation: list[Message], info: dict[str, Any]) -> str:
        """The response to the messages the environment just returned."""

    def act_batch(self, observations: Sequence[list[Message]], infos: Sequence[dict[str, Any]]) -> list[str]:
        """One response per slot; slot ``i`` always continues the conversation of slot ``i``. Each slot is a
        deep copy of this policy (override ``__deepcopy__`` for state that must not be copied)."""
        slots = self.__dict__.setdefault("_slots", [])
        while len(slots) < len(observations):
            slots.append(copy.deepcopy(self))
        return [slot.act(obs, info) for slot, obs, info in zip(slots, observations, infos)]

    def __getstate__(self) -> dict[str, Any]:
        """The policy without its batch slots: copies and pickles of a policy start with none."""
        return {key: value for key, value in self.__dict__.items() if key != "_slots"}


@renamed_keywords(max_images="context_images", max_visual_tokens="context_visual_tokens")
class Conversation:
    """The messages of one episode so far (observations and the policy's own responses), and the view of them
    a model gets within its context's image budget.

    ``context_images`` / ``context_visual_tokens`` (with ``token_rule``, a :class:`VisualTokenRule`) bound the
    images :meth:`visible` keeps (not to be confused with the environment's ``max_images``, which ends an
    episode): the oldest images are replaced, each with its placeholder tokens (they are rendered
    from the image part, so they leave together), by a short text saying an image was omitted. The history
    itself is never changed.

    >>> from PIL import Image
    >>> conversation = Conversation(context_images=1)
    >>> conversation.observe([Message("user", (ImagePart(Image.new("RGB", (8, 8))), TextPart("a")))], {"turn": 0})
    >>> conversation.observe([Message("user", (ImagePart(Image.new("RGB", (8, 8))), TextPart("b")))], {"turn": 1})
    >>> [len(m.images) for m in conversation.visible()], conversation.visible()[0].plain_text
    ([0, 1], '[an earlier image was omitted to fit the context]a')
    """

    OMITTED = "[an earlier image was omitted to fit the context]"

    def __init__(self, context_images: int | None = None, context_visual_tokens: int | None = None,
                 token_rule: VisualTokenRule | None = None) -> None:
        if context_visual_tokens is not None and token_rule is None:
            token_rule = VisualTokenRule.for_family("qwen2.5-vl")
        self.context_images, self.context_visual_tokens = context_images, context_visual_tokens
        self.token_rule = token_rule
        self.messages: list[Message] = []

    def observe(self, observation: list[Message], info: dict[str, Any]) -> None:
        """Append the new messages; a reset observation (``turn == 0``) starts over."""
        if info.get("turn") == 0:
            self.messages = []
        self.messages.extend(observation)

    def respond(self, message: Message) -> None:
        self.messages.append(message)

    def visible(self) -> list[Message]:
        """The messages with the oldest images omitted until the newest ones fit the budget."""
        images = [(i, j, part.image) for i, message in enumerate(self.messages)
                  for j, part in enumerate(message.content) if isinstance(part, ImagePart)]
        kept, tokens = 0, 0
        for _, _, image in reversed(images):
            cost = self.token_rule.count(*image.size) if self.token_rule is not None else 0
            if (self.context_images is not None and kept + 1 > self.context_images) or \
                    (self.context_visual_tokens is not None and tokens + cost > self.context_visual_tokens):
                break
            kept, tokens = kept + 1, tokens + cost
        dropped = {(i, j) for i, j, _ in images[:len(images) - kept]}
        if not dropped:
            return list(self.messages)
        return [dataclasses.replace(message, content=tuple(merge_text(
                    [TextPart(self.OMITTED) if (i, j) in dropped else part for j, part in enumerate(message.content)])))
                for i, message in enumerate(self.messages)]

    @property
    def last_text(self) -> str:
        """The text of the latest message that is not from the assistant."""
        for message in reversed(self.messages):
            if message.role != "assistant":
                return message.plain_text
        return ""


@renamed_keywords(max_images="context_images", max_visual_tokens="context_visual_tokens")
class ChatPolicy(Policy):
    """Base of the model policies: one :class:`Conversation` per environment slot (with the image budget),
    the model's replies added to it as the protocol renders them, usage recorded per step.

    Subclasses implement :meth:`complete_batch`.
    """

    def __init__(self, protocol: Protocol | str = "pyvision", context_images: int | None = None,
                 context_visual_tokens: int | None = None) -> None:
        self.protocol = get_protocol(protocol)
        self.budget = {"context_images": context_images, "context_visual_tokens": context_visual_tokens}
        self.usage: list[dict[str, Any]] = []
        """Per step: token counts, finish reason and whatever else the backend reports."""

    @abstractmethod
    def complete_batch(self, conversations: list[list[Message]]) -> list[tuple[str, dict[str, Any]]]:
        """``(response text, usage record)`` for each conversation (the messages the model may see)."""

    def act(self, observation: list[Message], info: dict[str, Any]) -> str:
        return self.act_batch([observation], [info])[0]

    def act_batch(self, observations: Sequence[list[Message]], infos: Sequence[dict[str, Any]]) -> list[str]:
        slots = self.__dict__.setdefault("_conversations", [])
        while len(slots) < len(observations):
            slots.append(Conversation(**self.budget))
        conversations = slots[:len(observations)]
        for conversation, observation, info in zip(conversations, observations, infos):
            conversation.observe(observation, info)
        replies = self.complete_batch([conversation.visible() for conversation in conversations])
        for conversation, (response, usage) in zip(conversations, replies):
            conversation.respond(self.protocol.assistant_message(response))
            self.usage.append(usage)
        return [response for response, _ in replies]
