"""Where one cross-validated trial's time goes: training, evaluation and metrics per fold, checkpoint writes.

On the small-set setting of bench/flow_cost.py (270 training sequences, no val.npz, so `cv: auto` picks 5-fold CV),
each config below is built as a trial of the shipped default space builds it (`SearchSpace.train_config`: 512
samples per epoch, 12 epochs, one torch thread as on a trial's one CPU) and trained with the one `Trainer` for a few
epochs. Each epoch is split into its phases, timed where the loop does them:

  train       every fold's optimizer steps, with the train metrics from the epoch's own logits (`Fold.train_epoch`)
  evaluate    every fold's forward pass over its val rows and the val metrics (`Objective.evaluate`)
  metrics     of that, the scikit-learn metrics alone (`classification_metrics` on a fold's val size, timed apart)
  rest        the epoch's own bookkeeping: fold mean, best-epoch snapshot of the weights
  checkpoint  the state the trainable reports each epoch (`Trainer.state_dict("current")`) written with
              `save_checkpoint` to local disk, as `tune/trainable.py`'s Reporter does before Ray persists it

The medians are over the epochs after the first, which is given apart (warm-up). A trial worker's imports (torch,
scikit-learn's metrics, torch._dynamo through the optimizer: ~3.5 CPU-s once per Ray worker, which Tune's
`reuse_actors` keeps for the next trial) are not in these epochs: this script imports them before it starts.

    .venv/bin/python bench/trial_profile.py [--epochs 4] [--out bench/trial_profile.json] [--md FILE] [--smoke]

`--smoke` (tiny data, one small config, 2 epochs) checks the path; its numbers mean nothing.
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
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.flow_cost import make_data  # noqa: E402
from mmtune.data.validation import resolve  # noqa: E402
from mmtune.model.checkpoint import save_checkpoint  # noqa: E402
from mmtune.model.loop import Trainer  # noqa: E402
from mmtune.model.metrics import classification_metrics  # noqa: E402
from mmtune.tune.defaults import point  # noqa: E402
from mmtune.tune.space import load_space, space_file  # noqa: E402

# The defaults (the study's first trial and finalize's contender: the space's largest model), then the two configs
# issue 20 measured by hand (d_model 128, 3 layers at batch 16 and 64), then the space's smallest model.
CONFIGS = {"defaults": None, "d128-l3-b16": dict(d_model=128, num_layers=3, nhead=4, batch_size=16),
           "d128-l3-b64": dict(d_model=128, num_layers=3, nhead=4, batch_size=64),
           "d64-l1-b16": dict(d_model=64, num_layers=1, nhead=2, batch_size=16)}
SMOKE_CONFIGS = {"d64-l1-b16": CONFIGS["d64-l1-b16"]}
PHASES = ("train", "evaluate", "metrics", "rest", "checkpoint")
EPOCH_PHASES = ("train", "evaluate", "rest", "checkpoint")  # an epoch and its checkpoint: metrics is inside evaluate


class Clock:
    """Seconds spent in wrapped calls, by phase, since the last `take`."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}

    def wrap(self, phase: str, fn: Callable) -> Callable:
        """FN, its time added to PHASE on every call."""
        def timed(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                self.spent[phase] = self.spent.get(phase, 0.0) + time.perf_counter() - t0
        return timed

    def take(self) -> dict[str, float]:
        """The seconds by phase since the last take, and start again."""
        spent, self.spent = self.spent, {}
        return spent


def trainer_for(params: dict[str, Any] | None, data_dir: Path, smoke: bool) -> tuple[Trainer, Any]:
    """The config a default-space trial with PARAMS (None: the defaults) trains, on the data as cv: auto splits it."""
    space = load_space(space_file("default"))
    validation = resolve(data_dir, space.cv, space.split_seed, space.validation.val_fraction)
    space = space.with_overrides(cv=validation.folds, **({"fixed": {**space.fixed, "epoch_samples": 64}} if smoke
                                                          else {}))
    cfg = space.train_config({**point(space), **(params or {})})
    return Trainer(cfg, validation.load(data_dir)), validation


def metrics_seconds(trainer: Trainer, repeats: int = 5) -> float:
    """Seconds of the val metrics of every fold, timed apart on each fold's val labels (median of REPEATS)."""
    rng = np.random.default_rng(0)
    ys = [f.val.y.numpy() for f in trainer.folds]
    probs = [rng.random(len(y)) for y in ys]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for y, p in zip(ys, probs):
            classification_metrics(y, p, 0.5)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def profile(name: str, params: dict[str, Any] | None, data_dir: Path, epochs: int, smoke: bool) -> dict[str, Any]:
    """EPOCHS timed epochs of one config: each phase's seconds per epoch, the checkpoint's size, the model's."""
    trainer, validation = trainer_for(params, data_dir, smoke)
    clock = Clock()
    for f in trainer.folds:  # instance attributes: the loop calls these exactly as it does in a trial
        f.train_epoch = clock.wrap("train", f.train_epoch)
        f.objective.evaluate = clock.wrap("evaluate", f.objective.evaluate)
    per_epoch, size = [], 0
    with tempfile.TemporaryDirectory() as d:
        for _ in range(epochs):
            t0 = time.perf_counter()
            trainer.history.append(trainer.run_epoch())
            total = time.perf_counter() - t0
            spent = clock.take()
            t1 = time.perf_counter()
            path = save_checkpoint(trainer.state_dict("current"), Path(d) / "checkpoint.pt")
            ckpt = time.perf_counter() - t1
            size = path.stat().st_size
            row = {"train": spent.get("train", 0.0), "evaluate": spent.get("evaluate", 0.0),
                   "metrics": metrics_seconds(trainer), "checkpoint": ckpt}
            row["rest"] = max(0.0, total - row["train"] - row["evaluate"])
            per_epoch.append(row)
    cfg = trainer.cfg
    return {"config": name, "d_model": cfg.d_model, "num_layers": cfg.num_layers, "batch_size": cfg.batch_size,
            "folds": validation.k, "samples_per_epoch": trainer.folds[0].steps * cfg.batch_size,
            "steps_per_epoch": trainer.folds[0].steps, "params": trainer.num_params, "checkpoint_mb": size / 1e6,
            "epochs": per_epoch}


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """Epoch 1 apart; the later epochs' median per phase and each phase's share of an epoch plus its checkpoint."""
    first, later = run["epochs"][0], run["epochs"][1:] or run["epochs"][:1]
    median = {p: statistics.median(e[p] for e in later) for p in PHASES}
    whole, first_whole = (sum(e[p] for p in EPOCH_PHASES) for e in (median, first))
    share = {p: median[p] / whole for p in PHASES}
    return {**{k: v for k, v in run.items() if k != "epochs"}, "median_s": median, "share": share,
            "epoch_s": whole, "first_epoch_s": first_whole, "first_epoch_extra_s": first_whole - whole,
            "epochs_timed": len(run["epochs"])}


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of the summaries."""
    lines = ["| config | params (one fold) | folds x steps x batch | epoch s | train | evaluate (metrics) | rest | "
             "checkpoint (MB) | epoch 1 minus median s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m, s = r["median_s"], r["share"]
        lines.append(
            f"| {r['config']} | {r['params'] / 1e6:.2f} M | {r['folds']} x {r['steps_per_epoch']} x "
            f"{r['batch_size']} | {r['epoch_s']:.2f} | {m['train']:.2f} s ({s['train']:.1%}) | "
            f"{m['evaluate']:.3f} s ({s['evaluate']:.1%}; {m['metrics']:.3f} s) | "
            f"{m['rest']:.3f} s ({s['rest']:.1%}) | "
            f"{m['checkpoint']:.3f} s ({s['checkpoint']:.1%}; {r['checkpoint_mb']:.1f}) | "
            f"{r['first_epoch_extra_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Profile every config; write the JSON (and the markdown table); return the summary."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4, help="epochs timed per config (>= 2: epoch 1 is given apart)")
    ap.add_argument("--out", default=str(ROOT / "bench/trial_profile.json"))
    ap.add_argument("--md", help="also write the table here")
    ap.add_argument("--smoke", action="store_true", help="tiny data, one small config: checks the path only")
    args = ap.parse_args(argv)
    if args.epochs < 2:
        ap.error("--epochs must be >= 2: the first epoch (warm-up) is given apart from the medians")
    torch.set_num_threads(1)  # a trial's one CPU (Ray sets OMP_NUM_THREADS=1 in its workers)
    configs = SMOKE_CONFIGS if args.smoke else CONFIGS
    with tempfile.TemporaryDirectory() as d:
        data_dir = make_data(Path(d) / "data", args.smoke)  # flow_cost's set: no val.npz, folds from train.npz
        rows = []
        for name, params in configs.items():
            rows.append(summarize(profile(name, params, data_dir, args.epochs, args.smoke)))
            print(f"# {name}: {rows[-1]['epoch_s']:.2f} s per epoch", file=sys.stderr, flush=True)
    setting = {"data": "bench/flow_cost.py's" + (" smoke" if args.smoke else ""), "epochs": args.epochs,
               "smoke": args.smoke, "threads": 1, "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0]}
    result = {"setting": setting, "configs": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        Path(args.md).write_text(table(rows))
    print(table(rows))
    return result


if __name__ == "__main__":
    main()
