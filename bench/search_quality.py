"""Search quality: does `mmtune sweep` give a better model than no sweep? Test F1 of what each flow hands the user.

Every method runs as a user runs it: `python -m mmtune.tune ...` in a subprocess (2 CPUs), timed by wall clock. On the
demo data generated small and hard (400 train / 100 val / 2000 test, difficulty 0.7; the large test split makes
test F1 precise), for each data seed:

  defaults         (i)     `mmtune train` with no config at all, one run per retrain seed
  holdout_best     (ii)    a holdout sweep (cv 0) of N trials, no finalize; its single best trial's config retrained
  default_sweep    (iii)   the sweep as `mmtune sweep` runs it by default (finalize; cv as search_spaces/default.yaml
                           sets it), N trials; `best_config.yaml` retrained
  cv_on / cv_off   (iii-b) the default flow with K-fold CV on (N trials) and off (K*N trials: equal compute in
                           trial-epochs x folds before ASHA); when (iii) already runs K-fold CV, cv_on is (iii)
  holdout_best_eq          cv_off's single best trial (before finalize), retrained: finalize's share at K*N trials

Every retrain is `mmtune train --config C --seed s` (seeds 0..S-1); its summary.json holds the test metrics of its
model (best val epoch; under CV the recipe's last epoch). The oracle (iv) of a sweep is the best test F1 among its
trials, each trial's best-epoch checkpoint evaluated on test (a CV trial: the mean of its K fold models' test F1).
Selection regret = oracle - mean retrained test F1 of the chosen config (the issue's definition: it mixes selection
with retraining noise and can be negative, e.g. a CV recipe trains on more data than any fold model); regret_ckpt =
oracle - the chosen trial's own checkpoint test F1 (pure selection, >= 0 by construction).

The search space is search_spaces/default.yaml with smaller models (d_model 16-64, 1-2 layers, nhead 2/4, batch
16-64): same ASHA, warm restarts, epoch_samples and parameter ranges otherwise.

    .venv/bin/python bench/search_quality.py [--data-seeds 3] [--seeds 3] [--num-samples 12] [--cv-k 5]
        [--smoke] [--out bench/search_quality.json] [--md FILE.md] [--keep DIR]

`--smoke` (1 data seed, tiny data, 2 trials x 2 epochs, (i) capped at 2 epochs) checks the path; numbers mean nothing.

Issue 21's many-task harness (the default flow against `mmtune train` on 8 tasks of generator seed x difficulty x
size, paired through `mmtune compare`, one file per task) is bench/tasks.py; it reuses this file's helpers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

METHODS = ("defaults", "holdout_best", "default_sweep", "cv_on", "cv_off", "holdout_best_eq")
# Issue 20's levers, each a unit of its own (--methods): the default flow with the budget in steps as it was (25
# optimizer steps per epoch, whatever the batch size: `train_steps` 25 is exactly that on 400-sample folds) and in
# samples (the default space); both finalize every seed, and the race is replayed on that grid (bench/race_replay.py).
LEVERS = ("cv_steps", "cv_samples")
LABEL = {"defaults": "(i) train defaults", "holdout_best": "(ii) holdout sweep, best trial",
         "default_sweep": "(iii) default sweep", "cv_on": "(iii-b) CV on", "cv_off": "(iii-b) CV off, K x trials",
         "holdout_best_eq": "cv_off's best trial", "cv_steps": "default flow, budget in steps (before)",
         "cv_samples": "default flow, budget in samples (after)"}
CPUS = 2
REGRET_TARGET = 0.01
DEFAULTS = {"data_seeds": 3, "seeds": 3, "num_samples": 12, "epochs": None, "grace": None, "cv_k": 5,
            "epoch_samples": None, "default_epochs": None, "n_train": 400, "n_val": 100, "n_test": 2000}
SMOKE = {"data_seeds": 1, "seeds": 2, "num_samples": 2, "epochs": 2, "grace": 1, "cv_k": 2, "epoch_samples": 64,
         "default_epochs": 2, "n_train": 160, "n_val": 60, "n_test": 300}
DIFFICULTY = 0.7
SMALL_MODELS = {"d_model": {"type": "categorical", "choices": [16, 32, 64]},
                "num_layers": {"type": "int", "low": 1, "high": 2},
                "nhead": {"type": "categorical", "choices": [2, 4]}}


# ----------------------------------------------------------------------------------------- running the CLI


def mmtune(args: list[str], log: Path) -> tuple[str, float]:
    """Run `python -m mmtune.tune ARGS` (output to LOG); return its stdout and wall seconds; raise on failure."""
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "mmtune.tune", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.time() - t0
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"$ mmtune {' '.join(args)}\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    if proc.returncode != 0:
        raise RuntimeError(f"mmtune {args[0]} failed ({proc.returncode}), see {log}: {proc.stderr.strip()[-600:]}")
    return proc.stdout, wall


def retrain(data: Path, config: Path | None, seeds: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """`mmtune train` once per seed; test F1 of each run and the summed wall time."""
    f1s, wall = [], 0.0
    for s in range(seeds):
        run = out / f"seed{s}"
        cfg = ["--config", str(config)] if config else []
        _, w = mmtune(["train", "--data", str(data), *cfg, "--checkpoint-dir", str(run), "--seed", str(s),
                       "--save-best-only", *extra], out / f"seed{s}.log")
        f1s.append(float(json.loads((run / "summary.json").read_text())["test"]["f1"]))
        wall += w
    return {"test_f1": f1s, "retrain_wall_s": wall,
            "config": yaml.safe_load(config.read_text()) if config else "mmtune defaults" + " ".join(extra)}


def write_space(path: Path, args: argparse.Namespace, cv: int | str | None) -> Path:
    """search_spaces/default.yaml with small models and the run's sizes; CV None keeps default.yaml's cv."""
    raw = yaml.safe_load((ROOT / "search_spaces/default.yaml").read_text())
    raw["description"] = "bench/search_quality.py: default.yaml with small models"
    raw["params"] = {**raw["params"], **SMALL_MODELS}
    raw["fixed"] = {**raw.get("fixed", {}), "device": "cpu"}
    if args.epochs:
        raw["epochs"] = args.epochs
    if args.grace:
        raw.setdefault("asha", {})["grace_period"] = args.grace
        raw["fixed"]["t0"] = args.grace
    if args.epoch_samples is not None:
        raw["fixed"]["epoch_samples"] = args.epoch_samples
    if getattr(args, "smoke", False):  # a smoke checks the path; the defaults' 256-wide model would be most of its
        raw["defaults_contender"] = False  # time (tests/test_finalize.py and flow_cost's smoke run them)
    if cv is not None:
        raw["cv"] = cv
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_sweep(data: Path, space: Path, name: str, storage: Path, trials: int, finalize: bool,
              extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """One `mmtune sweep` as a user runs it: finalized by default, or with --finalize-top-k 0; EXTRA flags."""
    args = ["sweep", "--data", str(data), "--space", str(space), "--name", name, "--storage", str(storage),
            "--num-cpus", str(CPUS), "--num-samples", str(trials), "--overwrite", *extra]
    out, wall = mmtune(args + ([] if finalize else ["--finalize-top-k", "0"]), storage / f"{name}.log")
    exp = storage / name
    if finalize and not (exp / "final" / "summary.json").is_file():
        raise RuntimeError(f"{exp}: the sweep did not finalize (no final/summary.json)")
    summary = json.loads((exp / "summary.json").read_text())
    return {"exp": exp, "sweep_wall_s": wall, "warnings": summary.get("warnings", []), "noise": summary.get("noise"),
            "stdout_warnings": [ln for ln in out.splitlines() if "warn" in ln.lower()]}


def chosen(exp: Path, finalized: bool) -> tuple[Path, str]:
    """The config file the flow hands the user (finalized winner or single best trial) and its sweep trial."""
    if finalized:
        return exp / "best_config.yaml", json.loads((exp / "final/summary.json").read_text())["winner"]["trial_id"]
    return exp / "best_trial_config.yaml", json.loads((exp / "summary.json").read_text())["best_trial"]


# ----------------------------------------------------------------------------------------- oracle


def checkpoint_test_f1(state: dict[str, Any], data: Path) -> float:
    """Test F1 of a sweep checkpoint: its model, or the mean over a CV checkpoint's fold models."""
    from mmtune.model.checkpoint import fold_models
    from mmtune.model.run import checkpoint_data, evaluate_checkpoint

    f1s = [evaluate_checkpoint(s, checkpoint_data(s, data))["test"]["f1"] for s in fold_models(state)]
    return float(statistics.fmean(f1s))


