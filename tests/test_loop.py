"""The training loop: determinism, early stopping, divergence, exact resume, run folder, pretraining."""
from __future__ import annotations

import json
import os
from dataclasses import replace

import pytest
import torch

from mmtune.model.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from mmtune.model.loop import fit, pick_device
from mmtune.model.run import BEST, LAST, evaluate_splits, model_from_checkpoint, train_run


def numbers(history):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def val_metrics(state, data):
    """Val metrics of the classifier in checkpoint STATE, rebuilt from the checkpoint alone."""
    model, objective, cfg = model_from_checkpoint(state, data)
    return evaluate_splits(model, objective, data, ("val",), pick_device(cfg.device))["val"]


def test_same_seed_same_metrics_other_seed_differs(tiny_cfg, demo):
    a, _ = fit(tiny_cfg, demo)
    b, _ = fit(tiny_cfg, demo)
    c, _ = fit(replace(tiny_cfg, seed=1), demo)
    assert numbers(a.history) == numbers(b.history)
    assert numbers(a.history) != numbers(c.history)


def test_every_epoch_reports_train_and_val_metrics(tiny_cfg, demo):
    result, _ = fit(tiny_cfg, demo)
    keys = {"loss", "acc", "precision", "recall", "f1", "f1_best", "threshold", "auroc", "ap"}
    for r in result.history:
        assert {f"train/{k}" for k in keys} | {f"val/{k}" for k in keys} <= set(r)
        assert 0.0 <= r["val/f1"] <= 1.0 and 0.0 <= r["val/auroc"] <= 1.0
    assert result.best_value == max(r["val/f1"] for r in result.history)


def test_early_stopping_after_patience(tiny_cfg, demo):
    # An lr far below float32's resolution of the weights: every epoch evaluates the same model, so neither the
    # metric nor its tie-breaker (the loss) ever improves after the first epoch.
    cfg = replace(tiny_cfg, epochs=30, patience=2, lr=1e-12, eta_min=0.0)
    result, trainer = fit(cfg, demo)
    assert result.status == "early_stopped"
    assert result.epochs_run == 3 and result.best_epoch == 1


def test_best_epoch_breaks_metric_ties_by_the_loss(tiny_cfg, demo):
    """The loop's best epoch is the best by (metric, then val loss): never the earliest of tied epochs."""
    from mmtune.model.metrics import rank_key

    result, _ = fit(replace(tiny_cfg, epochs=6, patience=0), demo)
    keys = [rank_key(r, "val/f1") for r in result.history]
    assert result.best_epoch == 1 + keys.index(min(keys))
    assert [r["improved"] for r in result.history] == [k < min(keys[:i], default=(float("inf"),) * 2)
                                                       for i, k in enumerate(keys)]


def test_diverging_loss_stops_with_status_nan(tiny_cfg, demo):
    result, _ = fit(replace(tiny_cfg, lr=1e6, grad_clip=0.0, epochs=5), demo)
    assert result.status == "nan"
    assert result.epochs_run < 5 and result.history[-1]["status"] == "nan"


def test_resume_from_checkpoint_continues_exactly(tiny_cfg, demo, tmp_path):
    cfg = replace(tiny_cfg, epochs=4, modality_dropout=0.2, dropout=0.2)
    straight, _ = fit(cfg, demo)
    saved = {}

    def stop_after_two(record, trainer):
        if trainer.epoch == 2:
            saved["state"] = save_checkpoint(trainer.state_dict(), tmp_path / "c.pt")
            return True

    first, _ = fit(cfg, demo, [stop_after_two])
    assert first.status == "stopped" and first.epochs_run == 2
    torch.manual_seed(123)  # whatever the global RNG holds now must not matter
    resumed, _ = fit(cfg, demo, resume=load_checkpoint(saved["state"]))
    assert numbers(resumed.history) == numbers(straight.history)


