"""Flow cost: the default flow's wall time as a multiple of one default `mmtune train`, lever by lever, with quality.

On the small-set setting users start with (270 training sequences, 2 modalities, no val.npz, so `cv: auto` picks
5-fold CV; a 2000-sample test split makes test F1 precise), each unit runs as a user runs it (`python -m
mmtune.tune ...` in a subprocess on 2 CPUs, timed by wall clock):

  train          one default `mmtune train` (50 epochs, patience 10), once per seed: the unit of cost
  default        `mmtune sweep --data D` as shipped: search + finalize (reuse, race) + best_config.yaml
  samples_norace the same without the race (--no-finalize-race): the race's own saving
  steps_norace   the budget in optimizer steps as before issue 20 (25 steps per epoch whatever the batch size:
                 `train_steps` 25 equals the old floor on 216-sample folds) and no race: the starting point
  converged      the shipped flow with `stop_when_converged: true` (off by default): the convergence stop's saving,
                 and what its smaller search hands finalize

Every flow's best_config.yaml is retrained with `mmtune train --config` once per seed, and its test F1 is the
flow's quality (paired with the train unit's on the same seeds). Each unit keeps one result file
(<out>/units/<unit>.json) and is skipped when that file exists, so the benchmark can run in parts; the load
average during a unit is recorded with it (a busy machine stretches walls).

    .venv/bin/python bench/flow_cost.py [--units train,default,...] [--seeds 3] [--out bench/flow_cost]
        [--smoke] [--keep DIR]

`--smoke` (tiny data, 2 trials of 2 epochs, finalize 2 x 2) checks the path; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.search_quality import mean_sd, mmtune, retrain, run_sweep  # noqa: E402
from mmtune.tune import records  # noqa: E402
from mmtune.tune.budget import parse_duration  # noqa: E402

UNITS = ("train", "default", "samples_norace", "steps_norace", "converged")
# unit -> (sweep flags, the space's `fixed` keys, its top-level keys)
FLOW = {"default": ((), {}, {}), "samples_norace": (("--no-finalize-race",), {}, {}),
        "steps_norace": (("--no-finalize-race",), {"train_steps": 25, "epoch_samples": 0}, {}),
        "converged": ((), {}, {"stop_when_converged": True})}
DATA = {"n_train": 270, "n_test": 2000, "difficulty": 0.5}
SMOKE_DATA = {"n_train": 120, "n_test": 200, "difficulty": 0.5}
SMOKE_FLOW = ["--epochs", "2", "--finalize-top-k", "2", "--finalize-seeds", "2"]


def make_data(folder: Path, smoke: bool) -> Path:
    """The demo generator at the small-set size, without val.npz (the holdout or folds come from train.npz)."""
    sizes = SMOKE_DATA if smoke else DATA
    if not (folder / "train.npz").is_file():
        mmtune(["data", "demo", str(folder), "--n-train", str(sizes["n_train"]), "--n-val", "1", "--n-test",
                str(sizes["n_test"]), "--difficulty", str(sizes["difficulty"])], folder.parent / "data.log")
        (folder / "val.npz").unlink()
    return folder


def space_file(work: Path, unit: str, smoke: bool) -> Path:
    """search_spaces/default.yaml with the unit's keys (a smoke: 64 samples per epoch, the path only)."""
    raw = {**yaml.safe_load((ROOT / "search_spaces/default.yaml").read_text()), **FLOW[unit][2]}
    raw["fixed"] = {**raw.get("fixed", {}), **FLOW[unit][1], **({"epoch_samples": 64} if smoke else {})}
    path = work / f"{unit}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_unit(unit: str, data: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One unit: its wall time, test F1 per seed, and what the flow trained."""
    load0 = os.getloadavg()[0]
    t0 = time.time()
    if unit == "train":
        extra = ["--epochs", "2"] if args.smoke else []
        r = retrain(data, None, args.seeds, work / "train", extra)
        return {"unit": unit, "wall_s": r["retrain_wall_s"], "wall_per_run_s": r["retrain_wall_s"] / args.seeds,
                "test_f1": r["test_f1"], "load_start": load0, "load_end": os.getloadavg()[0]}
    trials = 2 if args.smoke else int(yaml.safe_load((ROOT / "search_spaces/default.yaml").read_text())["num_samples"])
    flags = (*FLOW[unit][0], *(SMOKE_FLOW if args.smoke else ()))
    sweep = run_sweep(data, space_file(work, unit, args.smoke), unit, work, trials, True, flags)
    wall = time.time() - t0
    exp = sweep["exp"]
    final = json.loads((exp / "final/summary.json").read_text())
    meta = json.loads((exp / "mmtune.json").read_text())
    quality = retrain(data, exp / "best_config.yaml", args.seeds, work / f"{unit}-retrain", [])
    return {"unit": unit, "wall_s": wall, "finalize_wall_s": final["wall_time_s"], "search_wall_s": wall -
            final["wall_time_s"], "test_f1": quality["test_f1"], "trained_in_finalize": final["trained"],
            "from_sweep": final["from_sweep"], "finalize_grid": len(final["configs"]) * len(final["seeds"]),
            "race_out": (final.get("race") or {}).get("out"), "validation": meta.get("validation", {}).get("scheme"),
            "trials": len(records.read_all(exp)), "converged": meta.get("converged"),
            "estimate": plan_estimate(work / f"{unit}.log"), "load_start": load0, "load_end": os.getloadavg()[0]}


