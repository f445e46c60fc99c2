"""A run folder: resolved config, per-epoch metrics, best-only/last checkpoints and a summary."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from data.batches import Batches
from data.npz import Dataset
from model.checkpoint import save_checkpoint
from model.config import TrainConfig, save_config
from model.io import atomic_file
from model.loop import Callback, FitResult, Trainer, evaluate, fit

log = logging.getLogger(__name__)

BEST, LAST = "best.pt", "last.pt"


def write_json(obj: Any, path: Path) -> None:
    """Write OBJ as JSON atomically (NaN/Inf become null, which every JSON reader accepts)."""
    with atomic_file(path) as f:
        f.write(json.dumps(_finite(obj), indent=2, sort_keys=False) + "\n")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


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
            f.write(json.dumps(_finite(record)) + "\n")
        if record.get("improved"):
            save_checkpoint(trainer.state_dict("best"), self.path / BEST)
        if not self.save_best_only and record["status"] == "ok":
            save_checkpoint(trainer.state_dict("current"), self.path / LAST)


def train_run(cfg: TrainConfig, data: Dataset, run_dir: str | Path, kind: str = "classify",
              save_best_only: bool = False, pretrained: str | None = None,
              callbacks: list[Callback] = ()) -> dict[str, Any]:
    """Train into RUN_DIR and return (and write) its summary, with test metrics of the best epoch."""
    folder = RunFolder(run_dir, cfg, save_best_only)
    result, trainer = fit(cfg, data, [folder, *callbacks], kind=kind, pretrained=pretrained)
    summary = summarize(result, trainer)
    if "test" in data.splits and trainer.best_state is not None:
        trainer.model.load_state_dict(trainer.best_state)
        test = evaluate(trainer.model, trainer.objective, Batches(data.splits["test"], trainer.device))
        summary["test"] = test
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
