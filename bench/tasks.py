"""Issue 21's many-task harness: does the default flow test better than plain `mmtune train`, task after task?

bench/search_quality.py compares many methods on one data setting; this runs one question over many tasks (generator
seed x difficulty x size, TASKS below), each as a user runs it (`python -m mmtune.tune ...` in a subprocess on
2 CPUs, timed by wall clock):

  1. `mmtune data demo` makes the task's data (a small task then drops val.npz, as users' small sets have none);
  2. `mmtune sweep --data D --space S`: the default flow (search, finalize, best_config.yaml) on search_quality's
     space (search_spaces/default.yaml with small models: its `write_space`, `run_sweep`), N trials;
  3. `mmtune compare EXP --seeds S` (tune/compare.py, the command a user runs for their own check): the defaults and
     best_config.yaml retrained with seeds 0..S-1, paired on the test split.

Per task: the mean paired gain (flow - defaults) with its se, and whether the flow tests worse than the defaults by
more than 2 se (overtuning). Over tasks: the mean gain with a percentile bootstrap interval (10 000 resamples of the
tasks, fixed seed) and the overtuning count. Targets (issue 21): the interval above 0; overtuning in 0 tasks. Each task
keeps one result file (<out>/tasks/<task>.json, with the load average while it ran) and is skipped when that file
exists, so the benchmark runs in parts; every run re-analyses all task files on disk.

    .venv/bin/python bench/tasks.py [--only TASK,...] [--seeds 3] [--num-samples 12]
        [--out bench/search_quality_tasks] [--keep DIR] [--smoke]

`--smoke` (2 tiny tasks, 2 trials x 2 epochs, finalize 2 x 2, 2 seeds, the defaults capped at 2 epochs) checks the
path; its numbers mean nothing, and it writes to a temp folder unless --out is given.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.search_quality import CPUS, mean_sd, mmtune, run_sweep, write_space  # noqa: E402
from mmtune.data.io import write_json  # noqa: E402
from mmtune.tune.selection import NOISE_SE  # noqa: E402


@dataclass(frozen=True)
class Task:
    """One task: a data size, the generator's difficulty and its seed."""

    size: str
    difficulty: float
    data_seed: int

    @property
    def name(self) -> str:
        return f"{self.size}-d{self.difficulty:g}-s{self.data_seed}"


# Size x difficulty x data seed = 8 tasks. "small" is the regime users have (issue 21): 270 training samples, 10-15 %
# positives (0.12 asked: 30-40 realised), no val.npz. "medium" is search_quality's setting: 400 train + 100 val at the
# generator's ~26 %. Both make `cv: auto` pick 5-fold CV. Every task has 2000 test samples, so that one run's test F1
# is precise (se about 0.01) and a task's paired gain varies mostly with the training seeds.
SIZES = {"small": {"n_train": 270, "n_val": 0, "n_test": 2000, "positive_rate": 0.12},
         "medium": {"n_train": 400, "n_val": 100, "n_test": 2000, "positive_rate": None}}
TASKS = tuple(Task(size, d, s) for size in SIZES for d in (0.5, 0.7) for s in (0, 1))
SMOKE_SIZES = {"small": {"n_train": 160, "n_val": 0, "n_test": 300, "positive_rate": 0.15},
               "medium": {"n_train": 160, "n_val": 60, "n_test": 300, "positive_rate": None}}
SMOKE_TASKS = (Task("small", 0.5, 0), Task("medium", 0.5, 0))
# write_space's knobs: the full run keeps default.yaml's budget; the smoke search_quality's tiny one.
SPACE = {False: argparse.Namespace(epochs=None, grace=None, epoch_samples=None, smoke=False),
         True: argparse.Namespace(epochs=2, grace=1, epoch_samples=64, smoke=True)}
SMOKE_FLOW = ("--epochs", "2", "--finalize-top-k", "2", "--finalize-seeds", "2")
SMOKE_BASELINE = "epochs: 2\n"  # the defaults' 50 epochs would be most of a smoke run
RESAMPLES, BOOT_SEED = 10_000, 0
OUT = ROOT / "bench/search_quality_tasks"  # not bench/tasks/: a folder named like this module beside it misleads
SETTING_KEYS = ("smoke", "seeds", "num_samples")  # a task file written with other values is not this run's


# ----------------------------------------------------------------------------------------- one task


