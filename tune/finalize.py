"""`mmtune finalize` (and the end of `mmtune sweep`): retrain the top-k configs with several seeds, pick by a
variance-aware rule.

One trial's best epoch on a small, imbalanced val set is a noisy estimate: the sweep's winner is partly luck.
Finalize retrains the top-k configs S times each at the full epoch budget, as a second Ray Tune run (a grid
over config x seed, no scheduler, no searcher) with the sweep's own resource planning. Seed i sets both the
training seed and split_seed, so a run varies the initialization and, without val.npz, the holdout split (under
CV, the folds). The winner is chosen by `tune.selection` and written as <exp>/best_config.yaml. Torch and Ray are
imported only when it runs.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mmtune.data.io import write_json, write_text
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import FINAL_DIR, SUMMARY
from mmtune.tune.results import BEST_CONFIG, export
from mmtune.tune.selection import Candidate, Choice, choose, rule_text

if TYPE_CHECKING:
    from mmtune.data.npz import Dataset
    from mmtune.model.config import TrainConfig
    from mmtune.tune.experiment import Experiment, Trial
    from mmtune.tune.space import SearchSpace
    from mmtune.tune.storage import Location

log = logging.getLogger(__name__)

WINNER_DIR = "winner"
SPLITS = ("val", "test")
RESEEDED = ("seed", "split_seed")  # what finalize sets per run, on top of a candidate's params
__all__ = ["FINAL_DIR", "Candidate", "finalize"]  # re-exported: the report and callers use them from here


def finalize(exp_dir: str | Path, top_k: int = 3, seeds: int = 3, address: str | None = None,
             num_cpus: int | None = None, out: TextIO | None = None) -> dict[str, Any]:
    """Retrain the top TOP_K configs of EXP_DIR (a folder or URI) with SEEDS seeds each; write <exp>/final/ and
    <exp>/best_config.yaml. OUT receives the second run's plan and compact progress (None: silent)."""
    from mmtune.tune import storage

    if top_k < 1 or seeds < 1:
        raise ResultsError(f"--top-k {top_k}, --seeds {seeds}: both must be >= 1")
    loc = storage.locate(str(exp_dir))
    with storage.synced(exp_dir, checkpoints=False):  # retrains from the configs, not the sweep's weights
        return _finalize(loc, top_k, seeds, address, num_cpus, out)


def _finalize(loc: Location, top_k: int, seeds: int, address: str | None, num_cpus: int | None,
              out: TextIO | None) -> dict[str, Any]:
    from ray.tune.schedulers import FIFOScheduler

    from mmtune.tune.experiment import Experiment
    from mmtune.tune.job import load_data
    from mmtune.tune.sweep import SweepOptions, sweep
    from mmtune.tune.tuner import FixedConfigs

    exp = Experiment.open(loc.local)
    cands = select_top(exp.trials, exp.space, top_k)
    pairs = seeds_for(exp.space, seeds)
    points = [{**c.trial.params, "seed": s, "split_seed": sp} for c in cands for s, sp in pairs]
    log.info("finalize %s: %d config(s) x %d seed(s), %d epochs", exp.name, len(cands), seeds, exp.space.epochs)
    if (loc.local / FINAL_DIR).exists():
        log.warning("%s exists; replacing the previous finalize run", loc.local / FINAL_DIR)
    # The sweep's own options (resources, storage, failures); never finalize the finalize run itself.
    opts = SweepOptions(**{**exp.meta["options"], "space": exp.space.with_overrides(num_samples=len(points)),
                           "name": FINAL_DIR, "storage": str(loc), "overwrite": True, "resume": False,
                           "address": address, "num_cpus": num_cpus, "num_samples": None, "epochs": None,
                           "seed": None, "verbose": False, "finalize_top_k": 0,
                           "split_seeds": tuple(sp for _, sp in pairs)})
    started = time.time()
    data = load_data(exp.meta["data"], exp.space)
    for c in cands:
        c.num_params = count_params(c.cfg, data)
    # Every point once, at the full budget: a fixed grid, no sampler, no early cuts.
    runs = sweep(opts, searcher=FixedConfigs(points), scheduler=FIFOScheduler(), out=out)
    collect(runs, cands, exp.meta["data"])
    return write_outputs(exp, runs.path, cands, pairs, top_k, time.time() - started, holdout(data, cands))


def select_top(trials: list[Trial], space: SearchSpace, k: int) -> list[Candidate]:
    """The K best trials by the one ranking (failed, diverged, infeasible and empty ones skipped), distinct configs."""
    from mmtune.tune.experiment import rank_trials

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


