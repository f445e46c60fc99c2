"""Cross-validation arithmetic on epoch records: the fold-mean record K folds are judged on, and the estimate.

Plain functions over records; the one `Trainer` (model/loop.py) uses them when it trains K folds.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from mmtune.model.status import TrialStatus

AVERAGED = ("train/", "val/")  # record keys averaged over folds; val keys also get a fold sd


def fold_mean(records: list[dict[str, Any]], monitor: str) -> dict[str, Any]:
    """One record from the K folds' records of an epoch: means, val sds, the monitor per fold; NAN if any fold is."""
    if any(r["status"] == TrialStatus.NAN.value for r in records):
        losses = [r["train/loss"] for r in records]
        return {"lr": records[0]["lr"], "train/loss": next(v for v in losses if not math.isfinite(v)),
                "status": TrialStatus.NAN.value, "diverged_folds": [i + 1 for i, v in enumerate(losses)
                                                                   if not math.isfinite(v)]}
    out: dict[str, Any] = {"lr": records[0]["lr"]}
    for key in records[0]:
        if key.startswith(AVERAGED):
            values = np.array([r[key] for r in records], dtype=np.float64)
            out[key] = float(values.mean())
            if key.startswith("val/"):
                out[f"{key}_sd"] = float(values.std())  # over folds, ddof=0 as scikit-learn reports it
    out[f"{monitor}_folds"] = [float(r[monitor]) for r in records]
    out["status"] = TrialStatus.RUNNING.value
    return out


def cv_estimate(k: int, monitor: str, best_epoch: int | None, best: dict[str, Any], info: dict[str, Any]) -> dict:
    """The CV estimate of a finished K-fold run: the monitor's fold mean and sd at the epoch the mean curve chose."""
    return {"folds": k, "monitor": monitor, "epoch": best_epoch, "mean": best.get(monitor),
            "sd": best.get(f"{monitor}_sd"), "per_fold": best.get(f"{monitor}_folds"), "data": info,
            "test": "not evaluated: cross-validation estimates a config; train its recipe to test a model"}
