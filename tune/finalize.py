"""`mmtune finalize`: retrain the sweep's top-k configs with several seeds and pick the winner by the mean.

One trial's best epoch on a small, imbalanced val set is a noisy estimate: the sweep's winner is partly luck.
Finalize retrains the top-k configs S times each at the full epoch budget, as a second Ray Tune run (a grid
over config x seed, no scheduler, no searcher) with the sweep's own resource planning, then ranks the configs
by the mean validation metric over seeds. Torch and Ray are imported only when it runs.
"""
from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tune.errors import ResultsError

if TYPE_CHECKING:
    from data.npz import Dataset
    from model.config import TrainConfig
    from tune.experiment import Experiment, Trial
    from tune.space import SearchSpace
    from tune.storage import Location

log = logging.getLogger(__name__)

FINAL_DIR = "final"  # <experiment>/final: the finalize sweep and its outputs
WINNER_DIR = "winner"
SPLITS = ("val", "test")


@dataclass
class Candidate:
    """One of the top-k sweep configs and its retraining runs (one per seed)."""

    rank: int  # 0-based position among the top-k: the grid's "rank"
    sweep_rank: int  # 1-based rank of its trial among the sweep's usable trials
    trial: Trial
    cfg: TrainConfig
    runs: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, float] = field(default_factory=dict)
    std: dict[str, float] = field(default_factory=dict)

    @property
    def ok_runs(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["ok"]]

    @property
    def failed(self) -> int:
        return len(self.runs) - len(self.ok_runs)


def finalize(exp_dir: str | Path, top_k: int = 3, seeds: int = 3, address: str | None = None,
             num_cpus: int | None = None) -> dict[str, Any]:
    """Retrain the top TOP_K configs of EXP_DIR (a folder or URI) with SEEDS seeds each; write <exp>/final/."""
    from tune import storage

    if top_k < 1 or seeds < 1:
        raise ResultsError(f"--top-k {top_k}, --seeds {seeds}: both must be >= 1")
    loc = storage.locate(str(exp_dir))
    with storage.synced(exp_dir, checkpoints=False):  # retrains from the configs, not the sweep's weights
        return _finalize(loc, top_k, seeds, address, num_cpus)


def _finalize(loc: Location, top_k: int, seeds: int, address: str | None, num_cpus: int | None) -> dict[str, Any]:
    from ray.tune.schedulers import FIFOScheduler

    from tune.experiment import Experiment
    from tune.job import load_data
    from tune.sweep import SweepOptions, sweep
    from tune.tuner import FixedConfigs

    exp = Experiment.open(loc.local)
    cands = select_top(exp.trials, exp.space, top_k)
    seed_list = seeds_for(exp.space, seeds)
    points = [{**c.trial.params, "seed": s} for c in cands for s in seed_list]
    log.info("finalize %s: %d config(s) x %d seed(s), %d epochs", exp.name, len(cands), seeds, exp.space.epochs)
    if (loc.local / FINAL_DIR).exists():
        log.warning("%s exists; replacing the previous finalize run", loc.local / FINAL_DIR)
    opts = SweepOptions(**{**exp.meta["options"], "space": exp.space.with_overrides(num_samples=len(points)),
                           "name": FINAL_DIR, "storage": str(loc), "overwrite": True, "resume": False,
                           "address": address, "num_cpus": num_cpus, "num_samples": None, "epochs": None,
                           "seed": None, "verbose": False})
    started = time.time()
    # Every point once, at the full budget: a fixed grid, no sampler, no early cuts.
    runs = sweep(opts, searcher=FixedConfigs(points), scheduler=FIFOScheduler())
    collect(runs, cands, load_data(exp.meta["data"], exp.space))
    return write_outputs(exp, runs.path, cands, seed_list, top_k, time.time() - started)


def select_top(trials: list[Trial], space: SearchSpace, k: int) -> list[Candidate]:
    """The K best trials by the one ranking (failed, diverged, infeasible and empty ones skipped), distinct configs."""
    from tune.experiment import rank_trials

    usable = rank_trials(trials, space.mode)
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


def seeds_for(space: SearchSpace, n: int) -> list[int]:
    """N training seeds starting at the sweep's own training seed (so seed 0 of the list repeats the sweep)."""
    from model.config import TrainConfig

    base = int(space.fixed.get("seed", TrainConfig.seed))
    return [base + i for i in range(n)]


def collect(runs: Experiment, cands: list[Candidate], data: Dataset) -> None:
    """Attach every run of the finalize sweep to its candidate, with its best-epoch checkpoint's val and test
    metrics; a run that failed, diverged or kept no checkpoint counts as a failed seed."""
    for t in runs.trials:
        cand = next(c for c in cands if all(t.params.get(k) == v for k, v in c.trial.params.items()))
        run: dict[str, Any] = {"seed": int(t.params["seed"]), "status": t.status.value, "epochs_run": t.epochs,
                               "best_epoch": t.best_epoch, "path": str(t.path), "ok": False, "checkpoint": None}
        if t.status.usable and t.best_epoch is not None:
            try:
                run.update(best_epoch_metrics(t, data), ok=True)
            except ResultsError as e:
                run["error"] = str(e)
        elif t.error:
            run["error"] = t.error.strip().splitlines()[-1][:300]
        cand.runs.append(run)
    for c in cands:
        c.runs.sort(key=lambda r: r["seed"])
        c.mean, c.std = aggregate(c.ok_runs)


