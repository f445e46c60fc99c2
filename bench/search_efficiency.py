"""Search efficiency: is mmtune's TPE + ASHA better than random search at the same compute?

On the demo data set, every method gets the same total budget (epochs summed over all its trials) and the
same parallelism (2 concurrent trials, 1 CPU each, one shared embedded Ray):

  (a) tpe_asha    mmtune's default: tuner.make_searcher (seeded multivariate TPE, configured as for
                  default.yaml's num_samples) + tuner.make_scheduler (ASHA);
  (b) random_asha OptunaSearch with optuna.samplers.RandomSampler(seed) + the same ASHA;
  (c) random_fifo the same random search, no scheduler: every trial runs the full epochs;
  (d) old         the old script's two hand-made configs (the `start` points of seed-baseline.yaml), each
                  trained once with model.run.train_run at the full epoch budget (reference, not a search).

(a)-(c) are repeated for several sampler seeds. Each run has a large num_samples and a Stopper that ends
the whole experiment once the reported results (one per epoch) reach the budget. From the order in which
results arrived, each run gets an anytime curve: best validation metric so far vs cumulative epochs and vs
wall seconds. The global best G is the best value any run found; for each run we report the epochs and
seconds it needed to reach 0.99 * G ("not reached" when it never did), and the median over seeds.
Finally (a)'s best run is finalized (tune.finalize: top-k configs x seeds, retrained at the full budget)
and its winner's mean test F1 is compared with (d)'s test F1.

The setting is reduced to fit about 25 minutes on 2 CPU cores: the demo data at its default size
(1200/300/300), the default.yaml space and ASHA settings with models capped to d_model 32/64/128 and
1-3 layers (the 256-wide, 4-layer corner costs ~10x more per epoch on CPU), 12 epochs per trial (as
default.yaml) and 144 epochs per method run (12 full trials for FIFO). Val/test sets of 300 (~75
positives) make single F1 values noisy: read the medians, not single runs.

    .venv/bin/python bench/search_efficiency.py [--seeds 3] [--budget 144] [--epochs 12]
        [--out FILE.json] [--plot FILE.png] [--md FILE.md] [--keep DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Stopper

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPACE = ROOT / "search_spaces" / "default.yaml"
BASELINE_SPACE = ROOT / "search_spaces" / "seed-baseline.yaml"
METHODS = ("tpe_asha", "random_asha", "random_fifo")
COLORS = {"tpe_asha": "tab:blue", "random_asha": "tab:orange", "random_fifo": "tab:green", "old": "tab:red"}
CONCURRENCY = 2
MANY_TRIALS = 10_000  # the Stopper ends a run long before this
TARGET_FRACTION = 0.99


class BudgetStopper(Stopper):
    """Tune Stopper: logs every result (one per epoch) and stops the experiment at BUDGET results."""

    def __init__(self, budget: int, log_path: Path, metric: str):
        self.budget, self.log_path, self.metric = budget, str(log_path), metric
        self.count, self.t0 = 0, time.time()

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        """Count and log one reported epoch; never stops a single trial."""
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


def write_space(path: Path, epochs: int) -> Path:
    """default.yaml (its ASHA settings too) capped to small models, EPOCHS per trial, CPU only."""
    raw = yaml.safe_load(DEFAULT_SPACE.read_text())
    raw["params"].update({"d_model": {"type": "categorical", "choices": [32, 64, 128]},
                          "num_layers": {"type": "int", "low": 1, "high": 3},
                          "batch_size": {"type": "categorical", "choices": [32, 64]}})
    raw.update(epochs=epochs, num_samples=MANY_TRIALS,
               description="bench/search_efficiency.py: default.yaml capped to small models")
    raw["fixed"] = {**raw.get("fixed", {}), "device": "cpu"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def make_search(method: str, space: Any, seed: int) -> tuple[Any, Any]:
    """(searcher, scheduler) of METHOD for SPACE with sampler SEED."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from ray.tune.schedulers import FIFOScheduler

    from tune.tuner import make_scheduler, make_searcher

    if method == "tpe_asha":
        # TPE's startup count follows num_samples; configure it as default.yaml's sweep would be.
        default_n = int(yaml.safe_load(DEFAULT_SPACE.read_text()).get("num_samples", 20))
        return make_searcher(space.with_overrides(num_samples=default_n, seed=seed)), make_scheduler(space)
    searcher = OptunaSearch(space=space.distributions(), metric=space.metric, mode=space.mode,
                            sampler=optuna.samplers.RandomSampler(seed=seed))
    return searcher, (make_scheduler(space) if method == "random_asha" else FIFOScheduler())


