"""Supervised cold start: next-token loss on the assistant turns of recorded trajectories or text chats.

Examples are tokenized exactly as the RL trainer's rollouts are (:class:`~trainers.tokens.ChatTokenizer`:
the first observation with the chat template, each response as its tokens plus the end token, each later
observation by template difference), so the loss mask is the same: 1 on the responses and their end tokens,
0 on prompts, tool outputs and images.

* Recorded episodes (``RecordEpisodes`` JSONL; ``pyvision run --record`` or the demo's scripted teacher make
  them), optionally only finished or only correct ones.
* Text-only chats (``{"messages": [{"role": "user", "content": "..."}, ...]}`` per line), with
  ``model.freeze_vision: true`` for OVR's linguistic cold start (the vision tower is left untouched).

Example::

    config = load_config(SFTConfig, overrides=["model.path=runs/tiny", "data.episodes=[runs/teacher]"])
    with SFTTrainer(config) as trainer:
        trainer.train()
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from pyvision_env.messages import Message
from pyvision_env.wrappers.recording import read_episodes

from .backends import PixelCache
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, SFTConfig
from .grpo import TaskSampler
from .metrics import MetricsLogger, plot_run
from .modeling import load_policy, make_optimizer, start_run
from .objective import collate, sequence_logprobs
from .tokens import ChatTokenizer, ImageRecord


@dataclass
class Example:
    """One tokenized conversation: ids, loss mask (1 on assistant tokens) and images in placeholder order."""

    ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    image_records: list[ImageRecord] = field(default_factory=list)
    source: str = ""

    @property
    def logprobs(self) -> list[float]:
        return [0.0] * len(self.ids)

    @property
    def sampled_tokens(self) -> int:
        return sum(self.loss_mask)

    @property
    def label(self) -> str:
        """How errors name this example."""
        return f"example {self.source or '(no source)'}"


def tokenize_conversation(messages: Sequence[Message], chat: ChatTokenizer, source: str = "") -> Example:
    """The conversation as the rollout collector would have built it; messages after the last assistant turn
    are left out. Raises ValueError when there is no assistant turn."""
    first = next((i for i, m in enumerate(messages) if m.role == "assistant"), None)
    if first is None or first == 0:
        raise ValueError(f"{source or 'a conversation'} has no assistant turn after a prompt")
    example = Example(source=source)
    prompt = chat.prompt(messages[:first])
    example.ids, example.loss_mask = list(prompt.ids), [0] * len(prompt.ids)
    example.images, example.image_records = list(prompt.images), list(prompt.records)
    i = first
    while i < len(messages):
        response = chat.tokenizer(messages[i].plain_text, add_special_tokens=False)["input_ids"] + [chat.end_token_id]
        example.ids += response
        example.loss_mask += [1] * len(response)
        j = i + 1
        while j < len(messages) and messages[j].role != "assistant":
            j += 1
        if j == len(messages):
            break
        observation = chat.continuation(messages[i + 1:j])
        example.ids += observation.ids
        example.loss_mask += [0] * len(observation.ids)
        example.images += observation.images
        example.image_records += observation.records
        i = j
    return example


def load_examples(config: SFTConfig, chat: ChatTokenizer) -> tuple[list[Example], dict[str, int]]:
    """Examples of ``config.data``, with counts of what was skipped and why."""
    data = config.data
    examples: list[Example] = []
    skipped = {"unfinished": 0, "incorrect": 0, "too_long": 0, "no_response": 0}
    for source in data.episodes:
        for record in read_episodes(source):
            if data.only_finished and not record.get("finished", False):
                skipped["unfinished"] += 1
                continue
            if data.only_correct and not (record.get("totals") or {}).get("correct"):
                skipped["incorrect"] += 1
                continue
            try:
                examples.append(tokenize_conversation(record.messages(), chat, f"{source}:{record['episode_id']}"))
            except ValueError:
                skipped["no_response"] += 1
    for source in data.text:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"data.text file {path} does not exist")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                messages = [Message.text(m["role"], m["content"]) for m in json.loads(line)["messages"]]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ConfigError(f"{path}:{number}: expected {{\"messages\": [{{\"role\": ..., \"content\": ...}}]}}"
                                  f" ({error})") from error
            try:
                examples.append(tokenize_conversation(messages, chat, f"{path}:{number}"))
            except ValueError:
                skipped["no_response"] += 1
    kept = [e for e in examples if len(e.ids) <= config.max_length]
    skipped["too_long"] = len(examples) - len(kept)
    if not kept:
        raise ConfigError(f"no training examples in data.episodes={data.episodes} data.text={data.text} "
                          f"(skipped: {skipped})")
    return kept, skipped


class SFTTrainer:
    """Supervised fine-tuning on :func:`load_examples` (token-mean cross-entropy on assistant tokens)."""

    def __init__(self, config: SFTConfig) -> None:
        self.config = config
        self.run_dir = start_run(config)
        self.policy = load_policy(config.model)
        self.chat = self.policy.chat
        self.examples, self.skipped = load_examples(config, self.chat)
        self.steps = max(1, math.ceil(config.epochs * len(self.examples) / config.batch_size))
        self.optimizer, self.scheduler = make_optimizer(self.policy, config.lr, config.weight_decay,
                                                        config.warmup_steps)
        self.sampler = TaskSampler(len(self.examples), config.seed)
        self.pixels = PixelCache(self.chat.image_processor)
        self.logger = MetricsLogger(self.run_dir, tensorboard=config.logging.tensorboard)
        self.step_number = 0

    def train(self) -> dict[str, Any]:
        """Run (or resume) all steps; returns the last step's metrics."""
        import torch
        from tqdm.auto import tqdm

        config = self.config
        if config.checkpoint.resume and (folder := latest_checkpoint(self.run_dir)) is not None:
            state = load_checkpoint(folder, self.policy, self.optimizer, self.scheduler)
            self.step_number = int(state["step"])
            self.sampler.load(state["extra"]["sampler"])
            self.logger.truncate(self.step_number)
        bar = tqdm(total=self.steps, initial=self.step_number, desc="SFT", unit="step",
                   disable=not config.logging.progress)
        metrics: dict[str, Any] = {}
        model = self.policy.model
        model.train()
        try:
            while self.step_number < self.steps:
                self.step_number += 1
                batch_examples = [self.examples[i] for i in self.sampler.take(config.batch_size)]
                batch = collate(batch_examples, [0.0] * len(batch_examples), self.chat, self.pixels)
                mask = batch["loss_mask"]
                tokens = float(mask.sum())
                with self.policy.autocast():
                    logprobs = sequence_logprobs(model, batch, chunk_size=config.logprob_chunk_size)
                loss = -(logprobs * mask).sum() / tokens
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.trainable_parameters, config.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                metrics = {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "tokens": tokens,
                           "lr": self.scheduler.get_last_lr()[0], "epoch": self.sampler.epoch}
                self.logger.log(self.step_number, metrics)
                bar.update()
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                if self.step_number == self.steps or self.step_number % config.checkpoint.every == 0:
                    save_checkpoint(self.run_dir, self.step_number, self.policy, self.optimizer, self.scheduler,
                                    {"sampler": self.sampler.state()}, keep=config.checkpoint.keep)
        finally:
            bar.close()
            plot_run(self.run_dir)
        return metrics

    def close(self) -> None:
        self.logger.close()

    def __enter__(self) -> SFTTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
