"""Search efficiency: which search finds good configs fastest at the same compute, on 2 CPU cores?

Every run is one `tune.sweep.sweep()` of a search space written by this script, on one shared embedded
Ray (2 CPUs, 2 concurrent trials of 1 CPU each). Methods (sampler from `SearchSpace.searcher`, mmtune's
StudySearch in every case; ASHA is `tune.tuner.make_scheduler`, FIFO is Ray's FIFOScheduler):

  tpe_asha     mmtune's default: seeded multivariate TPE + ASHA
  gp_asha      Optuna's GPSampler + ASHA
  qmc_asha     Optuna's QMCSampler (scrambled Sobol) + ASHA
  random_asha  RandomSampler + ASHA
  random_fifo  RandomSampler, no early stopping: every trial runs the full epochs

Each (method, sampler seed) run gets the same budget: a Stopper counts the reported epochs (summed over
trials; Tune's repeat of a finished trial's last result is not counted) and stops the whole experiment
when they reach --budget. From the order in which results arrived, each run gets an anytime curve: the
best val/f1 so far after each epoch spent.

Default setting (cheap, so that methods can be separated by many seeds rather than long runs): the demo
data with 600 train / 400 val / 200 test samples at difficulty 0.3, tiny models (d_model 16/32, 1-2
layers, nhead 2/4, ff_mult 2, batch 32/64), 12 epochs per trial (cosine warm restarts, t0 4, t_mult 2:
cycles end at 4 and 12), ASHA grace 4 / reduction 3 (one rung at epoch 4, the end of the first cycle),
a budget of 240 epochs per run (20 full trials for FIFO), 8 sampler seeds. The searched parameters are
the ones that matter for quality: lr (log), weight_decay (log), dropout, modality_dropout, aux_weight,
focal_gamma, plus the four size/batch choices. `num_samples` of each sweep is 2 * budget / grace + 2,
more trials than the budget can pay for, so the Stopper ends every run (TPE's and GP's start-up
trials follow it as a real sweep's would: min(10, num_samples // 3) = 10).

Statistics, over sampler seeds:
- best: the best val/f1 a run reached within the budget; per method its median and a 95 % percentile
  bootstrap interval (seeds resampled with replacement, 2000 resamples, fixed RNG seed);
- epochs to target: the global best G is the best value any run found; a run's epochs to target is the
  cumulative epochs it spent until its best-so-far first reached 0.99 * G (+inf when never: the median
  is then "not reached" when half the runs or more miss it); median, bootstrap interval, runs reaching.
  One lucky run can put G out of everyone's reach, so the same is also given for a second bar, the median
  of all runs' best values;
- target 1: (a) tpe_asha reaches (c) random_fifo's final median best V_c with at most 1/3 of the epochs
  (c) needs. Both are read from the median anytime curve over seeds (the first epoch at which the
  median best-so-far reaches V_c), each with a bootstrap interval (V_c held at its point value);
- target 2: (a)'s median best is above (b) random_asha's and (c)'s, with bootstrap intervals that do
  not overlap;
- every pair of methods: a two-sided Mann-Whitney U test of their per-seed best values.

    .venv/bin/python bench/search_efficiency.py [--seeds 8] [--budget 240] [--epochs 12] [--grace 4]
        [--methods tpe_asha,gp_asha,...] [--smoke] [--out FILE.json] [--plot FILE.png] [--md FILE.md]
        [--keep DIR]

`--smoke` is a ~1-minute check of the whole path (2 seeds, tpe_asha + random_asha + random_fifo, budget
16, 4 epochs per trial, grace 2); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Stopper

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("tpe_asha", "gp_asha", "qmc_asha", "random_asha", "random_fifo")
SAMPLER = {"tpe_asha": "tpe", "gp_asha": "gp", "qmc_asha": "qmc", "random_asha": "random", "random_fifo": "random"}
COLORS = {"tpe_asha": "tab:blue", "gp_asha": "tab:purple", "qmc_asha": "tab:brown", "random_asha": "tab:orange",
          "random_fifo": "tab:green"}
CONCURRENCY = 2
TARGET_FRACTION = 0.99
RESAMPLES = 2000
BOOT_SEED = 12345
DATA = {"n_train": 600, "n_val": 400, "n_test": 200, "difficulty": 0.3, "seed": 0}
SMOKE = {"seeds": 2, "budget": 16, "epochs": 4, "grace": 2, "methods": "tpe_asha,random_asha,random_fifo"}
DEFAULTS = {"seeds": 8, "budget": 180, "epochs": 9, "grace": 3, "methods": ",".join(METHODS)}


class BudgetStopper(Stopper):
    """Tune Stopper: logs every epoch's result in arrival order and stops the experiment at BUDGET epochs.

    Tune hands a trial that ran to its end (FIFO: every trial) its last result twice, the second time as the
    final `done` result; that repeat is not an epoch and is not counted (counted, FIFO would lose 10 %). A
    trial that a scheduler stops at its last epoch (ASHA at max_t) gets no repeat.
    """

    def __init__(self, budget: int, log_path: Path, metric: str):
        self.budget, self.log_path, self.metric = budget, str(log_path), metric
        self.count, self.t0 = 0, time.time()
        self.seen: set[tuple[str, Any]] = set()
        self.repeated: list[str] = []  # trial ids whose last result came again

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Count and log one reported epoch (repeats ignored); never stops a single trial."""
        key = (trial_id, result.get("training_iteration"))
        if key in self.seen:
            self.repeated.append(trial_id)
            return False
        self.seen.add(key)
        self.count += 1
        value = result.get(self.metric)
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"n": self.count, "t": time.time() - self.t0, "trial_id": trial_id,
                                "epoch": result.get("training_iteration"),
                                "value": value if isinstance(value, (int, float)) else None}) + "\n")
        return False

    def stop_all(self) -> bool:
        """True once the summed epochs reach the budget."""
        return self.count >= self.budget


