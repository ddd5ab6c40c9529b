"""The TRL adapter, driven through a real ``GRPOTrainer`` step with the tiny model on real kernels.

The tiny model is random, so a logits processor forces what it samples (as a trained policy would write): one
rollout of each pair calls the ``python`` tool to count the squares and shows a crop, then answers with the
printed number; the other answers 0 without a tool. Everything else — TRL's tool loop, the chat template, the
processor, the loss and the optimizer step — is TRL's own code.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="the 'trl' extra is not installed")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from transformers import AutoModelForImageTextToText, LogitsProcessor, LogitsProcessorList
from trl import GRPOConfig, GRPOTrainer
from trl.chat_template_utils import qwen3_vl_chat_template

from agents.tiny_model import load_tiny_processor, make_tiny_model
from pyvision_env.integrations.trl import (
    PyVisionTRLEnv,
    environment_factory,
    pyvision_reward,
    training_dataset,
)
from pyvision_env.make import make_env

from .conftest import wait_until

RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def tool_call(code: str) -> str:
    """A tool call in the chat template's (Qwen3-VL's) format."""
    return f"<tool_call>\n{json.dumps({'name': 'python', 'arguments': {'code': code}})}\n</tool_call>"


def count_code(question: str) -> str:
    color = re.findall(r"How many (\w+) squares", question)[-1]
    return (f"print((np.asarray(image_clue_0) == {RGB[color]}).all(-1).sum() // 64)\n"
            "plt.imshow(image_clue_0.crop((0, 0, 48, 48))); plt.show()")


class ScriptedResponses(LogitsProcessor):
    """Forces each row's next token along a scripted response; the response depends on the conversation so far."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def response(self, context: str, row: int) -> str:
        printed = re.findall(r"<tool_response>\n(\d+)", context)
        if printed:
            return f"There are \\boxed{{{printed[-1]}}}."
        return tool_call(count_code(context)) if row % 2 == 0 else "\\boxed{0}"

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids):
            text = self.tokenizer.decode(ids)
            start = text.rfind("<|im_start|>assistant\n") + len("<|im_start|>assistant\n")
            target = self.tokenizer(self.response(text[:start], row), add_special_tokens=False)["input_ids"]
            done = self.tokenizer(text[start:], add_special_tokens=False)["input_ids"] if text[start:] else []
            forced[row, target[len(done)] if len(done) < len(target) else self.end] = 0.0
        return forced


