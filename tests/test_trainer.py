"""The trainer on a tiny real Qwen2.5-VL: token-in/token-out masks, log-probs, the loss, a GRPO step with OFR
on real kernels, SFT, checkpoints and resume after a kill."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from agents.hf import Sampling
from pyvision_env.execution import ForkError
from pyvision_env.messages import ImagePart, Message, TextPart
from pyvision_env.vector import PyVisionVectorEnv
from trainers.backends import GenerationBackend, HFBackend, PixelCache, Sampled
from trainers.checkpoint import latest_checkpoint
from trainers.config import ConfigError, GRPOConfig, ModelConfig, SFTConfig, load_config, to_dict
from trainers.grpo import GRPOTrainer, TaskSampler, engine_shards, importance_cap, rollout_groups
from trainers.modeling import check_sees_pixels, load_policy, make_optimizer
from trainers.objective import MODEL_INPUTS, collate, grpo_loss, pack, rows, sequence_logprobs
from trainers.ofr import OFRSelector
from trainers.rollout import EpisodeSpec, GenerationBatcher, RolloutCollector, Trajectory
from trainers.sft import SFTTrainer, tokenize_conversation
from trainers.tokens import Encoded, ImageTokenMismatch, TemplateError, VisualParityError, check_images

from .conftest import wait_until
from .scripted_generation import ScriptedTallyGeneration

ROOT = Path(__file__).resolve().parents[1]


def picture(seed: int, size=(84, 56)) -> Image.Image:
    return Image.effect_noise(size, 40 + seed).convert("RGB")


def conversation() -> list[Message]:
    return [Message.text("system", "Look closely."),
            Message("user", (ImagePart(picture(0)), TextPart("How many red squares are in the image?"))),
            Message.text("assistant", "<code>\n```python\nprint(1)\n```\n</code>"),
            Message("user", (TextPart("<tool_response>Text Result:\n1\nImage Result:"), ImagePart(picture(1)),
                             TextPart("</tool_response>"))),
            Message.text("assistant", "<answer>\\boxed{1}</answer>")]


# --- configuration --------------------------------------------------------------------------------


def test_config_reads_yaml_with_overrides_and_refuses_bad_settings(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 7\nalgorithm:\n  lr: 1e-4\nofr:\n  drop_end_reasons: [over_length]\n")
    config = load_config(GRPOConfig, path, ["algorithm.clip_high=0.28", "env.options={kernel_start: first-call}"])
    assert (config.steps, config.algorithm.lr, config.algorithm.clip_high) == (7, 1e-4, 0.28)
    assert config.ofr.drop_end_reasons == ("over_length",) and config.env.options == {"kernel_start": "first-call"}
    with pytest.raises(ConfigError, match=r"unknown setting 'algorithm\.learning_rate'.*lr"):
        load_config(GRPOConfig, overrides=["algorithm.learning_rate=1"])
    with pytest.raises(ConfigError, match="steps must be int"):
        load_config(GRPOConfig, overrides=["steps=many"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GRPOConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        load_config(GRPOConfig, overrides=["steps"])
    with pytest.raises(ConfigError, match="pool: pool backend must be one of"):
        load_config(GRPOConfig, overrides=["pool.backend=spark"])
    with pytest.raises(ConfigError, match=r"ofr\.exhaustion must be one of 'raise', 'partial', 'backfill'"):
        load_config(GRPOConfig, overrides=["ofr.exhaustion=retry"])
    with pytest.raises(ConfigError, match="algorithm: logprob_chunk_size must be a positive number"):
        load_config(GRPOConfig, overrides=["algorithm.logprob_chunk_size=0"])
    written = tmp_path / "config.json"  # what a run writes in its folder reads back as the same settings
    written.write_text(json.dumps(to_dict(config)))
    assert load_config(GRPOConfig, written) == config


def test_the_7b_config_holds_the_papers_batch():
    config = load_config(GRPOConfig, ROOT / "trainers/configs/pyvision_image_7b.yaml")
    assert config.ofr.target_size == 64 * config.rollout.group_size == 512
    assert OFRSelector(config.ofr, group_size=config.rollout.group_size).groups_per_round == 32
    assert (config.algorithm.lr, config.env.max_turns, config.rollout.max_length) == (1e-6, 5, 32768)
    assert importance_cap(config) == config.algorithm.importance_cap  # vLLM: corrected
    assert config.model.master_dtype == "float32" and config.model.dtype == "bfloat16"


def test_task_sampler_covers_every_task_each_epoch_and_resumes():
    sampler = TaskSampler(10, seed=3)
    first = sampler.take(10)
    assert sorted(first) == list(range(10))
    sampler.take(4)
    state = sampler.state()
    resumed = TaskSampler(10, seed=3)
    resumed.load(state)
    assert resumed.take(9) == sampler.take(9)


# --- tokens, masks, images ------------------------------------------------------------------------


def test_multi_turn_tokens_and_loss_mask_are_exact(policy):
    chat = policy.chat
    messages = conversation()
    example = tokenize_conversation(messages, chat)
    # the token-in/token-out ids are exactly the chat template's rendering, placeholders expanded
    rendered = chat.tokenizer.apply_chat_template(
        [{"role": m.role, "content": [{"type": "image"} if isinstance(p, ImagePart) else {"type": "text", "text": p.text}
                                      for p in m.content]} for m in messages], tokenize=False)
    counts = chat.image_token_counts([picture(0), picture(1)])
    pieces = rendered.split("<|image_pad|>")
    expanded = pieces[0] + "".join("<|image_pad|>" * n + rest for n, rest in zip(counts, pieces[1:]))
    assert chat.tokenizer.decode(example.ids, skip_special_tokens=False) == expanded.removesuffix("\n")
    # mask 1 on exactly the two responses and their end tokens
    trained = chat.tokenizer.decode([t for t, m in zip(example.ids, example.loss_mask) if m],
                                    skip_special_tokens=False)
    assert trained == messages[2].plain_text + "<|im_end|>" + messages[4].plain_text + "<|im_end|>"
    runs = re.findall(r"1+", "".join(map(str, example.loss_mask)))
    assert len(runs) == 2 and example.loss_mask[-1] == 1
    check_images(example.ids, chat.image_token_id, counts)
    with pytest.raises(ImageTokenMismatch):
        check_images(example.ids[:-30] + example.ids[-29:], chat.image_token_id, counts[:1])


def test_a_template_that_rewrites_history_is_refused(policy):
    from trainers.tokens import ChatTokenizer

    tokenizer = policy.chat.tokenizer
    original = tokenizer.chat_template
    try:  # like templates that drop earlier reasoning: past assistant turns are rendered differently
        tokenizer.chat_template = (
            "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{% if message['role'] == 'assistant' and not loop.last %}(an earlier reply)"
            "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
            "{% else %}<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}{% endif %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
        with pytest.raises(TemplateError, match=r"prefix-preserving|differently"):
            ChatTokenizer(tokenizer, policy.chat.image_processor).check_template()
    finally:
        tokenizer.chat_template = original


def test_recomputed_logprobs_match_the_sampler(policy):
    chat = policy.chat
    torch.manual_seed(0)
    prompts = [chat.prompt(conversation()[:2]), chat.prompt([Message.text("user", "Say something.")])]
    sampled = HFBackend(policy.model, chat).generate(prompts, Sampling(max_new_tokens=24, temperature=1.0))
    trajectories = []
    for prompt, s in zip(prompts, sampled):
        trajectory = Trajectory(EpisodeSpec(0, 0, 0), "t")
        trajectory.extend(prompt, sampled=False)
        trajectory.extend(s, sampled=True)
        trajectories.append(trajectory)
    batch = collate(trajectories, [0.0, 0.0], chat, PixelCache(chat.image_processor))
    with torch.no_grad():
        recomputed = sequence_logprobs(policy.model, batch, temperature=1.0)
    mask = batch["loss_mask"].bool()
    assert mask.sum() == sum(len(s.ids) for s in sampled)
    assert torch.allclose(recomputed[mask], batch["old_logprobs"][mask], atol=2e-4)


def test_chunked_logprobs_equal_the_full_ones_and_never_project_more_than_a_chunk(policy):
    """Log-probs and gradients are the same computed 5 positions at a time; the output projection never sees more
    than 5 positions, and runs again per chunk in the backward pass (its logits are not kept for it)."""
    torch.manual_seed(2)
    batch = collate(_sampled_trajectories(policy), [1.0, -1.0], policy.chat, PixelCache(policy.chat.image_processor))
    model, widths = policy.model, []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda module, inputs, output: widths.append(inputs[0].shape[1]))

    def logprobs_and_gradients(chunk_size):
        model.zero_grad(set_to_none=True)
        widths.clear()
        logprobs = sequence_logprobs(model, batch, chunk_size=chunk_size)
        (logprobs * batch["loss_mask"] * batch["advantages"]).sum().backward()
        return logprobs.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    try:
        full, full_gradients = logprobs_and_gradients(None)
        assert widths == [batch["input_ids"].shape[1]]
        chunked, chunked_gradients = logprobs_and_gradients(5)
        chunks = math.ceil((batch["input_ids"].shape[1] - 1) / 5)
        projected = [width for width in widths if width]  # the model's own forward projects no position
        assert max(projected) == 5 and len(projected) == 2 * chunks
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    assert torch.allclose(full, chunked, atol=1e-5)
    assert full_gradients.keys() == chunked_gradients.keys() and len(full_gradients) > 0
    for name, gradient in full_gradients.items():
        assert torch.allclose(gradient, chunked_gradients[name], rtol=1e-4, atol=1e-6), name
    with pytest.raises(ValueError, match="positive"):
        sequence_logprobs(model, batch, chunk_size=0)


def test_image_tokens_get_the_models_3d_positions(policy):
    """Qwen2.5-VL places image tokens by their row and column (3D rotary positions), computed from
    ``mm_token_type_ids``; without them every token gets a 1D position, unlike the model's training and vLLM.
    A collated (right-padded) row gives the logits of that sequence alone with its explicit 3D positions."""
    chat = policy.chat
    assert chat.token_types
    trajectories = _sampled_trajectories(policy)
    trajectories[1].ids = trajectories[1].ids[:-3]  # shorter: padded in the batch
    trajectories[1].loss_mask, trajectories[1].logprobs = trajectories[1].loss_mask[:-3], trajectories[1].logprobs[:-3]
    batch = collate(trajectories, [0.0, 0.0], chat, PixelCache(chat.image_processor))
    assert batch["mm_token_type_ids"].sum() == (batch["input_ids"] == chat.image_token_id).sum() > 0
    alone = torch.tensor([trajectories[1].ids])
    pixels = PixelCache(chat.image_processor)(trajectories[1].images)
    token_types = (alone == chat.image_token_id).long()
    positions, _ = policy.model.model.get_rope_index(alone, token_types, pixels["image_grid_thw"])
    assert not torch.equal(positions[0], positions[1])  # rows and columns of the image differ
    with torch.no_grad():
        inputs = {key: batch[key] for key in MODEL_INPUTS if key in batch}
        collated = policy.model(**inputs).logits[1, :alone.shape[1]]
        explicit = policy.model(input_ids=alone, position_ids=positions, **pixels).logits[0]
        flat = policy.model(input_ids=alone, **pixels).logits[0]
    assert torch.allclose(collated, explicit, atol=1e-4)
    assert (flat - explicit).abs().max() > 1e-3  # ten times the tolerance above


def test_packed_trajectories_give_the_padded_logprobs_and_gradients(policy):
    """Two trajectories with images and a text-only one, back to back in one row without padding (each with
    its own 3D positions), give the log-probs and gradients of the padded batch."""
    chat, model = policy.chat, policy.model
    torch.manual_seed(3)
    trajectories = _sampled_trajectories(policy)
    text_only = Trajectory(EpisodeSpec(0, 0, 0), "t")
    text_only.extend(chat.prompt([Message.text("user", "Say something.")]), sampled=False)
    text_only.extend(HFBackend(model, chat).generate([chat.prompt([Message.text("user", "Say something.")])],
                                                     Sampling(max_new_tokens=6, temperature=1.0))[0], sampled=True)
    trajectories.append(text_only)
    advantages = [1.0, -1.0, 0.5]
    pixels = PixelCache(chat.image_processor)
    backbone = model.model

    def logprobs_and_gradients(batch):
        model.zero_grad(set_to_none=True)
        logprobs = sequence_logprobs(model, batch)
        (logprobs * batch["loss_mask"] * batch["advantages"]).sum().backward()
        return rows(logprobs.detach(), batch), {n: p.grad.clone() for n, p in model.named_parameters()}

    try:
        padded, padded_gradients = logprobs_and_gradients(collate(trajectories, advantages, chat, pixels))
        packed_batch = pack(trajectories, advantages, chat, pixels,
                            lambda ids, types, grids: backbone.get_rope_index(ids, types, grids)[0])
        assert packed_batch["input_ids"].shape == (1, sum(len(t.ids) for t in trajectories))
        assert packed_batch["position_ids"].shape[:2] == (4, 1) and "attention_mask" not in packed_batch
        packed, packed_gradients = logprobs_and_gradients(packed_batch)
    finally:
        model.zero_grad(set_to_none=True)
    for trajectory, a, b in zip(trajectories, padded, packed):
        assert len(a) == len(b) == len(trajectory.ids) and torch.allclose(a, b, atol=1e-5)
    for name, gradient in padded_gradients.items():
        assert torch.allclose(gradient, packed_gradients[name], rtol=1e-4, atol=1e-6), name


def test_grpo_loss_clips_each_side_and_averages_over_tokens():
    logprobs = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1]]))  # ratios against old log-probs of 0
    batch = {"loss_mask": torch.tensor([[0.0, 1.0, 1.0, 1.0]]), "old_logprobs": torch.zeros(1, 4),
             "advantages": torch.tensor([[1.0, 1.0, -1.0, 1.0]])}
    loss, stats = grpo_loss(logprobs, batch, clip_low=0.2, clip_high=0.28, token_count=3.0)
    # token 1: min(1.5, 1.28) = 1.28; token 2: min(-0.5, -0.8) = -0.8; token 3: 1.1 (inside the range)
    assert loss.item() == pytest.approx(-(1.28 - 0.8 + 1.1) / 3, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)


def test_the_kl_term_stays_finite_at_padding():
    """Padding has a reference log-prob of 0 and any log-prob under the policy: exp(0 - (-1e4)) overflows, and
    inf times a mask of 0 was NaN in the loss and in every gradient."""
    logprobs = torch.tensor([[0.0, -0.5, -1.0, -1e4]], requires_grad=True)  # the last token is padding
    batch = {"loss_mask": torch.tensor([[0.0, 1.0, 1.0, 0.0]]), "old_logprobs": torch.tensor([[0.0, -0.5, -1.0, 0.0]]),
             "advantages": torch.tensor([[0.0, 1.0, 1.0, 0.0]])}
    ref = torch.tensor([[0.0, -0.4, -1.2, 0.0]])
    loss, stats = grpo_loss(logprobs, batch, clip_low=0.2, clip_high=0.2, token_count=2.0, ref_logprobs=ref,
                            kl_coef=0.1)
    loss.backward()
    kl = [math.exp(r - lp) - (r - lp) - 1 for r, lp in ((-0.4, -0.5), (-1.2, -1.0))]
    assert loss.item() == pytest.approx((-1 - 1 + 0.1 * sum(kl)) / 2, abs=1e-6)
    assert stats["kl"] == pytest.approx(sum(kl) / 2, rel=1e-5) and torch.isfinite(logprobs.grad).all()
    assert logprobs.grad[0, 3] == 0.0


def test_truncated_importance_weights_correct_the_sampler_mismatch():
    """With recomputed old log-probs, each token's surrogate is weighted by min(pi_old / pi_sampler, cap)."""
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5]]))
    batch = {"loss_mask": torch.ones(1, 3), "old_logprobs": old, "advantages": torch.ones(1, 3),
             "behaviour_logprobs": torch.log(torch.tensor([[0.5, 0.25, 0.1]]))}  # weights 1, 2, 5 -> capped at 2
    loss, stats = grpo_loss(old.clone(), batch, clip_low=0.2, clip_high=0.2, token_count=3.0, importance_cap=2.0)
    assert loss.item() == pytest.approx(-(1 + 2 + 2) / 3, abs=1e-6)
    assert stats["importance_weight"] == pytest.approx(5 / 3, rel=1e-6)
    assert stats["importance_capped"] == pytest.approx(1 / 3)
    plain, _ = grpo_loss(old.clone(), batch, clip_low=0.2, clip_high=0.2, token_count=3.0)
    assert plain.item() == pytest.approx(-1.0)  # off unless a cap is given


