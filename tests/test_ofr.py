"""OFR batch selection (:mod:`trainers.ofr`): filters, ranking, exhaustion, the collect loop, metrics, invariants."""

from __future__ import annotations

import doctest
import math
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers import ofr
from trainers.ofr import OFRConfig, OFRExhausted, OFRSelector, Rollout, group_advantages, group_reward_std


def group(gid, rewards, **fields):
    """Rollouts of one group with the given rewards; ``fields`` values are scalars or per-rollout lists."""
    return [Rollout(gid, float(reward), **{k: v[i] if isinstance(v, list) else v for k, v in fields.items()})
            for i, reward in enumerate(rewards)]


def ids(rollouts):
    return [(r.group_id, r.reward) for r in rollouts]


def select(groups, **config):
    return OFRSelector(OFRConfig(**config)).select(groups)


def test_module_doctests_pass_and_import_does_not_load_torch():
    assert doctest.testmod(ofr).failed == 0
    code = "import sys, trainers.ofr; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_group_std_is_population_std_and_exactly_zero_for_equal_rewards():
    assert group_reward_std(group("a", [1, 0, 0, 0])) == pytest.approx(math.sqrt(3) / 4)
    assert group_reward_std(group("a", [0.1, 0.1, 0.1])) == 0.0


def test_group_advantages_mean_baseline_and_optional_std_normalisation():
    assert group_advantages([1.0, 0.0]).tolist() == [0.5, -0.5]
    assert group_advantages([1.0, 0.0], normalize_std=True, eps=0.0).tolist() == [1.0, -1.0]
    assert group_advantages([1.3, 1.3]).tolist() == [0.0, 0.0]


def test_zero_std_filter_drops_all_equal_groups_but_not_all_correct_groups_with_tool_bonus():
    bonus = group("bonus", [1.1, 1.2, 1.1, 1.0], tool_calls=[1, 2, 1, 0])  # all correct, different tool counts
    flat = group("flat", [1.0, 1.0, 1.0, 1.0])
    wrong = group("wrong", [0, 0, 0, 0])
    selection = select([flat, bonus, wrong], target_size=100)
    assert ids(selection.kept) == ids(bonus)
    assert [reason for _, reason in selection.dropped] == ["zero_std"] * 8
    assert selection.metrics["solve_all"] == pytest.approx(2 / 3)
    kept_all = select([flat, bonus, wrong], target_size=100, drop_zero_std=False)
    assert len(kept_all.kept) == 12 and ids(kept_all.kept[:4]) == ids(bonus)  # bonus ranked first


@pytest.mark.parametrize("end_reason, dropped", [
    ("over_length", True), ("max_images", True), ("max_visual_tokens", True),
    ("answered", False), ("max_turns", False), ("format_error", False), ("tool_error", False),
    ("timeout", False), ("execution_budget", False),
])
def test_default_end_reason_filter(end_reason, dropped):
    selection = select([group("g", [1, 0], end_reason=["answered", end_reason])], target_size=10)
    assert [r.end_reason for r in selection.kept] == ["answered"] if dropped else ["answered", end_reason]
    assert [reason for _, reason in selection.dropped] == ([f"end_reason:{end_reason}"] if dropped else [])


def test_trajectory_filters_and_their_reasons():
    rollouts = group("g", [1, 0, 1, 0, 1, 0], length=[10, 11, 10, 10, 10, 10],
                     images_consistent=[True, True, False, True, True, True],
                     received_tool_image=[True, True, True, False, True, True],
                     extra=[{}, {}, {}, {}, {"bad": True}, {}])

    def not_bad(rollout):
        return not rollout.extra.get("bad")

    selection = select([rollouts], target_size=10, max_length=10, require_tool_image=True, predicates=(not_bad,))
    assert [r.length for r in selection.kept] == [10, 10] and ids(selection.kept) == [("g", 1.0), ("g", 0.0)]
    assert [reason for _, reason in selection.dropped] == [
        "max_length", "image_mismatch", "no_tool_image", "predicate:not_bad"]
    # each filter can be switched off
    relaxed = select([rollouts], target_size=10, drop_image_mismatch=False, drop_end_reasons=())
    assert len(relaxed.kept) == 6
    # group std is that of the group as generated, even if trajectory filters leave equal rewards
    one_left = select([group("h", [1, 0], end_reason=["answered", "over_length"])], target_size=10)
    assert ids(one_left.kept) == [("h", 1.0)]


def test_ranking_by_std_highest_first_ties_in_generation_order_and_pluggable_key():
    low = group("low", [1, 0, 0, 0])     # std 0.433
    high = group("high", [1, 1, 0, 0])   # std 0.5
    high2 = group("high2", [0, 1, 0, 1])
    selection = select([low, high, high2], target_size=100)
    assert [g[0].group_id for g in selection.kept_groups] == ["high", "high2", "low"]
    by_mean = select([low, high, high2], target_size=100, rank_key=lambda g: -np.mean([r.reward for r in g]))
    assert [g[0].group_id for g in by_mean.kept_groups] == ["low", "high", "high2"]