def oracle(exp: Path, data: Path) -> dict[str, Any]:
    """Every ranked trial's best-epoch checkpoint on test: per-trial F1, the oracle (best) and the fold count."""
    from mmtune.model.checkpoint import fold_models, load_checkpoint
    from mmtune.tune.experiment import Experiment
    from mmtune.tune.results import best_checkpoint

    per_trial, folds, e = {}, 1, Experiment.open(exp)
    for t in e.ranked:
        try:
            path, epoch = best_checkpoint(t)
            state = load_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - a trial without a kept checkpoint is left out, and said
            print(f"# oracle: {t.trial_id} skipped ({err})", file=sys.stderr)
            continue
        folds = len(fold_models(state))
        per_trial[t.trial_id] = {"val": t.best_value, "test_f1": checkpoint_test_f1(state, data),
                                 "best_epoch": t.best_epoch, "checkpoint_epoch": epoch}
    best = max(per_trial.items(), key=lambda kv: kv[1]["test_f1"])
    return {"oracle": best[1]["test_f1"], "oracle_trial": best[0], "trials": per_trial, "folds": folds,
            "epoch_folds": sum(t.epochs for t in e.trials) * folds}


def final_epoch_folds(exp: Path, folds: int) -> int | None:
    """Epochs x folds trained by the finalize runs of EXP (same cv as its sweep; None: not finalized)."""
    from mmtune.tune.experiment import Experiment

    if not (exp / "final").is_dir():
        return None
    return sum(t.epochs for t in Experiment.open(exp / "final").trials) * folds


