"""Can the sweep tell its trials apart? Ties, a metric at its ceiling, a small val split, noise against gaps.

A small, imbalanced val split gives a metric few distinct values and a large spread: many trials tie at F1 = 1.0
and the "best" is whichever tie sorted first. These checks say so at the end of a sweep (summary.json, the
console, the report), each with its remedy. Pure functions over an `Experiment`: no Ray, no torch.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from mmtune.model.metrics import is_finite, mode_of, tie_breaker
from mmtune.tune.experiment import Experiment

MIN_RARE = 30  # fewer val samples of the rarer class than this: one sample moves F1 by several points
CEILINGS = {"f1": 1.0, "f1_best": 1.0, "acc": 1.0, "auroc": 1.0, "ap": 1.0, "precision": 1.0, "recall": 1.0}
TOP = 5  # gaps shown between the best trial and the next ones


@dataclass(frozen=True)
class Noise:
    """The metric's spread (sd of one evaluation), where it comes from, and the gaps between the top trials."""

    sd: float | None
    source: str  # "finalize seeds", "CV folds", "binomial approximation" or why there is none
    gaps: list[float]  # |best - k-th| for the next trials, best first

    @property
    def text(self) -> str:
        """One line for the report's header: the noise next to the gaps."""
        gaps = ", ".join(f"{g:.4f}" for g in self.gaps) or "none (fewer than two ranked trials)"
        sd = f"sd ≈ {self.sd:.4f} ({self.source})" if self.sd is not None else f"unknown ({self.source})"
        return f"{sd}; gaps from the best to the next trials: {gaps}"


def validation_counts(meta: dict[str, Any]) -> tuple[int, int] | None:
    """(samples, rarer-class samples) of the split that scores trials, as recorded at the start; None if unknown.
    Under CV every pool sample is scored once across the folds, so the pool's counts are the ones that matter."""
    v = meta.get("validation") or {}
    if not isinstance(v.get("samples"), int) or not isinstance(v.get("positives"), int):
        return None
    return v["samples"], min(v["positives"], v["samples"] - v["positives"])


def noise(exp: Experiment) -> Noise:
    """The best available estimate of the metric's spread, and the gaps between the top trials."""
    ranked = exp.ranked
    gaps = [abs(ranked[0].best_value - t.best_value) for t in ranked[1:TOP + 1]] if ranked else []
    sd, source = _seed_sd(exp)
    if sd is None:
        sd, source = sweep_sd(exp)
    return Noise(sd, source, gaps)


def sweep_sd(exp: Experiment) -> tuple[float | None, str]:
    """The spread the sweep's own trials show, whatever a finalize found: the fold sd under CV, else binomial."""
    return results_sd([t.best_result or {} for t in exp.ranked], exp.meta, exp.space.metric)


def results_sd(best: list[dict[str, Any]], meta: dict[str, Any], metric: str) -> tuple[float | None, str]:
    """`sweep_sd` from the best-epoch results BEST of the ranked trials (best first) and the experiment's META: what
    the searcher computes during the sweep (tune.convergence) from the results it was told."""
    sd, source = _fold_sd(best, metric)
    if sd is None:
        sd, source = _binomial_sd(best[0].get(metric) if best else None, meta, metric)
    return sd, source


def _seed_sd(exp: Experiment) -> tuple[float | None, str]:
    """The median over finalized configs of their sd across seeds (`mmtune finalize` or finalize-by-default)."""
    configs = (exp.final or {}).get("configs", [])
    sds = [c["std"][exp.space.metric] for c in configs
           if c.get("n_seeds", 0) > 1 and is_finite(c.get("std", {}).get(exp.space.metric))]
    if not sds:
        return None, "no finalize run with several seeds"
    return statistics.median(sds), f"finalize: median sd over seeds of {len(sds)} config(s)"


def _fold_sd(best: list[dict[str, Any]], metric: str) -> tuple[float | None, str]:
    """The median over trials of the fold sd at the best epoch (BEST: their best-epoch results; CV trials report
    METRIC_sd)."""
    key = f"{metric}_sd"
    sds = [r[key] for r in best if is_finite(r.get(key))]
    if not sds:
        return None, "no fold sd reported"
    return statistics.median(sds), f"CV: median fold sd over {len(sds)} trial(s); the fold mean's sd is smaller"


def _binomial_sd(best: float | None, meta: dict[str, Any], metric: str) -> tuple[float | None, str]:
    """sqrt(v(1-v)/n) with v the BEST value and n the val split's rarer-class count: rough, but of the right size for
    F1 and recall."""
    counts = validation_counts(meta)
    key = metric.split("/")[-1]
    if counts is None or not is_finite(best) or key not in CEILINGS or counts[1] == 0:
        return None, "no finalize or CV spread to measure it, and no binomial estimate for this metric"
    v = min(max(float(best), 0.0), 1.0)
    sd = max(math.sqrt(v * (1 - v) / counts[1]), 1 / counts[1])  # at the ceiling, one sample is still 1/n
    return sd, f"binomial approximation on {counts[1]} val samples of the rarer class"


def saturation_warnings(exp: Experiment, est: Noise | None = None) -> list[str]:
    """Ties at the best value, the metric at its ceiling, a small val split, a runner-up inside the noise (EST:
    `noise(exp)`, when the caller has it already)."""
    ranked, metric = exp.ranked, exp.space.metric
    out = []
    if ranked:
        best = ranked[0].best_value
        tied = [t for t in ranked if t.best_value == best]
        ceiling = CEILINGS.get(metric.split("/")[-1]) if mode_of(metric) == "max" else None
        if ceiling is not None and best >= ceiling:
            out.append(f"{metric} reached its ceiling {ceiling:g} in {len(tied)} trial(s): the val split cannot rank "
                       f"configs this good. Rank by a continuous metric (metric: val/ap or val/loss), use "
                       "cross-validation (cv: auto or cv: 5), or a larger val split")
        if len(tied) > 1:
            out.append(f"{len(tied)} trials tie at the best {metric} = {best:.4f}; they were ordered by "
                       f"{tie_breaker(metric)}, not by {metric}. Finalize (the default) retrains the top configs "
                       "with several seeds; a continuous metric or cv: auto separates them during the search")
    counts = validation_counts(exp.meta)
    if counts is not None and counts[1] < MIN_RARE:
        out.append(f"the val split holds only {counts[1]} samples of its rarer class (of {counts[0]}): one sample "
                   f"moves {metric} by several points. Use cv: auto (K-fold when the rarer class is small), a "
                   "larger val.npz, or a larger val_fraction")
    n = est or noise(exp)
    if n.sd is not None and n.gaps and n.gaps[0] < n.sd:
        out.append(f"the runner-up is within the noise of the best ({metric} gap {n.gaps[0]:.4f} < sd "
                   f"{n.sd:.4f}, {n.source}): the sweep cannot tell them apart on this split")
    return out


def summary_entry(exp: Experiment) -> dict[str, Any]:
    """What summary.json records about noise: the estimate, the gaps, and the warnings."""
    est = noise(exp)
    return {"noise": asdict(est), "warnings": saturation_warnings(exp, est)}
