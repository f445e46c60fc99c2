"""`sweep()`: the one entry point that starts (or continues) a sweep, for the CLI, finalize, benches and tests.

Inputs are checked before Ray starts (bad input loses nothing); then connect, plan, Tuner, fit, finish. This is the
Ray side: importing it imports Ray (the light paths import it inside the function that starts a sweep).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator, Sequence, TextIO

from mmtune.data.validation import Validation, scored_counts
from mmtune.model.config import samples_per_epoch, steps_per_epoch
from mmtune.model.loop import Callback
from mmtune.tune import defaults, ray_runtime, resume as resuming, storage, tuner as tuning
from mmtune.tune.console import capture_ray_output, ray_init_kwargs
from mmtune.tune.errors import SweepError, SweepInterrupted
from mmtune.tune.experiment import RAY_LOG, Experiment, mark_interrupted, provenance, update_meta, write_meta
from mmtune.tune.estimate import flow_estimate
from mmtune.tune.job import Job, SweepOptions, prepare, time_budget
from mmtune.tune.resources import Plan, check_cluster, plan_resources
from mmtune.tune.results import prune_checkpoints
from mmtune.tune.searcher import reconcile_experiment
from mmtune.tune.space import SearchSpace

log = logging.getLogger(__name__)


def sweep(options: SweepOptions, *, searcher: Any = None, scheduler: Any = None, stopper: Any = None,
          callbacks: Sequence[Callback] = (), out: TextIO | None = None) -> Experiment:
    """Run (or with `options.resume`, continue) a sweep and wait for it; returns the experiment as on disk.

    SEARCHER and SCHEDULER replace the space's Optuna sampler and ASHA; STOPPER is a Tune stopper; CALLBACKS
    join the training loop of every trial (e.g. fault injection). OUT receives the plan and a compact progress
    view (None: silent). Ray's own output goes to <experiment>/ray.log. A Ctrl-C stops Tune, records the
    experiment as interrupted and raises SweepInterrupted, which says how to resume it.
    """
    if options.resume:
        if searcher is not None or scheduler is not None:
            raise SweepError("a resumed sweep continues with its saved searcher and scheduler; pass neither")
        job, plan = resuming.prepare(options)
    else:
        job, plan = prepare(options), None
    _say(out, f"sweep {job.name}: {job.space.num_samples} trials x <= {job.space.epochs} epochs, metric "
              f"{job.space.metric} ({job.space.mode}), {len(job.space.params)} parameters from {job.space_file}")
    _say(out, budget(job.space, job.validation, job.data.train_rows))
    if searcher is None:  # a search (finalize's own runs bring their configs)
        _say(out, defaults.describe(job.space))
    if (limit := time_budget(job.space, job.opts.finalize_top_k, job.opts.finalize_seeds)) is not None:
        _say(out, limit.describe())
    ray_runtime.connect(options.address, options.num_cpus, options.num_gpus, **ray_init_kwargs(options.verbose))
    nodes = ray_runtime.cluster_nodes()
    check_cluster(nodes, job.opts.storage, job.opts.allow_local_storage, job.opts.data, job.data.nbytes)
    if plan is None:
        plan = plan_resources(job.space, job.data.modalities, nodes, job.opts.cpus_per_trial,
                              job.opts.gpus_per_trial, job.opts.max_concurrent, job.opts.max_failures)
        plan.validation = job.validation.describe()
        plan.early_stopping = job.space.early_stopping() if scheduler is None else ""
        start_experiment(job, plan)
    _say(out, plan.describe())
    if searcher is None and not options.resume and out is not None:  # a search from its start, shown: its cost
        _say(out, flow_estimate(job, plan))  # (the probes take seconds: not for a silent sweep)
    with interrupted_sweep(job.loc), capture_ray_output(job.loc.local / RAY_LOG, options.verbose):
        if options.resume:
            tuner = resuming.restore(job, plan, tuple(callbacks), out)
        else:
            tuner = tuning.build_tuner(job, plan, tuple(callbacks), out, searcher=searcher, scheduler=scheduler,
                                       stopper=stopper)
        with ray_runtime.tune_stop_signal():
            errors = len(tuner.fit().errors)
    return finish_experiment(job.loc, errors)


@contextlib.contextmanager
def interrupted_sweep(loc: storage.Location) -> Iterator[None]:
    """A Ctrl-C in the block marks the experiment at LOC interrupted (not finished) and says how to resume it."""
    try:
        yield
    except KeyboardInterrupt as e:
        mark_interrupted(loc)
        raise SweepInterrupted(f"{loc}: the sweep was interrupted (ended trials are kept; running ones go on from "
                               f"their last checkpoint). Continue it: mmtune resume {loc}", str(loc)) from e


def budget(space: SearchSpace, validation: Validation, n_train: int) -> str:
    """The per-trial budget in samples, passes and optimizer steps per batch size, for the plan: an epoch count
    alone hides how little a small data set trains (one pass over 200 samples is 7 batches)."""
    base = space.train_config(space.start[0] if space.start else {})
    batch = next((p for p in space.params if p.name == "batch_size"), None)
    sizes = sorted({int(b) for b in batch.values() or ()}) if batch is not None and batch.values() else [base.batch_size]
    steps = ", ".join(f"{steps_per_epoch(replace(base, batch_size=b), n_train)} at batch {b}" for b in sizes)
    models = f", for each of {validation.k} fold models" if validation.k > 1 else ""
    if base.train_steps:  # a fixed step count: the samples then grow with the batch size
        return (f"budget per trial: {space.epochs} epochs x {base.train_steps} optimizer steps (train_steps), "
                f"{'/'.join(str(b * base.train_steps) for b in sizes)} samples per epoch at batch "
                f"{'/'.join(map(str, sizes))}{models}")
    samples = samples_per_epoch(base, n_train)
    return (f"budget per trial: {space.epochs} epochs x {samples:,} samples ({samples / n_train:.1f} passes over "
            f"{n_train} training samples; optimizer steps per epoch: {steps}) = {space.epochs * samples:,} samples"
            f"{models}")


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def start_experiment(job: Job, plan: Plan) -> None:
    """A fresh experiment folder holding only the metadata that resume and export read, and provenance."""
    if job.loc.local.exists():
        shutil.rmtree(job.loc.local)  # only reached with --overwrite (prepare refuses otherwise)
    storage.delete(job.loc)
    space = job.space
    options = {**asdict(replace(job.opts, space=job.space_file)), "resume": False}
    write_meta(job.loc, {
        "name": job.name, "data": str(Path(job.opts.data).resolve()), "space_file": job.space_file,
        "space": {**space.raw, "num_samples": space.num_samples, "epochs": space.epochs, "seed": space.seed,
                  "searcher": space.searcher, "cv": space.cv, "time_budget": space.time_budget,
                  "asha": {"grace_period": space.grace_period, "reduction_factor": space.reduction_factor,
                           "brackets": space.brackets}},  # cv as resolved: resume and export read it
        "options": options, "plan": asdict(plan), "provenance": provenance(), "started": time.time(),
        # The scheme as decided (resume reads it back) and the rows that score, for the noise checks.
        "validation": {**scored_counts(job.data), "scheme": job.validation.to_dict()},
        "finished": False,
    })


def finish_experiment(loc: storage.Location, errors: int) -> Experiment:
    """Reconcile the study with the records, prune checkpoints, mark the experiment finished; return it."""
    if loc.remote:
        storage.pull(loc)  # what Ray wrote there, for the export that follows
        storage.push(loc, RAY_LOG)
    else:
        # Remote checkpoints are left to Ray's retention: pruning them would download every one first.
        freed = prune_checkpoints(Experiment.open(loc.local))
        log.info("pruned checkpoints: %.1f MB freed", freed / 2**20)
    reconcile_experiment(loc)
    update_meta(loc, finished=True, interrupted=False, ended=time.time(), errors=errors)
    return Experiment.open(loc.local)
