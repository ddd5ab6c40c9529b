"""The single-file reference loop: its loss is the modular trainer's, and an update on real kernels trains."""

from __future__ import annotations

import pytest
import torch

from agents.tiny_model import make_tiny_model
from trainers.config import ModelConfig
from trainers.demo import tokenizer_corpus
from trainers.modeling import load_policy
from trainers.objective import grpo_loss
from trainers.reference_grpo import Args, clipped_token_mean_loss, main, parse_args

from .scripted_generation import ScriptedTallyGeneration


def test_the_reference_loss_is_the_modular_trainers():
    torch.manual_seed(0)
    logprobs, old = torch.randn(3, 7) * 0.3, torch.randn(3, 7) * 0.3  # ratios well outside both clip ranges
    mask = (torch.rand(3, 7) > 0.3).float()
    advantages = torch.tensor([[1.0], [-0.5], [0.25]]).expand(3, 7)
    batch = {"loss_mask": mask, "old_logprobs": old, "advantages": advantages}
    modular, stats = grpo_loss(logprobs, batch, clip_low=0.2, clip_high=0.28, token_count=float(mask.sum()))
    reference = clipped_token_mean_loss(logprobs, old, advantages, mask, 0.2, 0.28)
    assert stats["clip_fraction"] > 0.2
    assert reference.item() == pytest.approx(modular.item(), rel=1e-6)


def test_command_line_flags_fill_the_args():
    args = parse_args(["--model", "m", "--steps", "3", "--lr", "1e-3", "--normalize-std", "--system-prompt", "Hi"])
    assert args == Args(model="m", steps=3, lr=1e-3, normalize_std=True, system_prompt="Hi")
    with pytest.raises(SystemExit):
        parse_args(["--steps", "3"])  # --model is required


def test_an_update_on_real_kernels_trains_the_model(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "tiny", corpus=tokenizer_corpus())
    chat = load_policy(ModelConfig(path=str(model))).chat
    args = Args(model=str(model), steps=1, groups=2, group_size=2, max_turns=3, lr=1e-2, epochs=2,
                mini_batch_size=2, out=str(tmp_path / "trained"))
    # the scripted backend answers right with the tool in one episode of each group and guesses 0 in the other
    numbers = main(args, backend=ScriptedTallyGeneration(chat))
    assert numbers["accuracy"] == 0.5 and numbers["tool_calls"] == 0.5 and numbers["kept_groups"] == 2
    assert numbers["reward"] == pytest.approx((1.0 + 0.1) / 2)  # accumulative: 1 + 0.1 x one tool call
    assert numbers["loss"] == numbers["loss"]
    before = load_policy(ModelConfig(path=str(model))).model.state_dict()
    after = load_policy(ModelConfig(path=str(tmp_path / "trained"))).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert "kept_groups 2" in capsys.readouterr().out
