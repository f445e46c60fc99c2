"""Issue 21's recipe-epoch question: on noisy fold-mean curves, which epoch count should a CV recipe train?

Under CV, best_config.yaml trains one model on all the data for the median best epoch of the winner's fold-mean
curves (`data.validation.Validation.recipe_epochs`): on a small set those curves zigzag, so the argmax may sit on a
noise peak mid warm-restart cycle, the learning rate still high. Three rules, on the experiments that
bench/tasks.py kept (`--keep DIR`), compared by the test F1 of the recipe they give:

  argmax     the median over the winner's finalize runs of each fold-mean curve's best epoch (what mmtune does)
  smoothed   the argmax of the runs' mean curve smoothed by a centred 3-epoch moving average
  cycle_end  the end of the last warm-restart cycle the budget completes (epochs t0, t0 + t0 t_mult, ...)

Per task and training seed the recipe (best_config.yaml) trains once, for the largest of the three counts, with its
test F1 recorded after every epoch: warm restarts do not depend on the epoch count and evaluating consumes no random
numbers, so epoch e of that run is the model a recipe of e epochs gives. Paired per task (seeds averaged): each rule
minus argmax; over tasks the mean with a percentile bootstrap interval. One file per task (<out>/recipe/<task>.json),
skipped when present.

    .venv/bin/python bench/recipe_epochs.py --keep DIR [--seeds 3] [--out bench/search_quality_tasks]
"""
from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.tasks import bootstrap_interval, follow_up_args, per_task, write_follow_up  # noqa: E402
from mmtune.tune.experiment import FINAL_DIR, SUMMARY, result_lines  # noqa: E402

RULES = ("argmax", "smoothed", "cycle_end")
SMOOTH = 3  # epochs in the centred moving average


def curves(exp: Path) -> tuple[list[list[float]], str]:
    """The fold-mean curves (metric per epoch) of EXP's finalized winner's runs, and the metric."""
    summary = json.loads((exp / FINAL_DIR / SUMMARY).read_text())
    metric, out = summary["metric"], []
    for run in summary["winner"]["runs"]:
        by_epoch = {r["epoch"]: float(r[metric]) for r in result_lines(Path(run["path"]) / "result.json")
                    if metric in r and "epoch" in r}
        out.append([by_epoch[e] for e in sorted(by_epoch)])
    return out, metric


def smoothed_argmax(runs: list[list[float]], sign: float) -> int:
    """1-based argmax of the runs' mean curve (over the epochs all of them reached), smoothed by SMOOTH epochs."""
    n = min(len(c) for c in runs)
    mean = np.mean([c[:n] for c in runs], axis=0) * sign
    half = SMOOTH // 2
    smooth = [float(np.mean(mean[max(0, i - half):i + half + 1])) for i in range(n)]
    return int(np.argmax(smooth)) + 1


def cycle_end(t0: int, t_mult: int, budget: int) -> int:
    """The last warm-restart cycle end at or before BUDGET (the budget itself when no cycle ends before it)."""
    end, length, last = t0, t0, None
    while end <= budget:
        last, length = end, length * t_mult
        end += length
    return last or budget


def rule_epochs(exp: Path, recipe_epochs: int, t0: int, t_mult: int, budget: int) -> dict[str, int]:
    """The epoch count of each rule for EXP (RECIPE_EPOCHS: what its best_config.yaml trains, the argmax rule)."""
    runs, metric = curves(exp)
    sign = 1.0 if not metric.endswith("loss") else -1.0
    return {"argmax": recipe_epochs, "smoothed": smoothed_argmax(runs, sign), "cycle_end": cycle_end(t0, t_mult,
                                                                                                      budget)}


def test_curve(config: Path, data: Path, seed: int, epochs: int) -> list[float]:
    """Test F1 after every epoch of CONFIG's recipe trained for EPOCHS epochs with training seed SEED."""
    from mmtune.data.validation import Validation
    from mmtune.model.config import load_config
    from mmtune.model.loop import fit
    from mmtune.model.run import evaluate_splits

    cfg = replace(load_config(config), seed=seed, epochs=epochs)
    loaded = Validation.of(cfg).load(data)
    f1s: list[float] = []

    def on_epoch(record: dict[str, Any], trainer: Any) -> None:
        fold = trainer.folds[0]
        f1s.append(evaluate_splits(fold.model, trainer.objective, loaded.test, ("test",), trainer.device)["test"]["f1"])

    fit(cfg, loaded, [on_epoch])
    return f1s


