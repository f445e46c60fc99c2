"""Cross-validated training: K fold `Trainer`s run in lockstep, epoch by epoch, judged on their fold mean.

`CVTrainer` is what `fit` drives when cfg.cv >= 2; it answers the calls `fit`, run folders and the sweep's
reporter make of a `Trainer`, so the one loop serves both. No Ray here.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from mmtune.data.folds import CVData
from mmtune.model.checkpoint import FORMAT, CheckpointError
from mmtune.model.config import TrainConfig
from mmtune.model.loop import Trainer, make_objective, snapshot
from mmtune.model.metrics import is_better
from mmtune.model.status import TrialStatus

AVERAGED = ("train/", "val/")  # record keys averaged over folds; val keys also get a fold sd


class CVTrainer:
    """K fold trainers sharing one data pool; best epoch and patience follow the fold-mean record."""

    def __init__(self, cfg: TrainConfig, data: CVData, kind: str = "classify"):
        if data.k != cfg.cv:
            raise ValueError(f"cv={cfg.cv} but the data has {data.k} folds; load it with load_cv(root, cfg.cv)")
        self.cfg, self.data = cfg, data
        # Every fold starts from cfg.seed, as a holdout run would: the fold sd measures the data, not the init.
        self.folds = [self._fold(i, kind) for i in range(data.k)]
        self.objective, self.device = self.folds[0].objective, self.folds[0].device
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, Any] = {}
        self.best_states: list[dict[str, torch.Tensor]] | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []

    def _fold(self, i: int, kind: str) -> Trainer:
        fold = self.data.fold(i)
        return Trainer(self.cfg, fold, make_objective(self.cfg, fold, kind))

    @property
    def num_params(self) -> int:
        """Parameters of one fold model (the trial holds K of them)."""
        return self.folds[0].num_params

    @property
    def models(self) -> list[torch.nn.Module]:
        return [t.model for t in self.folds]

    # The same stopping rules as a single trainer: one definition, not a copy.
    should_stop_early = Trainer.should_stop_early
    outcome = Trainer.outcome

    def run_epoch(self) -> dict[str, Any]:
        """One epoch of every fold; the record holds fold means (val keys with `_sd`, the monitor per fold)."""
        t0 = time.perf_counter()
        self.epoch += 1
        records = [t.run_epoch() for t in self.folds]
        record = fold_mean(records, self.objective.monitor)
        record["epoch"] = self.epoch
        if record["status"] == TrialStatus.NAN.value:  # one diverged fold makes the whole estimate unusable
            record.update(improved=False, seconds=time.perf_counter() - t0)
            return record
        improved = is_better(record, self.best_metrics, self.objective.monitor)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = record.get(self.objective.monitor), self.epoch, 0
            self.best_metrics = dict(record)
            self.best_states = [snapshot(t.model) for t in self.folds]
        else:
            self.bad_epochs += 1
        record.update(improved=improved, seconds=time.perf_counter() - t0)
        return record

    def state_dict(self, weights: str = "current") -> dict[str, Any]:
        """All K fold states and the fold-mean bookkeeping (weights_only-safe); WEIGHTS as `Trainer.state_dict`."""
        folds = [t.state_dict("current") for t in self.folds]
        if weights == "best" and self.best_states is not None:
            for state, best in zip(folds, self.best_states):
                state["model"] = best
        return {
            "format": FORMAT, "kind": self.objective.kind, "weights": weights, "cv": self.data.k,
            "config": self.cfg.to_dict(), "modalities": {m: list(s) for m, s in self.data.modalities.items()},
            "data_info": self.data.info, "folds": folds,
            "epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch,
            "best_metrics": dict(self.best_metrics), "bad_epochs": self.bad_epochs,
            "history": [dict(r) for r in self.history],
            # One global RNG (dropout) serves all folds in turn: saved once, restored last.
            "rng": {"torch": torch.get_rng_state()},
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Continue from a 'current' CV checkpoint: every fold exactly where it was."""
        if len(state.get("folds", ())) != len(self.folds):
            raise CheckpointError(f"{source}: holds {len(state.get('folds', ()))} fold states, this run has "
                                  f"cv={len(self.folds)}; resume with the config it was written with")
        for t, fold_state in zip(self.folds, state["folds"]):
            t.load_state_dict(fold_state, source)
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.best_metrics, self.bad_epochs = dict(state["best_metrics"]), state["bad_epochs"]
        self.history = list(state["history"])
        torch.set_rng_state(state["rng"]["torch"])
        self.best_states = None  # as with one trainer: the best weights live in the run's best.pt


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


def cv_estimate(trainer: CVTrainer) -> dict[str, Any]:
    """The CV estimate of a finished run: the monitor's fold mean and sd at the epoch the mean curve chose."""
    m, best = trainer.objective.monitor, trainer.best_metrics
    return {"folds": trainer.data.k, "monitor": m, "epoch": trainer.best_epoch, "mean": best.get(m),
            "sd": best.get(f"{m}_sd"), "per_fold": best.get(f"{m}_folds"), "data": trainer.data.info,
            "test": "not evaluated: cross-validation estimates a config; train its recipe to test a model"}
