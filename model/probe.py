"""A short timed probe of one config on the data, for a sweep plan's estimate of the whole flow. Plain PyTorch."""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from mmtune.data.validation import TrainData
from mmtune.model.config import TrainConfig
from mmtune.model.loop import Fold, evaluate, make_objective, pick_device

PROBE_STEPS = 3  # timed optimizer steps, after one untimed (the first step pays for allocations)


def probe(cfg: TrainConfig, data: TrainData, threads: int, steps: int = PROBE_STEPS) -> tuple[float, float]:
    """(seconds per optimizer step, seconds per evaluation of the val split) of CFG's model on fold 1 of DATA with
    THREADS torch threads (a trial's CPUs), measured on a model that is then thrown away."""
    view = data.fold(0)
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        fold = Fold(replace(cfg, train_steps=1), view, make_objective(cfg, view), pick_device(cfg.device))
        fold.train_epoch()
        fold.steps = steps
        t0 = time.perf_counter()
        fold.train_epoch()
        step_s = (time.perf_counter() - t0) / steps
        t0 = time.perf_counter()
        if fold.val is not None:
            evaluate(fold.model, fold.objective, fold.val)
        return step_s, time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