def test_the_importance_correction_is_on_for_vllm_and_where_asked():
    def cap(*overrides):
        return importance_cap(load_config(GRPOConfig, overrides=list(overrides)))

    assert cap() is None and cap("rollout.backend=vllm") == 2.0  # auto: the sampler's numerics differ with vLLM
    assert cap("rollout.backend=vllm", "algorithm.importance_correction=none") is None
    assert cap("algorithm.importance_correction=truncated", "algorithm.importance_cap=3.0") == 3.0
    assert cap("rollout.backend=vllm", "algorithm.old_logprobs=rollout") is None  # nothing recomputed to correct
    with pytest.raises(ValueError, match="old_logprobs: recompute"):
        cap("algorithm.importance_correction=truncated", "algorithm.old_logprobs=rollout")
    with pytest.raises(ValueError, match="importance_correction must be"):
        cap("algorithm.importance_correction=always")


def test_trajectories_that_ended_in_error_stay_out_of_their_groups_baseline():
    """A failed generation says nothing about the task: the others' advantages are against each other only."""
    group = [Trajectory(EpisodeSpec(0, 0, "g"), "t", reward=reward, end_reason=end)
             for reward, end in ((1.0, "answered"), (0.0, "answered"), (0.0, "error"))]
    (rollouts,) = rollout_groups(group, normalize_std=False)
    assert [r.extra["advantage"] for r in rollouts] == [0.5, -0.5, 0.0]
    assert [r.end_reason for r in rollouts] == ["answered", "answered", "error"]
    (alone,) = rollout_groups(group[2:], normalize_std=False)
    assert alone[0].extra["advantage"] == 0.0


