"""The one ordering of epochs, trials and configs: the metric, then a continuous second key, never the order."""
from __future__ import annotations

import math

from mmtune.model.metrics import is_better, rank_key, tie_breaker
from mmtune.model.status import TrialStatus as S
from tests.fake_experiment import SPACE, FakeTrial, write_experiment
from mmtune.tune.experiment import Experiment


def test_tie_breaker_is_the_loss_or_ap_for_a_loss():
    assert tie_breaker("val/f1") == "val/loss" and tie_breaker("val/auroc") == "val/loss"
    assert tie_breaker("val/loss") == "val/ap"


def test_rank_key_breaks_ties_by_the_second_key_in_its_own_direction():
    a = {"val/f1": 1.0, "val/loss": 0.30}
    b = {"val/f1": 1.0, "val/loss": 0.20}
    assert rank_key(b, "val/f1") < rank_key(a, "val/f1")
    assert is_better(b, a, "val/f1") and not is_better(a, b, "val/f1")
    assert not is_better(a, a, "val/f1")  # equal on both keys: no improvement
    # For a loss metric the tie-breaker (AP) is maximized.
    assert is_better({"val/loss": 0.2, "val/ap": 0.9}, {"val/loss": 0.2, "val/ap": 0.8}, "val/loss")
    # The metric always comes first.
    assert is_better({"val/f1": 0.9, "val/loss": 9.0}, {"val/f1": 0.8, "val/loss": 0.1}, "val/f1")


def test_non_finite_values_never_win():
    assert not is_better({"val/f1": math.nan, "val/loss": 0.1}, None, "val/f1")
    assert is_better({"val/f1": 0.1}, {}, "val/f1")  # no tie-breaker reported: still better than nothing
    assert is_better({"val/f1": 0.5, "val/loss": 0.4}, {"val/f1": 0.5, "val/loss": math.nan}, "val/f1")


def test_tied_trials_rank_by_their_best_epochs_loss_not_start_order(tmp_path):
    # Three trials tie at val/f1 1.0 (a saturated small val split); the later ones have lower val loss.
    trials = [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [1.0, 1.0], extra={"val/loss": loss}) for loss in (0.5, 0.2, 0.3)]
    e = Experiment.open(write_experiment(tmp_path, trials))
    assert [t.trial_id for t in e.ranked] == ["fake0_00001", "fake0_00002", "fake0_00000"]
    assert e.best().trial_id == "fake0_00001"


def test_a_trials_best_epoch_among_tied_epochs_is_the_one_with_the_lowest_loss(tmp_path):
    t = FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.8, 1.0, 1.0, 1.0], per_epoch={"val/loss": [0.6, 0.5, 0.3, 0.4]})
    e = Experiment.open(write_experiment(tmp_path, [t]))
    best = e.trials[0]
    assert (best.best_value, best.best_epoch) == (1.0, 3) and best.best_result["val/loss"] == 0.3


def test_a_loss_metric_breaks_ties_by_ap(tmp_path):
    space = {**SPACE, "metric": "val/loss", "mode": "min"}
    trials = [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.25], S.COMPLETED, extra={"val/ap": ap}) for ap in (0.6, 0.9)]
    e = Experiment.open(write_experiment(tmp_path, trials, space=space))
    assert [t.trial_id for t in e.ranked] == ["fake0_00001", "fake0_00000"]
