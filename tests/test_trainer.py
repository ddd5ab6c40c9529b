"""The trainer on a tiny real Qwen2.5-VL: token-in/token-out masks, log-probs, the loss, a GRPO step with OFR
on real kernels, SFT, checkpoints and resume after a kill."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from agents.hf import Sampling
from agents.tiny_model import make_tiny_model
from pyvision_env.messages import ImagePart, Message, TextPart
from trainers.backends import HFBackend, PixelCache
from trainers.checkpoint import latest_checkpoint
from trainers.config import ConfigError, GRPOConfig, ModelConfig, SFTConfig, load_config, to_dict
from trainers.demo import tokenizer_corpus
from trainers.grpo import GRPOTrainer, TaskSampler
from trainers.modeling import load_policy
from trainers.objective import collate, grpo_loss, sequence_logprobs
from trainers.rollout import EpisodeSpec, Trajectory
from trainers.sft import SFTTrainer, tokenize_conversation
from trainers.tokens import ImageTokenMismatch, TemplateError, check_images

from .scripted_generation import ScriptedTallyGeneration

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus=tokenizer_corpus())


@pytest.fixture(scope="module")
def policy(model_dir):
    return load_policy(ModelConfig(path=str(model_dir)))


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
    written = tmp_path / "config.json"  # what a run writes in its folder reads back as the same settings
    written.write_text(json.dumps(to_dict(config)))
    assert load_config(GRPOConfig, written) == config


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


def test_grpo_loss_clips_each_side_and_averages_over_tokens():
    logprobs = torch.log(torch.tensor([[1.0, 1.5, 0.5, 1.1]]))  # ratios against old log-probs of 0
    batch = {"loss_mask": torch.tensor([[0.0, 1.0, 1.0, 1.0]]), "old_logprobs": torch.zeros(1, 4),
             "advantages": torch.tensor([[1.0, 1.0, -1.0, 1.0]])}
    loss, stats = grpo_loss(logprobs, batch, clip_low=0.2, clip_high=0.28, token_count=3.0)
    # token 1: min(1.5, 1.28) = 1.28; token 2: min(-0.5, -0.8) = -0.8; token 3: 1.1 (inside the range)
    assert loss.item() == pytest.approx(-(1.28 - 0.8 + 1.1) / 3, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)


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
    assert state["optimizer"]["state"] and all(int(s["step"]) == 3 for s in state["optimizer"]["state"].values())


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