# ----------------------------------------------------------------------------------------- setting


def make_space(epochs: int, grace: int, budget: int) -> Any:
    """The benchmark's search space (a SearchSpace built here, no file): tiny models, quality parameters."""
    from mmtune.tune.space import parse_space

    raw = {
        "description": "bench/search_efficiency.py: tiny models on a small demo set",
        "metric": "val/f1",
        "num_samples": 2 * math.ceil(budget / grace) + 2,
        "seed": 0,
        "searcher": "tpe",
        "epochs": epochs,
        "asha": {"grace_period": grace, "reduction_factor": 3, "brackets": 1},
        "fixed": {"ff_mult": 2, "train_steps": 0, "patience": 0, "t0": grace, "t_mult": 2, "device": "cpu"},
        "params": {
            "d_model": {"type": "categorical", "choices": [16, 32]},
            "nhead": {"type": "categorical", "choices": [2, 4]},
            "num_layers": {"type": "int", "low": 1, "high": 2},
            "batch_size": {"type": "categorical", "choices": [32, 64]},
            "lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
            "weight_decay": {"type": "float", "low": 1.0e-4, "high": 1.0e-1, "log": True},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "modality_dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "aux_weight": {"type": "float", "low": 0.0, "high": 1.0},
            "focal_gamma": {"type": "float", "low": 0.0, "high": 3.0},
        },
    }
    return parse_space(raw, "bench/search_efficiency.py (space)")


def run_method(method: str, seed: int, data_dir: Path, space: Any, storage: Path, budget: int) -> dict[str, Any]:
    """One budgeted sweep of METHOD with sampler SEED; returns its results in arrival order."""
    from ray.tune.schedulers import FIFOScheduler

    from mmtune.tune.sweep import SweepOptions, sweep
    from mmtune.tune.tuner import make_scheduler

    name = f"{method}-s{seed}"
    run_space = space.with_overrides(searcher=SAMPLER[method], seed=seed)
    scheduler = FIFOScheduler() if method == "random_fifo" else make_scheduler(run_space)
    log_path = storage / f"{name}.jsonl"
    log_path.unlink(missing_ok=True)
    stopper = BudgetStopper(budget, log_path, run_space.metric)
    opts = SweepOptions(data=str(data_dir), space=run_space, name=name, storage=str(storage), num_cpus=CONCURRENCY,
                        gpus_per_trial="0", max_concurrent=CONCURRENCY, overwrite=True)
    t0 = time.time()
    exp = sweep(opts, scheduler=scheduler, stopper=stopper)
    wall = time.time() - t0
    events = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    trials = exp.trials
    return {"method": method, "seed": seed, "exp_dir": str(exp.path), "wall_s": wall, "events": events,
            "trials": len(trials), "epochs_reported": len(events), "repeats_ignored": len(stopper.repeated),
            "repeated_trials": stopper.repeated, "epochs_on_disk": sum(t.epochs for t in trials),
            "trials_run_out": sorted(t.trial_id for t in trials if t.epochs == run_space.epochs)}