class PoisonedBackend(GenerationBackend):
    """Fails any batch that holds a prompt ending with the poison token, as a backend does with one bad
    request; records the batches it was given."""

    POISON = 13

    def __init__(self) -> None:
        self.batches: list[int] = []

    def generate(self, prompts, sampling):
        self.batches.append(len(prompts))
        if any(prompt.ids[-1] == self.POISON for prompt in prompts):
            raise RuntimeError("the backend refused a request")
        return [Sampled([prompt.ids[-1] + 1], [-0.5], True) for prompt in prompts]


def test_a_failing_request_fails_its_episode_only():
    backend = PoisonedBackend()
    batcher = GenerationBatcher(backend, Sampling(max_new_tokens=4), max_batch=8)

    async def play() -> list[Any]:
        batcher.running = 3
        server = asyncio.ensure_future(batcher.serve())
        results = await asyncio.gather(*(batcher.generate(Encoded([1, last], [])) for last in (5, 13, 7)),
                                       return_exceptions=True)
        batcher.stop()
        await server
        return results

    try:
        first, poisoned, third = asyncio.run(play())
    finally:
        batcher.close()
    assert (first.ids, third.ids) == ([6], [8]) and isinstance(poisoned, RuntimeError)
    assert backend.batches[0] == 3 and sorted(backend.batches[1:]) == [1, 1, 1]  # the batch, then one by one


