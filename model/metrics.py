"""Metric names (defined once) and their computation."""
from __future__ import annotations

import math
from typing import Any, Mapping

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


def tie_breaker(metric: str) -> str:
    """The continuous second key that orders epochs and trials tied on METRIC: the loss, or AP when METRIC is a
    loss. F1 on a small val split takes few distinct values (it saturates at 1.0); the loss almost never ties."""
    split, key = metric.split("/", 1) if "/" in metric else ("val", metric)
    return metric_name(split, "ap" if key == "loss" else "loss")


def rank_key(record: Mapping[str, Any], metric: str) -> tuple[float, float]:
    """How RECORD (an epoch's metrics) ranks under METRIC, smaller is better: the metric, then its tie-breaker;
    a missing or non-finite value ranks last. The one ordering of epochs, trials and finalized configs."""
    return _signed(record.get(metric), metric), _signed(record.get(tie_breaker(metric)), tie_breaker(metric))


def is_finite(value: Any) -> bool:
    """A real finite number: not a bool, None, NaN or infinity (how results and records are checked)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _signed(value: Any, name: str) -> float:
    if not is_finite(value):
        return math.inf
    return -float(value) if mode_of(name) == "max" else float(value)


def is_better(record: Mapping[str, Any], best: Mapping[str, Any] | None, metric: str) -> bool:
    """True when RECORD improves on BEST (None or {}: nothing yet) under METRIC; ties on METRIC go to the
    tie-breaker, never to the earlier epoch or trial. A non-finite METRIC never improves."""
    key = rank_key(record, metric)
    return math.isfinite(key[0]) and key < rank_key(best or {}, metric)


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
