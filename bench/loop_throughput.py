"""Training throughput (samples/s) of mmtune's loop against a minimal hand-written PyTorch loop.

Both sides train the same MultimodalClassifier (same arguments, same seed) on the same demo data with the
same batch size and number of steps, AdamW via `configure_optimizer`, the per-step cosine-restarts schedule,
grad clipping at 1.0, and focal loss plus the auxiliary unimodal losses. Measured, in one process:

  mmtune      `Fold.train_epoch()` (training only, with its end-of-epoch train metrics)
  minimal     a plain loop: `torch.multinomial` over class-balanced weights, tensor indexing, no metrics
  mmtune_fit  `fit()` per epoch, validation included (for information; not part of the ratio)

After one warm-up run of each, `--repeats` timed runs are interleaved (the order rotates every repeat) and
the medians are reported, since the machine is shared and timings are noisy. With --threads 2 on a
busy 2-core machine the figures swing by 10x (a thread waits at each op for a core another process
holds); compare the best runs then, or rerun when the machine is quiet. One JSON object goes to stdout
(and to `--out FILE`). Run from the repository root:

    .venv/bin/python bench/loop_throughput.py [--threads 2] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mmtune.data.demo import make_demo  # noqa: E402
from mmtune.data.npz import Dataset, load_dataset  # noqa: E402
from mmtune.model.config import TrainConfig  # noqa: E402
from mmtune.model.loop import Trainer, build_scheduler, fit  # noqa: E402
from mmtune.model.losses import build_loss  # noqa: E402
from mmtune.model.transformer import MultimodalClassifier, configure_optimizer  # noqa: E402

TARGET = 0.95  # mmtune / minimal


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=0, help="steps per epoch; 0 = one pass over train")
    p.add_argument("--epochs", type=int, default=1, help="epochs per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each loop")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    return p.parse_args(argv)


def make_config(a: argparse.Namespace) -> TrainConfig:
    """The benchmarked configuration: a mid-size model on CPU, no early stopping."""
    return TrainConfig(d_model=a.d_model, nhead=4, num_layers=a.layers, batch_size=a.batch, epochs=a.epochs,
                       train_steps=a.steps, patience=0, weighted_sampler=True, use_focal=True, aux_weight=0.5,
                       modality_dropout=0.0, device="cpu")


class Minimal:
    """The same model, optimizer, schedule and loss in a loop with nothing else."""

    def __init__(self, cfg: TrainConfig, data: Dataset, steps: int):
        self.cfg, self.steps = cfg, steps
        split = data.splits["train"]
        self.x = {m: torch.from_numpy(a.copy()) for m, a in split.x.items()}
        self.valid = {m: torch.from_numpy(a.copy()) for m, a in split.mask.items()}
        self.y = torch.from_numpy(split.y.copy())
        self.weights = (1.0 / torch.bincount(self.y, minlength=2).double())[self.y]
        torch.manual_seed(cfg.seed)
        self.model = MultimodalClassifier(data.modalities, cfg.d_model, cfg.nhead, cfg.num_layers, cfg.ff_mult,
                                          cfg.dropout, cfg.modality_dropout)
        self.opt = configure_optimizer(self.model, cfg.lr, cfg.weight_decay)
        self.sched = build_scheduler(cfg, self.opt, steps)
        self.criterion = build_loss(cfg.use_focal, cfg.focal_gamma, cfg.focal_alpha, None)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def loss(self, x: dict, valid: dict, y: torch.Tensor) -> torch.Tensor:
        """Focal loss of the main head + aux_weight x mean of the per-modality aux losses."""
        out = self.model(x, valid)
        aux = []
        for m, logits in out.aux_logits.items():
            ok = out.aux_valid[m].float()
            aux.append((self.criterion.per_sample(logits, y) * ok).sum() / ok.sum().clamp(min=1.0))
        return self.criterion(out.logits, y) + self.cfg.aux_weight * torch.stack(aux).mean()

    def epoch(self) -> None:
        """STEPS optimizer steps on class-balanced batches."""
        self.model.train()
        b = self.cfg.batch_size
        idx = torch.multinomial(self.weights, self.steps * b, replacement=True, generator=self.gen)
        for rows in idx.view(self.steps, b):
            loss = self.loss({m: v[rows] for m, v in self.x.items()},
                             {m: v[rows] for m, v in self.valid.items()}, self.y[rows])
            self.opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.sched.step()


Seconds = tuple[float, float]  # (wall, process CPU)


def timed(run: Callable[[], object]) -> Seconds:
    """Wall and process-CPU seconds of one call of RUN."""
    w0, c0 = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - w0, time.process_time() - c0


def fit_seconds(cfg: TrainConfig, data: Dataset) -> Seconds:
    """Wall seconds of the epochs of one `fit()` (its own per-epoch timing, validation included) and
    process-CPU seconds of the whole call (which also builds a Trainer, a few ms)."""
    c0 = time.process_time()
    result, _ = fit(cfg, data)
    return sum(r["seconds"] for r in result.history), time.process_time() - c0


def runners(cfg: TrainConfig, data: Dataset) -> tuple[dict[str, Callable[[], Seconds]], int]:
    """Name -> a callable that runs cfg.epochs epochs and returns its seconds; and the steps per epoch."""
    (trainer,) = Trainer(cfg, data).folds  # a holdout: one fold, whose train_epoch is the loop's core
    minimal = Minimal(cfg, data, trainer.steps)

    def mmtune() -> Seconds:
        return timed(lambda: [trainer.train_epoch() for _ in range(cfg.epochs)])

    def plain() -> Seconds:
        return timed(lambda: [minimal.epoch() for _ in range(cfg.epochs)])

    return {"mmtune": mmtune, "minimal": plain, "mmtune_fit": lambda: fit_seconds(cfg, data)}, trainer.steps


def measure(run: dict[str, Callable[[], Seconds]], repeats: int) -> dict[str, list[Seconds]]:
    """One warm-up call each, then REPEATS interleaved timed calls (order rotated); seconds per name."""
    names = list(run)
    for name in names:
        run[name]()
    seconds: dict[str, list[Seconds]] = {n: [] for n in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            seconds[name].append(run[name]())
    return seconds


def rates(samples: int, seconds: dict[str, list[Seconds]], which: int) -> dict[str, list[float]]:
    """Samples/s of every run, from wall (WHICH 0) or process-CPU (WHICH 1) seconds."""
    return {n: [round(samples / s[which], 1) for s in v] for n, v in seconds.items()}


def medians(runs: dict[str, list[float]]) -> dict[str, float]:
    """Median of each list."""
    return {n: round(statistics.median(v), 1) for n, v in runs.items()}


def report(cfg: TrainConfig, a: argparse.Namespace, steps: int, seconds: dict[str, list[Seconds]]) -> dict:
    """The JSON-ready result. The ratio is of wall-clock medians; paired (median of adjacent-run ratios),
    best-run and CPU-time figures help read it when other processes take the cores."""
    samples = steps * cfg.batch_size * cfg.epochs
    runs, cpu_runs = rates(samples, seconds, 0), rates(samples, seconds, 1)
    median, cpu, best = medians(runs), medians(cpu_runs), {n: max(v) for n, v in runs.items()}
    paired = statistics.median(m / p for m, p in zip(runs["mmtune"], runs["minimal"]))
    keys = ("d_model", "nhead", "num_layers", "ff_mult", "batch_size", "epochs", "weighted_sampler",
            "use_focal", "aux_weight", "modality_dropout", "dropout", "device")
    return {"config": {**{k: asdict(cfg)[k] for k in keys}, "steps_per_epoch": steps, "repeats": a.repeats},
            "threads": torch.get_num_threads(), "samples_per_s": median,
            "ratio": round(median["mmtune"] / median["minimal"], 3), "paired_ratio": round(paired, 3),
            "best_samples_per_s": best, "best_ratio": round(best["mmtune"] / best["minimal"], 3),
            "cpu_samples_per_s": cpu, "cpu_ratio": round(cpu["mmtune"] / cpu["minimal"], 3),
            "runs": runs, "cpu_runs": cpu_runs, "target": TARGET, "torch": torch.__version__}


def main(argv: list[str] | None = None) -> dict:
    """Build data and both loops, measure, print (and write) the JSON."""
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = make_config(a)
    with tempfile.TemporaryDirectory() as tmp:
        data = load_dataset(make_demo(tmp))
    run, steps = runners(cfg, data)
    result = report(cfg, a, steps, measure(run, a.repeats))
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