class BranchingScript(GenerationBackend):
    """Turn 1 sets a variable; turn 2 prints it times a number each request gets (1, 2, 3: the branches differ
    only from here); turn 3 answers the last printed number."""

    def __init__(self, chat):
        self.chat, self.second_turns = chat, 0

    def generate(self, prompts, sampling):
        out = []
        for prompt in prompts:
            printed = re.findall(r"Text Result:\s*(\d+)", self.chat.tokenizer.decode(prompt.ids))
            if not printed:
                response = "<code>\n```python\nx = 7\nprint(x)\n```\n</code>"
            elif len(printed) == 1:
                self.second_turns += 1
                response = f"<code>\n```python\nprint(x * {self.second_turns})\n```\n</code>"
            else:
                response = f"<answer>\\boxed{{{printed[-1]}}}</answer>"
            ids = self.chat.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.chat.end_token_id]
            out.append(Sampled(ids, [-0.5] * len(ids), True))
        return out


def test_an_episode_forked_after_its_first_turn_gives_branches_that_go_on_alone(policy, engine):
    live_before = engine.status().live_kernels
    envs = PyVisionVectorEnv(1, "tally", split="train", max_turns=4, engine=engine)
    collector = RolloutCollector(envs, BranchingScript(policy.chat), policy.chat, Sampling(max_new_tokens=64))
    try:
        original, *forks = collector.collect([EpisodeSpec(task_index=0, seed=3, group="g", fork_at=1, forks=2)])
    finally:
        envs.close()
    assert [t.branch for t in (original, *forks)] == [0, 1, 2] and len(forks) == 2
    assert {t.spec.group for t in forks} == {"g"} and {t.task_id for t in forks} == {original.task_id}
    # Up to the fork (prompt, first response, its result) the branches are the original's, token for token.
    mask = "".join(map(str, original.loss_mask))
    second_response = mask.index("1", mask.index("10") + 1)
    assert all(t.ids[:second_response] == original.ids[:second_response]
               and t.loss_mask[:second_response] == original.loss_mask[:second_response] for t in forks)
    assert all(t.ids[second_response:] != original.ids[second_response:] for t in forks)
    # After it, each branch ran its own code on the kernel state it inherited (x = 7) and answered its own result.
    printed = sorted(int(re.findall(r"boxed\{(\d+)\}", t.responses[-1])[0]) for t in (original, *forks))
    assert printed == [7, 14, 21]
    assert all(t.end_reason == "answered" and t.turns == 3 and t.tool_calls == 2 for t in (original, *forks))
    assert wait_until(lambda: engine.status().live_kernels <= live_before, timeout=20)  # the forks' kernels too


def test_a_fork_that_fails_is_an_error_branch_and_the_episode_goes_on(policy, engine):
    envs = PyVisionVectorEnv(1, "tally", split="train", max_turns=4, engine=engine)
    collector = RolloutCollector(envs, BranchingScript(policy.chat), policy.chat, Sampling(max_new_tokens=64))

    async def refuse() -> None:
        raise ForkError("cell 1 ended otherwise when replayed")

    envs.envs[0].afork = refuse
    try:
        original, fork = collector.collect([EpisodeSpec(task_index=0, seed=3, group="g", fork_at=1, forks=1)])
    finally:
        envs.close()
    assert original.end_reason == "answered" and original.branch == 0
    assert fork.branch == 1 and fork.end_reason == "error" and "ForkError: cell 1" in fork.error
    assert "branch 1" in fork.label


def test_an_update_whose_every_episode_failed_stops_the_run_with_the_reason(tmp_path, model_dir):
    """A generation engine that fails every request (out of memory, say) makes no update of NaNs: the run stops
    and says why."""
    class OutOfMemory(GenerationBackend):
        def generate(self, prompts, sampling):
            raise RuntimeError("CUDA out of memory (simulated)")

    with GRPOTrainer(small_config(tmp_path, model_dir, **{"eval.every": 0, "ofr.enabled": "false"})) as trainer:
        trainer.backend = trainer.collector.backend = OutOfMemory()
        with pytest.raises(RuntimeError, match=r"every episode of update 1 failed .*CUDA out of memory"):
            trainer.train()


def _sampled_trajectories(policy, n: int = 2) -> list[Trajectory]:
    chat = policy.chat
    prompt = chat.prompt(conversation()[:2])
    out = []
    for s in HFBackend(policy.model, chat).generate([prompt] * n, Sampling(max_new_tokens=12, temperature=1.0)):
        trajectory = Trajectory(EpisodeSpec(0, 0, 0), "t")
        trajectory.extend(prompt, sampled=False)
        trajectory.extend(s, sampled=True)
        out.append(trajectory)
    return out