# ----------------------------------------------------------------------------------------- statistics


def curve(events: list[dict[str, Any]], budget: int) -> tuple[np.ndarray, np.ndarray]:
    """Best-so-far value and seconds after each of the first BUDGET results (arrival order), padded to BUDGET
    with the last value when the run reported fewer; -inf before the first finite value."""
    vals, secs, best, t = np.full(budget, -np.inf), np.full(budget, np.nan), -math.inf, math.nan
    for i, e in enumerate(events[:budget]):
        v = e["value"]
        if isinstance(v, (int, float)) and math.isfinite(v):
            best = max(best, v)
        vals[i], secs[i], t = best, e["t"], e["t"]
    n = min(len(events), budget)
    vals[n:], secs[n:] = best, t
    return vals, secs


def first_reach(vals: np.ndarray, target: float) -> float:
    """Cumulative epochs (1-based) at which VALS first reaches TARGET; +inf when never."""
    hit = np.nonzero(vals >= target)[0]
    return float(hit[0] + 1) if hit.size else math.inf


def _boot_idx(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(RESAMPLES, n))


def _interval(samples: np.ndarray) -> list[float]:
    """95 % percentile interval without interpolation (robust to +inf)."""
    return [float(np.quantile(samples, 0.025, method="lower")), float(np.quantile(samples, 0.975, method="higher"))]


def boot_median(values: list[float], rng: np.random.Generator) -> dict[str, Any]:
    """Median of VALUES (+inf allowed) and its 95 % percentile bootstrap interval over resampled seeds."""
    x = np.asarray(values, dtype=float)
    meds = np.median(x[_boot_idx(len(x), rng)], axis=1)
    return {"median": float(np.median(x)), "ci": _interval(meds)}


def boot_curve_reach(curves: np.ndarray, target: float, rng: np.random.Generator) -> dict[str, Any]:
    """First epoch at which the median (over seeds) best-so-far curve reaches TARGET, with a bootstrap interval."""
    point = first_reach(np.median(curves, axis=0), target)
    med = np.median(curves[_boot_idx(len(curves), rng)], axis=1)  # (RESAMPLES, budget)
    hits = med >= target
    reach = np.where(hits.any(axis=1), hits.argmax(axis=1) + 1.0, np.inf)
    return {"median": point, "ci": _interval(reach)}


def _fin(v: float) -> float | None:
    """JSON value: +/-inf (not reached) becomes None."""
    return None if v is None or not math.isfinite(v) else v