def make_data(task: Task, sizes: dict[str, Any], folder: Path) -> Path:
    """`mmtune data demo` for TASK; with n_val 0, val.npz is removed (the generator writes every split)."""
    out = folder / task.name
    rate = [] if sizes["positive_rate"] is None else ["--positive-rate", str(sizes["positive_rate"])]
    mmtune(["data", "demo", str(out), "--n-train", str(sizes["n_train"]), "--n-val", str(sizes["n_val"] or 1),
            "--n-test", str(sizes["n_test"]), "--difficulty", str(task.difficulty), "--seed", str(task.data_seed),
            *rate], folder / f"{task.name}.log")
    if not sizes["n_val"]:
        (out / "val.npz").unlink()
    return out


def positives(data: Path) -> dict[str, list[int]]:
    """Samples and positives of every split file in DATA."""
    out = {}
    for split in ("train", "val", "test"):
        if (data / f"{split}.npz").is_file():
            with np.load(data / f"{split}.npz", allow_pickle=False) as z:
                out[split] = [int(len(z["y"])), int(z["y"].sum())]
    return out


def run_task(task: Task, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Data, the default flow and the paired comparison of TASK; its record."""
    load = [os.getloadavg()[0]]
    sizes = (SMOKE_SIZES if args.smoke else SIZES)[task.size]
    data = make_data(task, sizes, work / "data")
    space = write_space(work / "space.yaml", SPACE[args.smoke], None)  # None: default.yaml's cv (auto)
    sweep = run_sweep(data, space, task.name, work / "results", args.num_samples, True,
                      SMOKE_FLOW if args.smoke else ())
    exp = sweep["exp"]
    baseline = []
    if args.smoke:
        (work / "baseline.yaml").write_text(SMOKE_BASELINE)
        baseline = ["--baseline-config", str(work / "baseline.yaml")]
    _, compare_wall = mmtune(["compare", str(exp), "--seeds", str(args.seeds), *baseline], work / "compare.log")
    load.append(os.getloadavg()[0])
    c = json.loads((exp / "compare" / "summary.json").read_text())
    meta = json.loads((exp / "mmtune.json").read_text())
    return {"task": task.name, "size": task.size, "difficulty": task.difficulty, "data_seed": task.data_seed,
            "data": {**sizes, "splits": positives(data)}, "validation": meta.get("validation", {}).get("scheme"),
            "sweep_wall_s": sweep["sweep_wall_s"], "compare_wall_s": compare_wall, "warnings": sweep["warnings"],
            "paired": c["paired"], "gain": c["gain"], "verdict": c["verdict"], "test": c["test"],
            "arms": {arm: {"test_f1": [r["test_f1"] for r in v["runs"]], "wall_s": [r["wall_s"] for r in v["runs"]]}
                     for arm, v in c["arms"].items()},
            "load_avg": {"start": load[0], "end": load[1]}, "cpus": CPUS, "setting": setting(args)}


# ----------------------------------------------------------------------------------------- over tasks


def overtuned(r: dict[str, Any]) -> bool:
    """The flow tests worse than the defaults by more than 2 se of the task's paired gain."""
    return r["gain"]["mean"] < -NOISE_SE * r["gain"]["se"]


def bootstrap_interval(values: list[float]) -> list[float]:
    """95 % percentile bootstrap interval of the mean of VALUES (RESAMPLES resamples, seed BOOT_SEED)."""
    x = np.asarray(values, dtype=float)
    means = x[np.random.default_rng(BOOT_SEED).integers(0, len(x), (RESAMPLES, len(x)))].mean(axis=1)
    return [float(v) for v in np.percentile(means, [2.5, 97.5])]


# ----------------------------------------------------------------------------------------- follow-ups of kept tasks
# bench/recipe_epochs.py and bench/contender_effect.py measure more on the experiments this harness kept (--keep):
# the same flags, one file per task under <out>/<kind>/ (skipped when present, so they run in parts), and a summary
# and table of every file on disk.


def follow_up_args(argv: list[str] | None, doc: str, kind: str, seeds_help: str) -> tuple[Path, Path, int]:
    """A follow-up's flags: (the --keep folder, the --out folder, --seeds)."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--keep", required=True, help="bench/tasks.py's --keep folder (its data and experiments)")
    ap.add_argument("--seeds", type=int, default=3, help=seeds_help)
    ap.add_argument("--out", default=str(OUT), help=f"folder of {kind}/*.json and {kind}_table.md")
    args = ap.parse_args(argv)
    return Path(args.keep), Path(args.out), args.seeds


def per_task(out: Path, kind: str, tasks: Iterable[str], measure: Callable[[str], dict[str, Any]],
             label: str) -> list[dict[str, Any]]:
    """MEASURE each of TASKS not yet on file (<out>/<kind>/<task>.json); every task file of KIND on disk."""
    (out / kind).mkdir(parents=True, exist_ok=True)
    for task in tasks:
        path = out / kind / f"{task}.json"
        if not path.is_file():
            print(f"# {task}: {label}", file=sys.stderr, flush=True)
            write_json(measure(task), path)
    return [json.loads(p.read_text()) for p in sorted((out / kind).glob("*.json"))]


def write_follow_up(out: Path, kind: str, results: list[dict[str, Any]], analysis: dict[str, Any],
                    table: str) -> dict[str, Any]:
    """<out>/<kind>_summary.json and <kind>_table.md (TABLE, printed too); the summary."""
    summary = {"analysis": analysis, "results": results}
    write_json(summary, out / f"{kind}_summary.json")
    (out / f"{kind}_table.md").write_text(table)
    print(table)
    return summary


def analyse(results: list[dict[str, Any]], planned: list[str]) -> dict[str, Any]:
    """Mean gain over tasks with its bootstrap interval, the overtuned tasks, the two targets."""
    gains = [r["gain"]["mean"] for r in results]
    lo, hi = bootstrap_interval(gains)
    over = [r["task"] for r in results if overtuned(r)]
    return {"tasks_done": [r["task"] for r in results], "tasks_planned": planned,
            "complete": len(results) == len(planned), "mean_gain": float(np.mean(gains)), "gain_ci95": [lo, hi],
            "bootstrap": {"resamples": RESAMPLES, "seed": BOOT_SEED, "over": "tasks"}, "overtuned": over,
            "targets": {"gain_interval_above_0": lo > 0, "no_overtuning": not over}}


def markdown(summary: dict[str, Any]) -> str:
    """The per-task table and the target lines, for BENCHMARKS.md."""
    a, results = summary["analysis"], summary["results"]
    lines = ["| task | train (pos.) / val / test (pos.) | validation | defaults test F1 | flow test F1 | gain ± se "
             "| verdict | sweep s | compare s | sweep / one default train | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        sp, g = r["data"]["splits"], r["gain"]
        val = sp["val"][0] if "val" in sp else "none"
        f1 = {arm: "{:.3f} ± {:.3f}".format(*mean_sd(v["test_f1"])) for arm, v in r["arms"].items()}
        per_train = np.mean(r["arms"]["defaults"]["wall_s"])
        scheme = r["validation"] or {}
        cv = f"{scheme.get('folds')}-fold CV" if scheme.get("folds", 0) >= 2 else "holdout"
        lines.append(f"| {r['task']} | {sp['train'][0]} ({sp['train'][1]}) / {val} / {sp['test'][0]} "
                     f"({sp['test'][1]}) | {cv} | {f1['defaults']} | {f1['winner']} | {g['mean']:+.3f} ± "
                     f"{g['se']:.3f} | {r['verdict']}{' (overtuned)' if overtuned(r) else ''} | "
                     f"{r['sweep_wall_s']:.0f} | {r['compare_wall_s']:.0f} | {r['sweep_wall_s'] / per_train:.1f} | "
                     f"{r['load_avg']['start']:.1f} / {r['load_avg']['end']:.1f} |")
    done, planned = len(a["tasks_done"]), len(a["tasks_planned"])
    part = "" if a["complete"] else f" (so far: {done} of {planned} tasks; not yet shown)"
    word = {True: "**met**", False: "**missed**"}
    lines += ["", f"Mean gain over {done} tasks: {a['mean_gain']:+.3f}, 95 % bootstrap interval "
              f"[{a['gain_ci95'][0]:+.3f}, {a['gain_ci95'][1]:+.3f}] ({RESAMPLES} resamples of the tasks). "
              f"Target, the interval above 0: {word[a['targets']['gain_interval_above_0']]}{part}.",
              f"Overtuning (the flow tests worse than the defaults by more than 2 se of the task's paired gain): "
              f"{len(a['overtuned'])} of {done} tasks{': ' + ', '.join(a['overtuned']) if a['overtuned'] else ''}. "
              f"Target, 0 of {planned}: {word[a['targets']['no_overtuning']]}{part}."]
    if summary["setting"]["smoke"]:
        lines.append("SMOKE RUN: the numbers mean nothing.")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- main


def setting(args: argparse.Namespace) -> dict[str, Any]:
    """What a task was run with, for its record (and the check that a kept file is this run's)."""
    return {"smoke": args.smoke, "seeds": args.seeds, "num_samples": args.num_samples,
            "space": "search_spaces/default.yaml with d_model 16/32/64, 1-2 layers, nhead 2/4 (search_quality's)",
            "flow": "mmtune sweep defaults" + (" " + " ".join(SMOKE_FLOW) if args.smoke else ""),
            "defaults": "TrainConfig()" + (f" with {SMOKE_BASELINE.strip()}" if args.smoke else "")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags; --smoke changes the defaults of --seeds and --num-samples."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=lambda v: v.split(","), help="run only these tasks (names as in the table)")
    ap.add_argument("--seeds", type=int, help="training seeds per arm of each comparison (default 3; smoke 2)")
    ap.add_argument("--num-samples", type=int, help="trials per sweep (default 12; smoke 2)")
    ap.add_argument("--out", help="folder of tasks/*.json, summary.json and table.md (default "
                    "bench/search_quality_tasks; smoke: a temp folder)")
    ap.add_argument("--keep", help="keep data, experiments and logs here (default: a temp folder, removed)")
    ap.add_argument("--smoke", action="store_true", help="2 tiny tasks: checks the path only")
    args = ap.parse_args(argv)
    args.seeds = args.seeds or (2 if args.smoke else 3)
    args.num_samples = args.num_samples or (2 if args.smoke else 12)
    args.out = args.out or (tempfile.mkdtemp(prefix="tasks_smoke_") if args.smoke else str(OUT))
    names = [t.name for t in (SMOKE_TASKS if args.smoke else TASKS)]
    if args.only and set(args.only) - set(names):
        ap.error(f"--only {','.join(sorted(set(args.only) - set(names)))}: no such task; the tasks: {', '.join(names)}")
    if args.seeds < 2 or args.num_samples < 1:
        ap.error("--seeds must be >= 2 (a paired se needs two) and --num-samples >= 1")
    return args


def load_result(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A kept task file; an error when it was written with another setting (mixing them would mean nothing)."""
    r = json.loads(path.read_text())
    theirs, ours = ({k: s[k] for k in SETTING_KEYS} for s in (r["setting"], setting(args)))
    if theirs != ours:
        raise SystemExit(f"{path}: written with {theirs}, this run asks {ours}; use another --out, or delete the file")
    return r


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the tasks not yet on file, analyse every task on file; write summary.json and table.md; return the
    summary."""
    args = parse_args(argv)
    out, work = Path(args.out), Path(args.keep or tempfile.mkdtemp(prefix="tasks_"))
    (out / "tasks").mkdir(parents=True, exist_ok=True)
    tasks = SMOKE_TASKS if args.smoke else TASKS
    files = {t.name: out / "tasks" / f"{t.name}.json" for t in tasks}
    for path in files.values():  # a kept file of another setting stops the run before anything runs
        if path.is_file():
            load_result(path, args)
    try:
        for task in tasks:
            if files[task.name].is_file() or (args.only and task.name not in args.only):
                continue
            print(f"# {task.name}: running", file=sys.stderr, flush=True)
            (work / task.name).mkdir(parents=True, exist_ok=True)
            write_json(run_task(task, args, work / task.name), files[task.name])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results = [load_result(path, args) for path in files.values() if path.is_file()]
    for r in results:
        print(f"# {r['task']}: gain {r['gain']['mean']:+.3f} (se {r['gain']['se']:.3f}), sweep "
              f"{r['sweep_wall_s']:.0f} s, compare {r['compare_wall_s']:.0f} s", file=sys.stderr, flush=True)
    summary = {"setting": setting(args), "analysis": analyse(results, [t.name for t in tasks]), "results": results}
    write_json(summary, out / "summary.json")
    (out / "table.md").write_text(markdown(summary))
    print(markdown(summary))
    return summary


if __name__ == "__main__":
    main()
