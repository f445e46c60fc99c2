"""Metric names (defined once) and their computation."""
from __future__ import annotations

import numpy as np

# Every per-split metric the loop reports, as "<split>/<key>".
CLASSIFICATION_KEYS = ("loss", "acc", "precision", "recall", "f1", "f1_best", "threshold", "auroc", "ap")
PRETRAIN_KEYS = ("loss",)
MAXIMIZE = {"acc", "precision", "recall", "f1", "f1_best", "auroc", "ap"}


def metric_name(split: str, key: str) -> str:
    """The one spelling of a metric: 'val/f1'."""
    return f"{split}/{key}"


def mode_of(name: str) -> str:
    """'max' or 'min' for a metric name such as 'val/loss'."""
    return "max" if name.split("/")[-1] in MAXIMIZE else "min"


def worst_value(name: str) -> float:
    """The value a failed or diverged run reports for NAME, worse than any real one."""
    return 0.0 if mode_of(name) == "max" else float("inf")


def is_better(value: float, best: float | None, mode: str) -> bool:
    """True when VALUE improves on BEST (None: nothing yet)."""
    if best is None or not np.isfinite(best):
        return bool(np.isfinite(value))
    return bool(value > best if mode == "max" else value < best)


def classification_metrics(y: np.ndarray, prob: np.ndarray, loss: float) -> dict[str, float]:
    """Loss, accuracy, precision, recall, F1 at 0.5 and at the best threshold, AUROC, AP."""
    y = y.astype(np.int64)
    pred = prob >= 0.5
    tp = float(np.sum(pred & (y == 1)))
    precision = tp / max(pred.sum(), 1)
    recall = tp / max((y == 1).sum(), 1)
    both = len(np.unique(y)) == 2
    f1_best, threshold = _best_f1(y, prob) if both else (float("nan"), 0.5)
    from sklearn import metrics as skm  # late: ~0.9 s, and reading an experiment needs only the names above

    metrics = {
        "loss": float(loss),
        "acc": float(np.mean(pred == y)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "f1_best": f1_best,
        "threshold": threshold,
        "auroc": float(skm.roc_auc_score(y, prob)) if both else float("nan"),
        "ap": float(skm.average_precision_score(y, prob)) if both else float("nan"),
    }
    return {k: float(v) for k, v in metrics.items()}  # plain floats: JSON and weights_only-safe


def _best_f1(y: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """Highest F1 over thresholds, and that threshold."""
    from sklearn import metrics as skm

    p, r, t = skm.precision_recall_curve(y, prob)
    f1 = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
    i = int(np.argmax(f1))
    return float(f1[i]), float(t[i])
