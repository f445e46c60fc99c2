"""K-fold cross-validation over train.npz (+ val.npz): fold assignment and per-fold views of one shared pool.

The raw pool is held once as tensors; each fold is index arrays plus its own standardization statistics,
applied when a batch is gathered, so K folds cost K index arrays, not K copies of the data. test.npz is
never read here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmtune.data.batches import Batches, as_tensor
from mmtune.data.npz import DataError, Split, feature_stats, pool_of, read_splits

POOL_FILES = "train.npz + val.npz"


def assign_folds(y: np.ndarray, groups: np.ndarray | None, k: int, seed: int, where: str = POOL_FILES) -> np.ndarray:
    """Fold id (0..K-1) of every row: stratified by label, whole groups in one fold when GROUPS is given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold  # late: ~1 s of imports

    rarer = int(np.bincount(y, minlength=2).min())
    if k > rarer:
        raise DataError(f"{where}: key 'y' has {rarer} samples of the rarer class, fewer than cv={k} folds; "
                        f"set cv <= {rarer} (or cv: 0 for one holdout split)")
    if groups is not None and k > len(np.unique(groups)):
        raise DataError(f"{where}: key 'groups' has {len(np.unique(groups))} groups, fewer than cv={k} folds; "
                        "lower cv")
    splitter = (StratifiedGroupKFold if groups is not None else StratifiedKFold)(
        n_splits=k, shuffle=True, random_state=seed)
    fold = np.full(len(y), -1, np.int64)
    for i, (_, val) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        fold[val] = i
    for i in range(k):
        for part, rows in (("validation", fold == i), ("training", fold != i)):
            if len(np.unique(y[rows])) < 2:
                raise DataError(f"{where}: key 'y': fold {i + 1}/{k}'s {part} part holds a single class "
                                "(groups are kept whole); lower cv")
    return fold


@dataclass
class PoolTensors:
    """The pool's raw arrays as tensors, shared by every fold (zero-copy views of the numpy arrays)."""

    x: dict[str, torch.Tensor]
    mask: dict[str, torch.Tensor]
    y: torch.Tensor

    @classmethod
    def of(cls, split: Split) -> "PoolTensors":
        return cls({m: as_tensor(a) for m, a in split.x.items()}, {m: as_tensor(a) for m, a in split.mask.items()},
                   as_tensor(split.y))


class FoldBatches(Batches):
    """`Batches` of some pool rows: gathers from the shared tensors and standardizes on the way."""

    def __init__(self, pool: PoolTensors, index: np.ndarray, stats: dict[str, dict[str, list[float]]],
                 device: torch.device):
        self.x, self.mask = pool.x, pool.mask  # shared by all folds, never written
        self.index = torch.as_tensor(index, dtype=torch.int64)
        self.y = pool.y.index_select(0, self.index)  # labels only: a few bytes per row
        self.device = device
        self.mean = {m: torch.tensor(s["mean"], dtype=torch.float32, device=device) for m, s in stats.items()}
        self.std = {m: torch.tensor(s["std"], dtype=torch.float32, device=device) for m, s in stats.items()}
        counts = torch.bincount(self.y, minlength=2).clamp(min=1).double()
        self.balance = (1.0 / counts)[self.y]

    def gather(self, idx: torch.Tensor) -> tuple[dict, dict, torch.Tensor]:
        """Rows IDX of this fold part, standardized with the fold's statistics (masked steps 0), on the device."""
        rows = self.index.index_select(0, idx)
        valid = {m: self._move(v.index_select(0, rows)) for m, v in self.mask.items()}
        # Standardized after the move: on CUDA the arithmetic runs on the GPU, not the host.
        x = {m: torch.where(valid[m].unsqueeze(-1), (self._move(v.index_select(0, rows)) - self.mean[m]) / self.std[m],
                            0.0) for m, v in self.x.items()}
        return x, valid, self._move(self.y.index_select(0, idx))


@dataclass
class FoldPart:
    """One side of a fold: pool row indices and their labels (what the loss's class weights need)."""

    index: np.ndarray
    y: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)


@dataclass
class FoldData:
    """One fold as the training loop sees a data set: `splits`, `stats`, `info`, `modalities`, `batches()`."""

    pool: PoolTensors
    splits: dict[str, FoldPart]
    stats: dict[str, dict[str, list[float]]]
    info: dict[str, Any]
    modalities: dict[str, tuple[int, int]]

    def batches(self, name: str, device: torch.device) -> FoldBatches:
        """Split NAME ('train' or 'val') of this fold on DEVICE."""
        part = self.splits[name]
        return FoldBatches(self.pool, part.index, self.stats, device)


@dataclass
class CVData:
    """The pool (train.npz + val.npz, raw, held once) and its K folds."""

    pool: Split
    fold_of: np.ndarray  # (N,) fold id of each row
    k: int
    info: dict[str, Any] = field(default_factory=dict)
    tensors: PoolTensors = field(init=False)

    def __post_init__(self) -> None:
        self.tensors = PoolTensors.of(self.pool)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (e.g. into Ray's object store) without the tensors: they are views, rebuilt on arrival
        # over the received arrays, so the pool travels and lives once.
        return {k: v for k, v in self.__dict__.items() if k != "tensors"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tensors = PoolTensors.of(self.pool)

    @property
    def modalities(self) -> dict[str, tuple[int, int]]:
        return {k: (v.shape[1], v.shape[2]) for k, v in self.pool.x.items()}

    @property
    def nbytes(self) -> int:
        """Bytes held by the pool's arrays (the folds add only indices)."""
        p = self.pool
        return sum(a.nbytes for a in [*p.x.values(), *p.mask.values(), p.y])

    @property
    def scored(self) -> tuple[np.ndarray, str]:
        """The labels that score a config: every pool row, once, in its own fold."""
        return self.pool.y, f"{self.k}-fold CV of {self.info['pool']}"

    @property
    def train_rows(self) -> int:
        """Rows one fold model trains on (fold 1's training part)."""
        return int((self.fold_of != 0).sum())

    @property
    def test(self) -> None:
        """No test split: the folds estimate a config; its recipe makes the model to test."""
        return None

    def fold(self, i: int) -> FoldData:
        """Fold I: trains on the other folds' rows, validates on its own; statistics from its training part."""
        parts = {}
        for name, rows in (("train", self.fold_of != i), ("val", self.fold_of == i)):
            index = np.nonzero(rows)[0]
            g = None if self.pool.groups is None else self.pool.groups[index]
            parts[name] = FoldPart(index, self.pool.y[index], g)
        stats = feature_stats(self.pool.take(parts["train"].index))  # a transient copy, freed at once
        info = {**self.info, "val": {"cv": self.k, "fold": i + 1, "seed": self.info.get("seed"),
                                     "n_train": len(parts["train"]), "n_val": len(parts["val"])}}
        return FoldData(self.tensors, parts, stats, info, self.modalities)


def load_cv(root: str | Path, k: int, split_seed: int = 0) -> CVData:
    """The K-fold view of the data set at ROOT: train.npz (+ val.npz) pooled; test.npz is not opened."""
    root = Path(root)
    splits = read_splits(root, ("train", "val"))
    pool = pool_of(root, splits)
    where = f"{root / 'train.npz'}" + (" + val.npz" if "val" in splits else "")
    fold_of = assign_folds(pool.y, pool.groups, k, split_seed, where)
    info = {"source": str(root.resolve()), "pool": "train.npz + val.npz" if "val" in splits else "train.npz",
            "seed": split_seed, "by_groups": pool.groups is not None, "n_pool": len(pool)}
    return CVData(pool, fold_of, k, info)
