"""The npz data set: a folder of split files, validated, split and standardized."""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """A data set that cannot be used; the message names the file, the key and the fix."""


@dataclass
class Split:
    """One split held in memory: features and masks per modality, labels, optional groups."""

    x: dict[str, np.ndarray]  # name -> (N, T_m, F_m) float32
    mask: dict[str, np.ndarray]  # name -> (N, T_m) bool, True where a step is valid
    y: np.ndarray  # (N,) int64 in {0, 1}
    groups: np.ndarray | None = None  # (N,) int64 person / session id

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: np.ndarray) -> "Split":
        """The rows IDX of this split."""
        g = None if self.groups is None else self.groups[idx]
        return Split({k: v[idx] for k, v in self.x.items()}, {k: v[idx] for k, v in self.mask.items()},
                     self.y[idx], g)


@dataclass
class Dataset:
    """Train, val and optionally test splits, standardized with train statistics."""

    splits: dict[str, Split]
    stats: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # name -> mean/std per channel
    info: dict = field(default_factory=dict)  # provenance: source folder, how val was made

    @property
    def modalities(self) -> dict[str, tuple[int, int]]:
        """Name -> (steps, features) of each modality."""
        return {k: (v.shape[1], v.shape[2]) for k, v in self.splits["train"].x.items()}

    @property
    def nbytes(self) -> int:
        """Bytes held by all arrays."""
        return sum(a.nbytes for s in self.splits.values() for a in [*s.x.values(), *s.mask.values(), s.y])

    # A holdout is the one-fold case of `data.validation.TrainData`: these answer what a CV pool answers.
    k = 1

    def fold(self, i: int) -> "Dataset":
        """The only fold view of a holdout: the data set itself."""
        if i != 0:
            raise IndexError(f"a holdout split has one fold, not fold {i}")
        return self

    @property
    def scored(self) -> tuple[np.ndarray, str]:
        """The labels that score a config (the val split) and where they come from."""
        return self.splits["val"].y, str(self.info.get("val"))

    @property
    def train_rows(self) -> int:
        """Rows the model trains on."""
        return len(self.splits["train"])

    @property
    def test(self) -> "Dataset | None":
        """The data set itself when it has test.npz: a holdout run's model is tested on it."""
        return self if "test" in self.splits else None

    def batches(self, name: str, device: Any) -> Any:
        """Split NAME as `Batches` on DEVICE (a CV fold view answers the same call without copying)."""
        from mmtune.data.batches import Batches  # late: torch, which reading and checking data never needs

        return Batches(self.splits[name], device)


def read_split(path: Path) -> Split:
    """Read and validate one split file; raise DataError naming the file and key."""
    arrays = _read_arrays(path)
    if "y" not in arrays:
        raise DataError(f"{path}: missing key 'y' (labels, shape (N,), values 0/1)")
    y = _labels(path, arrays["y"])
    n = len(y)
    if n == 0:
        raise DataError(f"{path}: empty split (y has 0 rows); add samples or remove the file")
    names = sorted(k[2:] for k in arrays if k.startswith("x_"))
    if not names:
        raise DataError(f"{path}: no modality found; store each one as 'x_<name>' with shape (N, T, F)")
    unknown = set(arrays) - {"y", "groups"} - {f"x_{m}" for m in names} - {f"mask_{m}" for m in names}
    if unknown:
        raise DataError(f"{path}: unexpected keys {sorted(unknown)}; allowed: y, groups, x_<name>, mask_<name> "
                        "(a mask needs its x_<name>)")
    x = {m: _features(path, f"x_{m}", arrays[f"x_{m}"], n) for m in names}
    mask = {m: _mask(path, m, arrays.get(f"mask_{m}"), x[m].shape[:2]) for m in names}
    groups = _groups(path, arrays.get("groups"), n)
    return Split(x, mask, y, groups)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: a single .npy array, not an .npz archive; save the split with np.savez")
    if not magic.startswith(b"PK"):
        what = "an empty file" if not magic else "not an .npz (zip) archive"
        raise DataError(f"{path}: {what}; save the split with np.savez")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "allow_pickle" in str(e) or "Object arrays" in str(e):
            raise DataError(f"{path}: holds an object (pickled) array, refused for safety; "
                            "store plain numeric arrays") from None
        raise DataError(f"{path}: cannot be read as .npz ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz file ({type(e).__name__}: {e}); "
                        "re-save it with np.savez") from None


