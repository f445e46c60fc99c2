"""Replay "stop when converged" (tune/convergence.py) on stored sweeps: where would it have stopped, what would it have
saved, and what would it have cost in test F1? No training.

For every `study.db` under the given folders (a sweep's experiment folder, with its mmtune.json and trial records
when they are there), the trials are taken in the order they ended (the study's completion times) and after each
one the rule decides as the searcher does at its next suggest: the full-budget trials so far in the GP, the noise
from the ended trials' best epochs (`tune.noise.results_sd`: fold sd under CV, else binomial on the val split's
rarer class), no stop before max(8, num_samples // 3) ended trials. At the first stop, the trials that had started
by then still run to their end (nothing is killed); those that started later are saved, with their epochs.

Test F1 comes from bench/search_quality.py's per-unit files (`<root>/units/ds<N>-<method>.json` for a sweep in
`<root>/ds<N>/<method>`): `oracle_trials` holds each ranked trial's best-checkpoint test F1. The cost is the test F1
of the best-by-val trial (mmtune's one ranking) among the trials the stopped sweep would have run, against the
best-by-val trial of the whole sweep. Finalize, which retrains the top configs, is not replayed.

Variants: `rule` is the shipped rule; `paper_cv` scales a fold sd to the error of the CV mean as Makarova et al.
and Optuna's CrossValidationErrorEvaluator define it, sd * sqrt(1/K + 1/(K-1)) (a holdout sweep: unchanged).

    .venv/bin/python bench/convergence_replay.py [FOLDER ...] [--out bench/convergence_replay.json]
        [--md bench/convergence_replay.md] [--max-trials N] [--include-running]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FOLDERS = ("/work/sq_levers", "/tmp/sq_smoke", str(ROOT / "results"))
VARIANTS = ("rule", "paper_cv")


def find_studies(folders: list[str]) -> list[Path]:
    """Every sweep folder holding a study.db under FOLDERS (finalize folders hold none)."""
    found = set()
    for folder in folders:
        for db in Path(folder).rglob("study.db"):
            found.add(db.parent.resolve())
    return sorted(found)


def unit_of(exp: Path) -> dict[str, Any] | None:
    """bench/search_quality.py's result file of the sweep in EXP (`<root>/ds<N>/<method>`), when there is one."""
    path = exp.parent.parent / "units" / f"{exp.parent.name}-{exp.name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def dims_of(distributions: dict[str, Any]) -> list:
    """Optuna distributions as the space's Params (a study without its experiment's mmtune.json)."""
    from mmtune.tune.space import Param

    dims = []
    for name, d in distributions.items():
        if hasattr(d, "choices"):
            dims.append(Param(name, "categorical", choices=tuple(d.choices)))
        else:
            kind = "int" if type(d).__name__.startswith("Int") else "float"
            dims.append(Param(name, kind, float(d.low), float(d.high), bool(d.log),
                              int(d.step) if kind == "int" and d.step and not d.log else None))
    return dims


