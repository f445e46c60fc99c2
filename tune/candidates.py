"""Finalize's candidates, pure: the top-k distinct configs of a sweep, the seeds they are retrained with, and each
retraining run attached to its candidate. No Ray, no torch: what a run's checkpoint tells comes in as a function.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

from mmtune.model.config import TrainConfig
from mmtune.model.metrics import CLASSIFICATION_KEYS, metric_name
from mmtune.model.status import TrialStatus
from mmtune.tune import defaults
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import Trial, rank_trials
from mmtune.tune.selection import Candidate, aggregate
from mmtune.tune.space import SearchSpace

log = logging.getLogger(__name__)

RESEEDED = ("seed", "split_seed")  # what finalize sets per run, on top of a candidate's params
CUT = (TrialStatus.STOPPED, TrialStatus.PRUNED)  # a finalize run Tune stopped early: only the time budget does
SPLITS = ("val", "test")


def select_top(trials: list[Trial], space: SearchSpace, k: int) -> list[Candidate]:
    """The K best trials by the one ranking (failed, diverged, infeasible and empty ones skipped), distinct configs."""
    usable = rank_trials(trials)
    if not usable:
        raise ResultsError(f"no trial of the experiment has a finite {space.metric}; nothing to finalize")
    cands: list[Candidate] = []
    for pos, t in enumerate(usable, start=1):
        cfg = space.train_config(t.params)
        # Retraining the same config twice (e.g. a repeated start point) would only waste the budget.
        if len(cands) < k and all(c.cfg != cfg for c in cands):
            cands.append(Candidate(len(cands), pos, t, cfg))
    if len(cands) < k:
        log.warning("--top-k %d: only %d distinct usable config(s) in the sweep; finalizing those", k, len(cands))
    return cands


def with_defaults(cands: list[Candidate], trials: list[Trial], space: SearchSpace) -> list[Candidate]:
    """CANDS with the defaults among them (tune.defaults): a top config that is the defaults is marked so; else the
    defaults join as one more candidate, with their sweep trial when the sweep trained them (a first start point)
    and as a config to train when it did not."""
    if defaults.why_not(space) is not None:
        return cands
    for c in cands:
        if defaults.is_defaults(space, c.trial.params):
            c.defaults = True
            return cands
    usable = rank_trials(trials)
    trial = next((t for t in trials if defaults.is_defaults(space, t.params)), None)
    if trial is None:
        trial = Trial(defaults.DEFAULTS_ID, Path(), defaults.point(space), [], TrialStatus.UNFINISHED, space.metric)
    rank = next((i for i, t in enumerate(usable, start=1) if t is trial), None)
    return [*cands, Candidate(len(cands), rank, trial, space.train_config(trial.params), defaults=True)]


def seeds_for(space: SearchSpace, n: int) -> list[tuple[int, int]]:
    """N (training seed, split seed) pairs counting up from the sweep's own, so the first repeats the sweep's run;
    the split seed moves with the seed, so the runs also differ in their holdout split or CV folds."""
    seed = int(space.fixed.get("seed", TrainConfig.seed))
    return [(seed + i, space.split_seed + i) for i in range(n)]


def reused(cands: list[Candidate], first: tuple[int, int]) -> list[Candidate]:
    """The candidates whose sweep trial is already their FIRST seed pair's finalize run: it trained its whole budget
    (or stopped on its patience, as finalize would) with that training and split seed, so a retrain would repeat
    it number for number. Pruned trials stopped short of the budget and are retrained."""
    full = (TrialStatus.COMPLETED, TrialStatus.EARLY_STOPPED)
    return [c for c in cands if c.trial.status in full and (c.cfg.seed, c.cfg.split_seed) == first]


def grid(cands: list[Candidate], pairs: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """The finalize run's points: every candidate's params with every seed pair, but the runs the sweep has."""
    have = {c.rank for c in reused(cands, pairs[0])}
    return [{**c.trial.params, "seed": s, "split_seed": sp} for c in cands for s, sp in pairs
            if not (c.rank in have and (s, sp) == pairs[0])]


def candidate_of(run: Trial, cands: list[Candidate]) -> Candidate:
    """The candidate whose config the finalize RUN (or sweep trial) trained: its params but for the seeds."""
    return next(c for c in cands if all(run.params.get(k) == v for k, v in c.trial.params.items()
                                        if k not in RESEEDED))


def attach(runs: list[Trial], cands: list[Candidate], checkpoint_facts: Callable[[Trial], dict[str, Any]]) -> None:
    """Attach every finalize run (and sweep trial taken as one) to its candidate: the val metrics its best epoch
    reported (on the split it trained with) and CHECKPOINT_FACTS of that epoch's checkpoint (ResultsError: only
    those are missing); a failed or diverged run, or one without a finite value, is a failed seed. Then each
    candidate's mean and std."""
    for t in runs:
        cand = candidate_of(t, cands)
        if t is not cand.trial and t.status in CUT:
            cand.cut += 1  # stopped short of the budget by the time budget: neither a seed nor a failure
            continue
        cfg = cand.cfg  # a sweep trial's seeds are its config's; a finalize run's are in its params
        run: dict[str, Any] = {"seed": int(t.params.get("seed", cfg.seed)),
                               "split_seed": int(t.params.get("split_seed", cfg.split_seed)),
                               "status": t.status.value, "epochs_run": t.epochs, "best_epoch": t.best_epoch,
                               "path": str(t.path), "ok": False, "checkpoint": None,
                               "from_sweep": t is cand.trial}
        if t.status.usable and t.best_result is not None:
            run.update({k: v for k, v in t.best_result.items() if k.startswith("val/")}, ok=True)
            try:
                run.update(checkpoint_facts(t))
            except ResultsError as e:
                run["note"] = str(e)  # the val values stand; only test metrics and weights are missing
        elif t.error:
            run["error"] = t.error.strip().splitlines()[-1][:300]
        cand.runs.append(run)
    for c in cands:
        c.runs.sort(key=lambda r: r["seed"])
        c.mean, c.std = aggregate(c.ok_runs, metric_keys(c.ok_runs))


def metric_keys(runs: list[dict[str, Any]]) -> list[str]:
    """The val/test metric names found in RUNS, in the loop's order."""
    names = [metric_name(s, k) for s in SPLITS for k in CLASSIFICATION_KEYS]
    return [n for n in names if any(n in r for r in runs)]
