"""The trainer's other objectives, each off by default: HDPO's tool-efficiency advantage (hand-built groups),
Thyme's greedy code (GRPO-ATS: hand-built logits, then the tiny model's generate) and AXPO's prefix resampling
(hand-built groups, then episodes on real kernels with a scripted backend, alone and in a GRPO update)."""

from __future__ import annotations

import math

import pytest
import torch

from agents.hf import Sampling
from pyvision_env.messages import Message
from pyvision_env.vector import PyVisionVectorEnv
from trainers.backends import GreedyInsideCode, HFBackend, PixelCache, Sampled
from trainers.config import ConfigError, GRPOConfig, load_config
from trainers.grpo import GRPOTrainer, rollout_groups
from trainers.objective import collate, sequence_logprobs
from trainers.rollout import EpisodeSpec, RolloutCollector, Trajectory, resampling_specs
from trainers.tokens import Encoded

from .scripted_generation import ThinkThenCount
from .test_trainer import small_config

MARKERS = ("<code>", "</code>")


def test_every_objective_is_off_by_default_and_bad_settings_are_refused():
    config = GRPOConfig()
    assert (config.algorithm.tool_efficiency_weight, config.rollout.greedy_code, config.rollout.prefix_resamples) \
        == (0.0, False, 0)
    refusals = {
        "algorithm.tool_efficiency_weight=-0.1": "algorithm: tool_efficiency_weight must be a finite weight >= 0",
        "rollout.prefix_resamples=-2": "rollout: prefix_resamples must be 0 .* or more continuations, got -2",
        "rollout.greedy_code=maybe": "rollout.greedy_code must be bool",
    }
    for override, message in refusals.items():
        with pytest.raises(ConfigError, match=message):
            load_config(GRPOConfig, overrides=[override])
    with pytest.raises(ConfigError, match="greedy_code needs the hf backend: vLLM takes no per-request logits"):
        load_config(GRPOConfig, overrides=["rollout.greedy_code=true", "rollout.backend=vllm"])
    for option in ("rollout.greedy_code=true", "rollout.prefix_resamples=2"):
        with pytest.raises(ConfigError, match=r"needs a protocol that marks its code blocks \(pyvision\); "
                                              r"env.protocol 'openai-tools' does not"):
            load_config(GRPOConfig, overrides=[option, "env.protocol=openai-tools"])
    with pytest.raises(ValueError, match=r"rollout\.greedy_code configures the HF backend the trainer builds"):
        GRPOTrainer(load_config(GRPOConfig, overrides=["rollout.greedy_code=true"]), backend=ThinkThenCount(None))


# --- HDPO: a tool-efficiency advantage among the correct rollouts -----------------------------------------


def played(group, reward, correct, tool_calls, end_reason="answered") -> Trajectory:
    return Trajectory(EpisodeSpec(0, 0, group), "t", reward=reward, correct=correct, tool_calls=tool_calls,
                      end_reason=end_reason)


def test_hdpo_adds_a_tool_efficiency_advantage_among_the_correct_rollouts_only():
    groups = [
        # three correct with 0, 1 and 3 tool calls, one wrong with 2, one failed generation (out of both baselines)
        [played("a", 1.0, True, 0), played("a", 1.0, True, 1), played("a", 1.0, True, 3), played("a", 0.0, False, 2),
         played("a", 0.0, False, 5, end_reason="error")],
        [played("b", 1.0, True, 2), played("b", 0.0, False, 0)],  # one correct: nothing to compare it with
        [played("c", 1.0, True, 1), played("c", 1.0, True, 1)],  # the same tool calls: no preference
    ]
    a, b, c = rollout_groups([t for group in groups for t in group], normalize_std=False,
                             tool_efficiency_weight=0.15)
    # Efficiency 1/(T+1) of the correct ones: 1, 1/2, 1/4; mean 7/12, deviations 5/12, -1/12, -4/12, sample std
    # sqrt(21)/12, so tool-efficiency advantages 5, -1, -4 over sqrt(21). The reward's advantages: 1/4 and -3/4.
    expected = [0.25 + 0.15 * 5 / math.sqrt(21), 0.25 - 0.15 / math.sqrt(21), 0.25 - 0.15 * 4 / math.sqrt(21),
                -0.75, 0.0]
    assert [r.extra["advantage"] for r in a] == pytest.approx(expected, rel=1e-5)
    assert [r.extra["advantage"] for r in b] == [0.5, -0.5]
    assert [r.extra["advantage"] for r in c] == [0.0, 0.0]
    plain, *_ = rollout_groups(groups[0], normalize_std=False)  # off: the reward's advantages alone
    assert [r.extra["advantage"] for r in plain] == [0.25, 0.25, 0.25, -0.75, 0.0]


# --- GRPO-ATS: greedy inside code blocks -----------------------------------------------------------


