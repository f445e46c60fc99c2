"""Search-space files: every shipped file loads; every kind of mistake is named before Ray starts."""
from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from mmtune.model.config import TrainConfig
from tests.conftest import REPO
from mmtune.tune.space import SpaceError, load_space

SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


def test_shipped_spaces_exist():
    assert {p.name for p in SPACES} >= {"default.yaml", "smoke.yaml", "seed-baseline.yaml"}


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
def test_every_shipped_space_loads_and_builds(path: Path):
    space = load_space(path)
    dists = space.distributions()
    assert set(dists) == set(space.names)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(30):  # every sampled point is a buildable training config
        trial = study.ask(dists)
        cfg = space.train_config(trial.params)
        assert isinstance(cfg, TrainConfig) and cfg.epochs == space.epochs and cfg.monitor == space.metric
        study.tell(trial, 0.5)
    for point in space.start:
        space.train_config(point)


def test_default_space_searches_what_the_issue_names():
    names = set(load_space(REPO / "search_spaces/default.yaml").names)
    assert {"d_model", "num_layers", "nhead", "aux_weight", "dropout", "focal_gamma", "lr", "weight_decay",
            "modality_dropout", "batch_size"} <= names


def test_seed_baseline_starts_from_the_old_configs():
    start = load_space(REPO / "search_spaces/seed-baseline.yaml").start
    small = {k: start[0][k] for k in ("d_model", "num_layers", "nhead", "aux_weight", "modality_dropout")}
    big = {k: start[1][k] for k in ("d_model", "num_layers", "nhead", "aux_weight", "modality_dropout")}
    assert small == {"d_model": 64, "num_layers": 2, "nhead": 4, "aux_weight": 1.0, "modality_dropout": 0.1}
    assert big == {"d_model": 256, "num_layers": 4, "nhead": 8, "aux_weight": 0.5, "modality_dropout": 0.0}