def seeds_for(space: SearchSpace, n: int) -> list[tuple[int, int]]:
    """N (training seed, split seed) pairs counting up from the sweep's own, so the first repeats the sweep's run;
    the split seed moves with the seed, so the runs also differ in their holdout split or CV folds."""
    from mmtune.model.config import TrainConfig

    seed = int(space.fixed.get("seed", TrainConfig.seed))
    return [(seed + i, space.split_seed + i) for i in range(n)]


def count_params(cfg: TrainConfig, data: Dataset) -> int:
    """Parameters of the model CFG builds on DATA's modalities (what the tie rule prefers fewer of)."""
    from mmtune.model.loop import make_objective

    view = data.fold(0) if hasattr(data, "fold") else data  # CV data: any fold builds the same model
    return sum(p.numel() for p in make_objective(cfg, view).build(data.modalities).parameters())


def collect(runs: Experiment, cands: list[Candidate], data_path: str) -> None:
    """Attach every run of the finalize sweep to its candidate: the val metrics its best epoch reported (on the
    split it trained with) and, from that epoch's checkpoint, its test metrics; a failed or diverged run, or one
    without a finite value, is a failed seed."""
    from mmtune.tune.selection import aggregate

    cache: dict[tuple, Dataset] = {}
    for t in runs.trials:
        cand = next(c for c in cands if all(t.params.get(k) == v for k, v in c.trial.params.items()
                                            if k not in RESEEDED))
        run: dict[str, Any] = {"seed": int(t.params["seed"]), "split_seed": int(t.params["split_seed"]),
                               "status": t.status.value, "epochs_run": t.epochs, "best_epoch": t.best_epoch,
                               "path": str(t.path), "ok": False, "checkpoint": None}
        if t.status.usable and t.best_result is not None:
            run.update({k: v for k, v in t.best_result.items() if k.startswith("val/")}, ok=True)
            try:
                run.update(checkpoint_metrics(t, data_path, cache))
            except ResultsError as e:
                run["note"] = str(e)  # the val values stand; only test metrics and weights are missing
        elif t.error:
            run["error"] = t.error.strip().splitlines()[-1][:300]
        cand.runs.append(run)
    for c in cands:
        c.runs.sort(key=lambda r: r["seed"])
        c.mean, c.std = aggregate(c.ok_runs, metric_keys(c.ok_runs))


def checkpoint_metrics(t: Trial, data_path: str, cache: dict[tuple, Dataset]) -> dict[str, Any]:
    """The best-epoch checkpoint's path, a digest of its train split's statistics (which split it trained on)
    and its test metrics when the set has test.npz, on data standardized as that run's was."""
    from mmtune.model.checkpoint import load_checkpoint
    from mmtune.model.loop import pick_device
    from mmtune.model.metrics import metric_name
    from mmtune.model.run import checkpoint_data, evaluate_splits, model_from_checkpoint
    from mmtune.tune.results import best_checkpoint

    path, epoch = best_checkpoint(t)
    if epoch != t.best_epoch:
        raise ResultsError(f"run {t.trial_id}: the checkpoint of its best epoch {t.best_epoch} was not kept")
    state = load_checkpoint(path)
    if "folds" in state:  # a CV run holds K models and an estimate: test.npz is not its business
        return {"checkpoint": str(path)}
    digest = hashlib.sha1(json.dumps(state["stats"], sort_keys=True).encode()).hexdigest()[:12]
    found = {"checkpoint": str(path), "train_split": digest}
    cfg = state["config"]
    key = (cfg.get("val_fraction"), cfg.get("split_seed"), digest)
    if key not in cache:
        cache[key] = checkpoint_data(state, data_path)
    model, objective, tcfg = model_from_checkpoint(state, cache[key])
    by_split = evaluate_splits(model, objective, cache[key], ("test",), pick_device(tcfg.device))
    return {**found, **{metric_name(s, k): v for s, m in by_split.items() for k, v in m.items()}}


def holdout(data: Dataset, cands: list[Candidate]) -> dict[str, Any]:
    """What the seeds varied besides the initialization, as configured and as the runs' train splits show."""
    cv = max(getattr(c.cfg, "cv", 0) for c in cands)
    if cv >= 2:
        how = f"{cv}-fold CV: each seed sets split_seed, the seed of the folds"
    elif data.info.get("val") == "val.npz":
        how = ("the data set has val.npz, so the holdout is fixed: the seeds vary the initialization and batch "
               "order only")
    else:
        how = "no val.npz: each seed's split_seed holds out another val split of train.npz"
    splits = sorted({r["train_split"] for c in cands for r in c.ok_runs if r.get("train_split")})
    if cv < 2 and data.info.get("val") != "val.npz" and len(splits) == 1 and max(len(c.ok_runs) for c in cands) > 1:
        # Measured from the checkpoints' statistics, not assumed from the configs.
        how += "; but every run trained on the same split, so the seeds varied the initialization only"
        log.warning("finalize: the runs' split_seed differed but they all trained on one split")
    return {"how": how, "distinct_train_splits": len(splits)}


