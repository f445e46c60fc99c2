"""Finalize's race (tune/racing.py): who leaves after a round, with which sd, and when it is settled. Pure."""
from __future__ import annotations

import math

import pytest

from mmtune.tune.racing import Race, raced_choice
from mmtune.tune.selection import Candidate


def race_of(values: dict[int, list[float | None]], seeds: int = 3, prior: float | None = 0.05,
            metric: str = "val/f1") -> Race:
    """A race over the configs of VALUES, round 0 recorded (and further rounds, one value per seed)."""
    race = Race(sorted(values), seeds, metric, prior)
    for rank, vs in values.items():
        for i, v in enumerate(vs):
            race.record(rank, i, v)
    return race


def test_a_config_far_behind_leaves_and_close_ones_stay():
    race = race_of({0: [0.80], 1: [0.78], 2: [0.50]}, prior=0.05)
    nxt = race.advance()  # 2 se of a difference of one seed each: 2 * 0.05 * sqrt(2) = 0.141
    assert nxt == [(0, 1), (1, 1)] and list(race.out) == [2]
    assert race.out[2].startswith("out after seed 1: 0.3000 behind")


def test_the_pooled_seed_sd_replaces_the_prior_once_configs_have_two_seeds():
    race = race_of({0: [0.80, 0.82], 1: [0.70, 0.72]}, prior=0.5)  # the prior alone would keep both
    race.round = 1
    sd, source, dof = race.sd()
    assert sd == pytest.approx(math.sqrt(0.0002)) and dof == 2 and "pooled over 2 config(s), 2 dof" in source
    assert race.advance() == [] and list(race.out) == [1]  # one config left: settled
    assert "(> 4.30 x se 0.0141)" in race.out[1]  # Student's t with 2 dof, not 2: a pooled sd of 2 runs is noisy


def test_a_gap_beyond_2_se_but_within_students_t_keeps_a_config_in():
    # The benchmark's case: 3 configs x 2 seeds pool an sd of 0.009 (3 dof); a 0.021 gap is 2.3 se, under t 3.18.
    race = race_of({0: [0.560, 0.548], 1: [0.545, 0.531], 2: [0.532, 0.534]}, prior=0.03)
    race.round = 1
    race.advance()
    assert race.critical(3) == pytest.approx(3.182, abs=1e-3) and race.critical(0) == 2.0
    assert not race.out


def test_no_estimate_means_nobody_leaves_on_its_mean():
    race = race_of({0: [0.9], 1: [0.1]}, prior=None)
    assert race.sd() == (None, "no noise estimate", 0)
    assert race.advance() == [(0, 1), (1, 1)] and not race.out


def test_a_failed_seed_leaves_only_while_a_config_without_one_is_in():
    race = race_of({0: [0.6], 1: [None], 2: [0.7]}, prior=None)
    race.advance()
    assert list(race.out) == [1] and "a seed failed" in race.out[1]
    every = race_of({0: [None], 1: [None]}, prior=0.05)
    assert every.advance() == [(0, 1), (1, 1)] and not every.out  # nothing to compare: both go on


def test_for_a_loss_lower_is_better():
    race = race_of({0: [0.30], 1: [0.90]}, prior=0.05, metric="val/loss")
    race.advance()
    assert list(race.out) == [1]


def test_the_race_ends_after_the_last_seed_and_needs_a_complete_round():
    race = race_of({0: [0.8, 0.81], 1: [0.79]}, seeds=2, prior=0.05)
    race.round = 1
    assert race.missing() == [(1, 1)]
    with pytest.raises(AssertionError):
        race.advance()
    race.record(1, 1, 0.8)
    assert race.advance() == []  # every seed ran


def test_runs_trained_ahead_never_change_a_decision_and_count_only_if_their_round_comes():
    # Round 0 of three configs; seed 1 of configs 0 and 2 already trained ahead (a free slot), one of them failed.
    race = race_of({0: [0.80], 1: [0.78], 2: [0.50]}, prior=0.05)
    race.record(0, 1, 0.20)  # far off: counted in round 1's decision, never in round 0's
    race.record(2, 1, None)  # a failure ahead does not put config 2 out at round 0 either
    assert race.sd()[1].startswith("the sweep's noise estimate")  # no config has two seeds *so far*
    assert race.advance() == [(1, 1)] and list(race.out) == [2]  # 0.30 behind, as without the runs ahead
    assert race.values[2] == {0: 0.50} and 0 in race.values[0] and 1 in race.values[0]  # 2's run ahead dropped
    race.record(2, 2, 0.9)  # a run of a config out of the race ends: not counted
    assert race.values[2] == {0: 0.50}
    race.record(1, 1, 0.79)
    race.seeds = 2
    assert race.advance() == [] and race.over and race.round == 1
    race.record(0, 2, 0.99)  # beyond the last round: not counted
    assert 2 not in race.values[0] and Race.from_dict(race.to_dict()).over


def test_the_race_survives_a_json_round_trip():
    race = race_of({0: [0.8], 1: [0.3], 2: [None]}, prior=0.05)
    race.advance()
    back = Race.from_dict(race.to_dict())
    assert back == race and back.missing() == race.missing()


def _cand(rank: int, runs: list[float], params: int) -> Candidate:
    c = Candidate(rank, rank + 1, trial=None, cfg=None,  # type: ignore[arg-type]  # the rule reads neither
                  runs=[{"ok": True, "val/f1": v, "val/loss": 1 - v} for v in runs], num_params=params)
    c.mean = {"val/f1": sum(runs) / len(runs), "val/loss": 1 - sum(runs) / len(runs)}
    c.std = {"val/f1": 0.0 if len(runs) < 2 else 0.01, "val/loss": 0.0}
    return c


def test_a_config_out_of_the_race_ranks_after_those_that_finished_it_whatever_its_bound():
    # The leader's 3 seeds have a large sd, so its bound is below the one-seed mean of the config that left.
    leader, out = _cand(0, [0.9, 0.6, 0.9], 1000), _cand(1, [0.7], 10)
    leader.std["val/f1"] = 0.17
    race = Race([0, 1], 3, "val/f1", 0.05, out={1: "out after seed 1: ..."})
    choice = raced_choice([leader, out], race)
    assert [c.rank for c in choice.ordered] == [0, 1] and choice.winner is leader
    assert out.left_race == "out after seed 1: ..." and leader.left_race is None