def run_task(task: str, keep: Path, seeds: int) -> dict[str, Any]:
    """The three rules' epochs for TASK's kept experiment, and their recipes' test F1 per seed."""
    import yaml

    exp, data = keep / task / "results" / task, keep / task / "data" / task
    cfg = yaml.safe_load((exp / "best_config.yaml").read_text())
    space = json.loads((exp / "mmtune.json").read_text())["space"]
    epochs = rule_epochs(exp, int(cfg["epochs"]), int(cfg["t0"]), int(cfg["t_mult"]), int(space["epochs"]))
    per_seed = [test_curve(exp / "best_config.yaml", data, s, max(epochs.values())) for s in range(seeds)]
    test = {rule: [c[e - 1] for c in per_seed] for rule, e in epochs.items()}
    return {"task": task, "epochs": epochs, "test_f1": test, "curves": per_seed, "seeds": seeds,
            "diff": {rule: statistics.fmean(a - b for a, b in zip(test[rule], test["argmax"])) for rule in RULES[1:]}}


def analyse(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each rule minus argmax over tasks: mean and bootstrap interval; which rule tests best."""
    out = {}
    for rule in RULES[1:]:
        d = [r["diff"][rule] for r in results]
        out[rule] = {"mean": float(np.mean(d)), "ci95": bootstrap_interval(d), "tasks": len(d),
                     "same_epochs": sum(r["epochs"][rule] == r["epochs"]["argmax"] for r in results)}
    return out


def markdown(results: list[dict[str, Any]], a: dict[str, Any]) -> str:
    """Per-task epochs and test F1 per rule; the differences over tasks."""
    lines = ["| task | epochs argmax / smoothed / cycle end | test F1 argmax | smoothed | cycle end | smoothed - argmax "
             "(se over seeds) | cycle end - argmax (se) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        e, t = r["epochs"], {k: statistics.fmean(v) for k, v in r["test_f1"].items()}
        lines.append(f"| {r['task']} | {e['argmax']} / {e['smoothed']} / {e['cycle_end']} | {t['argmax']:.3f} | "
                     f"{t['smoothed']:.3f} | {t['cycle_end']:.3f} | {_paired(r, 'smoothed')} | "
                     f"{_paired(r, 'cycle_end')} |")
    lines.append("")
    for rule, v in a.items():
        lines.append(f"{rule} minus argmax over {v['tasks']} tasks: {v['mean']:+.3f}, 95 % bootstrap interval "
                     f"[{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}] (same epoch count as argmax in {v['same_epochs']})")
    return "\n".join(lines) + "\n"


def _is_recipe(config: Path) -> bool:
    """Whether CONFIG is a CV recipe (all the data, a fixed epoch count), whose epochs a rule chose."""
    import yaml

    cfg = yaml.safe_load(config.read_text())
    return cfg.get("val_fraction") == 0 and cfg.get("patience") == 0


def _paired(r: dict[str, Any], rule: str) -> str:
    """RULE's test F1 minus argmax's on one task, mean over seeds (se)."""
    d = [a - b for a, b in zip(r["test_f1"][rule], r["test_f1"]["argmax"])]
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    return f"{statistics.fmean(d):+.3f} ({se:.3f})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure the tasks kept under --keep not yet on file; write summary and table; return them."""
    keep, out, seeds = follow_up_args(argv, __doc__, "recipe", "training seeds per recipe (default 3)")
    tasks = []
    for task in sorted(p.parent.parent.name for p in keep.glob("*/results/*/final/summary.json")):
        if _is_recipe(keep / task / "results" / task / "best_config.yaml"):
            tasks.append(task)
        else:
            print(f"# {task}: its best config is a holdout config, not a CV recipe: no epoch rule", file=sys.stderr)
    results = per_task(out, "recipe", tasks, lambda task: run_task(task, keep, seeds), "recipe epochs")
    a = analyse(results) if results else {}
    return write_follow_up(out, "recipe", results, a, markdown(results, a))


if __name__ == "__main__":
    main()