def test_greedy_code_takes_the_argmax_inside_code_blocks_and_samples_elsewhere(policy):
    chat = policy.chat
    ids = chat.tokenizer("I count.<code>\n```python\nprint(1)\n```\n</code> done", add_special_tokens=False)[
        "input_ids"]
    prompt = [chat.end_token_id] * 3
    processor = GreedyInsideCode(chat.decode, MARKERS, prompt_length=len(prompt))
    logits = torch.tensor([1.0, 0.8, 0.5, 0.0, -1.0])  # hand-built: the argmax (token 0) has probability 0.35
    generator = torch.Generator().manual_seed(0)
    greedy = []
    for step in range(len(ids) + 1):
        # row 0 writes the response token by token; row 1 writes nothing (padding) and stays outside code
        input_ids = torch.tensor([prompt + ids[:step], prompt + [chat.pad_token_id] * step])
        scores = processor(input_ids, logits.repeat(2, 1))
        assert torch.equal(scores[1], logits)
        draws = torch.multinomial(scores.softmax(-1), 200, replacement=True, generator=generator)
        inside = bool(torch.isinf(scores[0]).any())
        if inside:  # every token but the argmax masked out: all draws take it
            assert torch.isfinite(scores[0]).tolist() == [True, False, False, False, False] and scores[0, 0] == 1.0
            assert draws[0].unique().tolist() == [0]
        else:  # the scores as they were: draws spread (seeded)
            assert torch.equal(scores[0], logits) and len(draws[0].unique()) == 5
        greedy.append(inside)
    first, last = greedy.index(True), len(greedy) - greedy[::-1].index(True)
    assert all(greedy[first:last]) and not any(greedy[:first] + greedy[last:])
    # greedy from the token after the one completing <code> to the one completing </code>
    assert chat.decode(ids[:first]) == "I count.<code>"
    assert chat.decode(ids[:last]) == "I count.<code>\n```python\nprint(1)\n```\n</code>"


def test_greedy_code_in_generate_records_the_tempered_log_probs_the_update_recomputes(policy):
    """An empty opening marker is met at once, so the whole response is code: the HF backend then generates what
    greedy decoding does, and records each token's log-prob under the tempered policy, as the trainer's ratio
    recomputes it (not the 0 of a point mass)."""
    chat, model = policy.chat, policy.model
    prompt = chat.prompt([Message.text("user", "How many red squares are in the image?")])
    torch.manual_seed(0)
    (greedy,) = HFBackend(model, chat).generate([prompt], Sampling(max_new_tokens=12, temperature=0.0))
    everything_code = HFBackend(model, chat, greedy_between=("", "</code>"))
    tempered = everything_code.generate([prompt] * 2, Sampling(max_new_tokens=12, temperature=0.7))
    assert [s.ids for s in tempered] == [greedy.ids] * 2
    trajectory = Trajectory(EpisodeSpec(0, 0, 0), "t")
    trajectory.extend(prompt, sampled=False)
    trajectory.extend(tempered[0], sampled=True)
    batch = collate([trajectory], [0.0], chat, PixelCache(chat.image_processor))
    with torch.no_grad():
        recomputed = sequence_logprobs(model, batch, temperature=0.7)[0][batch["loss_mask"][0].bool()]
    assert recomputed.tolist() == pytest.approx(tempered[0].logprobs, abs=2e-4)
    assert max(tempered[0].logprobs) < 0  # a sampled token's probability under the policy, not 1
    sampled = HFBackend(model, chat, greedy_between=MARKERS).generate([prompt] * 4, Sampling(12, temperature=5.0))
    assert len({tuple(s.ids) for s in sampled}) > 1  # no code block: sampled as usual


# --- AXPO: resampling all-wrong tool-using groups from a prefix --------------------------------------


def recorded(chat, group, responses, correct=False, tool_calls=0, surprisal=0.5, end_reason="answered"):
    """A played trajectory of hand-built responses: a 3-token prompt, each response with its end token (sampled
    with log-prob ``-surprisal``), a 2-token observation after each."""
    trajectory = Trajectory(EpisodeSpec(0, 7, group), "tally-0000", correct=correct, tool_calls=tool_calls,
                            end_reason=end_reason)
    trajectory.extend(Encoded([1, 2, 3], []), sampled=False)
    for text in responses:
        ids = chat.tokenizer(text, add_special_tokens=False)["input_ids"] + [chat.end_token_id]
        trajectory.extend(Sampled(ids, [-surprisal] * len(ids), True), sampled=True)
        trajectory.extend(Encoded([4, 5], []), sampled=False)
    return trajectory


