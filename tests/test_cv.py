"""Cross-validated training: folds (stratified, group-aware, seeded), per-fold statistics, a shared pool,
the K-fold trainer (fold means, exact resume, divergence) and the recipe's all-data training."""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtune.data.folds import assign_folds, load_cv
from mmtune.data.npz import DataError, apply_stats, feature_stats, load_dataset
from mmtune.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mmtune.model.config import ConfigError, TrainConfig
from mmtune.model.loop import fit


def numbers(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def test_folds_are_stratified_never_mix_groups_and_follow_split_seed(demo_dir):
    cv = load_cv(demo_dir, 4, split_seed=3)
    pool = cv.pool
    assert len(pool) == 240 + 80 and cv.info["pool"] == "train.npz + val.npz"
    for g in np.unique(pool.groups):
        assert len(np.unique(cv.fold_of[pool.groups == g])) == 1, f"group {g} is in two folds"
    rate = pool.y.mean()
    for i in range(4):
        fold = cv.fold(i)
        val, train = fold.splits["val"], fold.splits["train"]
        assert not set(np.unique(val.groups)) & set(np.unique(train.groups))
        assert abs(val.y.mean() - rate) < 0.1  # stratified: each fold near the pool's positive rate
    assert np.array_equal(load_cv(demo_dir, 4, split_seed=3).fold_of, cv.fold_of)
    assert not np.array_equal(load_cv(demo_dir, 4, split_seed=4).fold_of, cv.fold_of)


def test_folds_without_groups_are_stratified_k_fold():
    y = np.array([0] * 30 + [1] * 10)
    fold = assign_folds(y, None, 5, seed=0)
    assert [int(y[fold == i].sum()) for i in range(5)] == [2] * 5


@pytest.mark.parametrize("k, groups, words", [(11, None, "rarer class"), (4, np.arange(40) % 3, "3 groups")])
def test_too_many_folds_is_a_data_error_naming_the_fix(k, groups, words):
    y = np.array([0] * 30 + [1] * 10)
    with pytest.raises(DataError, match=words) as e:
        assign_folds(y, groups, k, seed=0)
    assert "lower cv" in str(e.value) or "cv <=" in str(e.value)


def test_test_npz_is_never_opened(demo_dir, tmp_path):
    root = Path(shutil.copytree(demo_dir, tmp_path / "d"))
    (root / "test.npz").write_bytes(b"not an npz")  # reading it would fail
    assert len(load_cv(root, 3).pool) == 320


def test_fold_statistics_come_from_its_training_part_and_apply_on_the_fly(demo_dir):
    cv = load_cv(demo_dir, 3)
    fold = cv.fold(1)
    train_rows = cv.pool.take(fold.splits["train"].index)
    assert fold.stats == feature_stats(train_rows)
    assert fold.stats != feature_stats(cv.pool)  # the val part's rows do not count
    val_rows = apply_stats(cv.pool.take(fold.splits["val"].index), fold.stats)
    x, valid, y = fold.batches("val", torch.device("cpu")).gather(torch.arange(10))
    for m in x:
        assert torch.equal(x[m], torch.as_tensor(val_rows.x[m][:10]))
        assert torch.equal(valid[m], torch.as_tensor(val_rows.mask[m][:10]))
    assert torch.equal(y, torch.as_tensor(val_rows.y[:10]))


def test_folds_share_one_copy_of_the_data(demo_dir):
    cv = load_cv(demo_dir, 5)
    ptrs = {m: t.data_ptr() for m, t in cv.tensors.x.items()}
    assert all(ptrs[m] == cv.pool.x[m].ctypes.data for m in ptrs)  # tensors are views of the pooled arrays
    for i in range(5):
        for name in ("train", "val"):
            b = cv.fold(i).batches(name, torch.device("cpu"))
            assert {m: t.data_ptr() for m, t in b.x.items()} == ptrs


def test_cv_record_holds_fold_means_and_sds(tiny_cfg, demo_dir):
    cfg = replace(tiny_cfg, cv=3, epochs=2)
    result, trainer = fit(cfg, load_cv(demo_dir, 3))
    r = result.history[-1]
    assert len(r["val/f1_folds"]) == 3 and r["val/f1"] == pytest.approx(np.mean(r["val/f1_folds"]))
    assert r["val/f1_sd"] == pytest.approx(np.std(r["val/f1_folds"]))
    assert {"val/loss_sd", "val/ap_sd", "train/loss"} <= set(r) and "train/loss_sd" not in r
    assert result.best_metrics["val/f1"] == trainer.history[result.best_epoch - 1]["val/f1"] == result.best_value


def test_cv_resume_from_checkpoint_continues_exactly(tiny_cfg, demo_dir, tmp_path):
    cfg = replace(tiny_cfg, cv=3, epochs=4, dropout=0.2, modality_dropout=0.2)
    data = load_cv(demo_dir, 3)
    straight, _ = fit(cfg, data)
    saved = {}

    def stop_after_two(record, trainer):
        if trainer.epoch == 2:
            saved["path"] = save_checkpoint(trainer.state_dict("current"), tmp_path / "cv.pt")
            return True

    fit(cfg, data, [stop_after_two])
    state = load_checkpoint(saved["path"])  # weights_only=True: plain tensors, lists and dicts
    assert len(state["folds"]) == 3
    resumed, _ = fit(cfg, load_cv(demo_dir, 3), resume=state)
    assert numbers(resumed.history) == numbers(straight.history)
    with pytest.raises(CheckpointError, match="cv=2"):
        fit(replace(cfg, cv=2), load_cv(demo_dir, 2), resume=state)


def test_one_diverged_fold_makes_the_cv_run_nan(tiny_cfg, demo_dir):
    result, _ = fit(replace(tiny_cfg, cv=2, lr=1e6, grad_clip=0.0, epochs=5), load_cv(demo_dir, 2))
    assert result.status == "nan" and result.history[-1]["diverged_folds"]


def test_config_checks_for_cv_and_all_data_training():
    with pytest.raises(ConfigError, match="cv=1"):
        TrainConfig(cv=1)
    with pytest.raises(ConfigError, match="patience=10 with val_fraction=0"):
        TrainConfig(val_fraction=0.0)
    with pytest.raises(ConfigError, match="cv=5 with val_fraction=0"):
        TrainConfig(val_fraction=0.0, patience=0, cv=5)
    assert TrainConfig(val_fraction=0.0, patience=0).cv == 0


def test_val_fraction_zero_trains_on_train_and_val_for_exactly_epochs(tiny_cfg, demo_dir):
    data = load_dataset(demo_dir, val_fraction=0.0)
    assert sorted(data.splits) == ["test", "train"] and len(data.splits["train"]) == 320
    result, trainer = fit(replace(tiny_cfg, val_fraction=0.0, epochs=3), data)
    assert result.epochs_run == 3 and result.best_epoch == 3 and result.status == "completed"
    assert not [k for k in result.history[-1] if k.startswith("val/")]


TINY_FLAGS = ["--d-model", "16", "--nhead", "2", "--num-layers", "1", "--ff-mult", "2", "--train-steps", "4",
              "--epochs", "3", "--patience", "0", "--device", "cpu"]


def test_train_cv_writes_the_estimate_and_no_test_metrics(demo_dir, tmp_path, capsys):
    import json

    from mmtune.tune.cli import run

    run_dir = tmp_path / "cv"
    assert run(["train", "--data", str(demo_dir), *TINY_FLAGS, "--cv", "3", "--checkpoint-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "3-fold CV over train.npz + val.npz" in out and "CV estimate (3 folds): val/f1" in out
    summary = json.loads((run_dir / "summary.json").read_text())
    est = summary["cv"]
    assert "test" not in summary and est["epoch"] == summary["best_epoch"] and len(est["per_fold"]) == 3
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert est["mean"] == lines[est["epoch"] - 1]["val/f1"] and est["sd"] == lines[est["epoch"] - 1]["val/f1_sd"]
    assert len(load_checkpoint(run_dir / "best.pt")["folds"]) == 3
    assert run(["evaluate", "--checkpoint", str(run_dir / "best.pt"), "--data", str(demo_dir)]) == 2
    assert "CV checkpoint" in capsys.readouterr().err


def tiny_space(**top):
    from mmtune.tune.space import parse_space

    raw = {"num_samples": 2, "epochs": 3, "params": {"lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
           "fixed": {"d_model": 16, "nhead": 2, "num_layers": 1, "ff_mult": 2, "train_steps": 4, "patience": 0,
                     "device": "cpu"}, **top}
    return parse_space(raw, "space.yaml")


def test_space_cv_key_sets_every_trial_config_and_bad_values_name_the_key():
    from mmtune.tune.space import SpaceError

    assert tiny_space().train_config({"lr": 1e-3}).cv == 0
    assert tiny_space(cv=4).train_config({"lr": 1e-3}).cv == 4
    assert tiny_space(cv="auto").cv == "auto"
    for bad in (1, -2, "five", True):
        with pytest.raises(SpaceError, match="space.yaml: key 'cv' must be 0"):
            tiny_space(cv=bad)
    with pytest.raises(SpaceError, match="key 'fixed.cv': set it with the top-level key 'cv'"):
        tiny_space(fixed={"cv": 3})


def test_sweep_cv_flag_is_checked_before_ray():
    from mmtune.tune.errors import SweepError
    from mmtune.tune.job import cv_option

    assert cv_option("auto") == "auto" and cv_option("5") == 5 and cv_option("0") == 0 and cv_option(None) is None
    for bad in ("1", "x", "-3"):
        with pytest.raises(SweepError, match=f"--cv {bad}: give 0"):
            cv_option(bad)


def test_cv_auto_picks_folds_for_a_small_holdout_and_holdout_for_a_large_one(demo_dir, tmp_path):
    from mmtune.data.demo import make_demo
    from mmtune.data.validation import resolve

    v = resolve(demo_dir, "auto", 0, 0.2)  # val.npz: 80 samples, ~20 positives
    assert v.folds == 5 and v.describe().startswith("5-fold CV (cv: auto; val.npz would hold")
    assert "positives < 50" in v.describe() and v.load(demo_dir).k == 5
    big = make_demo(tmp_path / "big", n_train=200, n_val=500, n_test=10, seed=0)
    v = resolve(big, "auto", 0, 0.2)
    assert v.folds == 0 and v.describe().startswith("holdout (cv: auto; val.npz holds") and ">= 50" in v.describe()
    assert v.load(big).k == 1 and v.load(big).test is not None  # a holdout is one fold, tested on test.npz
    assert resolve(demo_dir, 3, 0, 0.2).describe() == "3-fold CV (cv: 3)"


def test_plan_names_the_validation_and_counts_k_models():
    from mmtune.tune.resources import Plan, estimate_trial_gb

    one, five = TrainConfig(), TrainConfig(cv=5)
    mods = {"a": (20, 4)}
    per_extra_model = estimate_trial_gb(TrainConfig(cv=2), mods) - estimate_trial_gb(one, mods)
    assert per_extra_model > 0  # K weight/optimizer states; activations once (folds train in turn)
    assert estimate_trial_gb(five, mods) - estimate_trial_gb(one, mods) == pytest.approx(4 * per_extra_model)
    plan = Plan(1, 2, 0, 1, 0, 1, validation="5-fold CV (cv: auto; val.npz would hold 12 positives < 50)")
    assert "validation: 5-fold CV (cv: auto; val.npz would hold 12 positives < 50)" in plan.describe()


def test_recipe_round_trips_and_trains_on_all_data(demo_dir, tmp_path, capsys):
    import json

    from mmtune.model.config import load_config, save_config
    from mmtune.tune.cli import run

    from mmtune.tune.recipe import recipe_config

    space = tiny_space(cv=3)
    recipe, note = recipe_config(space, space.validation, {"lr": 2e-3}, best_epochs=[1, 2, 4])  # median: 2
    assert (recipe.cv, recipe.val_fraction, recipe.patience, recipe.epochs) == (0, 0.0, 0, 2)
    assert "for exactly 2 epochs, the median best epoch of 3 run(s)" in note
    holdout = tiny_space(cv=0)
    as_trained, none = recipe_config(holdout, holdout.validation, {"lr": 2e-3}, best_epochs=[1])
    assert as_trained == holdout.train_config({"lr": 2e-3}) and none == ""  # a holdout config deploys as it trained
    save_config(recipe, tmp_path / "recipe.yaml")
    assert load_config(tmp_path / "recipe.yaml") == recipe
    assert run(["train", "--config", str(tmp_path / "recipe.yaml"), "--data", str(demo_dir),
                "--checkpoint-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "train 320" in out and "val " not in out.split("\n")[0] and "on all training data" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 2 and summary["best_epoch"] == 2 and "f1" in summary["test"]


def test_cv_sweep_reports_fold_means_and_exports_a_recipe(ray_session, demo_dir, tmp_path):
    """A real (slow) sweep with `--cv 2`: trials report val/f1 and val/f1_sd; best_config.yaml is a recipe."""
    import json

    import yaml

    from mmtune.model.config import load_config
    from tests.conftest import SMOKE, rows, run_sweep

    exp = run_sweep(demo_dir, tmp_path, "cvsweep", space=SMOKE, num_samples=2, epochs=2, cv="2", no_asha=True)
    meta = json.loads((exp / "mmtune.json").read_text())
    assert meta["space"]["cv"] == 2 and meta["plan"]["validation"] == "2-fold CV (cv: 2)"
    for row in rows(exp):
        results = [json.loads(x) for x in (exp / f"trial_{row['trial_id']}" / "result.json").read_text().splitlines()]
        assert all("val/f1" in r and "val/f1_sd" in r for r in results), results[-1].keys()
    text = (exp / "best_config.yaml").read_text()
    assert "over its folds at epoch" in text and "(2-fold CV (cv: 2))" in text  # the fold mean +- fold sd
    assert "for exactly" in text and "median best epoch of 1 run(s)' fold-mean curves" in text
    summary = json.loads((exp / "summary.json").read_text())
    recipe = load_config(exp / "best_config.yaml")
    assert (recipe.cv, recipe.val_fraction, recipe.patience) == (0, 0.0, 0)
    assert recipe.epochs == summary["best_epoch"] == yaml.safe_load(text)["epochs"]