def test_selection_by_trajectories_cuts_the_boundary_group_and_by_groups_keeps_whole_groups():
    groups = [group("low", [1, 0, 0, 0]), group("high", [1, 1, 0, 0]), group("mid", [1, 1, 1, 0.5])]
    by_traj = select(groups, target_size=6)
    assert ids(by_traj.kept) == ids(groups[1]) + [("low", 1.0), ("low", 0.0)]
    assert [reason for _, reason in by_traj.dropped] == ["over_target"] * 2 + ["over_target"] * 4
    assert not by_traj.short
    by_groups = select(groups, target_size=2, unit="groups")
    assert [g[0].group_id for g in by_groups.kept_groups] == ["high", "low"] and len(by_groups.kept) == 8


def test_exhaustion_raise_names_the_counts():
    groups = [group("a", [1, 0]), group("b", [1, 1])]
    with pytest.raises(OFRExhausted, match=r"only 2 of the 4 target trajectories .*'zero_std': 2") as error:
        OFRSelector(OFRConfig(target_size=4, exhaustion="raise")).select(groups)
    assert (error.value.survived, error.value.target, error.value.generated_groups) == (2, 4, 2)


def test_exhaustion_partial_returns_the_survivors():
    selection = select([group("a", [1, 0]), group("b", [1, 1])], target_size=4)
    assert ids(selection.kept) == [("a", 1.0), ("a", 0.0)] and selection.short
    assert selection.metrics["short"] == 1.0


def test_exhaustion_backfill_uses_only_clean_zero_std_rollouts_ranked_last():
    groups = [group("flat", [1, 1, 1], end_reason=["answered", "over_length", "answered"]),
              group("a", [1, 0]), group("zero", [0, 0])]
    selection = select(groups, target_size=5, exhaustion="backfill")
    assert ids(selection.kept) == [("a", 1.0), ("a", 0.0), ("flat", 1.0), ("flat", 1.0), ("zero", 0.0)]
    assert selection.metrics["backfilled"] == 3 and not selection.short
    assert [reason for _, reason in selection.dropped] == ["zero_std", "zero_std"]  # flat's over-length one, zero's 2nd
    still_short = select(groups, target_size=9, exhaustion="backfill")
    assert len(still_short.kept) == 6 and still_short.short
    by_groups = select(groups, target_size=2, unit="groups", exhaustion="backfill")
    assert [g[0].group_id for g in by_groups.kept_groups] == ["a", "flat"]


def make_generator(batches):
    """A generator returning the next scripted batch (its groups regardless of ``n``) and logging calls."""
    calls = []

    def generate(n):
        calls.append(n)
        return batches[min(len(calls), len(batches)) - 1]

    return generate, calls


def test_collect_oversamples_until_the_target_survives():
    generate, calls = make_generator([[group("zero", [0] * 4)] * 2, [group("a", [1, 0, 0, 0]),
                                                                    group("b", [1, 1, 0, 0])]])
    config = OFRConfig(target_size=8, oversampling=1.0, exhaustion="raise")
    selection = OFRSelector(config, group_size=4).collect(generate)
    assert calls == [2, 2] and len(selection.kept) == 8 and not selection.short
    assert selection.metrics["generation_rounds"] == 2 and selection.metrics["generated_groups"] == 4
    assert ids(selection.kept[:4]) == ids(group("b", [1, 1, 0, 0]))


def test_collect_never_loops_forever():
    generate, calls = make_generator([[group("zero", [1] * 8)] * 3])
    config = OFRConfig(target_size=16, oversampling=1.5, max_generation_rounds=5, exhaustion="raise")
    with pytest.raises(OFRExhausted, match=r"only 0 of the 16 target .* in 5 generation rounds") as error:
        OFRSelector(config).collect(generate)
    assert calls == [3] * 5 and error.value.rounds == 5 and error.value.generated_groups == 15
    partial = OFRSelector(OFRConfig(target_size=16, max_generation_rounds=3))  # "partial" is the default
    selection = partial.collect(make_generator([[]])[0])  # even an empty generator ends
    assert selection.kept == [] and selection.short and selection.metrics["generation_rounds"] == 3
    assert math.isnan(selection.metrics["std_mean_before"])


def test_groups_per_round_from_oversampling():
    assert OFRConfig(target_size=512, oversampling=0.5).groups_per_round(group_size=8) == 32
    assert OFRConfig(target_size=10, unit="groups", oversampling=2.5).groups_per_round(group_size=8) == 25
    assert OFRConfig(target_size=1, oversampling=0.01).groups_per_round(group_size=8) == 1
    assert OFRSelector(OFRConfig(target_size=512, oversampling=0.5), group_size=4).groups_per_round == 64
    with pytest.warns(DeprecationWarning, match="OFRSelector"):
        legacy = OFRConfig(target_size=512, oversampling=0.5, group_size=4)
    assert OFRSelector(legacy).groups_per_round == 64