def run_method(method: str, seed: int, data_dir: Path, space_path: Path, storage: Path, budget: int) -> dict[str, Any]:
    """One budgeted search run; returns its log of results in arrival order and its folder."""
    from tune import results
    from tune.space import load_space
    from tune.job import experiment_location
    from tune.sweep import SweepOptions, sweep

    space = load_space(space_path).with_overrides(seed=seed)
    searcher, scheduler = make_search(method, space, seed)
    log_path = experiment_location(str(storage), f"{method}-s{seed}").local / "bench_results.jsonl"
    stopper = BudgetStopper(budget, log_path, space.metric)
    opts = SweepOptions(data=str(data_dir), space=str(space_path), name=f"{method}-s{seed}", storage=str(storage),
                        gpus_per_trial="0", seed=seed, overwrite=True, max_concurrent=CONCURRENCY,
                        num_samples=MANY_TRIALS)
    t0 = time.time()
    exp = sweep(opts, searcher=searcher, scheduler=scheduler, stopper=stopper)
    wall = time.time() - t0
    summary = results.export(exp.path)
    trials = exp.trials
    events = [json.loads(line) for line in log_path.read_text().splitlines()]
    return {"method": method, "seed": seed, "exp_dir": str(exp.path), "wall_s": wall, "events": events,
            "trials": len(trials), "epochs_on_disk": sum(t.epochs for t in trials),
            "export_best": summary["best_value"]}


def curve(events: list[dict[str, Any]], budget: int) -> list[tuple[int, float, float]]:
    """Best-so-far (cumulative epochs, seconds, value) over the first BUDGET results in arrival order."""
    out, best = [], -math.inf
    for e in events[:budget]:
        v = e["value"]
        if isinstance(v, (int, float)) and math.isfinite(v):
            best = max(best, v)
        out.append((e["n"], e["t"], best))
    return out


def time_to(points: list[tuple[int, float, float]], target: float) -> tuple[int | None, float | None]:
    """(epochs, seconds) at which the curve first reaches TARGET, or (None, None)."""
    for n, t, v in points:
        if v >= target:
            return n, t
    return None, None


def median_or_none(values: list[float | None]) -> float | None:
    """Median treating None (not reached) as +inf; None when the median itself is not reached."""
    m = statistics.median([math.inf if v is None else v for v in values])
    return None if math.isinf(m) else m


def run_old_configs(data_dir: Path, space_path: Path, out_dir: Path, epochs: int) -> list[dict[str, Any]]:
    """(d): the two start points of seed-baseline.yaml, trained in parallel as 1-CPU Ray tasks."""
    import ray

    from tune.space import load_space
    from tune.job import load_data

    space = load_space(space_path)
    base = load_space(BASELINE_SPACE)
    configs = [dataclasses.replace(space.train_config(s), epochs=epochs) for s in base.start]
    data = load_data(data_dir, space)

    @ray.remote(num_cpus=1)
    def train(cfg: Any, data: Any, run_dir: str) -> tuple[dict[str, Any], float]:
        """train_run one config with one thread; returns its summary and wall seconds."""
        import torch

        from model.run import train_run

        torch.set_num_threads(1)
        t0 = time.time()
        return train_run(cfg, data, run_dir), time.time() - t0

    ref = ray.put(data)
    outs = ray.get([train.remote(c, ref, str(out_dir / f"old{i}")) for i, c in enumerate(configs)])
    return [{"config": {k: v for k, v in s.items()}, "val_f1": o["best_value"], "test_f1": o["test"]["f1"],
             "best_epoch": o["best_epoch"], "epochs_run": o["epochs_run"], "seconds": sec}
            for s, (o, sec) in zip(base.start, outs)]