def metric_keys(runs: list[dict[str, Any]]) -> list[str]:
    """The val/test metric names found in RUNS, in the loop's order."""
    from mmtune.model.metrics import CLASSIFICATION_KEYS, metric_name

    names = [metric_name(s, k) for s in SPLITS for k in CLASSIFICATION_KEYS]
    return [n for n in names if any(n in r for r in runs)]


def write_outputs(exp: Experiment, out: Path, cands: list[Candidate], pairs: list[tuple[int, int]], top_k: int,
                  seconds: float, held: dict[str, Any]) -> dict[str, Any]:
    """final/best_config.yaml, leaderboard.csv, winner/seed_<s>.pt, summary.json, and <exp>/best_config.yaml."""
    from mmtune.tune.experiment import read_meta

    space = exp.space
    choice = choose(cands, space.metric)
    winner = choice.winner
    if not winner.ok_runs:
        raise RuntimeError(f"every finalize run failed; see the error files under {out}")
    data_path = exp.meta.get("data")
    config_path = write_best_config(out, choice, space, pairs[0], exp.name, data_path)
    text = config_path.read_text()
    write_text(text.replace(str(config_path), str(exp.path / BEST_CONFIG)), exp.path / BEST_CONFIG)
    write_leaderboard(out / "leaderboard.csv", choice, space)
    summary = {
        "experiment": exp.name, "metric": space.metric, "mode": space.mode, "epochs": space.epochs,
        "selection": rule_text(space.metric), "choice": choice.reason, "leader": choice.leader.trial.trial_id,
        "tied": [c.trial.trial_id for c in choice.tied], "top_k": len(cands), "top_k_requested": top_k,
        "seeds": [s for s, _ in pairs], "split_seeds": [sp for _, sp in pairs], "holdout": held,
        "winner": {**_entry(winner, choice, space.metric), "config": str(config_path),
                   "checkpoints": copy_winner(out / WINNER_DIR, winner)},
        "configs": [_entry(c, choice, space.metric) for c in choice.ordered],
        "best_config": str(exp.path / BEST_CONFIG), "final_config": str(config_path),
        "leaderboard": str(out / "leaderboard.csv"), "data": data_path, "plan": read_meta(out).get("plan"),
        "wall_time_s": seconds,
    }
    write_json(summary, out / SUMMARY)
    # Export again: <exp>/summary.json then names the finalized winner, and its noise estimate has the seeds' spread.
    export(exp.path)
    return summary


def _entry(c: Candidate, choice: Choice, metric: str) -> dict[str, Any]:
    return {"rank": c.rank, "sweep_rank": c.sweep_rank, "trial_id": c.trial.trial_id,
            "sweep_best_value": c.trial.best_value, "sweep_best_epoch": c.trial.best_epoch, "params": c.trial.params,
            "num_params": c.num_params, "n_seeds": len(c.ok_runs), "failed_seeds": c.failed, "se": c.se(metric),
            "bound": c.bound(metric), "tied": c in choice.tied, "mean": c.mean, "std": c.std, "runs": c.runs}


def write_best_config(out: Path, choice: Choice, space: SearchSpace, seeds: tuple[int, int], exp: str,
                      data: str | None) -> Path:
    """The winner's complete TrainConfig (first seed pair), readable by load_config and `mmtune train --config`."""
    import yaml

    winner, metric = choice.winner, space.metric
    path = out / "best_config.yaml"
    m, s, n = winner.mean[metric], winner.std[metric], len(winner.ok_runs)
    header = (f"# Finalized winner of {exp}: sweep trial {winner.trial.trial_id} (sweep rank {winner.sweep_rank}), "
              f"{metric} {m:.4f} +- {s:.4f} over {n} seed(s), bound {winner.bound(metric):.4f}"
              f"{'' if winner.num_params is None else f', {winner.num_params:,} params'}.\n"
              f"# Chosen by: {choice.reason} (rule: {rule_text(metric)}).\n"
              f"# The single best sweep trial's config is best_trial_config.yaml beside the experiment.\n"
              f"# Reproduce: mmtune train --config {path} --data {data or 'DATA'}\n")
    cfg = replace(winner.cfg, seed=seeds[0], split_seed=seeds[1])
    if getattr(cfg, "cv", 0) >= 2:  # a CV estimate, not a model: deploy its recipe (all data, a fixed epoch count)
        epochs = int(statistics.median(r["best_epoch"] for r in winner.ok_runs))
        cfg = replace(space.recipe(winner.trial.params, epochs), seed=seeds[0], split_seed=seeds[1])
        header += (f"# CV runs: the recipe trains one model on all of train.npz + val.npz for {epochs} epochs, the "
                   "median best epoch of the seeds' fold-mean curves.\n")
    write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False), path)
    return path


