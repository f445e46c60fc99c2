"""Pack a folder of one-sample .npz files into contiguous split files."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mmtune.data.io import atomic_file
from mmtune.data.npz import SPLITS, DataError

log = logging.getLogger(__name__)


def pack(src: str | Path, out: str | Path) -> dict[str, int]:
    """Pack SRC (sample files, or train/ val/ test/ folders of them) into OUT/<split>.npz."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: no such folder of sample .npz files")
    folders = {s: src / s for s in SPLITS if (src / s).is_dir()} or {"train": src}
    samples = {}
    for split, folder in folders.items():
        files = sorted(folder.glob("*.npz"))
        if not files:
            raise DataError(f"{folder}: holds no .npz sample files")
        samples[split] = [_read_sample(f) for f in files]
    names = sorted({k[2:] for group in samples.values() for s in group for k in s if k.startswith("x_")})
    # One length per modality across splits: every split file must have the same steps.
    lengths = {m: max(s[f"x_{m}"].shape[0] for g in samples.values() for s in g if f"x_{m}" in s) for m in names}
    counts = {}
    for split, group in samples.items():
        arrays = _stack(group, folders[split], names, lengths)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(out / f"{split}.npz", "wb") as f:  # a half-written split never appears
            np.savez(f, **arrays)
        counts[split] = len(group)
        log.info("packed %d samples into %s", len(group), out / f"{split}.npz")
    return counts


def _read_sample(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            sample = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise DataError(f"{path}: not a readable .npz sample ({type(e).__name__}: {e})") from None
    sample["_path"] = path
    if "y" not in sample or np.ndim(sample["y"]) != 0:
        raise DataError(f"{path}: needs a scalar 'y' label")
    for k, v in list(sample.items()):
        if k.startswith("x_") and v.ndim != 2:
            raise DataError(f"{path}: key {k!r} must have shape (T, F), got {v.shape}")
        if k.startswith("mask_") and (f"x_{k[5:]}" not in sample or v.shape != sample[f"x_{k[5:]}"].shape[:1]):
            raise DataError(f"{path}: key {k!r} must have shape (T,) matching x_{k[5:]}")
    if not any(k.startswith("x_") for k in sample):
        raise DataError(f"{path}: no 'x_<name>' modality array")
    return sample


def _stack(samples: list[dict], folder: Path, names: list[str], lengths: dict[str, int]) -> dict[str, np.ndarray]:
    """Stack samples, padding each modality to LENGTHS with masked steps."""
    out: dict[str, np.ndarray] = {"y": np.array([s["y"] for s in samples], dtype=np.int64)}
    for m in names:
        lacking = [s["_path"].name for s in samples if f"x_{m}" not in s]
        if lacking:
            raise DataError(f"{folder / lacking[0]}: lacks key 'x_{m}' ({len(lacking)} samples do); "
                            "every sample needs the same modalities")
        widths = {s[f"x_{m}"].shape[1] for s in samples}
        if len(widths) > 1:
            raise DataError(f"{folder}: 'x_{m}' has different feature counts {sorted(widths)} across samples")
        x = np.zeros((len(samples), lengths[m], widths.pop()), np.float32)
        mask = np.zeros((len(samples), lengths[m]), bool)
        for i, s in enumerate(samples):
            t = s[f"x_{m}"].shape[0]
            x[i, :t] = s[f"x_{m}"]
            mask[i, :t] = s.get(f"mask_{m}", np.ones(t, bool))
        out[f"x_{m}"], out[f"mask_{m}"] = x, mask
    with_group = [("group" in s) for s in samples]
    if any(with_group) and not all(with_group):
        first = samples[with_group.index(False)]["_path"]
        raise DataError(f"{first}: lacks key 'group' while other samples have one; give every sample a group or none")
    if all(with_group):
        out["groups"] = np.array([s["group"] for s in samples], dtype=np.int64)
    return out