def test_run_folder_best_only_and_summary(tiny_cfg, demo, tmp_path):
    summary = train_run(tiny_cfg, demo, tmp_path / "run", save_best_only=True)
    run = tmp_path / "run"
    assert (run / BEST).is_file() and not (run / LAST).exists()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == summary["epochs_run"] == 3
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["best_epoch"] == summary["best_epoch"] and "test" in on_disk
    # Only meaningful when the best epoch is not the last one: then the last epoch's weights differ.
    assert summary["best_epoch"] < summary["epochs_run"], "pick a config whose best epoch is not the last"
    best = load_checkpoint(run / BEST)
    assert best["weights"] == "best" and best["kind"] == "classify"
    # best.pt is written in the epoch that improved, so its epoch is the best epoch, not the last one.
    assert best["epoch"] == best["best_epoch"] == summary["best_epoch"]
    assert best["best"] == summary["best_value"]
    # Its weights are the best epoch's: evaluated again on val (as `mmtune evaluate` does), they give
    # that epoch's val metrics. val/loss is continuous: another epoch's weights would not match it.
    again = val_metrics(best, demo)
    assert again["f1"] == pytest.approx(summary["best_value"], abs=1e-6)
    for key in ("loss", "auroc", "ap", "f1"):
        assert again[key] == pytest.approx(summary["best_metrics"][f"val/{key}"], abs=1e-6), key
    assert again["loss"] != pytest.approx(lines[-1]["val/loss"], abs=1e-6)  # not the last epoch's weights
    assert set(best["stats"]) == {"traj", "pose"}  # normalisation travels with the weights
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_run_folder_last_checkpoint_holds_the_last_epoch(tiny_cfg, demo, tmp_path):
    summary = train_run(tiny_cfg, demo, tmp_path / "run")
    run = tmp_path / "run"
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["best_epoch"] < summary["epochs_run"] == len(history)
    last, best = load_checkpoint(run / LAST), load_checkpoint(run / BEST)
    assert last["weights"] == "current" and last["epoch"] == summary["epochs_run"]
    assert best["weights"] == "best" and best["epoch"] == summary["best_epoch"]
    assert val_metrics(last, demo)["loss"] == pytest.approx(history[-1]["val/loss"], abs=1e-6)
    assert val_metrics(best, demo)["loss"] == pytest.approx(history[summary["best_epoch"] - 1]["val/loss"], abs=1e-6)
    assert any(not torch.equal(last["model"][k], best["model"][k]) for k in best["model"])


def test_checkpoint_refuses_pickles_and_names_bad_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    good = save_checkpoint({"format": FORMAT, "x": torch.ones(100)}, tmp_path / "good.pt")
    good.write_bytes(good.read_bytes()[:200])  # truncated on disk
    with pytest.raises(CheckpointError, match="good.pt"):
        load_checkpoint(good)
    save_checkpoint({"format": 0}, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match="not an mmtune checkpoint"):
        load_checkpoint(tmp_path / "old.pt")


def test_pretrain_then_load_encoder(tiny_cfg, demo, tmp_path):
    summary = train_run(replace(tiny_cfg, epochs=2), demo, tmp_path / "pre", kind="pretrain")
    assert summary["monitor"] == "val/loss" and summary["best_value"] > 0
    ckpt = tmp_path / "pre" / BEST
    state = load_checkpoint(ckpt)
    assert state["kind"] == "pretrain"
    result, trainer = fit(replace(tiny_cfg, epochs=1, lr=1e-12, eta_min=0.0, dropout=0.0), demo,
                          pretrained=str(ckpt))
    (own_model,) = trainer.models
    own = own_model.state_dict()
    enc = [k for k in own if k.startswith("encoder.")]
    # With a vanishing learning rate the encoder still holds the pretrained weights.
    assert all(torch.allclose(own[k], state["model"][k], atol=1e-6) for k in enc)
    with pytest.raises(CheckpointError, match="encoder.proj.pose.weight|encoder.modality_emb|shape"):
        fit(replace(tiny_cfg, d_model=32), demo, pretrained=str(ckpt))


def test_an_epoch_is_sized_in_samples_the_same_for_every_batch_size(tiny_cfg, demo):
    from mmtune.model.config import samples_per_epoch, steps_per_epoch
    from mmtune.model.loop import Trainer

    one_pass = replace(tiny_cfg, train_steps=0, batch_size=64, epoch_samples=0)
    assert steps_per_epoch(one_pass, 216) == 4  # a handful of optimizer steps per epoch
    sized = replace(one_pass, epoch_samples=512)
    assert [steps_per_epoch(replace(sized, batch_size=b), 216) for b in (16, 32, 64)] == [32, 16, 8]
    assert samples_per_epoch(sized, 5000) == 5000 and steps_per_epoch(sized, 5000) == 79  # at least one pass
    assert steps_per_epoch(replace(sized, train_steps=3), 216) == 3  # an explicit train_steps wins
    (fold,) = Trainer(sized, demo).folds  # a holdout is one fold
    assert fold.steps == -(-max(512, len(demo.splits["train"])) // 64)
    drawn = fold.train.train_indices(fold.steps, 64, True, torch.Generator().manual_seed(0))
    assert drawn.numel() >= 512  # the epoch's samples are drawn, in whole batches
