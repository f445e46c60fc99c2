"""The Ray Tune function trainable: the core `fit` loop, reporting once per epoch."""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from mmtune.data.validation import TrainData
from mmtune.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mmtune.model.config import ConfigError
from mmtune.model.loop import Trainer, fit
from mmtune.model.metrics import worst_value
from mmtune.model.status import STATUS_KEY, TrialStatus
from mmtune.tune import process, records
from mmtune.tune.experiment import CKPT_FILE
from mmtune.tune.space import SearchSpace

log = logging.getLogger(__name__)


class Reporter:
    """Loop callback: one `tune.report` per epoch, with a resumable checkpoint."""

    def __init__(self, metric: str):
        self.metric = metric
        self.node = ray.get_runtime_context().get_node_id()
        self.gpus = ",".join(str(g) for g in ray.get_gpu_ids())  # Ray's assignment, fractions share an id

    def __call__(self, record: dict[str, Any], trainer: Trainer) -> None:
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool))}
        metrics["node_id"], metrics["gpu_ids"] = self.node, self.gpus
        status = trainer.outcome(record)  # the loop's own decision, as `fit` takes it
        metrics[STATUS_KEY] = status.value
        if status is TrialStatus.NAN:
            # A diverged trial reports the worst value so that ASHA and the sampler rank it last.
            metrics.update({self.metric: worst_value(self.metric), "nonfinite": True})
            tune.report(metrics)
            return
        metrics["nonfinite"] = False
        with tempfile.TemporaryDirectory() as d:
            save_checkpoint(trainer.state_dict("current"), Path(d) / CKPT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


def train_trial(config: dict[str, Any], data: dict[int, TrainData], space: SearchSpace, exp_dir: str,
                callbacks: tuple = ()) -> None:
    """Train one trial of SPACE on the data split its split_seed names (DATA: split_seed -> data, shared through
    the object store); CALLBACKS join the loop's."""
    # One "Checkpoint successfully created" line per epoch would bury the trial's own log lines.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    process.collect_less()  # this worker is the trial's; scikit-learn and torch._dynamo load during its first epoch
    ctx = tune.get_context()
    done = records.final(exp_dir, ctx.get_trial_id())
    if done is not None:
        # Finished before the driver died: hand back its result instead of training again.
        log.info("trial %s already finished (%s); re-reporting", ctx.get_trial_id(), done["status"])
        tune.report(done["last_result"])
        return
    cpus = ctx.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, math.floor(cpus)))
    try:
        cfg = space.train_config(config)
    except ConfigError as e:
        tune.report({space.metric: worst_value(space.metric), STATUS_KEY: TrialStatus.INFEASIBLE.value, "error": str(e)[:500],
                     "epoch": 0, "nonfinite": False})
        return
    if cfg.split_seed not in data:  # prepare() splits for every seed a trial can set; reaching here is a bug
        raise RuntimeError(f"split_seed {cfg.split_seed}: no split prepared (have {sorted(data)})")
    fit(cfg, data[cfg.split_seed], [Reporter(space.metric), *callbacks], resume=restore(tune.get_checkpoint()))


def restore(checkpoint: tune.Checkpoint | None) -> dict[str, Any] | None:
    """The newest readable checkpoint of this trial: a corrupt latest one falls back to an older one."""
    if checkpoint is None:
        return None
    latest = Path(checkpoint.path)
    if checkpoint.filesystem.type_name != "local":
        with checkpoint.as_directory() as d:  # remote storage: only the latest is fetched
            return load_checkpoint(Path(d) / CKPT_FILE)
    # Only older ones: a newer folder holds a checkpoint whose report never reached the driver (e.g. a node died
    # while uploading it), so it may be half-written and its epoch is in no result. Names are checkpoint_%06d.
    older = (p for p in latest.parent.glob("checkpoint_*") if p.name < latest.name)
    candidates = [latest, *sorted(older, reverse=True)]
    for d in candidates:
        try:
            state = load_checkpoint(d / CKPT_FILE)
        except CheckpointError as e:
            log.warning("%s; trying an older checkpoint", e)
            continue
        if d != latest:
            log.warning("resuming from %s (epoch %d) instead of the unreadable %s", d, state["epoch"], latest)
        return state
    log.warning("no readable checkpoint in %s: the trial starts over", latest.parent)
    return None