def write_leaderboard(path: Path, choice: Choice, space: SearchSpace) -> None:
    """One row per config, winner first: ranks, the rule's numbers, mean and std of every metric, params."""
    from mmtune.data.io import atomic_file

    metric, ordered = space.metric, choice.ordered
    keys = metric_keys([r for c in ordered for r in c.ok_runs])
    cols = ["final_rank", "sweep_rank", "trial_id", f"sweep best {metric}", "n_seeds", "failed_seeds",
            f"{metric} se", f"{metric} bound", "num_params", "tied",
            *[f"{k} {stat}" for k in keys for stat in ("mean", "std")], *space.names]
    with atomic_file(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, c in enumerate(ordered, start=1):
            stats = [x for k in keys for x in (c.mean.get(k, math.nan), c.std.get(k, math.nan))]
            w.writerow([i, c.sweep_rank, c.trial.trial_id, c.trial.best_value, len(c.ok_runs), c.failed,
                        c.se(metric), c.bound(metric), c.num_params, c in choice.tied, *stats,
                        *[c.trial.params.get(n) for n in space.names]])


def copy_winner(folder: Path, winner: Candidate) -> list[str]:
    """The winner's best-epoch checkpoint of every seed, as FOLDER/seed_<seed>.pt marked as best weights."""
    from mmtune.model.checkpoint import load_checkpoint, save_checkpoint

    paths = []
    for r in (r for r in winner.ok_runs if r.get("checkpoint")):
        # Saved at the best epoch, so its weights are that epoch's: the best weights of the run.
        state = {**load_checkpoint(r["checkpoint"]), "weights": "best"}
        paths.append(str(save_checkpoint(state, folder / f"seed_{r['seed']}.pt")))
    return paths


def leaderboard_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The leaderboard of a finalize summary: column names and one row per config, best first."""
    metric = summary["metric"]
    test = metric.replace("val/", "test/", 1)
    bound = "LCB" if summary.get("mode", "max") == "max" else "UCB"
    cols = ["#", "sweep rank", "trial", f"sweep {metric}", f"{metric} mean ± std", "n", bound, "params", "tied",
            f"{test} mean ± std", "seeds"]
    rows = [[i, c["sweep_rank"], c["trial_id"], _fmt(c["sweep_best_value"]), _pm(c, metric), c["n_seeds"],
             _fmt(c.get("bound")), _fmt(c.get("num_params")), "yes" if c.get("tied") else "", _pm(c, test),
             f"{c['n_seeds'] + c['failed_seeds']}" + (f" ({c['failed_seeds']} failed)" if c["failed_seeds"] else "")]
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
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else "-"
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def result_lines(summary: dict[str, Any]) -> list[str]:
    """What the console shows after a finalize run: the leaderboard, the winner and why, where the files are."""
    w = summary["winner"]
    return [leaderboard_table(summary), "", *winner_lines(summary), f"leaderboard: {summary['leaderboard']}",
            f"checkpoints: {Path(summary['leaderboard']).parent / WINNER_DIR}/ ({len(w['checkpoints'])} file(s))",
            f"retrain it:  mmtune train --config {summary['best_config']} --data {summary['data'] or 'DATA'}"]


def winner_lines(summary: dict[str, Any]) -> list[str]:
    """The finalized winner and how it was chosen, the seeds and splits, the config to deploy."""
    w, metric = summary["winner"], summary["metric"]
    return [f"winner: sweep trial {w['trial_id']} (sweep rank {w['sweep_rank']}), {metric} {_pm(w, metric)} "
            f"(n={w['n_seeds']}, bound {_fmt(w.get('bound'))}) over seeds {summary['seeds']}; {summary['choice']}",
            f"seeds and splits: {summary['holdout']['how']}",
            f"best config: {summary['best_config']} (the finalized winner)"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `mmtune finalize results/<exp> [--top-k K] [--seeds S] [--address A] [--num-cpus N]`."""
    f = sub.add_parser("finalize", help="retrain the sweep's top-k configs with several seeds; pick by the "
                       "lower confidence bound (`mmtune sweep` does this at its end by default)")
    f.add_argument("experiment", help="results/<experiment> (a sweep with at least one usable trial)")
    f.add_argument("--top-k", type=int, default=3, help="configs to retrain, best first (default 3)")
    f.add_argument("--seeds", type=int, default=3, help="training seeds per config (default 3)")
    f.add_argument("--address", help="Ray cluster to join ('auto', host:port); default: embedded local Ray")
    f.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    f.set_defaults(handler=cmd_finalize)


def cmd_finalize(args: argparse.Namespace) -> int:
    """Finalize ARGS.experiment and print the leaderboard and where the files are."""
    summary = finalize(args.experiment, args.top_k, args.seeds, args.address, args.num_cpus)
    print("\n".join(result_lines(summary)))
    return 0
