"""`mmtune finalize` (and the end of `mmtune sweep`): retrain the top-k configs and the defaults with several seeds,
pick by a variance-aware rule.

One trial's best epoch on a small, imbalanced val set is a noisy estimate: the sweep's winner is partly luck.
Finalize retrains the top-k configs, and the untuned defaults beside them (`tune.defaults`), S times each at the
full epoch budget, as a second Ray Tune run (a grid over config x seed, no scheduler, no searcher) with the sweep's
own resource planning. Seed i sets both the training
seed and split_seed, so a run varies the initialization and, without val.npz, the holdout split (under CV, the
folds). The stage, by job: candidates (`tune.candidates`, pure), runs (the nested `sweep()`, here), evaluation of
their checkpoints (`tune.evaluation`, torch), outputs and words (`tune.leaderboard`); the winner is chosen by
`tune.selection` and its recipe written as <exp>/best_config.yaml. Torch and Ray are imported only when it runs.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from mmtune.tune import storage
from mmtune.tune.candidates import attach, candidate_of, grid, reused, seeds_for, select_top, with_defaults
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import FINAL_DIR, Experiment, Trial
from mmtune.tune.job import SweepOptions
from mmtune.tune.leaderboard import WINNER_DIR, write_outputs
from mmtune.tune.noise import sweep_sd
from mmtune.tune.racing import Race, raced_choice
from mmtune.tune.results import export
from mmtune.tune.selection import Candidate, choose

log = logging.getLogger(__name__)


def finalize(exp_dir: str | Path, top_k: int = 3, seeds: int = 3, address: str | None = None,
             num_cpus: int | None = None, out: TextIO | None = None, race: bool = True,
             time_budget: float | None = None) -> dict[str, Any]:
    """Retrain the top TOP_K configs of EXP_DIR (a folder or URI) and the defaults with up to SEEDS seeds each (RACE:
    a seed after the first only for the configs that can still win) in at most TIME_BUDGET seconds (runs it cuts are
    left out); write <exp>/final/ and <exp>/best_config.yaml. OUT receives the second run's plan and compact progress
    (None: silent)."""
    if top_k < 1 or seeds < 1:
        raise ResultsError(f"--top-k {top_k}, --seeds {seeds}: both must be >= 1")
    with storage.synced(exp_dir, checkpoints=False):  # retrains from the configs, not the sweep's weights
        return _finalize(storage.locate(str(exp_dir)), top_k, seeds, Resources(address, num_cpus, time_budget), out,
                         race)


@dataclass(frozen=True)
class Resources:
    """Where and how long finalize's runs may train: a Ray address, the embedded Ray's CPUs, a time budget (s)."""

    address: str | None = None
    num_cpus: int | None = None
    time_budget: float | None = None


def _finalize(loc: storage.Location, top_k: int, seeds: int, res: Resources, out: TextIO | None,
              racing: bool) -> dict[str, Any]:
    from mmtune.tune.evaluation import CheckpointFacts, copy_winner, count_params  # late: torch

    exp = Experiment.open(loc.local)
    cands = with_defaults(select_top(exp.trials, exp.space, top_k), exp.trials, exp.space)
    pairs = seeds_for(exp.space, seeds)
    log.info("finalize %s: %d config(s) x %d seed(s), %d epochs (the defaults among them: %s)", exp.name, len(cands),
             seeds, exp.space.epochs, any(c.defaults for c in cands))
    if (loc.local / FINAL_DIR).exists():
        log.warning("%s exists; replacing the previous finalize run", loc.local / FINAL_DIR)
    started = time.time()
    data = exp.validation.load(exp.meta["data"])
    for c in cands:
        c.num_params = count_params(c.cfg, data)
    taken = [c.trial for c in reused(cands, pairs[0])]
    for t in taken:
        storage.pull(loc, t.path.name)  # its checkpoints (remote storage), for its test metrics and the winner's
    log.info("finalize %s: %d run(s) taken from the sweep, not retrained", exp.name, len(taken))
    points = grid(cands, pairs)
    race = start_race(exp, cands, pairs, taken) if racing else None
    todo = bool(race.missing()) if race else bool(points)
    runs = run_grid(exp, loc, cands, points, pairs, race, res, out).trials if todo else []
    kept = {t.trial_id for t in (counted(runs, cands, pairs, race) if race else runs)}
    runs, ahead = [t for t in runs if t.trial_id in kept], [t for t in runs if t.trial_id not in kept]
    final = loc.local / FINAL_DIR
    if not todo:  # every run is the sweep's own: nothing to train, a fresh folder for the outputs
        shutil.rmtree(final, ignore_errors=True)
        final.mkdir()
    attach([*taken, *runs], cands, CheckpointFacts(exp.meta["data"], exp.validation))
    choice = raced_choice(cands, race) if race else choose(cands, exp.space.metric)
    if not choice.winner.ok_runs and any(c.cut for c in cands):
        raise ResultsError(f"the time budget ({res.time_budget:.0f} s) stopped every finalize run before its full "
                           f"budget; the sweep's results and best config are kept. Give finalize more time "
                           f"(mmtune finalize {loc} --time-budget ...) or fewer seeds (--seeds)")
    if not choice.winner.ok_runs:
        raise RuntimeError(f"every finalize run failed; see the error files under {final}")
    summary = write_outputs(exp, final, choice, pairs, top_k, time.time() - started,
                            seeds_vary(exp, cands), copy_winner(final / WINNER_DIR, choice.winner), race,
                            [t.trial_id for t in ahead])
    export(exp.path)  # summary.json then names the finalized winner and the seeds' noise
    return summary


def start_race(exp: Experiment, cands: list[Candidate], pairs: list[tuple[int, int]], taken: list[Trial]) -> Race:
    """The race over CANDS' seeds, the sweep trials TAKEN as first seeds recorded, past its first round when that
    needs no training."""
    race = Race([c.rank for c in cands], len(pairs), exp.space.metric, sweep_sd(exp)[0])
    for c in cands:
        if c.trial in taken:
            race.record(c.rank, 0, c.trial.best_value)
    if not race.missing():
        race.advance()
    return race


def counted(runs: list[Trial], cands: list[Candidate], pairs: list[tuple[int, int]], race: Race) -> list[Trial]:
    """The RUNS the race counted. One trained ahead for a config that then left the race, or beyond its last round,
    is not a seed (its folder stays), so that the leaderboard says what the race decided on."""
    return [t for t in runs
            if race.ran(candidate_of(t, cands).rank, pairs.index((int(t.params["seed"]), int(t.params["split_seed"]))))]


def run_grid(exp: Experiment, loc: storage.Location, cands: list[Candidate], points: list[dict[str, Any]],
             pairs: list[tuple[int, int]], race: Race | None, res: Resources, out: TextIO | None) -> Experiment:
    """The POINTS (a candidate's params with a seed pair), or with a RACE those of them it asks for round by round,
    each once at the full budget, as a sweep in <exp>/final: no sampler, no early cuts, the sweep's own options
    (resources, storage, failures), within RES's time budget."""
    from ray.tune.schedulers import FIFOScheduler

    from mmtune.tune import sweep as sweeping, tuner  # late: Ray

    searcher = (tuner.RacingConfigs(race, {c.rank: c.trial.params for c in cands}, pairs) if race
                else tuner.FixedConfigs(points))
    scheduler = tuner.RaceScheduler(searcher) if race else FIFOScheduler()

    # Never finalize the finalize run itself; the folds or holdout as the sweep decided them.
    # No rungs (a run Tune stops was cut by the time budget, not pruned) and finalize's own share of the budget.
    space = replace(exp.space, time_budget=res.time_budget).with_overrides(num_samples=len(points),
                                                                          grace_period=exp.space.epochs)
    opts = SweepOptions(**{**exp.meta["options"], "space": space, "time_budget": None,
                           "name": FINAL_DIR, "storage": str(loc), "overwrite": True, "resume": False,
                           "address": res.address, "num_cpus": res.num_cpus, "num_samples": None, "epochs": None,
                           "seed": None, "verbose": False, "finalize_top_k": 0, "cv": str(exp.validation.folds),
                           "split_seeds": tuple(sp for _, sp in pairs)})
    return sweeping.sweep(opts, searcher=searcher, scheduler=scheduler, out=out)


def seeds_vary(exp: Experiment, cands: list[Candidate]) -> str:
    """What the seeds varied besides the initialization, as configured and as the runs' train splits show."""
    how = exp.validation.seeds_vary(exp.meta["data"])
    splits = {r["train_split"] for c in cands for r in c.ok_runs if r.get("train_split")}
    if len(splits) == 1 and not exp.validation.fixed_across_seeds(exp.meta["data"]) \
            and max(len(c.ok_runs) for c in cands) > 1:
        # Measured from the checkpoints' statistics, not assumed from the configs.
        log.warning("finalize: the runs' split_seed differed but they all trained on one split")
        return how + "; but every run trained on the same split, so the seeds varied the initialization only"
    return how