def test_a_small_update_moves_bf16_computed_weights_as_the_fp32_reference_does(model_dir):
    """At PyVision-RL's learning rate (1e-6) an AdamW step moves almost every weight by about 1e-6. Weights stored
    in bfloat16 (half an ulp of a 0.02 weight is 6e-5) would almost all stay where they were; fp32 master weights
    with bfloat16 compute move as the fp32 reference does."""
    def update(dtype: str, master_dtype: str) -> dict[str, torch.Tensor]:
        policy = load_policy(ModelConfig(path=str(model_dir), device="cpu", dtype=dtype, master_dtype=master_dtype))
        ids = policy.chat.tokenizer("How many red squares are in the image? Count them.")["input_ids"]
        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        before = {name: p.detach().float().clone() for name, p in policy.model.named_parameters()}
        optimizer, _ = make_optimizer(policy, lr=1e-6, weight_decay=0.0, warmup_steps=0)
        with policy.autocast():
            loss = -sequence_logprobs(policy.model, batch)[:, 1:].mean()
        loss.backward()
        optimizer.step()
        return {name: p.detach().float() - before[name] for name, p in policy.model.named_parameters()
                if p.grad is not None}

    def moved(deltas: dict[str, torch.Tensor]) -> float:
        return float(sum((d != 0).sum() for d in deltas.values()) / sum(d.numel() for d in deltas.values()))

    reference, mixed, stored_bf16 = update("float32", "float32"), update("bfloat16", "float32"), \
        update("bfloat16", "bfloat16")
    assert moved(reference) > 0.9 and moved(stored_bf16) < 0.05  # the defect: bf16 storage loses the update
    assert moved(mixed) > 0.9
    flat = torch.cat([d.flatten() for d in reference.values()]), torch.cat([d.flatten() for d in mixed.values()])
    both = (flat[0] != 0) & (flat[1] != 0)
    assert float((flat[0][both].sign() == flat[1][both].sign()).float().mean()) > 0.9
    assert float(flat[1].abs().max()) < 2e-6  # about lr per weight, as Adam's first step moves them


def test_the_parity_guard_refuses_images_the_rollout_did_not_see(policy, model_dir):
    """Each image carries its pixels' hash and its processor grid from the rollout; a forward pass on a changed,
    dropped or differently processed image is refused, naming the trajectory and the image."""
    from transformers import AutoImageProcessor

    def fresh():
        return _sampled_trajectories(policy, n=1)

    pixels = PixelCache(policy.chat.image_processor)
    (intact,) = fresh()
    assert intact.image_records[0].grid == (1, 4, 6) and len(intact.image_records) == len(intact.images) == 1
    assert collate([intact], [1.0], policy.chat, pixels)["image_grid_thw"].tolist() == [[1, 4, 6]]
    (changed,) = fresh()
    changed.images[0] = changed.images[0].copy()
    changed.images[0].putpixel((0, 0), (1, 2, 3))  # one pixel, after the rollout
    with pytest.raises(VisualParityError, match=r"trajectory of task 't' \(group 0, seed 0\): image 0 .*pixels changed"):
        collate([changed], [1.0], policy.chat, pixels)
    (dropped,) = fresh()
    dropped.images.pop()
    with pytest.raises(VisualParityError, match="the rollout saw 1 images, the forward pass was given 0"):
        collate([dropped], [1.0], policy.chat, pixels)
    larger = AutoImageProcessor.from_pretrained(model_dir, size={"shortest_edge": 112 * 112, "longest_edge": 448 * 448})
    with pytest.raises(VisualParityError, match=r"image 0 is processed to grid \(1, 8, 10\), the rollout's was \(1, 4, 6\)"):
        collate(fresh(), [1.0], policy.chat, PixelCache(larger))


def test_the_start_up_canary_catches_a_vision_tower_that_cannot_see(model_dir):
    policy = load_policy(ModelConfig(path=str(model_dir)))  # the canary ran: a real tower sees pixels
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "patch_embed" in name:
                parameter.zero_()  # every image becomes the same patches
    with pytest.raises(VisualParityError, match="cannot see pixels"):
        check_sees_pixels(policy)


@pytest.mark.parametrize("freeze_vision", [False, True])
def test_every_trained_parameter_changes(model_dir, freeze_vision):
    policy = load_policy(ModelConfig(path=str(model_dir), freeze_vision=freeze_vision))
    torch.manual_seed(1)
    trajectories = _sampled_trajectories(policy)
    before = {name: p.detach().clone() for name, p in policy.model.named_parameters()}
    optimizer = torch.optim.AdamW(policy.trainable_parameters, lr=1e-2)
    batch = collate(trajectories, [1.0, -1.0], policy.chat, PixelCache(policy.chat.image_processor))
    loss, _ = grpo_loss(sequence_logprobs(policy.model, batch), batch, clip_low=0.2, clip_high=0.2,
                        token_count=float(batch["loss_mask"].sum()))
    loss.backward()
    optimizer.step()
    changed = {name for name, p in policy.model.named_parameters() if not torch.equal(p, before[name])}
    vision = {name for name in before if ".visual." in f".{name}"}
    assert vision and set(before) - vision
    if freeze_vision:
        assert changed == set(before) - vision
    else:
        assert changed == set(before)


# --- GRPO end to end on real kernels ------------------------------------------------------------


def small_config(tmp_path, model_dir, **overrides) -> GRPOConfig:
    settings = [f"output_dir={tmp_path / 'run'}", f"model.path={model_dir}", "steps=1", "env.num_envs=4",
                "rollout.group_size=2", "rollout.max_new_tokens=64", "rollout.max_length=1024", "ofr.target_size=4",
                "ofr.oversampling=2.0", "ofr.max_generation_rounds=2", "eval.every=1", "eval.episodes=2",
                "checkpoint.every=1", "logging.progress=false", "logging.tensorboard=false",
                "algorithm.mini_batch_size=4", "algorithm.micro_batch_size=2", "algorithm.lr=1e-3",
                *(f"{k}={v}" for k, v in overrides.items())]
    return load_config(GRPOConfig, ROOT / "trainers/configs/demo_grpo.yaml", settings)


