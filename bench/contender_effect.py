"""Issue 21's contender, with against without: what did keeping the defaults in finalize do to test F1?

On the experiments bench/tasks.py kept (`--keep DIR`), for every task where finalize kept the defaults, the config the
flow would have shipped without them is the rule's pick among the searched configs (finalize's summary names it,
`defaults.versus`), as a recipe written by the one recipe function (`tune.recipe.write_recipe`) from its finalize
runs. `mmtune compare` (the same code, `--baseline-config`) then trains that recipe with seeds 0..S-1 against the
shipped best_config.yaml (the defaults' recipe), paired by seed, in a light copy of the experiment (its
best_config.yaml, mmtune.json and compare/winner, whose finished runs compare reuses), so the task's own compare
runs are left as they are. A task where a searched config won has no difference: the contender changed nothing.
With bench/tasks.py's task files in --out, the flow without the contender is also paired with plain `mmtune train`
(the tasks' own defaults arm, same seeds).

The estimate ignores one interaction: without the defaults, finalize's race would pool its seed sd over the searched
configs only, and could have stopped seeds at other points. One file per task (<out>/contender/<task>.json), skipped
when present; over tasks the mean with a percentile bootstrap interval (bench/tasks.py's).

    .venv/bin/python bench/contender_effect.py --keep DIR [--seeds 3] [--out bench/search_quality_tasks]
"""
from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.tasks import bootstrap_interval, follow_up_args, per_task, write_follow_up  # noqa: E402
from mmtune.tune.compare import COMPARE_DIR, compare  # noqa: E402
from mmtune.tune.experiment import FINAL_DIR, SUMMARY, Experiment  # noqa: E402
from mmtune.tune.recipe import write_recipe  # noqa: E402
from mmtune.tune.results import BEST_CONFIG  # noqa: E402
from mmtune.tune.selection import NOISE_SE  # noqa: E402

LIGHT = ("mmtune.json", BEST_CONFIG)  # what compare reads of an experiment, beside compare/winner


def searched_pick(exp_dir: Path) -> dict[str, Any] | None:
    """Finalize's entry of the searched config the defaults were kept over (the rule's pick; when the rule picked
    the defaults themselves, the best searched config by bound); None when a searched config won or the defaults
    did not contend."""
    summary = json.loads((exp_dir / FINAL_DIR / SUMMARY).read_text())
    if not (summary.get("defaults") or {}).get("won"):
        return None
    return next(c for c in summary["configs"] if c["trial_id"] == summary["defaults"]["versus"])


def run_task(task: str, keep: Path, seeds: int) -> dict[str, Any]:
    """The searched pick's recipe against the shipped defaults' recipe on TASK, paired by seed."""
    exp_dir = keep / task / "results" / task
    pick = searched_pick(exp_dir)
    if pick is None:
        return {"task": task, "defaults_won": False, "gain": None}
    light = keep / task / "contender" / task
    light.mkdir(parents=True, exist_ok=True)
    for name in LIGHT:
        shutil.copy(exp_dir / name, light / name)
    if not (light / COMPARE_DIR / "winner").is_dir():
        shutil.copytree(exp_dir / COMPARE_DIR / "winner", light / COMPARE_DIR / "winner")
    exp = Experiment.open(exp_dir)
    recipe = light / "searched_pick.yaml"
    # seed 0, split seed 0 as the shipped recipe's first pair: compare sets the seed of each run, and a recipe trains
    # on all the data, so the split seed splits nothing
    write_recipe(recipe, f"# The rule's pick among the searched configs of {task} (trial {pick['trial_id']}).\n",
                 exp.space, exp.validation, pick["params"], [r["best_epoch"] for r in pick["runs"] if r["ok"]],
                 (0, 0))
    s = compare(light, seeds=seeds, baseline_config=recipe)
    # compare's gain is winner - baseline: here the defaults' recipe minus the searched pick's, the contender's effect
    # (compare's own verdict names its arms "defaults" and "sweep's config": the other way round here)
    g = s["gain"]
    verdict = ("inside the noise" if abs(g["mean"]) <= NOISE_SE * g["se"]
               else "the contender helped" if g["mean"] > 0 else "the contender cost test F1")
    return {"task": task, "defaults_won": True, "searched_pick": pick["trial_id"], "params": pick["params"],
            "paired": s["paired"], "gain": g, "verdict": verdict}