def _labels(path: Path, y: np.ndarray) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{path}: key 'y' must have shape (N,), got {y.shape}")
    if y.dtype.kind not in "biuf":
        raise DataError(f"{path}: key 'y' must be numeric 0/1 labels, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        values = np.unique(y[bad])[:5].tolist()
        raise DataError(f"{path}: key 'y' must hold only 0 and 1, found {values}; binarize the labels")
    return y.astype(np.int64)


def _features(path: Path, key: str, a: np.ndarray, n: int) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise DataError(f"{path}: key {key!r} must be a float array, got dtype {a.dtype}")
    if a.ndim != 3:
        raise DataError(f"{path}: key {key!r} must have shape (N, T, F), got ndim {a.ndim} {a.shape}")
    if a.shape[0] != n:
        raise DataError(f"{path}: key {key!r} has {a.shape[0]} rows but 'y' has {n}; every array needs N rows")
    if 0 in a.shape[1:]:
        raise DataError(f"{path}: key {key!r} has an empty axis {a.shape}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        rows = np.unique(np.nonzero(~np.isfinite(a))[0])[:5].tolist()
        raise DataError(f"{path}: key {key!r} holds NaN/Inf (rows {rows}...); "
                        "set those steps to 0 and mark them False in mask_<name>")
    return a


def _mask(path: Path, m: str, mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    key = f"mask_{m}"
    if mask.shape != shape:
        raise DataError(f"{path}: key {key!r} must have shape {shape} (N, T of x_{m}), got {mask.shape}")
    if mask.dtype != bool and not np.isin(mask, (0, 1)).all():
        raise DataError(f"{path}: key {key!r} must be boolean (True = valid step)")
    return mask.astype(bool, copy=False)


def _groups(path: Path, g: np.ndarray | None, n: int) -> np.ndarray | None:
    if g is None:
        return None
    if g.shape != (n,) or g.dtype.kind not in "iu":
        raise DataError(f"{path}: key 'groups' must be an integer array of shape ({n},), got {g.dtype} {g.shape}")
    return g.astype(np.int64)


def load_dataset(root: str | Path, val_fraction: float = 0.2, split_seed: int = 0,
                 stats: dict | None = None) -> Dataset:
    """Load, validate, split (when there is no val.npz) and standardize the data set at ROOT.

    STATS (e.g. from a checkpoint) replace the statistics computed from the train split. VAL_FRACTION 0 means
    no evaluation split: train.npz and val.npz together are the train split (a recipe's final training).
    """
    root = Path(root)
    splits = read_splits(root)
    info = {"source": str(root.resolve()), "val": "val.npz"}
    if val_fraction == 0:
        splits["train"], info["val"] = pool_of(root, splits), "none (val_fraction=0: train.npz + val.npz train)"
        splits.pop("val", None)
    elif "val" not in splits:
        splits["train"], splits["val"], info["val"] = split_train(splits["train"], val_fraction, split_seed)
    for name, s in splits.items():
        if name != "test" and len(np.unique(s.y)) < 2:
            where = (f"{root / 'train.npz'} (the val split made from it)" if name == "val" and "made_from" in
                     info["val"] else root / f"{name}.npz")
            raise DataError(f"{where}: key 'y' holds a single class ({int(s.y[0])}); "
                            "both classes are needed to train and evaluate")
    if stats is not None:
        _check_stats(root, splits["train"], stats)
    stats = feature_stats(splits["train"]) if stats is None else stats
    ds = Dataset({k: apply_stats(v, stats) for k, v in splits.items()}, stats, info)
    log.info("loaded %s: %s", root, {k: len(v) for k, v in ds.splits.items()})
    return ds


def read_splits(root: Path, names: tuple[str, ...] = SPLITS) -> dict[str, Split]:
    """The split files NAMES present at ROOT, read raw and checked against train.npz."""
    if not root.is_dir():
        raise DataError(f"{root}: no such data folder; it must hold train.npz (and optionally val.npz, test.npz)")
    splits = {s: read_split(root / f"{s}.npz") for s in names if (root / f"{s}.npz").exists()}
    if "train" not in splits:
        raise DataError(f"{root / 'train.npz'}: missing; a data set needs at least train.npz")
    _check_consistent(root, splits)
    return splits


def pool_of(root: Path, splits: dict[str, Split]) -> Split:
    """train.npz with val.npz appended (when present): the rows that folds or a recipe train on."""
    train, val = splits["train"], splits.get("val")
    if val is None:
        return train
    if (train.groups is None) != (val.groups is None):
        has, lacks = ("train.npz", "val.npz") if train.groups is not None else ("val.npz", "train.npz")
        raise DataError(f"{root / lacks}: key 'groups' is missing but {has} has it; train.npz and val.npz are "
                        "pooled here, so give both 'groups' (the same ids mean the same person) or neither")
    groups = None if train.groups is None else np.concatenate([train.groups, val.groups])
    return Split({m: np.concatenate([a, val.x[m]]) for m, a in train.x.items()},
                 {m: np.concatenate([a, val.mask[m]]) for m, a in train.mask.items()},
                 np.concatenate([train.y, val.y]), groups)


def _check_consistent(root: Path, splits: dict[str, Split]) -> None:
    ref = {m: a.shape[2] for m, a in splits["train"].x.items()}
    for name, s in splits.items():
        got = {m: a.shape[2] for m, a in s.x.items()}
        if set(got) != set(ref):
            missing = [f"x_{m}" for m in sorted(set(ref) - set(got))]
            extra = [f"x_{m}" for m in sorted(set(got) - set(ref))]
            raise DataError(f"{root / (name + '.npz')}: modalities differ from train.npz's (missing keys {missing}, "
                            f"extra keys {extra}); every split needs the same x_<name> keys")
        for m in ref:
            if got[m] != ref[m]:
                raise DataError(f"{root / (name + '.npz')}: key 'x_{m}' has {got[m]} features, train.npz has "
                                f"{ref[m]}")
            if s.x[m].shape[1] != splits["train"].x[m].shape[1]:
                raise DataError(f"{root / (name + '.npz')}: key 'x_{m}' has {s.x[m].shape[1]} steps, train.npz "
                                f"has {splits['train'].x[m].shape[1]}; pad to the same length and mask")


def _check_stats(root: Path, train: Split, stats: dict) -> None:
    """Statistics from a checkpoint must fit the data's modalities and channels."""
    if set(stats) != set(train.x):
        raise DataError(f"{root}: modalities {sorted(train.x)} differ from the checkpoint's {sorted(stats)}")
    for m, a in train.x.items():
        if len(stats[m]["mean"]) != a.shape[2]:
            raise DataError(f"{root}: key 'x_{m}' has {a.shape[2]} features, the checkpoint was trained on "
                            f"{len(stats[m]['mean'])}")


def split_train(train: Split, fraction: float, seed: int) -> tuple[Split, Split, dict]:
    """Hold out FRACTION of TRAIN, stratified by label, whole groups on one side."""
    rng = np.random.default_rng(seed)
    units = train.groups if train.groups is not None else np.arange(len(train))
    uniq, inv = np.unique(units, return_inverse=True)
    # A group joins the stratum of its majority label, so both classes reach val.
    positive = np.bincount(inv, weights=train.y) / np.bincount(inv) >= 0.5
    val_units: list[int] = []
    for stratum in (uniq[~positive], uniq[positive]):
        k = max(1, round(len(stratum) * fraction)) if len(stratum) > 1 else 0
        val_units += rng.permutation(stratum)[:k].tolist()
    is_val = np.isin(units, val_units)
    if is_val.all() or not is_val.any():
        raise DataError("train.npz: too few samples or groups to hold out a validation split; add val.npz")
    record = {"made_from": "train.npz", "fraction": fraction, "seed": seed,
              "by_groups": train.groups is not None, "n_val": int(is_val.sum())}
    return train.take(np.nonzero(~is_val)[0]), train.take(np.nonzero(is_val)[0]), record


def feature_stats(split: Split) -> dict[str, dict[str, list[float]]]:
    """Mean and std per modality and channel over valid steps only."""
    stats = {}
    for m, x in split.x.items():
        valid = x[split.mask[m]]  # (n_valid, F)
        if len(valid) == 0:
            raise DataError(f"train.npz: modality {m!r} has no valid step (mask_{m} all False)")
        std = valid.std(0)
        stats[m] = {"mean": valid.mean(0).tolist(), "std": np.where(std < 1e-6, 1.0, std).tolist()}
    return stats


def apply_stats(split: Split, stats: dict[str, dict[str, list[float]]]) -> Split:
    """SPLIT standardized with STATS; masked steps are set to 0."""
    if not stats:
        return split
    x = {}
    for m, a in split.x.items():
        mean = np.asarray(stats[m]["mean"], np.float32)
        std = np.asarray(stats[m]["std"], np.float32)
        x[m] = np.where(split.mask[m][..., None], (a - mean) / std, 0.0).astype(np.float32)
    return Split(x, split.mask, split.y, split.groups)


def summarize(ds: Dataset) -> dict:
    """Samples, positives, modalities and masked fraction per split."""
    out = {"modalities": {m: {"steps": t, "features": f} for m, (t, f) in ds.modalities.items()},
           "val_split": ds.info.get("val"), "splits": {}}
    for name, s in ds.splits.items():
        out["splits"][name] = {
            "samples": len(s), "positives": int(s.y.sum()), "positive_rate": round(float(s.y.mean()), 4),
            "groups": None if s.groups is None else int(len(np.unique(s.groups))),
            "masked_fraction": {m: round(float(1 - v.mean()), 4) for m, v in s.mask.items()},
        }
    return out