def test_metrics_on_a_hand_made_batch():
    groups = [group("none", [0, 0], tool_calls=[4, 4]),
              group("all", [1.0, 1.2], tool_calls=[0, 2]),
              group("part", [1, 0], tool_calls=[1, 3], end_reason=["answered", "max_images"])]
    metrics = select(groups, target_size=3).metrics
    assert metrics == {
        "groups": 3.0, "rollouts": 6.0,
        "solve_none": pytest.approx(1 / 3), "solve_all": pytest.approx(1 / 3), "solve_partial": pytest.approx(1 / 3),
        "kept": 3.0, "kept_groups": 2.0, "kept_ratio": 0.5,
        "std_mean_before": pytest.approx((0 + 0.1 + 0.5) / 3), "std_mean_after": pytest.approx((0.1 + 0.5) / 2),
        "tool_calls_kept": pytest.approx((1 + 0 + 2) / 3), "tool_calls_dropped": pytest.approx((4 + 4 + 3) / 3),
        "short": 0.0, "backfilled": 0.0, "dropped/end_reason:max_images": 1.0, "dropped/zero_std": 2.0,
    }
    assert select(groups, target_size=3, success_threshold=1.1).metrics["solve_all"] == 0.0


@pytest.mark.parametrize("bad", [
    {"target_size": 0}, {"target_size": 1, "unit": "prompts"}, {"target_size": 1, "oversampling": 0},
    {"target_size": 1, "max_generation_rounds": 0}, {"target_size": 1, "exhaustion": "retry"},
])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        OFRConfig(**bad)


def test_invalid_groups_are_rejected():
    selector = OFRSelector(OFRConfig(target_size=1))
    with pytest.raises(ValueError, match="at least one"):
        selector.select([[]])
    with pytest.raises(ValueError, match="mixes"):
        selector.select([[Rollout("a", 1.0), Rollout("b", 0.0)]])
    with pytest.raises(ValueError, match="non-finite"):
        selector.select([[Rollout("a", math.nan)]])


# --- property-based tests ------------------------------------------------------------------------------------

END_REASONS = ("answered", "max_turns", "over_length", "max_images", "max_visual_tokens", "tool_error")

rollout_fields = st.tuples(st.sampled_from((0.0, 1.0, 1.1, 1.2, 0.5)), st.sampled_from(END_REASONS),
                           st.integers(0, 4), st.booleans(), st.booleans())
groups_strategy = st.lists(st.lists(rollout_fields, min_size=1, max_size=6), max_size=8).map(
    lambda raw: [[Rollout(f"g{i}", reward, end_reason, tools, images_consistent=consistent,
                          received_tool_image=image) for reward, end_reason, tools, consistent, image in fields]
                 for i, fields in enumerate(raw)])
configs = st.builds(OFRConfig, target_size=st.integers(1, 40), unit=st.sampled_from(("trajectories", "groups")),
                    drop_zero_std=st.booleans(), require_tool_image=st.booleans(),
                    exhaustion=st.sampled_from(("partial", "backfill")))


@settings(max_examples=300, deadline=None)
@given(groups=groups_strategy, config=configs)
def test_properties(groups, config):
    selection = OFRSelector(config).select(groups)
    kept, dropped = selection.kept, selection.dropped
    # kept ∪ dropped = input, disjoint
    assert sorted(map(id, kept + [r for r, _ in dropped])) == sorted(id(r) for g in groups for r in g)
    # never more than the target
    size = len(kept) if config.unit == "trajectories" else len(selection.kept_groups)
    assert size <= config.target_size
    assert selection.short == (size < config.target_size)
    # filters never keep a dropped end reason (nor a mismatch, nor a missing tool image when required)
    assert all(r.end_reason not in config.drop_end_reasons and r.images_consistent for r in kept)
    assert all(r.received_tool_image for r in kept) or not config.require_tool_image
    backfilled = int(selection.metrics["backfilled"])
    ranked = kept[:len(kept) - backfilled]
    # no ranked group has zero std when the filter is on (backfill adds zero-std groups at the end only)
    if config.drop_zero_std:
        ranked_ids = set(map(id, ranked))
        assert all(group_reward_std(g) > 0 for g in groups if any(id(r) in ranked_ids for r in g))
    # without truncation the ranking is a permutation of the survivors sorted by key, highest first
    survivors = [r for r, reason in dropped if reason == "over_target"] + ranked
    survivor_ids = {id(s) for s in survivors}
    by_group = {id(r): group_reward_std(g) for g in groups for r in g}
    assert [by_group[id(r)] for r in ranked] == sorted((by_group[id(r)] for r in ranked), reverse=True)
    if not any(reason == "over_target" for _, reason in dropped):
        expected = [r for g in sorted(groups, key=lambda g: -group_reward_std(g)) for r in g
                    if id(r) in survivor_ids]
        assert list(map(id, ranked)) == list(map(id, expected))
    # backfill adds only rollouts of zero-std groups, and only when the ranked survivors fell short
    if backfilled:
        assert config.exhaustion == "backfill" and config.drop_zero_std
        assert all(by_group[id(r)] == 0 for r in kept[len(ranked):])
        assert not any(reason == "over_target" for _, reason in dropped)