def test_prefix_resampling_picks_all_wrong_tool_using_groups_and_cuts_before_the_first_tool_call(policy):
    chat = policy.chat
    look, think = "Let me look first.", "I will count the squares.\n"
    code = "<code>\n```python\nprint(2)\n```\n</code>"
    wrong = "<answer>\\boxed{2}</answer>"
    trajectories = [
        # every tool user wrong: resampled from the most uncertain one (surprisal 0.9), cut before its <code>
        recorded(chat, "all-wrong", [think + code, wrong], tool_calls=1, surprisal=0.2),
        recorded(chat, "all-wrong", [look, think + code, code, wrong], tool_calls=2, surprisal=0.9),
        recorded(chat, "all-wrong", [wrong]),
        # the tool users are all wrong, the one right answer came without a tool: resampled too
        recorded(chat, "tools-wrong", [code, wrong], tool_calls=1),
        recorded(chat, "tools-wrong", [wrong], correct=True),
        # a tool user got it right, or no one used a tool, or the only tool user failed to generate: left alone
        recorded(chat, "tool-right", [code, wrong], tool_calls=1),
        recorded(chat, "tool-right", [code, wrong], correct=True, tool_calls=1),
        recorded(chat, "no-tools", [wrong]),
        recorded(chat, "failed", [code], tool_calls=1, end_reason="error"),
    ]
    specs = resampling_specs(trajectories, chat.decode, "<code>", continuations=3)
    assert [spec.group for spec in specs] == ["all-wrong"] * 3 + ["tools-wrong"] * 3
    assert all((spec.task_index, spec.seed, spec.forks) == (0, 7, 0) for spec in specs)
    *replayed, opening = specs[0].prefix
    assert [chat.decode(ids) for ids in replayed] == [look]  # a whole response, end token included
    assert replayed[0][-1] == chat.end_token_id and chat.decode(opening) == think  # the tokens before "<code>"
    chosen = trajectories[1]
    assert list(chosen.ids[3:3 + len(replayed[0]) + 2 + len(opening)]) == [*replayed[0], 4, 5, *opening]
    assert specs[3].prefix == ((),)  # the tool call opens the first response: it is resampled whole
    assert resampling_specs(trajectories, chat.decode, "<code>", continuations=0) == []


def test_resampled_episodes_replay_the_prefix_and_sample_on_differently(policy, engine):
    chat = policy.chat
    envs = PyVisionVectorEnv(2, "tally", split="train", max_turns=3, engine=engine)
    collector = RolloutCollector(envs, ThinkThenCount(chat), chat, Sampling(max_new_tokens=64))
    try:
        originals = collector.collect([EpisodeSpec(task_index=0, seed=3, group="g")] * 2)
        specs = resampling_specs(originals, chat.decode, "<code>", continuations=2)
        resampled = collector.collect(specs)
    finally:
        envs.close()
    assert all(not t.correct and t.tool_calls == 1 for t in originals)  # the first code printed 0
    assert len(resampled) == 2 and {t.spec.group for t in resampled} == {"g"}
    original = originals[0]
    mask = "".join(map(str, original.loss_mask))
    cut = mask.index("1") + len(chat.tokenizer(ThinkThenCount.THINKING, add_special_tokens=False)["input_ids"])
    for t in resampled:
        # the prompt and the replayed thinking are the original's tokens, outside the loss and its log-probs
        assert t.ids[:cut] == original.ids[:cut] and set(t.loss_mask[:cut]) == {0} and set(t.logprobs[:cut]) == {0.0}
        assert t.loss_mask[cut] == 1 and t.ids[cut:] != original.ids[cut:]  # then sampled, and otherwise
        assert t.responses[0].startswith(ThinkThenCount.THINKING + "<code>") and "print(0)" not in t.responses[0]
        assert t.correct and t.tool_calls == 1 and t.end_reason == "answered" and "resampled after 0" in t.label
    rewards = [t.reward for t in (*originals, *resampled)]
    (group,) = rollout_groups([*originals, *resampled], normalize_std=False)
    mean = sum(rewards) / 4
    assert [r.extra["advantage"] for r in group] == pytest.approx([reward - mean for reward in rewards])
    assert [r.extra["advantage"] > 0 for r in group] == [False, False, True, True]


def test_a_grpo_update_with_greedy_code_and_prefix_resampling(tmp_path, model_dir):
    config = small_config(tmp_path, model_dir, **{
        "eval.every": 0, "ofr.enabled": "false", "prompts_per_round": 2, "rollout.prefix_resamples": 2,
        "rollout.greedy_code": "true", "algorithm.tool_efficiency_weight": 0.15})
    with GRPOTrainer(config) as trainer:
        assert trainer.backend.greedy_between == MARKERS
        trainer.backend = trainer.collector.backend = ThinkThenCount(trainer.chat)
        train = trainer.train()["train"]
    # every group's two tool users printed 0: each got two resampled episodes, which counted right
    assert train["resampling/episodes"] == 4 and train["resampling/accuracy"] == 1.0
    assert train["accuracy"] == 0.0 and train["tool_calls"] == 1.0 and train["episodes"] == 8
    assert train["trained_trajectories"] == 8 and math.isfinite(train["loss"]) and train["grad_norm"] > 0