def analyse(results: list[dict[str, Any]], tasks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Over tasks: the mean effect (a task where a searched config won counts 0) and its bootstrap interval; and,
    with TASKS (bench/tasks.py's file of each task), the flow without the contender against plain `mmtune train`."""
    gains = [r["gain"]["mean"] if r["gain"] else 0.0 for r in results]
    out = {"tasks": len(results), "defaults_won": sum(r["defaults_won"] for r in results),
           "mean": statistics.fmean(gains), "ci95": bootstrap_interval(gains)}
    without = {r["task"]: without_contender(r, tasks[r["task"]]) for r in results if r["task"] in tasks}
    if without:
        means = [w["mean"] for w in without.values()]
        out["flow_without_contender"] = {
            "per_task": without, "mean": statistics.fmean(means), "ci95": bootstrap_interval(means),
            "overtuned": sorted(t for t, w in without.items() if w["mean"] < -NOISE_SE * w["se"])}
    return out


def without_contender(r: dict[str, Any], task: dict[str, Any]) -> dict[str, float]:
    """The flow without the contender minus plain `mmtune train` on one task, paired by seed: the searched pick's
    test F1 where the defaults were kept, else the flow's own; mean and se over seeds."""
    plain = {p["seed"]: p["defaults"] for p in task["paired"]}
    shipped = ({p["seed"]: p["defaults"] for p in r["paired"]} if r["defaults_won"]
               else {p["seed"]: p["winner"] for p in task["paired"]})
    d = [shipped[s] - plain[s] for s in plain]
    return {"mean": statistics.fmean(d), "se": statistics.stdev(d) / len(d) ** 0.5}


def markdown(results: list[dict[str, Any]], a: dict[str, Any]) -> str:
    """One row per task; the effect over tasks."""
    lines = ["| task | kept the defaults | searched pick | test F1 searched pick | test F1 defaults' recipe | "
             f"with - without contender ± se | verdict (beyond {NOISE_SE:g} se) |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if not r["defaults_won"]:
            lines.append(f"| {r['task']} | no | - | - | - | 0 (a searched config won) | - |")
            continue
        base = statistics.fmean(p["defaults"] for p in r["paired"])
        win = statistics.fmean(p["winner"] for p in r["paired"])
        lines.append(f"| {r['task']} | yes | {r['searched_pick']} | {base:.3f} | {win:.3f} | "
                     f"{r['gain']['mean']:+.3f} ± {r['gain']['se']:.3f} | {r['verdict']} |")
    lines += ["", f"With minus without the contender over {a['tasks']} tasks: {a['mean']:+.3f}, 95 % bootstrap "
              f"interval [{a['ci95'][0]:+.3f}, {a['ci95'][1]:+.3f}] (the defaults kept in {a['defaults_won']})."]
    if w := a.get("flow_without_contender"):
        lines.append(f"The flow without the contender minus plain `mmtune train` over {len(w['per_task'])} tasks: "
                     f"{w['mean']:+.3f}, 95 % bootstrap interval [{w['ci95'][0]:+.3f}, {w['ci95'][1]:+.3f}]; "
                     f"worse than plain by more than {NOISE_SE:g} se in {len(w['overtuned'])}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure the kept tasks not yet on file; write summary and table; return them."""
    keep, out, seeds = follow_up_args(argv, __doc__, "contender",
                                      "training seeds per arm (default 3, as the tasks' compare)")
    tasks = sorted(p.parent.parent.name for p in keep.glob(f"*/results/*/{COMPARE_DIR}/summary.json"))
    results = per_task(out, "contender", tasks, lambda task: run_task(task, keep, seeds),
                       "with and without the contender")
    by_task = {p.stem: json.loads(p.read_text()) for p in (out / "tasks").glob("*.json")}
    a = analyse(results, by_task) if results else {}
    return write_follow_up(out, "contender", results, a, markdown(results, a) if results else "")


if __name__ == "__main__":
    main()
