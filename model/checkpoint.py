"""Checkpoint files: written atomically, read with weights_only=True."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from mmtune.data.io import atomic_file

FORMAT = 1  # bump when the layout of a checkpoint changes


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