# ----------------------------------------------------------------------------------------- one data seed


def sweep_method(method: str, data: Path, space: Path, trials: int, finalize: bool, seeds: int, work: Path,
                 sweep: dict[str, Any] | None = None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """A sweep-based method (or a second reading of an existing SWEEP): sweep, oracle, chosen config retrained."""
    if sweep is None:
        sweep = run_sweep(data, space, method, work, trials, finalize, extra)
        sweep["oracle"] = oracle(sweep["exp"], data)
    cfg, trial_id = chosen(sweep["exp"], finalize)
    run = retrain(data, cfg, seeds, work / f"{method}-retrain", [])
    orc = sweep["oracle"]
    mean = statistics.fmean(run["test_f1"])
    ckpt = orc["trials"].get(trial_id, {}).get("test_f1")
    return {**run, "method": method, "sweep": sweep, "chosen_trial": trial_id, "trials": trials,
            "sweep_wall_s": sweep["sweep_wall_s"], "oracle": orc["oracle"], "regret": orc["oracle"] - mean,
            "regret_ckpt": None if ckpt is None else orc["oracle"] - ckpt, "folds": orc["folds"],
            "search_epoch_folds": orc["epoch_folds"],
            "finalize_epoch_folds": final_epoch_folds(sweep["exp"], orc["folds"])}


def one_data_seed(ds: int, args: argparse.Namespace, work: Path) -> tuple[list[dict], dict[str, str]]:
    """Every method on data seed DS; returns the runs and the methods skipped, each with its reason."""
    data = make_data(work / "data", args, ds)
    n, s, skipped = args.num_samples, args.seeds, {}
    extra = ["--epochs", str(args.default_epochs)] if args.default_epochs else []
    runs = [{**retrain(data, None, s, work / "defaults", extra), "method": "defaults", "sweep_wall_s": 0.0}]
    _say(ds, runs[-1])
    runs.append(sweep_method("holdout_best", data, write_space(work / "cv0.yaml", args, 0), n, False, s, work))
    _say(ds, runs[-1])
    runs.append(sweep_method("default_sweep", data, write_space(work / "default.yaml", args, None), n, True, s,
                             work))
    _say(ds, runs[-1])
    k_default = runs[-1]["folds"] if runs[-1]["folds"] > 1 else 0
    k = k_default or args.cv_k
    try:
        cv_on = (dict(runs[-1], method="cv_on", same_as="default_sweep") if k_default else
                 sweep_method("cv_on", data, write_space(work / "cvk.yaml", args, k), n, True, s, work))
        if cv_on["folds"] < 2:
            raise RuntimeError(f"cv: {k} in the space file did not give CV trials (checkpoints hold one model)")
        runs.append(cv_on)
        _say(ds, runs[-1])
    except RuntimeError as e:  # a long run keeps the other methods' figures; "skipped" in the JSON says why
        skipped["cv_on"] = str(e)
    runs.append(sweep_method("cv_off", data, write_space(work / "cv0.yaml", args, 0), k * n, True, s, work))
    _say(ds, runs[-1])
    runs.append(sweep_method("holdout_best_eq", data, work / "cv0.yaml", k * n, False, s, work,
                             sweep=runs[-1]["sweep"]))
    _say(ds, runs[-1])
    for r in runs:
        r["data_seed"] = ds
    return runs, skipped


def lever_units(ds: int, args: argparse.Namespace, work: Path, units: Path) -> list[dict]:
    """The methods of --methods on data seed DS, one result file each in UNITS; a unit with a file is not re-run."""
    runs = []
    for method in args.methods:
        path = units / f"ds{ds}-{method}.json"
        if not path.is_file():
            data = make_data(work / "data", args, ds)
            r = lever_unit(method, data, args, work)
            r["data_seed"] = ds
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(clean_run(r), indent=1, default=str) + "\n")
        runs.append(json.loads(path.read_text()))
        _say(ds, runs[-1])
    return runs