def sweep_trials(exp_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sweep's trials from its study (one per Ray trial, its latest study trial) joined with their records, and
    what the rule needs of the sweep (params, metric, num_samples, metadata)."""
    import optuna
    from optuna.trial import TrialState

    from mmtune.tune.experiment import STUDY_NAME, Experiment, read_meta, study_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY_NAME, storage=study_storage(exp_dir))
    latest: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        latest[t.user_attrs.get("ray_trial_id", f"#{t.number}")] = t
    exp = None
    if (exp_dir / "mmtune.json").is_file():
        try:
            exp = Experiment.open(exp_dir)
        except Exception as e:  # noqa: BLE001 - the study alone still replays (without its noise)
            print(f"# {exp_dir}: experiment unreadable ({e}); the study alone is replayed", file=sys.stderr)
    views = {t.trial_id: t for t in exp.trials} if exp is not None else {}
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    meta = read_meta(exp_dir)  # also for an experiment whose space this version no longer reads: its val counts
    metric = exp.space.metric if exp is not None else (meta.get("space") or {}).get("metric", "value")
    trials = []
    for tid, t in latest.items():
        view = views.get(tid)
        best = (view.best_result if view is not None and view.best_result is not None
                else {metric: t.value} if t.value is not None else None)
        trials.append({
            "id": tid, "state": t.state, "params": dict(t.params), "value": t.value,
            "start": t.datetime_start.timestamp() if t.datetime_start else math.inf,
            "end": t.datetime_complete.timestamp() if t.datetime_complete else None,
            "epochs": view.epochs if view is not None else max(t.intermediate_values, default=0),
            "best": best, "usable": t.state in (TrialState.COMPLETE, TrialState.PRUNED),
            "full": t.state is TrialState.COMPLETE})
    dists: dict[str, Any] = {}
    for t in latest.values():
        dists.update(t.distributions)
    info = {"metric": metric, "maximize": maximize, "meta": meta,
            "dims": list(exp.space.params) if exp is not None else dims_of(dists),
            "num_samples": exp.space.num_samples if exp is not None else len(latest),
            "seed": exp.space.seed if exp is not None else 0,
            "folds": exp.validation.k if exp is not None else 1, "experiment": exp is not None,
            "finished": bool(exp.finished) if exp is not None else None}
    return trials, info


def ranked(trials: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """TRIALS with a usable best value, best first by mmtune's one ranking (metric, then its tie-breaker)."""
    from mmtune.model.metrics import is_finite, rank_key

    ok = [t for t in trials if t["usable"] and t["best"] and is_finite(t["best"].get(metric))]
    return sorted(ok, key=lambda t: (rank_key(t["best"], metric), t["start"]))


def replay(trials: list[dict[str, Any]], info: dict[str, Any], variant: str, max_trials: int) -> dict[str, Any]:
    """The rule after each ended trial, in completion order, until it stops: where, what it saves, the path of it."""
    from mmtune.tune.convergence import due, min_trials, should_stop
    from mmtune.tune.noise import results_sd

    metric, k_folds = info["metric"], info["folds"]
    ended = sorted((t for t in trials if t["end"] is not None), key=lambda t: t["end"])
    path, stop, checked = [], None, -1
    floor = min_trials(info["num_samples"])
    for n in range(1, min(len(ended), max_trials) + 1):
        so_far = ended[:n]
        if n < floor or not due(n, checked):
            continue  # before the minimum the rule returns before any GP; past 40 it decides every 5 %
        checked = n
        sd, source = results_sd([t["best"] for t in ranked(so_far, metric)], info["meta"], metric)
        if sd is not None and variant == "paper_cv" and k_folds > 1 and "fold sd" in source:
            sd, source = sd * math.sqrt(1 / k_folds + 1 / (k_folds - 1)), source + " x sqrt(1/K + 1/(K-1))"
        full = [(t["params"], t["value"]) for t in so_far if t["full"]]
        d = should_stop(full, info["dims"], ended=n, num_samples=info["num_samples"], sd=sd, source=source,
                        metric=metric, maximize=info["maximize"], seed=info["seed"])
        path.append({"ended": n, "full": d.full, "bound": d.bound, "sd": d.sd})
        if d.stop:
            stop = {"ended": n, "at": so_far[-1]["end"], "reason": d.reason, "bound": d.bound, "sd": d.sd}
            break
    kept = trials if stop is None else [t for t in trials if t["start"] <= stop["at"]]
    saved = [] if stop is None else [t for t in trials if t["start"] > stop["at"]]
    return {"stop": stop, "path": path, "kept": [t["id"] for t in kept], "saved": [t["id"] for t in saved],
            "trials_run": len(kept), "trials_saved": len(saved),
            "epochs_run": sum(t["epochs"] for t in kept), "epochs_saved": sum(t["epochs"] for t in saved)}


def one_sweep(exp_dir: Path, max_trials: int) -> dict[str, Any]:
    """Every variant of the rule on the sweep in EXP_DIR, with the test F1 cost where the unit file has it."""
    from mmtune.tune.noise import results_sd

    trials, info = sweep_trials(exp_dir)
    unit = unit_of(exp_dir)
    oracle = (unit or {}).get("oracle_trials") or {}
    metric = info["metric"]
    best_end = (ranked(trials, metric) or [None])[0]
    sd, source = results_sd([t["best"] for t in ranked(trials, metric)], info["meta"], metric)
    out = {"path": str(exp_dir), "trials": len(trials), "num_samples": info["num_samples"], "folds": info["folds"],
           "metric": metric, "experiment": info["experiment"], "finished": info["finished"],
           "full_budget": sum(t["full"] for t in trials), "epochs": sum(t["epochs"] for t in trials),
           "sd_end": sd, "sd_source": source, "unit": unit is not None, "variants": {}}
    for variant in VARIANTS:
        if variant != "rule" and info["folds"] <= 1:
            out["variants"][variant] = out["variants"]["rule"]  # only a fold sd is scaled: the same replay
            continue
        r = replay(trials, info, variant, max_trials)
        kept = [t for t in trials if t["id"] in set(r["kept"])]
        best_stop = (ranked(kept, metric) or [None])[0]
        r["best_at_stop"] = _best(best_stop, metric, oracle)
        r["best_at_end"] = _best(best_end, metric, oracle)
        a, b = r["best_at_stop"].get("test_f1"), r["best_at_end"].get("test_f1")
        r["test_f1_cost"] = None if a is None or b is None else b - a  # > 0: the stop lost test F1
        out["variants"][variant] = r
    return out


def _finished(exp: Path) -> bool:
    from mmtune.tune.experiment import read_meta

    return bool(read_meta(exp).get("finished"))


def _best(t: dict[str, Any] | None, metric: str, oracle: dict[str, Any]) -> dict[str, Any]:
    if t is None:
        return {}
    return {"trial": t["id"], "val": t["best"][metric], "test_f1": (oracle.get(t["id"]) or {}).get("test_f1")}


def _f(v: float | None, nd: int = 3, sign: bool = False) -> str:
    return "–" if v is None else f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def markdown(results: list[dict[str, Any]]) -> str:
    """One row per sweep and variant: where it stops, what it saves, what it costs in test F1."""
    lines = ["| sweep | val | trials (full) | sd at the end | variant | stops after | trials saved | "
             "trial-epochs saved | test F1 best-by-val: stop / end |", "|---|---|---|---|---|---|---|---|---|"]
    for s in results:
        name = "/".join(Path(s["path"]).parts[-3:])
        val = f"{s['folds']}-fold CV" if s["folds"] > 1 else "holdout"
        for v, r in s["variants"].items():
            if v != "rule" and s["folds"] <= 1:
                continue  # the same as the rule on a holdout sweep
            stop = f"{r['stop']['ended']} ended (bound {r['stop']['bound']:.4f})" if r["stop"] else "never"
            last = r["path"][-1] if r["path"] else None
            if not r["stop"] and last and last["bound"] is not None:
                stop += f" (last bound {last['bound']:.4f})"
            elif not r["stop"] and not r["path"]:
                stop += f" ({s['trials']} trials < the minimum)"
            a, b = r["best_at_stop"].get("test_f1"), r["best_at_end"].get("test_f1")
            test = f"{_f(a)} / {_f(b)}" if a is not None else "no test F1"
            lines.append(f"| {name} | {val} | {s['trials']}/{s['num_samples']} ({s['full_budget']}) | "
                         f"{_f(s['sd_end'], 4)} | {v} | {stop} | {r['trials_saved']} | "
                         f"{r['epochs_saved']}/{s['epochs']} | {test} |")
    return "\n".join(lines)


def totals(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant, over the sweeps with enough trials for the rule to decide at all (the minimum of ended trials):
    how many it stopped, trials and epochs saved, test F1 cost where known."""
    from mmtune.tune.convergence import min_trials

    eligible = [s for s in results if s["trials"] >= min_trials(s["num_samples"])]
    out = {}
    for v in VARIANTS:
        rs = [s["variants"][v] for s in eligible]
        costs = [r["test_f1_cost"] for r in rs if r["test_f1_cost"] is not None]
        out[v] = {"sweeps": len(results), "eligible": len(rs), "stopped": sum(r["stop"] is not None for r in rs),
                  "trials_saved": sum(r["trials_saved"] for r in rs), "trials": sum(s["trials"] for s in eligible),
                  "epochs_saved": sum(r["epochs_saved"] for r in rs), "epochs": sum(s["epochs"] for s in eligible),
                  "with_test_f1": len(costs), "mean_test_f1_cost": sum(costs) / len(costs) if costs else None,
                  "worst_test_f1_cost": max(costs) if costs else None}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", default=list(FOLDERS), help="where to look for study.db files")
    ap.add_argument("--out", default=None, help="JSON results (default: print)")
    ap.add_argument("--md", default=None, help="also write the markdown table here")
    ap.add_argument("--max-trials", type=int, default=100_000, help="replay at most this many ended trials per sweep")
    ap.add_argument("--include-running", action="store_true", help="also replay sweeps that have not finished")
    args = ap.parse_args(argv)
    results = []
    for exp in find_studies(args.folders):
        if not args.include_running and (exp / "mmtune.json").is_file() and not _finished(exp):
            print(f"# {exp}: not finished (running or interrupted), left out (--include-running)", file=sys.stderr)
            continue
        try:
            results.append(one_sweep(exp, args.max_trials))
        except Exception as e:  # noqa: BLE001 - one unreadable sweep must not hide the others
            print(f"# {exp}: skipped ({type(e).__name__}: {e})", file=sys.stderr)
            continue
        r = results[-1]["variants"]["rule"]
        print(f"# {exp}: {'stops after ' + str(r['stop']['ended']) if r['stop'] else 'never stops'}; "
              f"saves {r['trials_saved']} trials", file=sys.stderr)
    out = {"generated": datetime.now().isoformat(timespec="seconds"), "folders": args.folders,
           "totals": totals(results), "sweeps": results}
    text = json.dumps(out, indent=1, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)
    if args.md:
        Path(args.md).write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    main()
