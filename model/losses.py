"""Binary classification losses: BCE, focal, class weights."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def class_weights(y: np.ndarray) -> tuple[float, float]:
    """Inverse-frequency weights (w0, w1) that average to 1 over the train labels."""
    counts = np.bincount(y.astype(np.int64), minlength=2).astype(np.float64)
    w = len(y) / (2.0 * np.maximum(counts, 1.0))
    return float(w[0]), float(w[1])


class FocalLoss(nn.Module):
    """Focal loss on logits (Lin et al. 2017); gamma=0 and alpha<0 is plain BCE."""

    def __init__(self, gamma: float = 2.0, alpha: float = -1.0, weights: tuple[float, float] | None = None):
        super().__init__()
        self.gamma, self.alpha = gamma, alpha
        self.register_buffer("weights", torch.tensor(weights or (1.0, 1.0), dtype=torch.float32))

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch; also returns 0-d tensor for empty input."""
        return self.per_sample(logits, y).mean()

    def per_sample(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss of each sample, shape (B,)."""
        logits, y = logits.float(), y.float()
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        if self.gamma > 0:
            p_t = torch.exp(-loss)  # probability given to the true class
            loss = loss * (1 - p_t).pow(self.gamma)
        if self.alpha >= 0:
            loss = loss * (self.alpha * y + (1 - self.alpha) * (1 - y))
        return loss * self.weights[y.long()]


def build_loss(use_focal: bool, gamma: float, alpha: float, weights: tuple[float, float] | None) -> FocalLoss:
    """BCE (use_focal False) or focal loss, optionally class-weighted."""
    return FocalLoss(gamma if use_focal else 0.0, alpha if use_focal else -1.0, weights)