def test_a_step_in_bf16_with_master_weights_kl_and_the_importance_correction(tmp_path, model_dir):
    """The GPU recipe's settings on CPU: bfloat16 compute over float32 master weights, a bfloat16 KL reference,
    the truncated importance-sampling correction, chunked log-probs. The step is finite and every setting shows in
    its metrics."""
    config = small_config(tmp_path, model_dir, **{"model.dtype": "bfloat16", "algorithm.kl_coef": 0.05,
                                                  "algorithm.importance_correction": "truncated",
                                                  "algorithm.logprob_chunk_size": 64, "eval.every": 0})
    with GRPOTrainer(config) as trainer:
        trainer.backend = trainer.collector.backend = ScriptedTallyGeneration(trainer.chat)
        assert next(trainer.policy.model.parameters()).dtype == torch.float32
        assert next(trainer.reference.parameters()).dtype == torch.bfloat16 and trainer.importance_cap == 2.0
        train = trainer.train()["train"]
    assert math.isfinite(train["loss"]) and math.isfinite(train["kl"]) and train["grad_norm"] > 0
    # the scripted sampler reports log-probs of 0, so every weight pi_old / pi_sampler is below 1: none is capped
    assert 0 < train["importance_weight"] < 1 and train["importance_capped"] == 0.0


def test_grpo_step_with_ofr_on_real_kernels(tmp_path, model_dir):
    config = small_config(tmp_path, model_dir)
    policy_before = load_policy(ModelConfig(path=str(model_dir))).model.state_dict()
    with GRPOTrainer(config, backend=None) as trainer:
        trainer.backend = trainer.collector.backend = trainer.eval_collector.backend = ScriptedTallyGeneration(trainer.chat)
        result = trainer.train()
        after = trainer.policy.model.state_dict()
    train = result["train"]
    # about half of the episodes ran the tool and answered right (reward 1 + 0.1 bonus), the others guessed 0
    assert 0 < train["tool_calls"] < 1 and train["accuracy"] == pytest.approx(train["tool_calls"])
    assert train["reward/tool_bonus"] > 0
    assert train["ofr/kept_ratio"] > 0 and train["ofr/solve_partial"] > 0 and train["trained_trajectories"] >= 2
    assert train["loss"] == train["loss"] and train["grad_norm"] > 0
    assert any(not torch.equal(after[k], policy_before[k]) for k in after)
    for key in ("time/generation", "time/environment", "time/scoring", "time/update", "throughput/tokens_per_s"):
        assert train[key] >= 0
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1]
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [row["step"] for row in evals] == [0, 1] and evals[0]["tool_calls"] > 0
    assert latest_checkpoint(run).name == "step-000001" and (run / "plots" / "interaction.png").is_file()


def test_the_one_step_off_loop_trains_on_the_behaviour_policys_log_probs(tmp_path, model_dir, monkeypatch):
    """With rollout.staleness 1, update 2's batch is played by the initial weights while update 1 trains: the
    sampler's log-probs it carries are the initial model's, the ratio's old log-probs are the weights that update 2
    starts from, and the truncated importance weight between them is on."""
    import trainers.grpo as grpo

    def alternating_advantages(*args, **kwargs):  # every trajectory pushes the weights, whatever its reward
        groups = original_groups(*args, **kwargs)
        return [[replace(r, extra={**r.extra, "advantage": (-1.0) ** i}) for i, r in enumerate(group)]
                for group in groups]

    def recording_loss(logprobs, batch, **kwargs):
        seen.append((trainer.step_number, {k: v.detach().clone() if torch.is_tensor(v) else v
                                           for k, v in batch.items()}, logprobs.detach().clone(), kwargs))
        return original_loss(logprobs, batch, **kwargs)

    original_groups, original_loss, seen = grpo.rollout_groups, grpo.grpo_loss, []
    monkeypatch.setattr(grpo, "rollout_groups", alternating_advantages)
    monkeypatch.setattr(grpo, "grpo_loss", recording_loss)
    config = small_config(tmp_path, model_dir, **{"rollout.staleness": 1, "steps": 3, "eval.every": 0,
                                                  "ofr.enabled": "false", "prompts_per_round": 2,
                                                  "rollout.max_new_tokens": 16, "algorithm.lr": 1e-2})
    initial = load_policy(ModelConfig(path=str(model_dir))).model.eval()
    with GRPOTrainer(config) as trainer:
        assert trainer.importance_cap == 2.0  # auto: on for a stale batch
        trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "train.jsonl").read_text().splitlines()]
    assert [row["staleness"] for row in rows] == [0, 1, 1]
    _, batch, logprobs, kwargs = next(record for record in seen if record[0] == 2)
    mask = batch["loss_mask"].bool()
    with torch.no_grad():
        played_by = sequence_logprobs(initial, batch)
    assert torch.allclose(batch["behaviour_logprobs"][mask], played_by[mask], atol=2e-4)
    assert torch.allclose(batch["old_logprobs"][mask], logprobs[mask], atol=1e-5)  # update 2's first pass
    assert (batch["old_logprobs"] - batch["behaviour_logprobs"])[mask].abs().max() > 1e-2  # update 1 moved them
    assert kwargs["importance_cap"] == 2.0


def test_offload_in_one_process_is_refused(tmp_path, model_dir):
    with pytest.raises(ValueError, match="needs several processes"):
        GRPOTrainer(small_config(tmp_path, model_dir, **{"distributed.offload": "true"}))


def test_staleness_needs_an_engine_with_weights_of_its_own(tmp_path, model_dir):
    with pytest.raises(ValueError, match="staleness must be 0 or more"):
        GRPOTrainer(small_config(tmp_path, model_dir, **{"rollout.staleness": -1}))
    config = small_config(tmp_path, model_dir, **{"rollout.staleness": 1})
    with pytest.raises(ValueError, match="weights of its own"):
        GRPOTrainer(config, backend=HFBackend(load_policy(config.model).model, load_policy(config.model).chat))


