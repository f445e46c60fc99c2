"""How a run is validated: one holdout split or K folds, decided once (where `cv: auto` resolves) and recorded.

`Validation` is the one home of that question. Its `load` gives the one interface the training loop trains on,
whatever the scheme: `k` fold views (`fold(i)`: `splits`, `stats`, `info`, `modalities`, `batches()`), of which a
holdout has exactly one (the `Dataset` itself), plus `scored` (the rows that score a config) and `test` (the split
a trained model is tested on; None under CV, whose folds estimate a config rather than make a model).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmtune.data.npz import Dataset, load_dataset, read_splits, split_train

VAL_FRACTION = 0.2  # TrainConfig.val_fraction's default, for configs recorded without the field
AUTO_MIN_RARER = 50  # fewer val samples of the rarer class than this cannot rank configs: cv: auto picks K-fold
AUTO_FOLDS = 5


class TrainData(Protocol):
    """What a trainer trains on: K fold views (a holdout is one), the rows that score, the test split if any."""

    k: int
    info: dict[str, Any]

    @property
    def modalities(self) -> dict[str, tuple[int, int]]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def scored(self) -> tuple[np.ndarray, str]: ...
    @property
    def train_rows(self) -> int: ...
    @property
    def test(self) -> Dataset | None: ...
    def fold(self, i: int) -> Any: ...


@dataclass(frozen=True)
class Validation:
    """One holdout split (folds 0) or K-fold cross-validation (folds K >= 2) over train.npz (+ val.npz)."""

    folds: int = 0  # K >= 2: K-fold CV, each config estimated by K models; 0: one holdout split
    split_seed: int = 0  # seed of the holdout split (without val.npz) or of the fold assignment
    val_fraction: float = VAL_FRACTION  # share of train.npz held out without val.npz; 0: no validation (a recipe)
    why: str = ""  # how the scheme was chosen (`cv: auto` resolved from the data), for the plan and the record

    @classmethod
    def of(cls, cfg: Any) -> "Validation":
        """The scheme a training config (or its recorded dict) asks for: its cv, split_seed and val_fraction."""
        get = cfg.get if isinstance(cfg, dict) else lambda k, d: getattr(cfg, k, d)
        return cls(get("cv", 0), get("split_seed", 0), get("val_fraction", VAL_FRACTION))

    @property
    def k(self) -> int:
        """Models trained per run: K under CV, one for a holdout."""
        return max(1, self.folds)

    @property
    def cross_validated(self) -> bool:
        return self.folds >= 2

    def describe(self) -> str:
        """The scheme in words, with why it was chosen."""
        what = f"{self.folds}-fold CV" if self.cross_validated else "holdout"
        return f"{what} ({self.why})" if self.why else what

    def one_model(self) -> "Validation":
        """The holdout with this split seed and fraction: how a single model's checkpoint (one fold's included) is
        loaded to be tested with its own statistics."""
        return replace(self, folds=0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load(self, root: str | Path, stats: dict | None = None) -> TrainData:
        """The data set at ROOT as this scheme trains on it (STATS, e.g. a checkpoint's, standardize a holdout)."""
        from mmtune.data.folds import load_cv  # late: scikit-learn's splitters cost ~1 s of imports

        root = Path(root).resolve()
        if self.cross_validated:
            return load_cv(root, self.folds, self.split_seed)
        return load_dataset(root, self.val_fraction, self.split_seed, stats=stats)

    def fixed_across_seeds(self, root: str | Path) -> bool:
        """Whether every split_seed gives the same split: a holdout on a set with val.npz."""
        return not self.cross_validated and (Path(root) / "val.npz").is_file()

    def recipe_epochs(self, best_epochs: list[int], budget: int) -> int | None:
        """The epochs a deployable recipe trains: under CV the median best epoch of the runs' fold-mean curves
        (one run, or the finalize seeds); a holdout config keeps its own budget and early stopping (None)."""
        if not self.cross_validated:
            return None
        return int(np.median(best_epochs)) if best_epochs else budget

    def seeds_vary(self, root: str | Path) -> str:
        """What a new split_seed changes besides the initialization, in words."""
        if self.cross_validated:
            return f"{self.folds}-fold CV: each seed sets split_seed, the seed of the folds"
        if self.fixed_across_seeds(root):
            return ("the data set has val.npz, so the holdout is fixed: the seeds vary the initialization and batch "
                    "order only")
        return "no val.npz: each seed's split_seed holds out another val split of train.npz"


def resolve(root: str | Path, cv: int | str, split_seed: int, val_fraction: float) -> Validation:
    """The scheme for CV ('auto', 0 or K): 'auto' picks K-fold when the holdout would hold too few of a class."""
    if cv != "auto":
        return Validation(int(cv), split_seed, val_fraction, f"cv: {cv}")
    splits = read_splits(Path(root).resolve(), ("train", "val"))  # test.npz plays no part in the choice
    where = "val.npz" if "val" in splits else f"the val_fraction={val_fraction:g} holdout"
    val = splits.get("val") or split_train(splits["train"], val_fraction, split_seed)[1]
    pos = int(val.y.sum())
    rarer, word = min((pos, "positives"), (len(val) - pos, "negatives"))
    if rarer < AUTO_MIN_RARER:
        why = f"cv: auto; {where} would hold {rarer} {word} < {AUTO_MIN_RARER}"
        return Validation(AUTO_FOLDS, split_seed, val_fraction, why)
    return Validation(0, split_seed, val_fraction, f"cv: auto; {where} holds {rarer} {word} >= {AUTO_MIN_RARER}")


def scored_counts(data: TrainData) -> dict[str, Any]:
    """Size and positives of the rows that score a config, for the noise checks after a sweep."""
    y, source = data.scored
    return {"samples": int(len(y)), "positives": int(y.sum()), "source": source}

