"""Finalize's torch side: model sizes, a run's best checkpoint evaluated on test.npz, the winner's weights copied.

Imported only when finalize runs (it loads torch).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mmtune.data.validation import TrainData, Validation
from mmtune.model.checkpoint import load_checkpoint, save_checkpoint
from mmtune.model.config import TrainConfig
from mmtune.model.loop import make_objective
from mmtune.model.metrics import metric_name
from mmtune.model.run import checkpoint_data, evaluate_checkpoint
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import Trial
from mmtune.tune.results import best_checkpoint
from mmtune.tune.selection import Candidate


def count_params(cfg: TrainConfig, data: TrainData) -> int:
    """Parameters of the model CFG builds on DATA's modalities (what the tie rule prefers fewer of)."""
    view = data.fold(0)  # every fold builds the same model
    return sum(p.numel() for p in make_objective(cfg, view).build(data.modalities).parameters())


class CheckpointFacts:
    """What a finalize run's best-epoch checkpoint tells: its path and, for a run that made one model, a digest of
    its train split's statistics (which split it trained on) and its test metrics when the set has test.npz."""

    def __init__(self, root: str, validation: Validation):
        self.root, self.validation = root, validation
        self.cache: dict[tuple, Any] = {}  # one data set per distinct split, shared by the runs that trained on it

    def __call__(self, t: Trial) -> dict[str, Any]:
        path, epoch = best_checkpoint(t)
        if epoch != t.best_epoch:
            raise ResultsError(f"run {t.trial_id}: the checkpoint of its best epoch {t.best_epoch} was not kept")
        if self.validation.cross_validated:  # K models and an estimate: test.npz is its recipe's business
            return {"checkpoint": str(path)}
        state = load_checkpoint(path)
        digest = hashlib.sha1(json.dumps(state["stats"], sort_keys=True).encode()).hexdigest()[:12]
        cfg = state["config"]
        key = (cfg.get("val_fraction"), cfg.get("split_seed"), digest)
        if key not in self.cache:
            self.cache[key] = checkpoint_data(state, self.root, str(path))
        by_split = evaluate_checkpoint(state, self.cache[key])
        return {"checkpoint": str(path), "train_split": digest,
                **{metric_name(s, k): v for s, m in by_split.items() for k, v in m.items()}}


def copy_winner(folder: Path, winner: Candidate) -> list[str]:
    """The winner's best-epoch checkpoint of every seed, as FOLDER/seed_<seed>.pt marked as best weights."""
    paths = []
    for r in (r for r in winner.ok_runs if r.get("checkpoint")):
        # Saved at the best epoch, so its weights are that epoch's: the best weights of the run.
        state = {**load_checkpoint(r["checkpoint"]), "weights": "best"}
        paths.append(str(save_checkpoint(state, folder / f"seed_{r['seed']}.pt")))
    return paths