def test_one_grpo_step_plays_real_episodes_and_learns_from_their_rewards(tiny, framework_engine, tmp_path):
    processor = load_tiny_processor(tiny, chat_template=qwen3_vl_chat_template)
    model = AutoModelForImageTextToText.from_pretrained(tiny)
    model.generate = functools.partial(model.generate,
                                       logits_processor=LogitsProcessorList([ScriptedResponses(processor.tokenizer)]))
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, max_steps=1,
                      max_completion_length=512, learning_rate=1e-3, report_to=[], use_cpu=True, bf16=False,
                      save_strategy="no", logging_steps=1, seed=0)
    trainer = GRPOTrainer(model=model, args=args, processing_class=processor,
                          train_dataset=training_dataset("tally", split="train"),
                          environment_factory=environment_factory("tally", reward="accumulative", max_turns=5),
                          reward_funcs=pyvision_reward)
    batches = []
    generate_and_score = trainer._generate_and_score_completions
    trainer._generate_and_score_completions = lambda inputs: batches.append((inputs, generate_and_score(inputs))) \
        or batches[-1][1]
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}

    trainer.train()

    logs = trainer.state.log_history[0]
    assert trainer.state.global_step == 1
    assert logs["tools/call_frequency"] == pytest.approx(0.5) and logs["tools/failure_frequency"] == 0.0
    # The same two responses played on PyVisionEnv directly earn the same rewards.
    inputs, batch = batches[0]
    questions = [processor.tokenizer.decode(ids) for ids in batch["prompt_ids"]]
    expected = [play_directly(inputs[row]["task_id"], question, row) for row, question in enumerate(questions)]
    assert sorted(expected) == [0.0, pytest.approx(1.1)]
    assert logs["rewards/pyvision/mean"] == pytest.approx(sum(expected) / 2)
    assert batch["advantages"].abs().sum() > 0
    changed = [name for name, parameter in model.named_parameters() if not torch.equal(before[name], parameter)]
    assert changed  # a real optimizer step on the rewards' advantages

    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    per_image = (batch["image_grid_thw"].prod(-1) // processor.image_processor.merge_size ** 2).tolist()
    first = 0
    for row in range(2):
        images = batch["num_images"][row]
        ids = torch.cat([batch["prompt_ids"][row][batch["prompt_mask"][row].bool()],
                         batch["completion_ids"][row][batch["completion_mask"][row].bool()]])
        # Every image the model was given has exactly its processor grid's placeholders: the task's image, and
        # for the tool-using rollout the crop its code showed.
        assert (ids == image_pad).sum().item() == sum(per_image[first:first + images])
        assert images == (2 if row_used_tool(batch, row, processor) else 1)
        first += images
        tool_tokens = batch["completion_ids"][row][(batch["tool_mask"][row] == 0)
                                                   & batch["completion_mask"][row].bool()]
        model_tokens = batch["completion_ids"][row][(batch["tool_mask"][row] == 1)
                                                    & batch["completion_mask"][row].bool()]
        # Observations (tool results) are masked out of the loss; the model's own tokens are not.
        assert "<tool_response>" in processor.tokenizer.decode(tool_tokens) or not row_used_tool(batch, row, processor)
        assert "<tool_response>" not in processor.tokenizer.decode(model_tokens)
        assert "\\boxed{" in processor.tokenizer.decode(model_tokens)
    assert wait_until(lambda: framework_engine.status().live_kernels == 0, timeout=20)  # every episode's kernel is gone


def row_used_tool(batch, row: int, processor) -> bool:
    return "<tool_call>" in processor.tokenizer.decode(batch["completion_ids"][row])


def play_directly(task_id: str, question: str, row: int) -> float:
    """The reward PyVisionEnv gives the scripted responses of ``row`` on its task."""
    env = make_env("tally", split="train", reward="accumulative", protocol="openai-tools", max_turns=5)
    protocol = env.unwrapped.protocol
    try:
        env.reset(options={"task_id": task_id})
        if row % 2:
            return env.step(protocol.render_action(answer="0"))[1]
        observation, *_ = env.step(protocol.render_action(code=count_code(question)))
        printed = re.findall(r"\d+", observation[0].content[0].text)[0]
        return env.step(protocol.render_action(answer=printed))[1]
    finally:
        env.close()


def test_bad_setups_and_unfinished_rollouts(framework_engine):
    with pytest.raises(KeyError, match="no-such-suite"):
        environment_factory("no-such-suite")
    with pytest.raises(ValueError, match="protocol is 'openai-tools'"):
        PyVisionTRLEnv("tally", protocol="pyvision")
    env = environment_factory("tally", max_turns=3)()
    with pytest.raises(ValueError, match="needs a 'task_id'"):
        env.reset(prompt=[])
    with pytest.raises(ValueError, match="has no task 'missing'"):
        env.reset(task_id="missing")
    task_id = training_dataset("tally")[0]["task_id"]
    parts = env.reset(task_id=task_id, prompt=[])
    assert [part["type"] for part in parts].count("image") == 1 and "How many" in parts[-1]["text"]
    output = env.python("print(6 * 7); 1 / 0")
    assert "42" in output[0]["text"] and "ZeroDivisionError" in output[0]["text"]
    # TRL stopped this rollout at a tool result (its length budget): no answer, no reward, the kernel freed.
    assert pyvision_reward([[{"role": "tool", "content": output}]], [env]) == [0.0]
    assert env._info["end_reason"] == "unfinished"
    assert "episode has ended" in env.python("print(1)")
    assert wait_until(lambda: framework_engine.status().live_kernels == 0, timeout=20)


def test_the_example_trains_a_step_with_the_tiny_model(tmp_path):
    example = Path(__file__).parents[1] / "docs" / "examples" / "trl_grpo.py"
    result = subprocess.run([sys.executable, str(example), "--tiny", "--suite", "tally", "--max-steps", "1",
                             "--num-generations", "2", "--max-completion-length", "32", "--output", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'train_runtime'" in result.stdout + result.stderr and "rewards/pyvision/mean" in result.stdout