def analyse(runs: list[dict[str, Any]], methods: list[str], budget: int) -> dict[str, Any]:
    """Per-run and per-method figures, target checks and pairwise tests."""
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(BOOT_SEED)
    for r in runs:
        r["curve"], r["seconds"] = curve(r["events"], budget)
        r["best"] = float(r["curve"][-1])
        r["epochs_used"] = min(len(r["events"]), budget)
    global_best = max(r["best"] for r in runs)
    target = TARGET_FRACTION * global_best
    pooled = float(np.median([r["best"] for r in runs]))  # a second, less extreme bar than the one best run
    per_method: dict[str, Any] = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        for r in rs:
            r["epochs_to_target"] = first_reach(r["curve"], target)
            i = r["epochs_to_target"]
            r["seconds_to_target"] = float(r["seconds"][int(i) - 1]) if math.isfinite(i) else math.inf
            r["epochs_to_pooled"] = first_reach(r["curve"], pooled)
        best = boot_median([r["best"] for r in rs], rng)
        ett = boot_median([r["epochs_to_target"] for r in rs], rng)
        etp = boot_median([r["epochs_to_pooled"] for r in rs], rng)
        stt = boot_median([r["seconds_to_target"] for r in rs], rng)
        per_method[m] = {
            "runs": len(rs), "median_best": best["median"], "best_ci": best["ci"],
            "median_epochs_to_target": _fin(ett["median"]), "epochs_to_target_ci": [_fin(v) for v in ett["ci"]],
            "median_seconds_to_target": _fin(stt["median"]), "seconds_to_target_ci": [_fin(v) for v in stt["ci"]],
            "reached": sum(math.isfinite(r["epochs_to_target"]) for r in rs),
            "median_epochs_to_pooled": _fin(etp["median"]), "epochs_to_pooled_ci": [_fin(v) for v in etp["ci"]],
            "reached_pooled": sum(math.isfinite(r["epochs_to_pooled"]) for r in rs),
            "median_trials": float(np.median([r["trials"] for r in rs])),
            "median_wall_s": float(np.median([r["wall_s"] for r in rs])),
            "median_curve": [_fin(float(v)) for v in np.median(np.stack([r["curve"] for r in rs]), axis=0)]}
    targets = {}
    if {"tpe_asha", "random_fifo"} <= set(methods):
        targets["a_reaches_c_final_with_third_of_epochs"] = target_one(runs, per_method, budget, rng)
    if {"tpe_asha", "random_asha", "random_fifo"} <= set(methods):
        a, b, c = (per_method[m] for m in ("tpe_asha", "random_asha", "random_fifo"))
        targets["a_best_above_b_and_c_ci_disjoint"] = {
            "met": bool(a["median_best"] > max(b["median_best"], c["median_best"])
                        and a["best_ci"][0] > max(b["best_ci"][1], c["best_ci"][1])),
            "a": [a["median_best"], a["best_ci"]], "b": [b["median_best"], b["best_ci"]],
            "c": [c["median_best"], c["best_ci"]]}
    pairwise = {}
    for i, m1 in enumerate(methods):
        for m2 in methods[i + 1:]:
            x1 = [r["best"] for r in runs if r["method"] == m1]
            x2 = [r["best"] for r in runs if r["method"] == m2]
            p = float(mannwhitneyu(x1, x2, alternative="two-sided").pvalue) if len(x1) > 1 and len(x2) > 1 else None
            pairwise[f"{m1} vs {m2}"] = {"p_best": p, "median_diff": float(np.median(x1) - np.median(x2))}
    return {"global_best": global_best, "target": target, "pooled_median_best": pooled, "per_method": per_method,
            "targets": targets,
            "pairwise_mannwhitney": pairwise}


def target_one(runs: list[dict[str, Any]], per_method: dict[str, Any], budget: int,
               rng: np.random.Generator) -> dict[str, Any]:
    """(a) reaches (c)'s final median best with <= 1/3 of the epochs (c)'s median curve needs to get there."""
    v_c = per_method["random_fifo"]["median_best"]
    curves = {m: np.stack([r["curve"] for r in runs if r["method"] == m]) for m in ("tpe_asha", "random_fifo")}
    ea, ec = (boot_curve_reach(curves[m], v_c, rng) for m in ("tpe_asha", "random_fifo"))
    met = math.isfinite(ea["median"]) and ea["median"] <= ec["median"] / 3
    return {"met": bool(met), "value_c": v_c,
            "epochs_a": _fin(ea["median"]), "epochs_a_ci": [_fin(v) for v in ea["ci"]],
            "epochs_c": _fin(ec["median"]), "epochs_c_ci": [_fin(v) for v in ec["ci"]],
            "ratio": _fin(ea["median"] / ec["median"]) if math.isfinite(ea["median"]) else None,
            "budget": budget}


# ----------------------------------------------------------------------------------------- output