def analyse(runs: list[dict[str, Any]], budget: int) -> dict[str, Any]:
    """Per-run and per-method figures against the global best."""
    for r in runs:
        r["curve"] = curve(r["events"], budget)
        r["best"] = r["curve"][-1][2] if r["curve"] else None
        r["epochs_used"] = len(r["curve"])
        r["seconds_used"] = r["curve"][-1][1] if r["curve"] else None
    global_best = max(r["best"] for r in runs if r["best"] is not None)
    target = TARGET_FRACTION * global_best
    per_method = {}
    for m in METHODS:
        rs = [r for r in runs if r["method"] == m]
        for r in rs:
            r["epochs_to_target"], r["seconds_to_target"] = time_to(r["curve"], target)
        per_method[m] = {
            "median_best": statistics.median(r["best"] for r in rs),
            "median_epochs_to_target": median_or_none([r["epochs_to_target"] for r in rs]),
            "median_seconds_to_target": median_or_none([r["seconds_to_target"] for r in rs]),
            "reached": f"{sum(r['epochs_to_target'] is not None for r in rs)}/{len(rs)}",
            "median_trials": statistics.median(r["trials"] for r in rs),
            "median_wall_s": statistics.median(r["wall_s"] for r in rs)}
    return {"global_best": global_best, "target": target, "per_method": per_method}


def target_one(per_method: dict[str, Any], budget: int) -> dict[str, Any]:
    """Does (a) reach 99 % of the best with <= 1/3 of (c)'s compute (epochs and seconds)?"""
    a, c = per_method["tpe_asha"], per_method["random_fifo"]
    out = {}
    for unit in ("epochs", "seconds"):
        ea, ec = a[f"median_{unit}_to_target"], c[f"median_{unit}_to_target"]
        if ea is None:
            out[unit] = {"met": False, "why": "(a) does not reach the target (median over seeds)"}
        elif ec is None:
            out[unit] = {"met": True, "why": "(a) reaches the target, (c) does not within the budget "
                                             "(so (c)'s compute is > budget; ratio is an upper bound)",
                         "ratio_upper_bound": ea / budget}
        else:
            out[unit] = {"met": ea <= ec / 3, "ratio": ea / ec}
    return out


def finalize_best(runs: list[dict[str, Any]], top_k: int, seeds: int) -> dict[str, Any]:
    """Finalize (a)'s best run; its winner's mean/std test F1."""
    from tune.finalize import finalize

    best = max((r for r in runs if r["method"] == "tpe_asha"), key=lambda r: r["best"])
    t0 = time.time()
    s = finalize(best["exp_dir"], top_k=top_k, seeds=seeds, num_cpus=CONCURRENCY)
    w = s["winner"]
    return {"run": f"tpe_asha-s{best['seed']}", "top_k": top_k, "seeds": seeds, "params": w["params"],
            "val_f1_mean": w["mean"].get("val/f1"), "val_f1_std": w["std"].get("val/f1"),
            "test_f1_mean": w["mean"].get("test/f1"), "test_f1_std": w["std"].get("test/f1"),
            "seconds": time.time() - t0}


