"""Batches drawn by index from tensors held in memory (no per-sample Dataset loop)."""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

if TYPE_CHECKING:
    from mmtune.data.npz import Split


def as_tensor(a: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor of A; arrays from Ray's object store are read-only and never written here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(a)


class Batches:
    """One split as tensors, gathered per batch and moved to DEVICE (pinned, non-blocking on CUDA)."""

    def __init__(self, split: Split, device: torch.device):
        self.x = {m: as_tensor(a) for m, a in split.x.items()}
        self.mask = {m: as_tensor(a) for m, a in split.mask.items()}
        self.y = as_tensor(split.y)
        self.device = device
        counts = torch.bincount(self.y, minlength=2).clamp(min=1).double()
        self.balance = (1.0 / counts)[self.y]  # per-sample weight for class-balanced draws

    def __len__(self) -> int:
        return len(self.y)

    def gather(self, idx: torch.Tensor) -> tuple[dict, dict, torch.Tensor]:
        """Features, masks and labels of rows IDX on the device."""
        move = self._move
        return ({m: move(v.index_select(0, idx)) for m, v in self.x.items()},
                {m: move(v.index_select(0, idx)) for m, v in self.mask.items()},
                move(self.y.index_select(0, idx)))

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)

    def train_indices(self, steps: int, batch_size: int, balanced: bool, gen: torch.Generator) -> torch.Tensor:
        """(steps, batch_size) row indices: class-balanced draws, or shuffled passes."""
        total = steps * batch_size
        if balanced:
            idx = torch.multinomial(self.balance, total, replacement=True, generator=gen)
        else:
            passes = math.ceil(total / len(self))
            idx = torch.cat([torch.randperm(len(self), generator=gen) for _ in range(passes)])[:total]
        return idx.view(steps, batch_size)

    def in_order(self, batch_size: int) -> Iterator[tuple[dict, dict, torch.Tensor]]:
        """Every row once, in order (evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.gather(torch.arange(start, min(start + batch_size, len(self))))