def plan_estimate(log: Path) -> dict[str, Any] | None:
    """The plan's estimate of the flow (tune/estimate.py) as the sweep printed it, in seconds; None if absent."""
    line = next((ln for ln in log.read_text().splitlines() if ln.startswith("estimate: about ")), None)
    if line is None:
        return None
    whole, search = re.match(r"estimate: about (\S+) \(search ~([^,)]+)", line).groups()
    return {"total_s": parse_duration(whole, "estimate"), "search_s": parse_duration(search, "estimate"),
            "line": line}


def table(units: dict[str, dict[str, Any]]) -> str:
    """The markdown table: wall, multiple of one train, search/finalize split, finalize runs, test F1."""
    train = units.get("train")
    per_train = train["wall_per_run_s"] if train else None
    lines = ["| unit | wall s | x one train | search / finalize s | trials run | plan's estimate s | finalize runs "
             "trained (of grid; from sweep) | test F1 mean ± sd | load avg start/end |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in UNITS:
        u = units.get(name)
        if u is None:
            continue
        m, s = mean_sd(u["test_f1"])
        # A unit measured on another machine holds that machine's train wall: a multiple is of one machine's walls.
        own = u.get("train_wall_per_run_s", per_train)
        mult = f"{u['wall_s'] / own:.1f}" if own and name != "train" else "1 (per run)" if train else "-"
        split = "-" if name == "train" else f"{u['search_wall_s']:.0f} / {u['finalize_wall_s']:.0f}"
        runs = "-" if name == "train" else f"{u['trained_in_finalize']} (of {u['finalize_grid']}; {u['from_sweep']})"
        wall = u["wall_per_run_s"] if name == "train" else u["wall_s"]
        est = (u.get("estimate") or {}).get("total_s")
        trials = u.get("trials", "-")
        lines.append(f"| {name} | {wall:.0f} | {mult} | {split} | {trials} | {'-' if est is None else f'{est:.0f}'} | "
                     f"{runs} | {m:.3f} ± {s:.3f} | {u['load_start']:.1f} / {u['load_end']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=lambda v: v.split(","), default=list(UNITS), help=f"of {', '.join(UNITS)}")
    ap.add_argument("--seeds", type=int, default=3, help="training seeds of the train unit and of each retrain")
    ap.add_argument("--out", default=str(ROOT / "bench/flow_cost"), help="folder of units/*.json and table.md")
    ap.add_argument("--keep", help="keep data, experiments and logs here (default: a temp folder)")
    ap.add_argument("--smoke", action="store_true", help="tiny data and flow: checks the path only")
    args = ap.parse_args(argv)
    if set(args.units) - set(UNITS) or args.seeds < 1:
        ap.error(f"--units takes {', '.join(UNITS)}; --seeds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the units not yet on file; write the table; return every unit's result."""
    args = parse_args(argv)
    out, work = Path(args.out), Path(args.keep or tempfile.mkdtemp(prefix="flow_cost_"))
    (out / "units").mkdir(parents=True, exist_ok=True)
    data = make_data(work / "data", args.smoke)
    units: dict[str, dict[str, Any]] = {}
    for unit in args.units:
        path = out / "units" / f"{unit}.json"
        if not path.is_file():
            r = run_unit(unit, data, work, args)
            path.write_text(json.dumps({**r, "smoke": args.smoke, "seeds": args.seeds}, indent=1) + "\n")
        units[unit] = json.loads(path.read_text())
        print(f"# {unit}: {units[unit]['wall_s']:.0f} s, test F1 {statistics.fmean(units[unit]['test_f1']):.3f}",
              file=sys.stderr, flush=True)
    (out / "table.md").write_text(table(units))
    print(table(units))
    return units


if __name__ == "__main__":
    main()
