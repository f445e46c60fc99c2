"""Fast tier: the defaults as a contender — their point, start points, the rule keeping them, the gain over them."""
from __future__ import annotations

import math
import statistics

import pytest

from mmtune.model.config import TrainConfig
from mmtune.model.status import TrialStatus
from mmtune.tune import defaults
from mmtune.tune.candidates import select_top, with_defaults
from mmtune.tune.defaults import DEFAULTS_ID, defaults_lines, describe, outside, point, start_points
from mmtune.tune.experiment import Trial
from mmtune.tune.leaderboard import defaults_entry, winner_lines
from mmtune.tune.selection import choose, gain, pooled_sd
from mmtune.tune.space import load_space, parse_space
from tests.conftest import REPO
from tests.test_selection import F1, cand

DEFAULT_SPACE = REPO / "search_spaces/default.yaml"
SMALL = {"metric": "val/f1", "num_samples": 4, "epochs": 2, "asha": {"grace_period": 1},
         "params": {"d_model": {"type": "categorical", "choices": [16, 32]},
                    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
         "fixed": {"nhead": 2}}


def test_the_default_space_starts_from_the_untuned_config():
    space = load_space(DEFAULT_SPACE)
    pt = point(space)
    base = TrainConfig()
    assert pt == {p.name: getattr(base, p.name) for p in space.params}
    assert outside(space, pt) is None and start_points(space)[0] == pt
    assert defaults.is_defaults(space, pt) and "is the sweep's first trial" in describe(space)


def test_defaults_outside_the_space_are_no_start_point_and_the_plan_says_why():
    space = parse_space(SMALL, "small.yaml")
    assert outside(space, point(space)) == "d_model 256 is not among the choices [16, 32]"
    assert start_points(space) == []
    assert "not a start point (d_model 256 is not among the choices [16, 32])" in describe(space)
    # Neither are they with the key off, and the plan says that instead.
    off = parse_space({**SMALL, "params": {"lr": SMALL["params"]["lr"]}, "defaults_contender": False}, "off.yaml")
    assert start_points(off) == [] and "not a contender" in describe(off)


def test_a_start_point_equal_to_the_defaults_is_not_repeated():
    raw = {**SMALL, "params": {"d_model": {"type": "categorical", "choices": [16, 256]}, "lr": SMALL["params"]["lr"]},
           "start": [{"d_model": 256, "lr": 1e-3}, {"d_model": 16, "lr": 1e-3}]}
    assert start_points(parse_space(raw, "s.yaml")) == [{"d_model": 256, "lr": 1e-3}, {"d_model": 16, "lr": 1e-3}]


def test_an_int_default_off_the_step_grid_is_outside():
    raw = {**SMALL, "params": {"num_layers": {"type": "int", "low": 1, "high": 5, "step": 2}}}
    assert outside(parse_space(raw, "s.yaml"), {"num_layers": 4}) == "num_layers 4 is not on the grid of step 2 from 1"


def test_defaults_keep_the_win_inside_the_noise_and_lose_it_beyond():
    leader = cand("searched", [0.82, 0.84, 0.83], params=10_000)
    close = cand("defaults", [0.815, 0.835, 0.825], params=900_000)  # 0.005 behind: within the leader's SE (0.0058)
    close.defaults = True
    choice = choose([leader, close], F1)
    assert choice.winner is close and choice.leader is leader  # the rule's pick was the smaller model...
    assert choice.reason.startswith("no searched config beat the defaults beyond the noise: the rule's pick, trial "
                                    "searched, is +0.0050 ± 0.0082 se, within 2 se ahead of them")  # ...not far enough
    beyond_se = cand("defaults", [0.808, 0.818, 0.828])  # not tied (0.012 > SE 0.0058) but within 2 se (0.0163)
    beyond_se.defaults = True
    choice = choose([leader, beyond_se], F1)
    assert choice.tied == [leader] and choice.winner is beyond_se
    far = cand("defaults", [0.70, 0.71, 0.69])
    far.defaults = True
    assert choose([leader, far], F1).winner is leader


def test_the_gain_uses_the_pooled_seed_sd_and_says_whether_it_is_noise():
    a, b, c = cand("a", [0.80, 0.84, 0.82]), cand("b", [0.70, 0.72]), cand("c", [0.9])
    sd, dof = pooled_sd([[0.80, 0.84, 0.82], [0.70, 0.72], [0.9]])
    assert dof == 3 and sd == pytest.approx(math.sqrt((2 * statistics.variance([0.80, 0.84, 0.82])
                                                       + statistics.variance([0.70, 0.72])) / 3))
    g = gain(a, b, [a, b, c], F1)
    assert g["gain"] == pytest.approx(0.82 - 0.71) and g["se"] == pytest.approx(sd * math.sqrt(1 / 3 + 1 / 2))
    assert g["inside_noise"] is False and g["n"] == [3, 2]
    assert gain(c, a, [a, c], F1)["se"] is not None  # one seed: the other config's spread still estimates the sd
    assert gain(c, c, [c], F1)["se"] is None  # nobody has two seeds: no estimate, said so


def test_the_outcome_lines_say_who_won_and_by_how_much():
    leader, d = cand("t1", [0.90, 0.91, 0.92]), cand("t2", [0.80, 0.81, 0.79])
    d.defaults = True
    choice = choose([leader, d], F1)
    entry = defaults_entry(choice, F1)
    assert entry["won"] is False and entry["versus"] == "t1" and list(entry["gain"]) == [F1]  # no test values here
    line, = defaults_lines({"defaults": entry})
    assert line.startswith("gain over the defaults (sweep trial t2): val/f1 +0.1100 ± ") and "beyond the noise" in line
    d2 = cand("t2", [0.90, 0.905, 0.91])
    d2.defaults = True
    won = defaults_entry(choose([leader, d2], F1), F1)
    line, = defaults_lines({"defaults": won})
    assert won["won"] and line.startswith("defaults: no searched config beat the defaults beyond the noise; "
                                          "best_config.yaml holds the defaults (the best searched config, trial t1")
    assert defaults_lines({"defaults": None}) == []


def _trial(tid: str, params: dict, value: float | None, status: TrialStatus = TrialStatus.COMPLETED) -> Trial:
    t = Trial(tid, REPO, params, [{F1: value, "epoch": 1}] if value is not None else [], status, F1)
    t.best_result = t.history[0] if t.history else None
    t.best_value, t.best_epoch = (value, 1) if value is not None else (None, None)
    return t


def test_finalize_adds_the_defaults_trial_marks_a_top_one_or_trains_them_unseen():
    raw = {**SMALL, "params": {"d_model": {"type": "categorical", "choices": [16, 256]}, "lr": SMALL["params"]["lr"]}}
    space = parse_space(raw, "s.yaml")
    trials = [_trial("a", {"d_model": 16, "lr": 2e-3}, 0.9), _trial("b", {"d_model": 16, "lr": 5e-3}, 0.8),
              _trial("d", {"d_model": 256, "lr": 1e-3}, 0.5, TrialStatus.PRUNED)]
    cands = with_defaults(select_top(trials, space, 2), trials, space)  # the defaults' trial ranks 3rd: joins
    assert [(c.trial.trial_id, c.defaults, c.rank, c.sweep_rank) for c in cands] == [
        ("a", False, 0, 1), ("b", False, 1, 2), ("d", True, 2, 3)]
    top = with_defaults(select_top(trials, space, 3), trials, space)  # already a top config: marked, not added
    assert [(c.trial.trial_id, c.defaults) for c in top] == [("a", False), ("b", False), ("d", True)]
    unseen = with_defaults(select_top(trials[:2], space, 2), trials[:2], space)
    d = unseen[-1]
    assert (d.trial.trial_id, d.defaults, d.sweep_rank, d.trial.params) == (DEFAULTS_ID, True, None,
                                                                           {"d_model": 256, "lr": 1e-3})
    assert d.cfg.d_model == 256 and d.cfg.nhead == 2  # the space's fixed values hold for them too
    off = parse_space({**raw, "defaults_contender": False}, "off.yaml")
    assert len(with_defaults(select_top(trials[:2], off, 2), trials[:2], off)) == 2


def test_the_winner_line_names_the_defaults():
    leader, d = cand("t1", [0.80, 0.81]), cand(DEFAULTS_ID, [0.81, 0.80])
    d.defaults, d.sweep_rank = True, None
    for c in (leader, d):
        c.trial.best_value = c.trial.best_epoch = c.trial.params = None
    from mmtune.tune.leaderboard import _entry

    choice = choose([leader, d], F1)
    summary = {"winner": _entry(choice.winner, choice, F1), "metric": F1, "seeds": [0, 1], "choice": choice.reason,
               "holdout": {"how": "h"}, "best_config": "b.yaml", "defaults": defaults_entry(choice, F1)}
    lines = winner_lines(summary)
    assert lines[0].startswith("winner: the defaults (not trained by the sweep), val/f1")
    assert lines[1].startswith("defaults: no searched config beat the defaults beyond the noise")


def test_defaults_no_valid_config_under_the_fixed_values_do_not_contend():
    raw = {**SMALL, "fixed": {"d_model": 20}, "params": {"nhead": {"type": "categorical", "choices": [2, 4]}}}
    space = parse_space(raw, "s.yaml")
    assert "nhead=8 does not divide d_model=20" in defaults.why_not(space)
    assert start_points(space) == [] and describe(space).startswith("defaults: not a contender (under the space's")
    trials = [_trial("a", {"nhead": 2}, 0.9), _trial("b", {"nhead": 4}, 0.8)]
    assert [c.trial.trial_id for c in with_defaults(select_top(trials, space, 2), trials, space)] == ["a", "b"]
