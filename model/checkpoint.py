"""Checkpoint files: written atomically, read with weights_only=True."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mmtune.data.io import atomic_file

FORMAT = 2  # bump when the layout of a checkpoint changes


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write STATE to PATH atomically: a crash leaves the old file or the new one, never half of one."""
    import torch  # late: the CLI imports CheckpointError without needing torch

    with atomic_file(path, "wb", durable=True) as f:
        torch.save(state, f)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely (no arbitrary pickles); errors name the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or unsafe files all end here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable or unsafe checkpoint ({first[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mmtune checkpoint (format {FORMAT} expected)")
    return state


def with_folds(common: dict[str, Any], folds: list[dict[str, Any]]) -> dict[str, Any]:
    """A checkpoint of a run's COMMON bookkeeping and its FOLDS' states: one fold's state at the top level (a
    single model, as `mmtune evaluate` and a pretrained encoder read it), K folds' under 'folds'."""
    return {**common, **folds[0]} if len(folds) == 1 else {**common, "cv": len(folds), "folds": folds}


def fold_models(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Each fold of a checkpoint as a single-model checkpoint of its own (the checkpoint itself for one model)."""
    common = {k: v for k, v in state.items() if k not in ("cv", "folds")}
    return [{**common, **fold} for fold in state["folds"]] if "folds" in state else [state]


def single_model(state: dict[str, Any], source: str) -> dict[str, Any]:
    """STATE, if it holds one model to use; a K-fold checkpoint is an estimate of a config, not a model."""
    if "folds" in state:  # the layout `with_folds` writes for K models
        raise CheckpointError(f"{source}: a {state['cv']}-fold CV checkpoint (K models, an estimate); train the "
                              "config with cv: 0 (e.g. its best_config.yaml recipe) to get one model to evaluate")
    return state
