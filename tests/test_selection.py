"""Finalize's selection rule on plain numbers: confidence bound, failed seeds last, one-SE ties, second key."""
from __future__ import annotations

import math
import statistics
from types import SimpleNamespace

import pytest

from mmtune.tune.pipeline import check_finalize_flags, finalize_settings
from mmtune.tune.errors import SweepError
from mmtune.tune.selection import Candidate, aggregate, by_bound, choose

F1, LOSS, AP = "val/f1", "val/loss", "val/ap"


def cand(name: str, f1: list[float], loss: list[float] | None = None, failed: int = 0, params: int | None = 1000,
         sweep_rank: int = 1, metric: str = F1) -> Candidate:
    """A candidate whose successful seeds scored F1 (and LOSS), plus FAILED failed seeds."""
    loss = loss or [0.5] * len(f1)
    runs = [{"ok": True, F1: f, LOSS: lo, AP: 1 - lo} for f, lo in zip(f1, loss)] + [{"ok": False}] * failed
    c = Candidate(0, sweep_rank, trial=SimpleNamespace(trial_id=name), cfg=None, runs=runs, num_params=params)
    c.mean, c.std = aggregate(c.ok_runs, [F1, LOSS, AP])
    return c


def names(cands: list[Candidate]) -> list[str]:
    return [c.trial.trial_id for c in cands]


def test_bound_is_mean_minus_se_and_orders_by_it_not_by_the_mean():
    steady = cand("steady", [0.80, 0.81, 0.79])
    lucky = cand("lucky", [0.95, 0.60, 0.92])  # the higher mean, the larger spread
    assert steady.se(F1) == pytest.approx(statistics.stdev([0.80, 0.81, 0.79]) / math.sqrt(3))
    assert steady.bound(F1) == pytest.approx(0.80 - steady.se(F1))
    assert lucky.mean[F1] > steady.mean[F1] and lucky.bound(F1) < steady.bound(F1)
    choice = choose([lucky, steady], F1)
    assert names(choice.ordered) == ["steady", "lucky"] and choice.tied == [steady]
    assert "lower bound" in choice.reason


def test_a_loss_is_ranked_by_its_upper_bound():
    low_but_wild = cand("wild", [0.8] * 3, loss=[0.10, 0.50, 0.12])
    steady = cand("steady", [0.8] * 3, loss=[0.25, 0.26, 0.24])
    assert steady.bound(LOSS) == pytest.approx(0.25 + steady.se(LOSS))
    assert names(choose([low_but_wild, steady], LOSS).ordered) == ["steady", "wild"]


def test_a_failed_seed_ranks_after_every_complete_config():
    best_but_failed = cand("failed", [0.99, 0.98], failed=1)
    weak = cand("weak", [0.50, 0.52, 0.51])
    nothing = cand("nothing", [], failed=3)
    ordered = choose([nothing, best_but_failed, weak], F1).ordered
    assert names(ordered) == ["weak", "failed", "nothing"]


def test_tied_within_one_se_the_smaller_model_wins():
    big = cand("big", [0.80, 0.84, 0.82], params=900_000)  # leader by bound
    small = cand("small", [0.79, 0.83, 0.81], params=40_000)  # 0.01 below: within big's SE (~0.0115)
    far = cand("far", [0.70, 0.71, 0.69], params=1_000)  # the smallest, but not tied
    choice = choose([big, far, small], F1)
    assert choice.leader is big and set(names(choice.tied)) == {"big", "small"}
    assert names(choice.ordered) == ["small", "big", "far"]
    assert choice.reason == "tied within one SE (2 configs): chose the smaller model (40,000 params vs 900,000)"


def test_just_outside_one_se_is_not_a_tie():
    big = cand("big", [0.80, 0.84, 0.82], params=900_000)
    small = cand("small", [0.78, 0.82, 0.80], params=40_000)  # 0.02 below: more than one SE
    choice = choose([small, big], F1)
    assert choice.winner is big and choice.tied == [big]


@pytest.mark.parametrize("gap_in_se, tie", [(0.5, True), (1.5, False)])
def test_the_smaller_model_wins_only_within_one_se_of_the_leader(gap_in_se, tie):
    big = cand("big", [0.80, 0.84, 0.82], params=900_000)
    # The same spread, shifted down by a multiple of the leader's SE: only the gap decides.
    small = cand("small", [f - gap_in_se * big.se(F1) for f in (0.80, 0.84, 0.82)], params=40_000)
    assert big.mean[F1] - small.mean[F1] == pytest.approx(gap_in_se * big.se(F1))
    choice = choose([small, big], F1)
    assert choice.leader is big and names(choice.tied) == (["big", "small"] if tie else ["big"])
    assert choice.winner is (small if tie else big)
    assert names(choice.ordered) == (["small", "big"] if tie else ["big", "small"])
    assert choice.reason == ("tied within one SE (2 configs): chose the smaller model (40,000 params vs 900,000)"
                             if tie else "best lower bound mean - sd/sqrt(n) of val/f1")


def test_a_tied_leader_that_is_the_smaller_model_keeps_the_win():
    small = cand("small", [0.80, 0.84, 0.82], params=40_000)  # leader by bound
    big = cand("big", [0.79, 0.83, 0.81], params=900_000)  # within one SE, larger
    choice = choose([big, small], F1)
    assert choice.leader is small and choice.winner is small and names(choice.tied) == ["small", "big"]
    assert choice.reason == "tied within one SE (2 configs): chose the smaller model (40,000 params vs 900,000)"


def test_equal_sizes_tied_go_to_the_second_key_never_the_sweep_rank():
    # Same F1 over seeds (F1 saturates on a small val set); the loss tells them apart.
    first = cand("first", [1.0, 1.0, 1.0], loss=[0.30, 0.31, 0.29], sweep_rank=1)
    second = cand("second", [1.0, 1.0, 1.0], loss=[0.20, 0.21, 0.19], sweep_rank=2)
    for order in ([first, second], [second, first]):
        choice = choose(order, F1)
        assert choice.winner is second and "same size: chose by the mean val/loss" in choice.reason
    # Under a loss metric the second key is AP (higher is better).
    a = cand("a", [0.5] * 2, loss=[0.2, 0.2], sweep_rank=1)
    b = cand("b", [0.5] * 2, loss=[0.2, 0.2], sweep_rank=2)
    b.mean[AP] = a.mean[AP] + 0.1
    assert choose([a, b], LOSS).winner is b


def test_equal_bounds_are_ordered_by_the_second_key():
    worse = cand("worse", [0.8, 0.8], loss=[0.4, 0.4], params=None)
    better = cand("better", [0.8, 0.8], loss=[0.3, 0.3], params=None)
    assert names(by_bound([worse, better], F1)) == ["better", "worse"]


def test_one_seed_has_no_spread_and_bound_equals_mean():
    c = cand("one", [0.7])
    assert c.std[F1] == 0.0 and c.bound(F1) == pytest.approx(0.7)
    assert math.isnan(cand("none", [], failed=1).bound(F1))


def test_finalize_settings_follow_the_record_and_default_for_old_records():
    assert finalize_settings({"options": {"finalize_top_k": 0, "finalize_seeds": 2, "finalize_race": False}}) \
        == (0, 2, False)
    assert finalize_settings({"options": {}}) == (3, 3, True)
    check_finalize_flags(0, 1)
    with pytest.raises(SweepError, match="--finalize-top-k -1"):
        check_finalize_flags(-1, 3)
    with pytest.raises(SweepError, match="--finalize-seeds 0"):
        check_finalize_flags(2, 0)