def plot(runs: list[dict[str, Any]], stats: dict[str, Any], methods: list[str], path: str) -> None:
    """Best val/f1 so far vs cumulative epochs: one faint line per run, the median over seeds in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        for r in rs:
            y = np.where(np.isfinite(r["curve"]), r["curve"], np.nan)
            ax.step(np.arange(1, len(y) + 1), y, where="post", color=COLORS[m], alpha=0.18, lw=0.8)
        med = np.array([np.nan if v is None else v for v in stats["per_method"][m]["median_curve"]])
        ax.step(np.arange(1, len(med) + 1), med, where="post", color=COLORS[m], lw=2.2,
                label=f"{m} (median of {len(rs)})")
    ax.axhline(stats["target"], color="k", ls="--", lw=0.8, label="99 % of global best")
    if "random_fifo" in methods:
        ax.axhline(stats["per_method"]["random_fifo"]["median_best"], color=COLORS["random_fifo"], ls=":", lw=1,
                   label="random_fifo final median")
    lows = [np.nanmin(np.where(np.isfinite(r["curve"]), r["curve"], np.nan)) for r in runs]
    ax.set_ylim(max(min(lows), stats["global_best"] - 0.25), stats["global_best"] + 0.01)
    ax.set_xlabel("cumulative epochs (all trials of the run)")
    ax.set_ylabel("best val/f1 so far")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _num(v: float | None, d: int = 3) -> str:
    if v is None:
        return "not reached"
    return f"{v:.{d}f}" if d else f"{v:.0f}"


def _ci(ci: list[float | None], d: int = 3) -> str:
    return f"[{_num(ci[0], d)}, {_num(ci[1], d)}]".replace("not reached", "∞")


def markdown(out: dict[str, Any]) -> str:
    """The per-method table, the targets and the pairwise tests, as markdown."""
    s = out["setting"]
    lines = [f"Setting: {s['data']}; {s['space']}; {s['epochs']} epochs per trial, ASHA grace {s['grace']} / "
             f"reduction 3; budget {s['budget']} epochs per run; {s['seeds']} sampler seeds; {CONCURRENCY} "
             f"concurrent trials. Global best val/f1 {out['global_best']:.4f}; target (99 %) {out['target']:.4f}; "
             f"median of all runs' bests {out['pooled_median_best']:.4f}. "
             f"Intervals: 95 % percentile bootstrap over seeds ({RESAMPLES} resamples).", "",
             "| method | median best val/f1 [95 % CI] | median epochs to 99 % of global best [95 % CI] | reached | "
             f"median epochs to {out['pooled_median_best']:.3f} (median of all bests) [95 % CI] | reached | "
             "median trials | median wall s |", "|---|---|---|---|---|---|---|---|"]
    for m, v in out["per_method"].items():
        lines.append(f"| {m} | {v['median_best']:.3f} {_ci(v['best_ci'])} | "
                     f"{_num(v['median_epochs_to_target'], 0)} {_ci(v['epochs_to_target_ci'], 0)} | "
                     f"{v['reached']}/{v['runs']} | "
                     f"{_num(v['median_epochs_to_pooled'], 0)} {_ci(v['epochs_to_pooled_ci'], 0)} | "
                     f"{v['reached_pooled']}/{v['runs']} | {v['median_trials']:.0f} | {v['median_wall_s']:.0f} |")
    t = out["targets"]
    if "a_reaches_c_final_with_third_of_epochs" in t:
        x = t["a_reaches_c_final_with_third_of_epochs"]
        lines += ["", f"Target 1, (a) reaches (c)'s final median {x['value_c']:.3f} with ≤ 1/3 of (c)'s epochs: "
                      f"**{'met' if x['met'] else 'missed'}**. Median curves reach it at {_num(x['epochs_a'], 0)} "
                      f"{_ci(x['epochs_a_ci'], 0)} epochs for (a) and {_num(x['epochs_c'], 0)} "
                      f"{_ci(x['epochs_c_ci'], 0)} for (c) (ratio {_num(x['ratio'], 2)}; budget {x['budget']})."]
    if "a_best_above_b_and_c_ci_disjoint" in t:
        x = t["a_best_above_b_and_c_ci_disjoint"]
        lines += ["", f"Target 2, (a)'s median best above (b)'s and (c)'s with disjoint intervals: "
                      f"**{'met' if x['met'] else 'missed'}**: (a) {x['a'][0]:.3f} {_ci(x['a'][1])}, "
                      f"(b) {x['b'][0]:.3f} {_ci(x['b'][1])}, (c) {x['c'][0]:.3f} {_ci(x['c'][1])}."]
    lines += ["", "| pair (best val/f1 per seed) | median difference | Mann-Whitney p |", "|---|---|---|"]
    for pair, v in out["pairwise_mannwhitney"].items():
        lines.append(f"| {pair} | {v['median_diff']:+.3f} | {_num(v['p_best'], 2)} |")
    lines += ["", "| run | best val/f1 | trials | epochs used | epochs to target | wall s |",
              "|---|---|---|---|---|---|"]
    for r in out["runs"]:
        lines.append(f"| {r['method']} s{r['seed']} | {r['best']:.4f} | {r['trials']} | {r['epochs_used']} | "
                     f"{_num(r['epochs_to_target'], 0)} | {r['wall_s']:.0f} |")
    lines += ["", f"Whole script: {out.get('total_wall_s', 0):.0f} s wall."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, help=f"sampler seeds 0..N-1 (default {DEFAULTS['seeds']})")
    ap.add_argument("--budget", type=int, help=f"epochs summed over trials, per run (default {DEFAULTS['budget']})")
    ap.add_argument("--epochs", type=int, help=f"epochs per trial = ASHA max_t (default {DEFAULTS['epochs']})")
    ap.add_argument("--grace", type=int,
                    help=f"ASHA grace period = first warm-restart cycle (default {DEFAULTS['grace']})")
    ap.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    ap.add_argument("--smoke", action="store_true", help="~1 minute check: " + json.dumps(SMOKE))
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--plot", help="PNG of the anytime curves")
    ap.add_argument("--md", help="markdown tables")
    ap.add_argument("--keep", help="keep data and experiments in this folder (default: a temp folder)")
    args = ap.parse_args(argv)
    base = SMOKE if args.smoke else DEFAULTS
    for k, v in base.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        ap.error(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.epochs < 1 or not 1 <= args.grace <= args.epochs or args.budget < args.epochs:
        ap.error("need seeds >= 1, 1 <= grace <= epochs, budget >= epochs")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run every method and seed; print JSON, write the plot and the markdown."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t_start = time.time()
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="search_eff_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        runs = bench(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    stats = analyse(runs, args.methods, args.budget)
    out = {
        "setting": {"data": "demo " + " ".join(f"{k}={v}" for k, v in DATA.items()),
                    "space": "tiny models: d_model 16/32, nhead 2/4, 1-2 layers, ff_mult 2, batch 32/64; lr, "
                             "weight_decay (log), dropout, modality_dropout, aux_weight, focal_gamma",
                    "epochs": args.epochs, "grace": args.grace, "reduction_factor": 3, "budget": args.budget,
                    "seeds": args.seeds, "methods": args.methods, "concurrency": CONCURRENCY, "metric": "val/f1",
                    "smoke": args.smoke, "resamples": RESAMPLES, "boot_seed": BOOT_SEED},
        **{k: stats[k] for k in ("global_best", "target", "pooled_median_best", "per_method", "targets",
                                  "pairwise_mannwhitney")},
        "runs": [{"method": r["method"], "seed": r["seed"], "best": r["best"], "trials": r["trials"],
                  "epochs_used": r["epochs_used"], "epochs_reported": r["epochs_reported"],
                  "repeats_ignored": r["repeats_ignored"], "repeated_trials": r["repeated_trials"],
                  "trials_run_out": r["trials_run_out"], "epochs_on_disk": r["epochs_on_disk"],
                  "epochs_to_target": _fin(r["epochs_to_target"]), "seconds_to_target": _fin(r["seconds_to_target"]),
                  "epochs_to_pooled": _fin(r["epochs_to_pooled"]),
                  "wall_s": r["wall_s"], "curve": [_fin(float(v)) for v in r["curve"]]} for r in runs],
        "total_wall_s": time.time() - t_start}
    if args.plot:
        plot(runs, stats, args.methods, args.plot)
    text = json.dumps(out, indent=1, allow_nan=False)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.md:
        Path(args.md).write_text(markdown(out))
    print(markdown(out))


def bench(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """The sweeps, methods interleaved per seed (so machine-load drift hits all alike); WORK holds everything."""
    from mmtune.data.demo import make_demo
    from mmtune.tune.ray_runtime import connect

    data_dir = make_demo(work / "demo", **DATA)
    space = make_space(args.epochs, args.grace, args.budget)
    connect(None, num_cpus=CONCURRENCY)
    storage = work / "results"
    storage.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in range(args.seeds):
        for m in args.methods:
            r = run_method(m, seed, data_dir, space, storage, args.budget)
            runs.append(r)
            vals = [e["value"] for e in r["events"][:args.budget] if isinstance(e["value"], (int, float))]
            print(f"# {m} seed {seed}: {r['trials']} trials, {r['epochs_reported']} epochs, best "
                  f"{max(vals, default=float('nan')):.4f}, {r['wall_s']:.0f} s", file=sys.stderr, flush=True)
    return runs


if __name__ == "__main__":
    main()
