"""A run folder: resolved config, per-epoch metrics, best-only/last checkpoints and a summary."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from mmtune.data.batches import Batches
from mmtune.data.io import finite, write_json
from mmtune.data.npz import Dataset
from mmtune.data.validation import TrainData, Validation
from mmtune.model.checkpoint import save_checkpoint, single_model
from mmtune.model.config import TrainConfig, build_config, save_config
from mmtune.model.cv import cv_estimate
from mmtune.model.loop import Callback, FitResult, Objective, Trainer, evaluate, fit, make_objective, pick_device
from mmtune.model.status import TrialStatus

log = logging.getLogger(__name__)

BEST, LAST = "best.pt", "last.pt"


class RunFolder:
    """Callback that keeps a run folder up to date after every epoch."""

    def __init__(self, path: str | Path, cfg: TrainConfig, save_best_only: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.save_best_only = save_best_only
        save_config(cfg, self.path / "config.yaml")
        (self.path / "metrics.jsonl").write_text("")

    def __call__(self, record: dict[str, Any], trainer: Trainer) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(finite(record)) + "\n")
        if record.get("improved"):
            save_checkpoint(trainer.state_dict("best"), self.path / BEST)
        if not self.save_best_only and record["status"] != TrialStatus.NAN:
            save_checkpoint(trainer.state_dict("current"), self.path / LAST)


def train_run(cfg: TrainConfig, data: TrainData, run_dir: str | Path, kind: str = "classify",
              save_best_only: bool = False, pretrained: str | None = None,
              callbacks: list[Callback] = ()) -> dict[str, Any]:
    """Train into RUN_DIR and return (and write) its summary: the best epoch's test metrics when DATA has a test
    split, the CV estimate when it has K folds (`Validation.of(cfg).load` decides both)."""
    folder = RunFolder(run_dir, cfg, save_best_only)
    result, trainer = fit(cfg, data, [folder, *callbacks], kind=kind, pretrained=pretrained)
    summary = summarize(result, trainer)
    if data.k > 1:
        summary["cv"] = cv_estimate(data.k, trainer.objective.monitor, trainer.best_epoch, trainer.best_metrics,
                                    data.info)
    fold = trainer.folds[0]  # a data set with a test split trains one model
    if data.test is not None and fold.best_state is not None:
        fold.model.load_state_dict(fold.best_state)
        summary["test"] = evaluate_splits(fold.model, trainer.objective, data.test, ("test",), trainer.device)["test"]
    write_json(summary, folder.path / "summary.json")
    return summary


def summarize(result: FitResult, trainer: Trainer) -> dict[str, Any]:
    """The facts of a finished run."""
    return {
        "status": result.status, "epochs_run": result.epochs_run, "monitor": trainer.objective.monitor,
        "best_epoch": result.best_epoch, "best_value": result.best_value,
        "threshold": result.best_metrics.get("val/threshold"), "best_metrics": result.best_metrics,
        "num_params": trainer.num_params, "device": str(trainer.device), "seed": trainer.cfg.seed,
        "data": trainer.data.info, "torch": torch.__version__,
    }


def evaluate_splits(model: torch.nn.Module, objective: Objective, data: Dataset, splits: tuple[str, ...],
                    device: torch.device) -> dict[str, dict[str, float]]:
    """Metrics of MODEL on each of SPLITS that DATA has, by split."""
    return {s: evaluate(model.to(device), objective, Batches(data.splits[s], device)) for s in splits
            if s in data.splits}


def checkpoint_data(state: dict[str, Any], root: str | Path, source: str = "checkpoint") -> Dataset:
    """The data set at ROOT split and standardized as the single-model checkpoint STATE's run had it (its split,
    its stats)."""
    single_model(state, source)
    return Validation.of(state["config"]).one_model().load(root, stats=state["stats"])


def model_from_checkpoint(state: dict[str, Any], data: Dataset) -> tuple[torch.nn.Module, Objective, TrainConfig]:
    """The classifier of a checkpoint STATE, its objective on DATA, and its config."""
    cfg = build_config(state["config"], source="checkpoint (config)")
    objective = make_objective(cfg, data)
    model = objective.build({m: tuple(s) for m, s in state["modalities"].items()})
    model.load_state_dict(state["model"])
    return model, objective, cfg


def evaluate_checkpoint(state: dict[str, Any], data: Dataset, splits: tuple[str, ...] = ("test",)
                        ) -> dict[str, dict[str, float]]:
    """Metrics of the single-model checkpoint STATE on each of SPLITS of DATA (from `checkpoint_data`)."""
    model, objective, cfg = model_from_checkpoint(state, data)
    return evaluate_splits(model, objective, data, splits, pick_device(cfg.device))