def plot(runs: list[dict[str, Any]], old: list[dict[str, Any]], target: float, path: str) -> None:
    """Best-so-far val metric vs cumulative epochs, one line per run, colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    seen = set()
    for r in runs:
        xs = [n for n, _, v in r["curve"] if v > -math.inf]
        ys = [v for _, _, v in r["curve"] if v > -math.inf]
        ax.step(xs, ys, where="post", color=COLORS[r["method"]], alpha=0.8,
                label=None if r["method"] in seen else r["method"])
        seen.add(r["method"])
    for i, o in enumerate(old):
        ax.axhline(o["val_f1"], color=COLORS["old"], ls=":", label="old configs (val, full epochs)" if i == 0 else None)
    ax.axhline(target, color="k", ls="--", lw=0.8, label="99 % of global best")
    ax.set_xlabel("cumulative epochs (all trials)")
    ax.set_ylabel("best val/f1 so far")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def markdown(out: dict[str, Any]) -> str:
    """A markdown table of the per-method figures, (d) and the finalize comparison."""
    f = lambda v, d=3: "not reached" if v is None else f"{v:.{d}f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [f"Global best val/f1 {out['global_best']:.4f}; target (99 %) {out['target']:.4f}. "
             f"Budget {out['setting']['budget']} epochs per run, {out['setting']['seeds']} seeds, "
             f"{CONCURRENCY} concurrent trials.", "",
             "| method | median best val/f1 | runs reaching target | median epochs to target | "
             "median s to target | median trials | median wall s |", "|---|---|---|---|---|---|---|"]
    for m, v in out["per_method"].items():
        lines.append(f"| {m} | {f(v['median_best'])} | {v['reached']} | {f(v['median_epochs_to_target'], 0)} | "
                     f"{f(v['median_seconds_to_target'], 0)} | {f(v['median_trials'], 0)} | {f(v['median_wall_s'], 0)} |")
    lines += ["", "| run | best val/f1 | trials | epochs to target | s to target |", "|---|---|---|---|---|"]
    for r in out["runs"]:
        lines.append(f"| {r['method']} s{r['seed']} | {r['best']:.4f} | {r['trials']} | "
                     f"{f(r['epochs_to_target'], 0)} | {f(r['seconds_to_target'], 0)} |")
    lines += ["", "| old config | val/f1 | test/f1 | s |", "|---|---|---|---|"]
    for i, o in enumerate(out["old"]):
        c = o["config"]
        lines.append(f"| #{i + 1} d{c['d_model']} L{c['num_layers']} h{c['nhead']} | {o['val_f1']:.4f} | "
                     f"{o['test_f1']:.4f} | {o['seconds']:.0f} |")
    fin = out.get("finalize")
    if fin:
        lines += ["", f"Finalized winner of {fin['run']} (top-{fin['top_k']} x {fin['seeds']} seeds): test/f1 "
                      f"{fin['test_f1_mean']:.4f} ± {fin['test_f1_std']:.4f} (val/f1 {fin['val_f1_mean']:.4f})."]
    lines += ["", f"Targets: {json.dumps(out['targets'])}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run every method and seed, (d), the finalize step; print JSON, write plot and markdown."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=int, default=144, help="epochs summed over trials, per method run")
    ap.add_argument("--epochs", type=int, default=12, help="per-trial epoch budget (ASHA max_t)")
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--final-seeds", type=int, default=2)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--plot", help="PNG of the anytime curves")
    ap.add_argument("--md", help="markdown table")
    ap.add_argument("--keep", help="keep data and experiments in this folder (default: a temp folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t_start = time.time()
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="search_eff_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        out = bench(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out["total_wall_s"] = time.time() - t_start
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.md:
        Path(args.md).write_text(markdown(out))


def bench(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The measurements; WORK holds the data and experiment folders."""
    from data.demo import make_demo
    from tune.ray_runtime import connect

    data_dir = make_demo(work / "demo")
    space_path = write_space(work / "space.yaml", args.epochs)
    connect(None, num_cpus=CONCURRENCY)
    runs = []
    for seed in range(args.seeds):  # methods interleaved per seed, so machine-load drift hits all alike
        for m in METHODS:
            runs.append(run_method(m, seed, data_dir, space_path, work / "results", args.budget))
            print(f"# {m} seed {seed}: {runs[-1]['trials']} trials, {runs[-1]['wall_s']:.0f} s", flush=True)
    old = run_old_configs(data_dir, space_path, work / "old", args.epochs)
    stats = analyse(runs, args.budget)
    fin = finalize_best(runs, args.top_k, args.final_seeds) if args.top_k > 0 else None
    targets = {"a_le_third_of_c": target_one(stats["per_method"], args.budget)}
    if fin:
        targets["winner_beats_both_old_on_test_f1"] = {
            "met": all(fin["test_f1_mean"] > o["test_f1"] for o in old),
            "winner": fin["test_f1_mean"], "old": [o["test_f1"] for o in old]}
    if args.plot:
        plot(runs, old, stats["target"], args.plot)
    return {
        "setting": {"data": "demo n_train=1200 n_val=300 n_test=300", "space": "default.yaml capped: d_model "
                    "32/64/128, num_layers 1-3, batch 32/64", "epochs": args.epochs, "budget": args.budget,
                    "seeds": args.seeds, "asha": "default.yaml's", "concurrency": CONCURRENCY,
                    "metric": "val/f1"},
        "global_best": stats["global_best"], "target": stats["target"], "per_method": stats["per_method"],
        "runs": [{k: r[k] for k in ("method", "seed", "best", "trials", "epochs_used", "seconds_used",
                                    "epochs_to_target", "seconds_to_target", "wall_s", "epochs_on_disk",
                                    "export_best")} for r in runs],
        "old": old, "finalize": fin, "targets": targets}


if __name__ == "__main__":
    main()