def best_epoch_metrics(t: Trial, data: Dataset) -> dict[str, Any]:
    """Val (and test, when the set has one) metrics of the run's best-epoch checkpoint, and its path."""
    from model.checkpoint import load_checkpoint
    from model.loop import pick_device
    from model.metrics import metric_name
    from model.run import evaluate_splits, model_from_checkpoint
    from tune.results import best_checkpoint

    path, epoch = best_checkpoint(t)
    if epoch != t.best_epoch:
        raise ResultsError(f"run {t.trial_id}: the checkpoint of its best epoch {t.best_epoch} was not kept")
    model, objective, cfg = model_from_checkpoint(load_checkpoint(path), data)
    by_split = evaluate_splits(model, objective, data, SPLITS, pick_device(cfg.device))
    return {"checkpoint": str(path), **{metric_name(s, k): v for s, m in by_split.items() for k, v in m.items()}}


def aggregate(runs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and sample std over RUNS of every val/test metric (non-finite values left out)."""
    keys = metric_keys(runs)
    mean, std = {}, {}
    for k in keys:
        vals = [float(r[k]) for r in runs if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        mean[k] = statistics.fmean(vals) if vals else math.nan
        std[k] = statistics.stdev(vals) if len(vals) > 1 else 0.0 if vals else math.nan
    return mean, std


def metric_keys(runs: list[dict[str, Any]]) -> list[str]:
    """The val/test metric names found in RUNS, in the loop's order."""
    from model.metrics import CLASSIFICATION_KEYS, metric_name

    names = [metric_name(s, k) for s in SPLITS for k in CLASSIFICATION_KEYS]
    return [n for n in names if any(n in r for r in runs)]


def ranking(cands: list[Candidate], metric: str, mode: str) -> list[Candidate]:
    """Best first: configs with every seed trained, then by mean METRIC, then lower std, then sweep rank."""
    sign = -1.0 if mode == "max" else 1.0

    def key(c: Candidate) -> tuple:
        m, s = c.mean.get(metric, math.nan), c.std.get(metric, math.nan)
        # A config that diverges or fails for some seed is not reliable, whatever its mean on the others.
        return (not math.isfinite(m), c.failed, sign * m if math.isfinite(m) else 0.0,
                s if math.isfinite(s) else math.inf, c.sweep_rank)

    return sorted(cands, key=key)


def write_outputs(exp: Experiment, out: Path, cands: list[Candidate], seed_list: list[int], top_k: int,
                  seconds: float) -> dict[str, Any]:
    """best_config.yaml, leaderboard.csv, winner/seed_<s>.pt and summary.json in OUT; returns the summary."""
    from data.io import write_json
    from tune.experiment import read_meta

    space = exp.space
    ordered = ranking(cands, space.metric, space.mode)
    winner = ordered[0]
    if not winner.ok_runs:
        raise RuntimeError(f"every finalize run failed; see the error files under {out}")
    data_path = exp.meta.get("data")
    config_path = write_best_config(out, winner, space, seed_list[0], exp.name, data_path)
    write_leaderboard(out / "leaderboard.csv", ordered, space)
    checkpoints = copy_winner(out / WINNER_DIR, winner)
    summary = {
        "experiment": exp.name, "metric": space.metric, "mode": space.mode, "epochs": space.epochs,
        "selection": f"mean {space.metric} over seeds of the best epoch's weights; configs with a failed seed "
                     "rank last; ties: lower std, then sweep rank",
        "top_k": len(cands), "top_k_requested": top_k, "seeds": seed_list,
        "winner": {**_entry(winner), "config": str(config_path), "checkpoints": checkpoints},
        "configs": [_entry(c) for c in ordered],
        "best_config": str(config_path), "leaderboard": str(out / "leaderboard.csv"),
        "data": data_path, "plan": read_meta(out).get("plan"), "wall_time_s": seconds,
    }
    write_json(summary, out / "summary.json")
    return summary


def _entry(c: Candidate) -> dict[str, Any]:
    return {"rank": c.rank, "sweep_rank": c.sweep_rank, "trial_id": c.trial.trial_id,
            "sweep_best_value": c.trial.best_value, "sweep_best_epoch": c.trial.best_epoch, "params": c.trial.params,
            "n_seeds": len(c.ok_runs), "failed_seeds": c.failed, "mean": c.mean, "std": c.std, "runs": c.runs}


def write_best_config(out: Path, winner: Candidate, space: SearchSpace, seed: int, exp: str,
                      data: str | None) -> Path:
    """The winner's complete TrainConfig (first seed), readable by load_config and `mmtune train --config`."""
    import yaml

    from data.io import atomic_file

    path = out / "best_config.yaml"
    m, s = winner.mean[space.metric], winner.std[space.metric]
    header = (f"# Finalized winner of {exp}: sweep trial {winner.trial.trial_id} (sweep rank {winner.sweep_rank}), "
              f"{space.metric} {m:.4f} +- {s:.4f} over {len(winner.ok_runs)} seed(s).\n"
              f"# Reproduce: mmtune train --config {path} --data {data or 'DATA'}\n")
    with atomic_file(path) as f:
        f.write(header + yaml.safe_dump(replace(winner.cfg, seed=seed).to_dict(), sort_keys=False))
    return path


def write_leaderboard(path: Path, ordered: list[Candidate], space: SearchSpace) -> None:
    """One row per config, best first: ranks, sweep value, mean and std of every metric, seeds, params."""
    from data.io import atomic_file

    keys = metric_keys([r for c in ordered for r in c.ok_runs])
    cols = ["final_rank", "sweep_rank", "trial_id", f"sweep best {space.metric}", "n_seeds", "failed_seeds",
            *[f"{k} {stat}" for k in keys for stat in ("mean", "std")], *space.names]
    with atomic_file(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, c in enumerate(ordered, start=1):
            stats = [x for k in keys for x in (c.mean.get(k, math.nan), c.std.get(k, math.nan))]
            w.writerow([i, c.sweep_rank, c.trial.trial_id, c.trial.best_value, len(c.ok_runs), c.failed, *stats,
                        *[c.trial.params.get(n) for n in space.names]])


def copy_winner(folder: Path, winner: Candidate) -> list[str]:
    """The winner's best-epoch checkpoint of every seed, as FOLDER/seed_<seed>.pt marked as best weights."""
    from model.checkpoint import load_checkpoint, save_checkpoint

    paths = []
    for r in winner.ok_runs:
        # Saved at the best epoch, so its weights are that epoch's: the best weights of the run.
        state = {**load_checkpoint(r["checkpoint"]), "weights": "best"}
        paths.append(str(save_checkpoint(state, folder / f"seed_{r['seed']}.pt")))
    return paths


def leaderboard_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The leaderboard of a finalize summary: column names and one row per config, best first."""
    metric = summary["metric"]
    test = metric.replace("val/", "test/", 1)
    cols = ["#", "sweep rank", "trial", f"sweep {metric}", f"{metric} mean ± std", f"{test} mean ± std", "seeds"]
    rows = [[i, c["sweep_rank"], c["trial_id"], _fmt(c["sweep_best_value"]), _pm(c, metric), _pm(c, test),
             f"{c['n_seeds']}" + (f" ({c['failed_seeds']} failed)" if c["failed_seeds"] else "")]
            for i, c in enumerate(summary["configs"], start=1)]
    return cols, rows


def leaderboard_table(summary: dict[str, Any]) -> str:
    """The leaderboard of a finalize summary as aligned text, best first."""
    cols, rows = leaderboard_rows(summary)
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [cols, *rows])


def _pm(c: dict[str, Any], key: str) -> str:
    m, s = c["mean"].get(key), c["std"].get(key)
    return "-" if m is None or not math.isfinite(m) else f"{m:.4f} ± {s:.4f}"


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `mmtune finalize results/<exp> [--top-k K] [--seeds S] [--address A] [--num-cpus N]`."""
    f = sub.add_parser("finalize", help="retrain the sweep's top-k configs with several seeds; pick by the mean")
    f.add_argument("experiment", help="results/<experiment> (a sweep with at least one usable trial)")
    f.add_argument("--top-k", type=int, default=3, help="configs to retrain, best first (default 3)")
    f.add_argument("--seeds", type=int, default=3, help="training seeds per config (default 3)")
    f.add_argument("--address", help="Ray cluster to join ('auto', host:port); default: embedded local Ray")
    f.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    f.set_defaults(handler=cmd_finalize)


def cmd_finalize(args: argparse.Namespace) -> int:
    """Finalize ARGS.experiment and print the leaderboard and where the files are."""
    summary = finalize(args.experiment, args.top_k, args.seeds, args.address, args.num_cpus)
    w = summary["winner"]
    print(leaderboard_table(summary))
    print(f"\nwinner: sweep trial {w['trial_id']} (sweep rank {w['sweep_rank']}), {summary['metric']} "
          f"{_pm(w, summary['metric'])} over seeds {summary['seeds']}")
    print(f"best config: {summary['best_config']}")
    print(f"leaderboard: {summary['leaderboard']}")
    print(f"checkpoints: {Path(summary['best_config']).parent / WINNER_DIR}/ ({len(w['checkpoints'])} file(s))")
    print(f"retrain it:  mmtune train --config {summary['best_config']} --data {summary['data'] or 'DATA'}")
    return 0
