"""Stop when converged: end the search once the best config cannot improve by more than the metric's noise.

The rule is Makarova et al., "Automatic Termination for Hyperparameter Optimization" (AutoML 2022;
arXiv:2104.08166), which Optuna's `optuna.terminator` implemented (deprecated in Optuna 5, removed in 6; not used
here). A Gaussian process is fitted to the full-budget trials (parameters encoded to [0, 1], on a log scale where
the space says log, categoricals one-hot; the best-epoch value the sweep ranks by as the target). Its upper
confidence bound over the space, less its best lower confidence bound at an evaluated trial, bounds how much any
config could still beat the best evaluated one:

    regret bound = max_x UCB(x) - max_i LCB(x_i),   UCB/LCB = mu +/- sqrt(beta) * sigma

with sigma the GP's uncertainty about the function (the fitted observation noise left out), x over the evaluated
trials and CANDIDATES random points of the space, and beta = 2 log(d n^2 pi^2 / (6 delta)) / 5 (d parameters, n
trials, delta 0.1: GP-UCB's beta of Srinivas et al. scaled down by 5, as the paper and Optuna do). Once the bound is
below the metric's statistical error the search cannot tell a better config from noise, so it stops. The error is
the sweep's own (`tune.noise.results_sd`): the median fold sd at the trials' best epochs under CV (the paper
uses the variance of the CV mean, about the fold sd / sqrt(K), so this stops earlier), else the binomial sd of
the best value on the val split's rarer class.

Guards: never before `min_trials(num_samples)` trials have ended, never with fewer than MIN_FULL full-budget
trials, never while the noise is unknown. Cost: the GP sees MAX_FIT full-budget trials at most, and a long
sweep decides again only once its ended trials grew by 5 % (`due`). Pure: numpy, and scikit-learn imported when a
bound is computed; no Ray, no Optuna. The light commands (status, export, report) do not import this module.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from mmtune.tune.space import Param

MIN_TRIALS = 8  # ended trials before the rule may stop a sweep (or a third of num_samples, if more)
MIN_FULL = 3  # full-budget trials the GP needs at least
CANDIDATES = 300  # random points of the space at which the UCB is evaluated (besides the trials)
MAX_FIT = 100  # the GP sees at most this many full-budget trials, spread over the ranking (its cost grows as n^3)
DELTA = 0.1  # GP-UCB's confidence parameter


def min_trials(num_samples: int) -> int:
    """Ended trials before the rule may stop a sweep of NUM_SAMPLES trials: max(8, num_samples // 3)."""
    return max(MIN_TRIALS, num_samples // 3)


def due(ended: int, checked: int) -> bool:
    """Whether to decide again with ENDED trials when the last decision saw CHECKED (-1: none yet): after every
    ended trial up to 40, then once the count grew by 5 % (a GP fit per trial would make a long sweep's driver
    slow)."""
    return ended - checked >= max(1, checked // 20)


@dataclass(frozen=True)
class Decision:
    """Whether to stop, and why in one line."""

    stop: bool
    reason: str
    ended: int  # trials ended (any final state)
    full: int  # of them with a full-budget value (the GP's data)
    bound: float | None = None  # the regret bound, in the metric's units
    sd: float | None = None  # the metric's noise (sd of one evaluation)
    source: str = ""  # where the sd comes from

    def record(self) -> dict[str, Any]:
        """What the experiment records (mmtune.json "converged")."""
        return asdict(self)


def encode(params: dict[str, Any], dims: Sequence[Param]) -> np.ndarray:
    """PARAMS as a point of the unit cube: numeric parameters scaled to [0, 1] (log scale where the space says log),
    categoricals one-hot (a value not among the choices: all zeros)."""
    out: list[float] = []
    for p in dims:
        v = params.get(p.name)
        if p.kind == "categorical":
            out += [float(v == c) for c in p.choices]
        elif v is None:
            out.append(0.5)
        else:
            lo, hi, x = (math.log(p.low), math.log(p.high), math.log(float(v))) if p.log else (p.low, p.high, float(v))
            out.append(min(max((x - lo) / (hi - lo), 0.0), 1.0))
    return np.asarray(out, dtype=float)


def random_points(dims: Sequence[Param], n: int, rng: np.random.Generator) -> np.ndarray:
    """N encoded points drawn uniformly from the space (log-uniform where log; ints and choices as the sampler
    draws them)."""
    cols = []
    for p in dims:
        if p.kind == "categorical":
            cols.append(np.eye(len(p.choices))[rng.integers(len(p.choices), size=n)])
            continue
        u = rng.random(n)
        if p.kind == "int":  # a whole value on its grid, then encoded
            step = p.step or 1
            count = int((p.high - p.low) // step) + 1
            values = p.low + step * rng.integers(count, size=n)
            u = (np.log(values) - math.log(p.low)) / (math.log(p.high) - math.log(p.low)) if p.log else \
                (values - p.low) / (p.high - p.low)
        cols.append(np.asarray(u, dtype=float)[:, None])
    return np.hstack(cols) if cols else np.zeros((n, 0))


def beta(n_params: int, n_trials: int, delta: float = DELTA) -> float:
    """GP-UCB's beta as Makarova et al. and Optuna's terminator use it: 2 log(d n^2 pi^2 / (6 delta)) / 5."""
    return 2 * math.log(max(n_params, 1) * max(n_trials, 1) ** 2 * math.pi ** 2 / (6 * delta)) / 5


def regret_bound(points: Sequence[tuple[dict[str, Any], float]], dims: Sequence[Param], *, maximize: bool = True,
                 noise_sd: float | None = None, candidates: int = CANDIDATES, seed: int = 0) -> float:
    """The regret bound of the best of POINTS ((params, value) of the full-budget trials) in the metric's units:
    max over the trials and CANDIDATES random points of the GP's UCB, less the best LCB at a trial.

    NOISE_SD, the metric's measured noise, caps the GP's observation noise: fitted freely, a GP on a handful of
    trials in ten dimensions likes to call all their spread noise, a flat function, and the bound collapses."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    if not points:
        raise ValueError("regret_bound needs at least one evaluated point")
    x = np.vstack([encode(p, dims) for p, _ in points])
    y = np.asarray([v for _, v in points], dtype=float) * (1 if maximize else -1)
    # normalize_y divides the targets by their sd (1 when they are all equal), so the noise is in those units.
    scale = float(np.std(y)) if np.std(y) >= 10 * np.finfo(float).eps else 1.0
    most = 1.0 if noise_sd is None else max((noise_sd / scale) ** 2, 2e-6)
    kernel = (ConstantKernel(1.0, (1e-2, 1e2))
              * Matern(length_scale=np.full(x.shape[1], 0.5), length_scale_bounds=(1e-2, 1e2), nu=2.5)
              + WhiteKernel(min(1e-2, most / 2), (1e-6, most)))
    gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed)
    # One BLAS thread: the matrices are tiny, and threads contending with the trials made a fit 10x slower.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # hyperparameters at their bounds: small n, many dims
        gp.fit(x, y)
    rng = np.random.default_rng(seed)
    cand = np.vstack([x, random_points(dims, candidates, rng)])
    with threadpool_limits(1):
        mu, sd = gp.predict(cand, return_std=True)
    # predict's sd includes the fitted observation noise (WhiteKernel's diagonal, in normalized units): the bound is
    # about the function, so that part is taken out.
    noise_var = float(gp.kernel_.k2.noise_level) * scale ** 2
    sigma = np.sqrt(np.clip(sd ** 2 - noise_var, 0.0, None))
    root_beta = math.sqrt(beta(len(dims), len(points)))
    ucb = mu + root_beta * sigma
    lcb = mu[:len(points)] - root_beta * sigma[:len(points)]
    return float(max(ucb.max() - lcb.max(), 0.0))


def should_stop(points: Sequence[tuple[dict[str, Any], float]], dims: Sequence[Param], *, ended: int,
                num_samples: int, sd: float | None, source: str, metric: str, maximize: bool = True,
                seed: int = 0, candidates: int = CANDIDATES) -> Decision:
    """Stop once the regret bound of POINTS (the full-budget trials' (params, value)) is below SD, the metric's noise
    (SOURCE says where it comes from), and ENDED trials (any final state) reached `min_trials(NUM_SAMPLES)`."""
    base = dict(ended=ended, full=len(points), sd=sd, source=source)
    if sd is None or not math.isfinite(sd):
        return Decision(False, f"the noise of {metric} is unknown ({source})", **base)
    if ended < min_trials(num_samples):
        return Decision(False, f"{ended} of the {min_trials(num_samples)} ended trials the rule waits for", **base)
    if len(points) < MIN_FULL:
        return Decision(False, f"{len(points)} full-budget trial(s), fewer than the {MIN_FULL} the GP needs", **base)
    if len(points) > MAX_FIT:
        # Evenly over the ranking, the best first: the top ones alone would look flat, hiding the trends (on a
        # 2000-trial sweep the best 100 of 666 gave a bound of 0.014, all 666 one of 0.19).
        ranked = sorted(points, key=lambda pv: pv[1], reverse=maximize)
        points = [ranked[round(i * (len(ranked) - 1) / (MAX_FIT - 1))] for i in range(MAX_FIT)]
    bound = regret_bound(points, dims, maximize=maximize, noise_sd=sd, candidates=candidates, seed=seed)
    if bound < sd:
        return Decision(True, f"converged after {ended} trials: the best config can improve {metric} by at most "
                              f"{bound:.4f} (regret bound over {len(points)} full-budget trials), less than its noise "
                              f"sd {sd:.4f} ({source})", bound=bound, **base)
    return Decision(False, f"regret bound {bound:.4f} >= noise sd {sd:.4f} after {ended} trials", bound=bound, **base)
