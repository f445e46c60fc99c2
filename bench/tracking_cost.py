"""What tracking costs: the same small sweep with no tracking, --tensorboard, and --mlflow (SQLite and file stores).

One embedded local Ray for all runs; the modes are interleaved within each repeat, so that a busy machine's drift
falls on all of them alike. Wall time is sweep() alone (Ray already up). The loggers run in the driver, so its CPU
time (this process, all threads) shows their cost even when a busy machine makes wall times noisy. Prints JSON: per
mode and measure, the value per trial of each repeat, its median and range, and the median's cost over no tracking.

    .venv/bin/python bench/tracking_cost.py [--trials 6] [--epochs 3] [--steps 20] [--repeats 3] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sweep_overhead import space_file  # noqa: E402  (the same fixed-config space, ASHA off)

MODES = ("none", "tensorboard", "mlflow-sqlite", "mlflow-file")


def tracking(mode: str, tmp: Path) -> dict:
    """The SweepOptions fields of MODE."""
    if mode == "tensorboard":
        return {"tensorboard": True}
    if mode == "mlflow-sqlite":
        return {"mlflow": f"sqlite:///{tmp / 'mlflow.db'}"}
    if mode == "mlflow-file":
        return {"mlflow": f"file://{tmp / 'mlruns'}"}
    return {}


def one(data: Path, space: Path, tmp: Path, mode: str, rep: int, concurrency: int) -> tuple[float, float]:
    """Wall and driver CPU seconds of one sweep in MODE."""
    from mmtune.tune.sweep import SweepOptions, sweep

    opts = SweepOptions(data=str(data), space=str(space), name=f"{mode}-{rep}", storage=str(tmp / "results"),
                        gpus_per_trial="0", num_cpus=concurrency, **tracking(mode, tmp))
    t0, c0 = time.perf_counter(), time.process_time()
    sweep(opts)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    """Run every mode REPEATS times, print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="batches per epoch (sets the trial length)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 opens a file store only when asked to
    import ray

    from mmtune.data.demo import make_demo
    from mmtune.tune.ray_runtime import connect

    per_trial: dict[str, dict[str, list[float]]] = {k: {m: [] for m in MODES} for k in ("wall_s", "driver_cpu_s")}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_demo(tmp / "demo")
        space = space_file(tmp, args.trials, args.epochs, args.steps)
        connect(None, num_cpus=args.concurrency)
        one(data, space, tmp, "none", -1, args.concurrency)  # warm-up: imports, first worker start
        for rep in range(args.repeats):
            for mode in MODES:
                wall, cpu = one(data, space, tmp, mode, rep, args.concurrency)
                per_trial["wall_s"][mode].append(wall / args.trials)
                per_trial["driver_cpu_s"][mode].append(cpu / args.trials)
        ray.shutdown()
    out = {"trials": args.trials, "epochs": args.epochs, "steps_per_epoch": args.steps,
           "concurrency": args.concurrency, "repeats": args.repeats,
           **{f"{k}_per_trial": summarize(v, args.epochs) for k, v in per_trial.items()}}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def summarize(by_mode: dict[str, list[float]], epochs: int) -> dict:
    """Per mode: the runs, median, range, and the median's cost over no tracking (per trial and per epoch)."""
    base = statistics.median(by_mode["none"])
    return {m: {"runs": v, "median": statistics.median(v), "min": min(v), "max": max(v),
                "cost_vs_none_s": statistics.median(v) - base,
                "cost_per_epoch_ms": 1000 * (statistics.median(v) - base) / epochs} for m, v in by_mode.items()}


if __name__ == "__main__":
    main()