BASE = {"params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}}


def _write(tmp_path, doc, raw=None):
    p = tmp_path / "space.yaml"
    p.write_text(raw if raw is not None else yaml.safe_dump(doc))
    return p


@pytest.mark.parametrize("doc, key, words", [
    ({**BASE, "bogus": 1}, "bogus", ["unknown key"]),
    ({"params": {"d_modl": {"type": "int", "low": 8, "high": 16}}}, "params.d_modl", ["not a config field"]),
    ({"params": {"lr": {"type": "float", "low": 1e-2, "high": 1e-4}}}, "params.lr", ["low", "below high"]),
    ({"params": {"lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}}, "params.lr", ["log scale"]),
    ({"params": {"d_model": {"type": "categorical", "choices": []}}}, "params.d_model.choices", ["non-empty"]),
    ({"params": {"d_model": {"type": "float", "low": 8, "high": 64}}}, "params.d_model.type", ["int"]),
    ({"params": {"d_model": {"type": "categorical", "choices": ["big"]}}}, "params.d_model.choices", ["must be int"]),
    ({"params": {"lr": {"type": "uniform", "low": 1, "high": 2}}}, "params.lr.type", ["float, int or categorical"]),
    ({"params": {"lr": {"type": "float", "low": "a", "high": 2}}}, "params.lr.low", ["must be number"]),
    ({**BASE, "metric": "val/f2"}, "metric", ["never reported"]),
    ({**BASE, "metric": "val/loss", "mode": "max"}, "mode", ["minimized"]),
    ({**BASE, "num_samples": 0}, "num_samples", [">= 1"]),
    ({**BASE, "num_samples": "ten"}, "num_samples", ["must be int"]),
    ({**BASE, "asha": {"grace_period": 50}, "epochs": 10}, "asha.grace_period", ["epochs=10"]),
    ({**BASE, "fixed": {"dropoutt": 0.1}}, "fixed.dropoutt", ["unknown key"]),
    ({**BASE, "fixed": {"epochs": 3}}, "fixed.epochs", ["top-level key 'epochs'"]),
    ({"params": {"dropout": {"type": "float", "low": 0.0, "high": 1.5}}}, "params.dropout", ["dropout"]),
    ({"params": {"d_model": {"type": "categorical", "choices": [64, 100]},
                 "nhead": {"type": "categorical", "choices": [4, 8]}}}, "params", ["does not divide", "head_dim"]),
    ({**BASE, "start": [{"lr": 1e-3, "d_model": 64}]}, "start[0]", ["not searched"]),
    ({}, "params", ["at least one"]),
])
def test_bad_space_names_file_and_key(tmp_path, doc, key, words):
    path = _write(tmp_path, doc)
    with pytest.raises(SpaceError) as e:
        load_space(path)
    msg = str(e.value)
    assert str(path) in msg and key in msg, msg
    for w in words:
        assert w in msg, msg


def test_yaml_syntax_error_has_its_line(tmp_path):
    path = _write(tmp_path, None, raw="params:\n  lr: {type: float, low: 1\n")
    with pytest.raises(SpaceError, match=r"line \d+"):
        load_space(path)


def test_head_dim_makes_every_pair_valid(tmp_path):
    path = _write(tmp_path, {"params": {"nhead": {"type": "categorical", "choices": [3, 4, 6]},
                                        "head_dim": {"type": "categorical", "choices": [8, 16]}}})
    space = load_space(path)
    cfg = space.train_config({"nhead": 3, "head_dim": 16})
    assert (cfg.nhead, cfg.d_model) == (3, 48)


def test_overrides_are_checked_again():
    space = load_space(REPO / "search_spaces/smoke.yaml")
    assert space.with_overrides(num_samples=7, epochs=None).num_samples == 7
    with pytest.raises(SpaceError, match="key .epochs. must be >= 1"):
        space.with_overrides(epochs=0)


def test_the_plan_states_the_budget_in_samples_passes_and_steps_per_batch_size():
    from mmtune.tune.sweep import budget

    space = load_space(REPO / "search_spaces/default.yaml")
    line = budget(space, space.validation, 216)
    assert line.startswith(f"budget per trial: {space.epochs} epochs x 512 samples (2.4 passes over 216 training")
    assert "32 at batch 16, 16 at batch 32, 8 at batch 64" in line and f"= {space.epochs * 512:,} samples" in line
    big = budget(space, space.validation, 1000)  # one pass is more than epoch_samples: one pass it is
    assert "x 1,000 samples (1.0 passes" in big and "63 at batch 16" in big


DEFAULT = REPO / "search_spaces/default.yaml"  # epochs 12, asha.grace_period 4, reduction_factor 3


@pytest.mark.parametrize("epochs, grace, rungs, words", [
    (None, 4, [4], "ASHA stops trials outside the best 1/3 at epoch 4 of 12"),
    (12, 4, [4], "ASHA stops trials outside the best 1/3 at epoch 4 of 12"),
    (6, 2, [2], "at epoch 2 of 6 (the file's first rung at epoch 4 of 12, scaled for --epochs 6)"),
    (3, 1, [1], "at epoch 1 of 3 (the file's first rung at epoch 4 of 12, scaled for --epochs 3)"),
    (24, 8, [8], "at epoch 8 of 24 (the file's first rung at epoch 4 of 12, scaled for --epochs 24)"),
    (1, 1, [], "none: --epochs 1 leaves no ASHA rung below the budget (the file's first rung at epoch 4 of 12)"),
])
def test_an_epochs_override_scales_the_asha_rungs(epochs, grace, rungs, words):
    space = load_space(DEFAULT).with_overrides(epochs=epochs)
    assert (space.grace_period, space.rungs) == (grace, rungs)
    assert words in space.early_stopping()


def test_rungs_are_the_epochs_where_ray_can_stop_a_trial():
    """Ray's milestones are grace_period * reduction_factor**k; one at the budget stops nothing."""
    from mmtune.tune.space import rung_epochs

    assert rung_epochs(1, 3.0, 27) == [1, 3, 9] and rung_epochs(1, 3.0, 28) == [1, 3, 9, 27]
    assert rung_epochs(2, 2.5, 20) == [2, 5, 13]  # 12.5 is first met at epoch 13
    assert rung_epochs(1, 1.2, 3) == [1, 2]  # 1.2 and 1.44 are both met at epoch 2
    assert rung_epochs(5, 2.0, 5) == []


def test_asha_off_in_the_file_is_said_as_such(tmp_path):
    space = load_space(_write(tmp_path, {**BASE, "epochs": 5, "asha": {"grace_period": 5}}))
    assert space.rungs == [] and space.with_overrides(epochs=2).rungs == []
    assert space.early_stopping() == "none: asha.grace_period 5 = epochs 5 leaves no ASHA rung below the budget"


def test_a_file_grace_period_beyond_its_epochs_is_an_error_an_override_is_not(tmp_path):
    path = _write(tmp_path, {**BASE, "epochs": 3, "asha": {"grace_period": 4}})
    with pytest.raises(SpaceError) as e:
        load_space(path)
    assert str(path) in str(e.value) and "key 'asha.grace_period' must be in [1, epochs=3], not 4" in str(e.value)
    assert "lower it or raise epochs" in str(e.value)
    fits = load_space(_write(tmp_path, {**BASE, "epochs": 12, "asha": {"grace_period": 4}}))
    assert fits.with_overrides(epochs=3).grace_period == 1


def test_make_scheduler_stops_trials_only_at_the_rungs():
    """The scheduler a sweep runs (Ray's, no runtime): a trial that turns bad at epoch E stops at the first rung
    at or after E, so the epochs where trials stop are exactly the rungs; none before the budget without rungs."""
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from mmtune.tune.tuner import make_scheduler

    for epochs in (1, 3, 6, 12, 13, 40):  # 13: rungs 4 and 12; 40: grace 13, rungs 13 and 39
        space = load_space(DEFAULT).with_overrides(epochs=epochs)
        scheduler = make_scheduler(space)
        scheduler.set_search_properties(space.metric, space.mode)

        def run(name: str, value_at) -> int | None:
            """The epoch before the budget at which the scheduler stops trial NAME, or None."""
            trial = SimpleNamespace(trial_id=name)
            scheduler.on_trial_add(None, trial)
            for epoch in range(1, epochs):
                result = {"training_iteration": epoch, space.metric: value_at(epoch)}
                if scheduler.on_trial_result(None, trial, result) == TrialScheduler.STOP:
                    return epoch
            return None

        assert [run(f"warm{i}", lambda e, i=i: 0.1 * i) for i in range(1, 4)] == [None] * 3  # each the best so far
        stops = {run(f"bad_from_{e}", lambda epoch, e=e: 1.0 if epoch < e else 0.0) for e in range(1, epochs)}
        assert sorted(stops - {None}) == space.rungs, epochs


def test_the_plan_says_where_trials_may_stop_early():
    from mmtune.tune.resources import Plan

    for epochs, line in [(None, "early stopping: ASHA stops trials outside the best 1/3 at epoch 4 of 12"),
                         (1, "early stopping: none: --epochs 1 leaves no ASHA rung below the budget")]:
        space = load_space(DEFAULT).with_overrides(epochs=epochs)
        lines = Plan(1, 2, 0, 1, 0, 1, early_stopping=space.early_stopping()).describe().splitlines()
        assert any(text.startswith(line) for text in lines), lines
