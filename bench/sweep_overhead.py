"""Sweep overhead: the same N trials x E epochs run by a plain process pool and by `mmtune sweep`.

(a) a `multiprocessing` pool with the sweep's concurrency; each worker imports torch and loads the
    data once, then runs `fit` for its share of the fixed configs;
(b) mmtune's sweep (Ray Tune + OptunaSearch, ASHA off: grace_period = epochs) on the same fixed
    configs, given as the space's starting points, on an embedded local Ray.
Prints JSON: wall time of each, the ratio (b)/(a), per-trial overhead, and the peak memory (summed
PSS of this process and all its descendants, so shared pages count once).

    .venv/bin/python bench/sweep_overhead.py [--trials 8] [--epochs 5] [--steps 20] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import threading
import time
from pathlib import Path

import yaml


def pss_tree(root: int) -> int:
    """Summed PSS (bytes) of ROOT and every descendant process."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class Polling:
    """A context manager that calls `sample()` every INTERVAL seconds in a daemon thread until it exits, or until
    `sample()` returns False."""

    interval = 1.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> bool | None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self._stop.is_set() and self.sample() is not False:
            self._stop.wait(self.interval)

    def __enter__(self) -> "Polling":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakMemory(Polling):
    """Samples the process tree's PSS every 0.2 s in a thread; `.peak` in bytes."""

    interval = 0.2

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def sample(self) -> None:
        self.peak = max(self.peak, pss_tree(os.getpid()))


def configs(n: int) -> list[dict]:
    """N fixed, different small configs (the searched parameters of the bench space)."""
    return [{"d_model": 32 if i % 2 else 64, "num_layers": 1 + i % 2, "lr": 1e-3 * (1 + i % 3),
             "dropout": 0.05 * (i % 4)} for i in range(n)]


def space_file(tmp: Path, n: int, epochs: int, steps: int) -> Path:
    """A search space whose N starting points are the fixed configs; ASHA never stops a trial."""
    doc = {
        "metric": "val/f1", "num_samples": n, "seed": 0, "epochs": epochs,
        "asha": {"grace_period": epochs, "reduction_factor": 2},
        "fixed": {"train_steps": steps, "batch_size": 32, "nhead": 4, "patience": 0, "device": "cpu"},
        "params": {"d_model": {"type": "categorical", "choices": [32, 64]},
                   "num_layers": {"type": "int", "low": 1, "high": 2},
                   "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                   "dropout": {"type": "float", "low": 0.0, "high": 0.3}},
        "start": configs(n),
    }
    path = tmp / "bench_space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


_DATA = None


def _worker_init(data_dir: str) -> None:
    global _DATA
    import torch

    from mmtune.data.npz import load_dataset

    torch.set_num_threads(1)  # as Ray does for a 1-CPU trial
    _DATA = load_dataset(data_dir)


def _worker_trial(args: tuple) -> float:
    from mmtune.tune.space import load_space
    from mmtune.model.loop import fit

    space_path, params = args
    t0 = time.perf_counter()
    fit(load_space(space_path).train_config(params), _DATA)
    return time.perf_counter() - t0


def run_pool(data_dir: Path, space: Path, n: int, concurrency: int) -> dict:
    """(a): a process pool, torch imported and data loaded once per worker."""
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        ctx = mp.get_context("spawn")
        with ctx.Pool(concurrency, initializer=_worker_init, initargs=(str(data_dir),)) as pool:
            trial_s = pool.map(_worker_trial, [(str(space), c) for c in configs(n)], chunksize=1)
    return {"wall_s": time.perf_counter() - t0, "trial_s": trial_s, "peak_pss_mb": mem.peak / 2**20}


def run_sweep(data_dir: Path, space: Path, storage: Path, concurrency: int) -> dict:
    """(b): mmtune's sweep on an embedded local Ray (its start-up included)."""
    import ray

    from mmtune.tune.ray_runtime import connect
    from mmtune.tune.sweep import SweepOptions, sweep
    from mmtune.tune.space import load_space

    t0 = time.perf_counter()
    with PeakMemory() as mem:
        opts = SweepOptions(data=str(data_dir), space=str(space), name="bench", storage=str(storage),
                            gpus_per_trial="0", num_cpus=concurrency)  # 1 CPU per trial, so that many at once
        t_init = time.perf_counter()
        connect(None, num_cpus=concurrency)  # timed apart; sweep() then uses this runtime
        t_ready = time.perf_counter()
        sweep(opts)
        t_done = time.perf_counter()
    ray.shutdown()
    data_mb = load_space(space).validation.load(data_dir).nbytes / 2**20
    return {"wall_s": t_done - t0, "ray_init_s": t_ready - t_init, "tuner_s": t_done - t_ready,
            "peak_pss_mb": mem.peak / 2**20, "data_mb": data_mb}


def main() -> None:
    """Run both, print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="batches per epoch (sets the trial length)")
    p.add_argument("--concurrency", type=int, default=2, help="trials at once, in both (a) and (b)")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args()
    from mmtune.data.demo import make_demo

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_demo(tmp / "demo")
        space = space_file(tmp, args.trials, args.epochs, args.steps)
        a = run_pool(data, space, args.trials, args.concurrency)
        b = run_sweep(data, space, tmp / "results", args.concurrency)
    n = args.trials
    out = {
        "trials": n, "epochs": args.epochs, "steps_per_epoch": args.steps, "concurrency": args.concurrency,
        "mean_trial_s": sum(a["trial_s"]) / n,
        "pool": {k: v for k, v in a.items() if k != "trial_s"}, "sweep": b,
        "ratio": b["wall_s"] / a["wall_s"],
        "ratio_excluding_ray_init": (b["wall_s"] - b["ray_init_s"]) / a["wall_s"],
        "overhead_per_trial_s": (b["wall_s"] - a["wall_s"]) * args.concurrency / n,
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