def test_hf_sampling_is_shaped_by_sampling_alone_not_by_the_models_generation_config(model_dir):
    """A model's generation_config.json that sets a repetition penalty, n-gram blocking, top-k 1 and typical-p
    changes nothing: greedy generation is the argmax of the model's own logits at every step, as vLLM's would
    be. And top_k 0 samples among all tokens (transformers reads an unset top_k as 50)."""
    policy = load_policy(ModelConfig(path=str(model_dir)))
    model, chat = policy.model, policy.chat
    model.generation_config.update(repetition_penalty=100.0, no_repeat_ngram_size=1, top_k=1, typical_p=0.2)
    prompt = chat.prompt([Message.text("user", "How many red squares are in the image?")])
    (greedy,) = HFBackend(model, chat).generate([prompt], Sampling(max_new_tokens=16, temperature=0.0))
    ids = torch.tensor([prompt.ids + greedy.ids])
    with torch.no_grad():
        logits = model(input_ids=ids, **chat.token_type_inputs(ids)).logits[0, len(prompt.ids) - 1:-1]
    logits[:, list(chat.never_sampled)] = float("-inf")
    assert greedy.ids == logits.argmax(-1).tolist()
    assert len(set(greedy.ids)) < len(greedy.ids)  # it repeats tokens: n-gram blocking would have changed it
    torch.manual_seed(0)
    first = [s.ids[0] for s in HFBackend(model, chat).generate([prompt] * 64, Sampling(max_new_tokens=1))]
    ranks = (logits[0] > logits[0, first].unsqueeze(-1)).sum(-1)  # how many tokens are likelier than each draw
    assert int(ranks.max()) >= 50, sorted(ranks.tolist())


def test_lora_keeps_frozen_weights_in_the_compute_dtype_and_adapters_in_float32(model_dir):
    policy = load_policy(ModelConfig(path=str(model_dir), dtype="bfloat16", lora_rank=4))
    dtypes = {name: p.dtype for name, p in policy.model.named_parameters()}
    assert {d for name, d in dtypes.items() if ".lora_" in name} == {torch.float32}
    assert {d for name, d in dtypes.items() if ".lora_" not in name} == {torch.bfloat16}
    batch = collate(_sampled_trajectories(policy), [1.0, -1.0], policy.chat, PixelCache(policy.chat.image_processor))
    with policy.autocast():
        logprobs = sequence_logprobs(policy.model, batch)
    assert logprobs.dtype == torch.float32
    (logprobs * batch["loss_mask"] * batch["advantages"]).sum().backward()
    graded = {name for name, p in policy.model.named_parameters() if p.grad is not None}
    assert graded == {name for name in dtypes if ".lora_" in name}


def test_lora_reads_the_weights_in_the_compute_dtype_and_a_model_without_weights_is_on_the_meta_device(model_dir):
    """LoRA's frozen weights are read straight in bfloat16 (no float32 copy): the float32 weights, rounded. A
    model built with ``weights=False`` (a sharded model's, before rank 0's weights come) has the same
    parameters, names, shapes and dtypes, on the meta device."""
    config = ModelConfig(path=str(model_dir), dtype="bfloat16", lora_rank=4)
    full = load_policy(ModelConfig(path=str(model_dir))).model.state_dict()
    lora = dict(load_policy(config).model.named_parameters())
    frozen = {name: value for name, value in lora.items() if ".lora_" not in name}
    assert all(torch.equal(value, full[name.replace(".base_layer", "")].to(torch.bfloat16))
               for name, value in frozen.items())
    for model_config in (config, ModelConfig(path=str(model_dir))):
        loaded = dict(load_policy(model_config).model.named_parameters())
        empty = dict(load_policy(model_config, weights=False).model.named_parameters())
        assert empty.keys() == loaded.keys() and all(value.is_meta for value in empty.values())
        assert all((empty[name].shape, empty[name].dtype, empty[name].requires_grad)
                   == (value.shape, value.dtype, value.requires_grad) for name, value in loaded.items())


@pytest.mark.parametrize("freeze_vision", [True, False])
def test_lora_trains_only_the_adapters(tmp_path, model_dir, freeze_vision):
    """Two updates with LoRA and a KL term (the reference: the adapters off): every adapter weight moves and
    nothing else does; the checkpoint holds the adapters and, as a plain model folder, the merged weights; a run
    resumes from it."""
    from safetensors.torch import load_file

    from trainers.lora import merged_weights

    overrides = {"model.lora_rank": 4, "model.lora_alpha": 8, "model.freeze_vision": freeze_vision, "steps": 2,
                 "algorithm.kl_coef": 0.05, "eval.every": 0}
    initial = load_policy(ModelConfig(path=str(model_dir))).model.state_dict()
    with GRPOTrainer(small_config(tmp_path, model_dir, **overrides)) as trainer:
        trainer.backend = trainer.collector.backend = ScriptedTallyGeneration(trainer.chat)
        assert trainer.reference is None
        injected = {name: value.detach().clone() for name, value in trainer.policy.model.named_parameters()}
        train = trainer.train()["train"]
        after = dict(trainer.policy.model.named_parameters())
    assert math.isfinite(train["kl"]) and train["grad_norm"] > 0
    adapters = {name: value for name, value in after.items() if ".lora_" in name}
    assert adapters and all(value.requires_grad for value in adapters.values())
    assert any(".visual." in name for name in adapters) != freeze_vision
    for name, value in after.items():
        if name in adapters:  # lora_B starts at zero, so lora_A has gradients from the second update on
            assert not torch.equal(value, injected[name]), name
        else:
            assert not value.requires_grad and torch.equal(value, initial[name.replace(".base_layer", "")]), name
    checkpoint = latest_checkpoint(tmp_path / "run")
    saved = load_file(checkpoint / "adapters.safetensors")
    assert saved.keys() == adapters.keys()
    plain = load_policy(ModelConfig(path=str(checkpoint))).model.state_dict()
    expected = merged_weights({name: value.detach() for name, value in after.items()}, scaling=8 / 4)
    assert plain.keys() == initial.keys()
    assert all(torch.allclose(plain[name], expected[name], atol=1e-6) for name in plain if name in expected)
    assert any(not torch.equal(plain[name], initial[name]) for name in plain)
    with GRPOTrainer(small_config(tmp_path, model_dir, **{**overrides, "steps": 3})) as resumed:
        resumed.backend = resumed.collector.backend = ScriptedTallyGeneration(resumed.chat)
        resumed.train()
        assert resumed.step_number == 3


