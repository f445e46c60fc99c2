"""The plan's estimate of a whole sweep (search and finalize) before its first trial: a few configs of the space
timed for a few optimizer steps on one trial's CPUs (`model.probe`), times the trial-epochs each part trains.

The search's cost is the mean over the probed configs (the start points, then random draws: a searcher that favours
larger models takes longer); finalize's is at most every run of the top configs at that mean and of the defaults at
theirs (reusing the sweep's runs and racing train fewer). Torch is imported only when a probe runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mmtune.model.config import ConfigError, TrainConfig, steps_per_epoch
from mmtune.tune import defaults
from mmtune.tune.budget import expected_epochs, words
from mmtune.tune.job import finalize_runs
from mmtune.tune.space import Param, SearchSpace

if TYPE_CHECKING:
    from mmtune.tune.job import Job
    from mmtune.tune.resources import Plan

PROBES = 4  # configs the plan's estimate probes: the start points, then random ones from the space


def flow_estimate(job: Job, plan: Plan) -> str:
    """The plan's estimate of the whole flow (search and finalize) from probes, on one trial's CPUs, of a few configs
    of the space (the start points, then random ones: the search's mean cost) and of the defaults; or why there is
    none."""
    from mmtune.model.probe import probe  # late: torch

    space, rows, threads = job.space, job.data.train_rows, max(1, int(plan.cpus_per_trial))
    if plan.gpus_per_trial:
        return "estimate: none (trials train on GPUs; the driver probes on CPU)"

    def epoch_s(cfg: TrainConfig) -> float:
        step_s, eval_s = probe(replace(cfg, device="cpu"), job.data, threads)
        return job.validation.k * (steps_per_epoch(cfg, rows) * step_s + eval_s)

    sample = probe_configs(space, PROBES)
    if not sample:
        return "estimate: none (no valid config drawn from the space)"
    costs = [epoch_s(cfg) for cfg in sample]
    mean = sum(costs) / len(costs)
    contend = defaults.why_not(space) is None
    dflt = space.train_config(defaults.point(space)) if contend else None
    dflt_s = (costs[0] if sample[0] == dflt else epoch_s(dflt)) if dflt is not None else 0.0
    runs = finalize_runs(space, job.opts.finalize_top_k, job.opts.finalize_seeds)
    dflt_runs = job.opts.finalize_seeds if contend and runs else 0
    search = space.num_samples * expected_epochs(space.rungs, space.reduction_factor, space.epochs)
    est = estimate_flow(mean, dflt_s, search, ((runs - dflt_runs) * space.epochs, dflt_runs * space.epochs),
                        plan.concurrent, f"{len(sample)} configs of the space ({min(costs):.1f}-{max(costs):.1f} s, "
                        f"mean {mean:.1f} s per trial-epoch on {threads} CPU)"
                        + (f" and the defaults ({dflt_s:.1f} s)" if dflt is not None else "")
                        + "; the searcher may favour larger or smaller models than these")
    return est.describe()


def probe_configs(space: SearchSpace, n: int) -> list[TrainConfig]:
    """N configs of SPACE to time: its start points first, then random draws (seeded by the space), valid ones."""
    rng = np.random.default_rng(space.seed)
    out: list[TrainConfig] = []
    points = iter(defaults.start_points(space))
    for _ in range(4 * n):  # a draw can be invalid (e.g. nhead not dividing d_model): a few more tries
        if len(out) == n:
            break
        point = next(points, None) or {p.name: _draw(p, rng) for p in space.params}
        try:
            out.append(space.train_config(point))
        except ConfigError:
            continue
    return out


def _draw(p: Param, rng: np.random.Generator) -> Any:
    if p.kind == "categorical":
        return p.choices[int(rng.integers(len(p.choices)))]
    lo, hi = (math.log(p.low), math.log(p.high)) if p.log else (p.low, p.high)
    v = float(rng.uniform(lo, hi))
    v = math.exp(v) if p.log else v
    return int(round(v)) if p.kind == "int" else v


@dataclass(frozen=True)
class FlowEstimate:
    """The whole flow's expected duration from probes: one trial-epoch of a typical config (and of the defaults),
    times the trial-epochs the search and finalize train, over the trials that run at once."""

    search: float  # seconds: the search's expected trial-epochs under ASHA
    finalize: float  # seconds at most: every finalize run trained (reuse and racing train fewer)
    probed: str  # what was probed and what it measured, in words

    def describe(self) -> str:
        """The plan's line."""
        fin = f", finalize <= {words(self.finalize)}" if self.finalize else ""
        return (f"estimate: about {words(self.search + self.finalize)} (search ~{words(self.search)}{fin}), from "
                f"probes of {self.probed}")


def estimate_flow(epoch_s: float, defaults_epoch_s: float, search_epochs: float, finalize_epochs: tuple[int, int],
                  concurrent: int, probed: str) -> FlowEstimate:
    """The flow's duration: EPOCH_S seconds per trial-epoch of a typical config (DEFAULTS_EPOCH_S of the defaults),
    SEARCH_EPOCHS trial-epochs in the search, FINALIZE_EPOCHS (of the top configs, of the defaults) in finalize,
    CONCURRENT trials at once."""
    top, dflt = finalize_epochs
    at_once = max(1, concurrent)
    return FlowEstimate(search_epochs * epoch_s / at_once, (top * epoch_s + dflt * defaults_epoch_s) / at_once,
                        probed)