def lever_unit(method: str, data: Path, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """One unit: (i) the defaults, or the default flow with the budget in steps or in samples (race replayed)."""
    from bench.race_replay import replay

    if method == "defaults":
        extra = ["--epochs", str(args.default_epochs)] if args.default_epochs else []
        return {**retrain(data, None, args.seeds, work / "defaults", extra), "method": method, "sweep_wall_s": 0.0}
    space = write_space(work / f"{method}.yaml", args, None)
    raw = yaml.safe_load(space.read_text())
    # The levers compare budget units, each unit finalizing the same 3 x 3 grid: the defaults as a contender (issue
    # 21, bench/contender_effect.py measures them) would add 3 runs of the largest model to both, and data seed 0
    # ran before they existed.
    raw["defaults_contender"] = False
    if method == "cv_steps":
        raw["fixed"].update(train_steps=25, epoch_samples=0)
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    r = sweep_method(method, data, space, args.num_samples, True, args.seeds, work, extra=("--no-finalize-race",))
    from mmtune.model.checkpoint import load_checkpoint

    return {**r, "race": replay(r["sweep"]["exp"], lambda path: checkpoint_test_f1(load_checkpoint(path), data))}


def make_data(folder: Path, args: argparse.Namespace, seed: int) -> Path:
    """`mmtune data demo` for data seed SEED."""
    out = folder / f"seed{seed}"
    mmtune(["data", "demo", str(out), "--n-train", str(args.n_train), "--n-val", str(args.n_val), "--n-test",
            str(args.n_test), "--difficulty", str(DIFFICULTY), "--seed", str(seed)], folder / f"seed{seed}.log")
    return out


def _say(ds: int, r: dict[str, Any]) -> None:
    f1 = ", ".join(f"{v:.3f}" for v in r["test_f1"])
    extra = f", oracle {r['oracle']:.3f}, regret {r['regret']:+.3f}" if "oracle" in r else ""
    print(f"# data seed {ds} {r['method']}: test f1 {f1}{extra}; sweep {r['sweep_wall_s']:.0f} s, retrain "
          f"{r['retrain_wall_s']:.0f} s", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- statistics


def mean_sd(xs: list[float]) -> tuple[float, float]:
    """Mean and sample sd (0 for one value)."""
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Mean test F1 of A minus B on one data seed, its standard error, and whether it is beyond 2 se."""
    (ma, sa), (mb, sb) = mean_sd(a["test_f1"]), mean_sd(b["test_f1"])
    se = math.sqrt(sa ** 2 / len(a["test_f1"]) + sb ** 2 / len(b["test_f1"]))
    return {"diff": ma - mb, "se": se, "beyond_2se": abs(ma - mb) > 2 * se, "sd_b": sb}


def analyse(runs: list[dict[str, Any]], data_seeds: list[int]) -> dict[str, Any]:
    """Per-method figures per data seed, the three targets and the CV verdict."""
    by = {(r["method"], r["data_seed"]): r for r in runs}
    per_method = {}
    for m in (*METHODS, *LEVERS):
        rs = [by[(m, d)] for d in data_seeds if (m, d) in by]
        if rs:
            per_method[m] = summarize_method(rs)
    targets = {}
    if all(("default_sweep", d) in by and ("defaults", d) in by for d in data_seeds):
        d1 = [diff(by[("default_sweep", d)], by[("defaults", d)]) for d in data_seeds]
        targets["iii_beats_i_by_more_than_i_sd"] = {"met": all(x["diff"] > x["sd_b"] for x in d1), "per_seed": d1}
    if all(("default_sweep", d) in by and ("holdout_best", d) in by for d in data_seeds):
        d2 = [diff(by[("default_sweep", d)], by[("holdout_best", d)]) for d in data_seeds]
        targets["iii_beats_ii"] = {"met": all(x["diff"] > x["sd_b"] for x in d2), "per_seed": d2,
                                   "rule": "on every data seed by more than (ii)'s seed sd (as for i)"}
    if "default_sweep" in per_method:
        med = per_method["default_sweep"]["median_regret"]
        targets["median_regret_iii_at_most_0.01"] = {"met": med <= REGRET_TARGET, "median_regret": med}
    cv = None
    if all(("cv_on", d) in by and ("cv_off", d) in by for d in data_seeds):
        cv = [diff(by[("cv_on", d)], by[("cv_off", d)]) for d in data_seeds]
    levers = None
    if all((m, d) in by for m in LEVERS for d in data_seeds):
        levers = [{**diff(by[("cv_samples", d)], by[("cv_steps", d)]), "data_seed": d,
                   "wall_ratio": by[("cv_samples", d)]["sweep_wall_s"] / by[("cv_steps", d)]["sweep_wall_s"],
                   "race": {m: by[(m, d)]["race"] for m in LEVERS}} for d in data_seeds]
    return {"per_method": per_method, "targets": targets, "cv_on_minus_cv_off": cv, "samples_minus_steps": levers,
            "samples_minus_steps_over_seeds": over_seeds([x["diff"] for x in levers or []])}


def over_seeds(diffs: list[float]) -> dict[str, Any] | None:
    """The mean of per-data-seed differences with its Student t 95 % interval over data seeds (the unit that
    varies what a sweep sees); None below two data seeds."""
    from mmtune.tune.compare import mean_interval

    return {**mean_interval(diffs), "data_seeds": len(diffs)} if len(diffs) >= 2 else None


def summarize_method(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean +- sd of test F1 per data seed, their mean, median regret and wall times."""
    out: dict[str, Any] = {"per_data_seed": {str(r["data_seed"]): dict(zip(("mean", "sd"), mean_sd(r["test_f1"])))
                                             for r in rs}}
    out["mean_of_means"] = statistics.fmean(v["mean"] for v in out["per_data_seed"].values())
    out["median_sweep_wall_s"] = statistics.median(r["sweep_wall_s"] for r in rs)
    out["median_retrain_wall_s"] = statistics.median(r["retrain_wall_s"] for r in rs)
    if "oracle" in rs[0]:
        out["regret"] = {str(r["data_seed"]): r["regret"] for r in rs}
        out["median_regret"] = statistics.median(r["regret"] for r in rs)
        ck = [r["regret_ckpt"] for r in rs if r["regret_ckpt"] is not None]
        out["median_regret_ckpt"] = statistics.median(ck) if ck else None
        out["median_oracle"] = statistics.median(r["oracle"] for r in rs)
    return out


# ----------------------------------------------------------------------------------------- output


def _ms(v: dict[str, float]) -> str:
    return f"{v['mean']:.3f} ± {v['sd']:.3f}"


def _num(v: float | None, nd: int = 3, sign: bool = False) -> str:
    return "-" if v is None else f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def markdown(out: dict[str, Any]) -> str:
    """The tables and target lines for BENCHMARKS.md."""
    st, seeds = out["setting"], [str(d) for d in out["setting"]["data_seeds"]]
    lines = [f"Setting: {st['data']}; {st['seeds']} retrain seeds; sweeps of {st['num_samples']} trials "
             f"(cv_off: {st['cv_k']} x), space {st['space']}; {CPUS} CPUs." + (" SMOKE RUN." if st["smoke"] else ""),
             "", "| method | " + " | ".join(f"test F1 data seed {d} (mean ± sd)" for d in seeds)
             + " | mean | median regret [ckpt] | oracle | sweep wall s | retrain wall s |",
             "|---|" + "---|" * (len(seeds) + 5)]
    for m, v in out["per_method"].items():
        cells = [_ms(v["per_data_seed"][d]) if d in v["per_data_seed"] else "-" for d in seeds]
        reg = (f"{_num(v['median_regret'], sign=True)} [{_num(v['median_regret_ckpt'], sign=True)}]"
               if "median_regret" in v else "-")
        lines.append(f"| {LABEL[m]} | " + " | ".join(cells) + f" | {v['mean_of_means']:.3f} | {reg} | "
                     f"{_num(v.get('median_oracle'))} | {v['median_sweep_wall_s']:.0f} | "
                     f"{v['median_retrain_wall_s']:.0f} |")
    lines += ["", *target_lines(out), "", "| data seed | method | trials | folds | epochs x folds (search / finalize) "
              "| chosen trial | oracle trial | sweep warnings |", "|---|---|---|---|---|---|---|---|"]
    for r in out["runs"]:
        if "oracle" in r:
            lines.append(f"| {r['data_seed']} | {r['method']} | {r['trials']} | {r['folds']} | "
                         f"{r['search_epoch_folds']} / {r['finalize_epoch_folds'] or 0} | {r['chosen_trial']} | "
                         f"{r['oracle_trial']} | {len(r['warnings'])} |")
    lines += ["", *[f"Note: {n}" for n in out["notes"]], f"Whole script: {out['total_wall_s']:.0f} s wall."]
    return "\n".join(lines) + "\n"


def target_lines(out: dict[str, Any]) -> list[str]:
    """One line per target (met/missed with the numbers) and the CV verdict."""
    t, lines = out["targets"], []
    fmt = lambda xs: ", ".join(f"{x['diff']:+.3f} (se {x['se']:.3f}, baseline sd {x['sd_b']:.3f})" for x in xs)
    if "iii_beats_i_by_more_than_i_sd" in t:
        x = t["iii_beats_i_by_more_than_i_sd"]
        lines.append(f"Target 1, (iii) beats (i) on every data seed by more than (i)'s seed sd: "
                     f"**{'met' if x['met'] else 'missed'}**; (iii) - (i) per data seed: {fmt(x['per_seed'])}.")
    if "iii_beats_ii" in t:
        x = t["iii_beats_ii"]
        lines.append(f"Target 2, (iii) beats (ii) ({x['rule']}): **{'met' if x['met'] else 'missed'}**; "
                     f"(iii) - (ii): {fmt(x['per_seed'])}.")
    if "median_regret_iii_at_most_0.01" in t:
        x = t["median_regret_iii_at_most_0.01"]
        lines.append(f"Target 3, median selection regret of (iii) <= {REGRET_TARGET}: "
                     f"**{'met' if x['met'] else 'missed'}** ({x['median_regret']:+.4f}).")
    for x in out.get("samples_minus_steps") or []:
        r = x["race"]
        lines.append(f"Data seed {x['data_seed']}: budget in samples - in steps, test F1 {x['diff']:+.3f} (se "
                     f"{x['se']:.3f}, {'beyond' if x['beyond_2se'] else 'within'} 2 se); sweep wall x "
                     f"{x['wall_ratio']:.2f}. Race replayed: " + "; ".join(
                         f"{m} {v['runs_raced']}/{v['runs_full']} runs, {'same pick' if v['same_pick'] else 'other pick'}"
                         f" (test F1 {v['test_f1_raced']:.3f} vs {v['test_f1_full']:.3f})" for m, v in r.items()) + ".")
    if (m := out.get("samples_minus_steps_over_seeds")) is not None:
        inside = m["ci95"][0] <= 0 <= m["ci95"][1]
        lines.append(f"Budget in samples - in steps over {m['data_seeds']} data seeds: {m['mean']:+.3f}, t interval "
                     f"[{m['ci95'][0]:+.3f}, {m['ci95'][1]:+.3f}]: "
                     + ("no difference shown." if inside else "a difference beyond the noise."))
    if out["cv_on_minus_cv_off"]:
        xs = out["cv_on_minus_cv_off"]
        within = sum(not x["beyond_2se"] for x in xs)
        lines.append(f"(iii-b) CV on - CV off at equal search compute, per data seed: {fmt(xs)}; "
                     f"{within}/{len(xs)} within 2 se (no difference shown there).")
    return lines


def clean_run(r: dict[str, Any]) -> dict[str, Any]:
    """A run as stored in the JSON: no paths to temp folders, the oracle's per-trial table kept."""
    sweep = r.get("sweep")
    keep = {k: v for k, v in r.items() if k != "sweep"}
    if sweep:
        keep.update(oracle_trial=sweep["oracle"]["oracle_trial"], oracle_trials=sweep["oracle"]["trials"],
                    warnings=sweep["warnings"], stdout_warnings=sweep["stdout_warnings"], noise=sweep["noise"])
    return keep


# ----------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; unset ones come from DEFAULTS or, with --smoke, SMOKE."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for k in DEFAULTS:
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, help=f"default {DEFAULTS[k]} (smoke {SMOKE[k]})")
    ap.add_argument("--smoke", action="store_true", help="~2 minute check of the whole path")
    ap.add_argument("--out", default=str(ROOT / "bench/search_quality.json"), help="the JSON")
    ap.add_argument("--md", help="the markdown tables")
    ap.add_argument("--keep", help="keep data, experiments and logs in this folder (default: a temp folder)")
    ap.add_argument("--methods", type=lambda v: v.split(","),
                    help=f"run only these units, each kept as <keep>/units/ds<seed>-<method>.json and skipped when "
                    f"that file exists (so a long run can go in parts): defaults and {', '.join(LEVERS)}")
    args = ap.parse_args(argv)
    for k, v in (SMOKE if args.smoke else DEFAULTS).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if min(args.data_seeds, args.seeds, args.num_samples) < 1 or args.cv_k < 2:
        ap.error("need data seeds, seeds, num samples >= 1 and cv-k >= 2")
    if args.methods and (set(args.methods) - {"defaults", *LEVERS} or not args.keep):
        ap.error(f"--methods takes defaults, {', '.join(LEVERS)} and needs --keep (where the units are kept)")
    return args


def main(argv: list[str] | None = None) -> None:
    """Run every method on every data seed; write the JSON and the markdown."""
    args = parse_args(argv)
    t_start = time.time()
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="search_quality_"))
    work.mkdir(parents=True, exist_ok=True)
    runs, skipped = [], []
    try:
        for ds in range(args.data_seeds):
            if args.methods:
                runs += lever_units(ds, args, work / f"ds{ds}", work / "units")
                continue
            r, s = one_data_seed(ds, args, work / f"ds{ds}")
            runs += r
            skipped += [{"method": m, "data_seed": ds, "reason": why} for m, why in s.items()]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    stats = analyse(runs, list(range(args.data_seeds)))
    notes = [f"data seed {x['data_seed']}: {x['method']} skipped: {x['reason']}" for x in skipped]
    out = {"setting": setting(args), **stats, "skipped": skipped, "notes": notes, "runs": [clean_run(r) for r in runs],
           "total_wall_s": time.time() - t_start}
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    if args.md:
        Path(args.md).write_text(markdown(out))
    print(markdown(out))


def setting(args: argparse.Namespace) -> dict[str, Any]:
    """What was run, for the record."""
    return {"data": f"demo n_train={args.n_train} n_val={args.n_val} n_test={args.n_test} difficulty={DIFFICULTY}",
            "data_seeds": list(range(args.data_seeds)), "seeds": args.seeds, "num_samples": args.num_samples,
            "cv_k": args.cv_k, "epochs": args.epochs or "default.yaml's", "smoke": args.smoke, "cpus": CPUS,
            "defaults_epochs": args.default_epochs or "TrainConfig default",
            "space": "search_spaces/default.yaml with d_model 16/32/64, 1-2 layers, nhead 2/4"
                     + (f", epochs {args.epochs}, grace {args.grace}, epoch_samples {args.epoch_samples}"
                        if args.smoke else ""),
            "methods": list(METHODS), "labels": LABEL, "regret_target": REGRET_TARGET}


if __name__ == "__main__":
    main()