def test_sft_learns_the_recorded_teacher(tmp_path, model_dir):
    from trainers.demo import record_teacher

    record_teacher(tmp_path / "teacher", episodes=4, guess_rate=0.0, seed=0)
    config = load_config(SFTConfig, ROOT / "trainers/configs/demo_sft.yaml", [
        f"output_dir={tmp_path / 'sft'}", f"model.path={model_dir}", f"data.episodes=[{tmp_path / 'teacher'}]",
        "epochs=10", "batch_size=4", "lr=3e-3", "logging.progress=false", "logging.tensorboard=false"])
    with SFTTrainer(config) as trainer:
        trainer.train()
        assert len(trainer.examples) == 4 and all(e.images for e in trainer.examples)
    rows = [json.loads(line) for line in (tmp_path / "sft" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and rows[-1]["loss"] < 0.75 * rows[0]["loss"]
    assert load_policy(ModelConfig(path=str(latest_checkpoint(tmp_path / "sft")))).model is not None


def test_text_only_sft_leaves_the_vision_tower_alone(tmp_path, model_dir):
    data = tmp_path / "chats.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} + {i}?"},
                                                       {"role": "assistant", "content": f"{2 * i}"}]})
                              for i in range(6)) + "\n")
    config = load_config(SFTConfig, overrides=[
        f"output_dir={tmp_path / 'sft'}", f"model.path={model_dir}", f"data.text=[{data}]", "epochs=2",
        "batch_size=3", "lr=1e-2", "model.freeze_vision=true", "logging.progress=false", "logging.tensorboard=false"])
    with SFTTrainer(config) as trainer:
        before = {k: v.clone() for k, v in trainer.policy.model.state_dict().items()}
        trainer.train()
        after = trainer.policy.model.state_dict()
    vision = [k for k in before if ".visual." in f".{k}"]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in vision)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no messages"}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1"):
        SFTTrainer(load_config(SFTConfig, overrides=[f"output_dir={tmp_path / 'x'}", f"model.path={model_dir}",
                                                     f"data.text=[{bad}]"]))


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, model_dir):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "pyvision_env.cli", "train", str(ROOT / "trainers/configs/demo_grpo.yaml"),
               "--set", f"output_dir={run}", "--set", f"model.path={model_dir}", "--set", "steps=3",
               "--set", "ofr.enabled=false", "--set", "prompts_per_round=2", "--set", "rollout.group_size=2",
               "--set", "env.num_envs=4", "--set", "rollout.max_new_tokens=8", "--set", "eval.every=0",
               "--set", "checkpoint.every=1", "--set", "checkpoint.keep=3", "--set", "logging.tensorboard=false"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             start_new_session=True)
    deadline = time.monotonic() + 240
    while latest_checkpoint(run) is None and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = latest_checkpoint(run)
    assert killed_at is not None and first.returncode == -signal.SIGKILL, first.stderr.read().decode()[-2000:]
    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (run / "train.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # nothing lost, nothing logged twice
    state = torch.load(latest_checkpoint(run) / "trainer_state.pt", weights_only=False)
    expected = TaskSampler(80 * 5, seed=0)  # the tally suite's train split: 400 tasks
    expected.take(2 * 3)
    assert state["step"] == 3 and state["extra"]["sampler"] == expected.state()
    optimizer = saved_optimizer_state(latest_checkpoint(run), tmp_path / "optimizer.pt")
    assert optimizer["state"] and all(int(s["step"]) == 3 for s in optimizer["state"].values())


def saved_optimizer_state(checkpoint: Path, scratch: Path) -> dict:
    """A checkpoint's sharded optimizer state, read back whole in this process."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(checkpoint / "optimizer", scratch)
    return torch.load(scratch, weights_only=False)["optimizer"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_cpu_demo_improves_held_out_accuracy_by_rl(tmp_path):
    """``make demo`` end to end: teacher data, SFT, RL; held-out accuracy and tool use rise, the report
    shows both numbers, the curves and trajectories with their images."""
    from trainers.demo import run_demo

    results = run_demo(tmp_path / "demo")
    before, after = results["before_rl"], results["after_rl"]
    assert after["accuracy"] >= before["accuracy"] + 0.3, results
    assert after["tool_calls"] > before["tool_calls"] + 0.5, results
    assert results["timings_s"]["total"] < 20 * 60, results["timings_s"]
    report = (tmp_path / "demo" / "report.html").read_text()
    assert f"{before['accuracy']:.1%} after SFT" in report and f"{after['accuracy']:.1%} after" in report
    assert report.count("data:image/png;base64,") >= 4  # plots and the samples' images


@pytest.mark.parametrize(("overrides", "world", "local_world", "message"), [
    ([], 1, 1, "this is one process"),
    ([], 6, 6, "must divide the ranks per node"),
    ([], 8, 2, r"must divide the ranks per node \(2\)"),
    (["rollout.staleness=1"], 8, 8, "staleness > 0 with a tensor-parallel engine is not supported"),
    (["rollout.vllm={tensor_parallel_size: 0}"], 8, 8, "must be a positive integer"),
])
def test_a_tensor_parallel_engine_the_ranks_cannot_share_is_refused_before_the_model_loads(overrides, world,
                                                                                        local_world, message):
    config = load_config(GRPOConfig, overrides=["rollout.backend=vllm", "rollout.vllm={tensor_parallel_size: 4}",
                                                *overrides])
    with pytest.raises(ValueError, match=message):
        engine_shards(config, world, local_world)
    assert engine_shards(load_config(GRPOConfig, overrides=["rollout.vllm={tensor_parallel_size: 4}"]), 1, 1) == 1


def test_forward_passes_under_autocast_keep_no_copy_of_the_weights(model_dir):
    """Autocast's cache would hold a bfloat16 copy of every float32 master weight until the context ends (2 bytes
    per parameter); with it off, a weight used by two passes in one context is cast twice, and nothing is kept."""
    from torch.utils._python_dispatch import TorchDispatchMode

    policy = load_policy(ModelConfig(path=str(model_dir), device="cpu", dtype="bfloat16", master_dtype="float32"))
    weight = policy.model.lm_head.weight
    assert weight.dtype == torch.float32 and weight.requires_grad

    class WeightCasts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].shape == weight.shape:
                WeightCasts.count += 1
            return func(*args, **(kwargs or {}))

    hidden = torch.randn(2, weight.shape[1])
    with policy.autocast(), WeightCasts():
        first, second = policy.model.lm_head(hidden), policy.model.lm_head(hidden)
    assert first.dtype == torch.bfloat16 and torch.equal(first, second)
    assert WeightCasts.count == 2
