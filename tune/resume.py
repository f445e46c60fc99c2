"""Continue an interrupted sweep: check what Ray saved, repair what a kill left behind, restore the Tuner."""
from __future__ import annotations

import logging
import os
import pickletools
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from mmtune.tune import storage
from mmtune.tune.errors import SweepError
from mmtune.tune.experiment import META
from mmtune.tune.resources import Plan

if TYPE_CHECKING:
    from ray import tune

    from mmtune.tune.job import Job, SweepOptions

log = logging.getLogger(__name__)


def prepare(options: SweepOptions) -> tuple[Job, Plan]:
    """The recorded Job and plan of the experiment named by OPTIONS (before Ray starts)."""
    from mmtune.tune.job import experiment_location, recorded_job
    from mmtune.tune.tracking import check_tracking

    loc = experiment_location(options.storage, options.name or "")
    job, meta = recorded_job(str(loc))
    check_tracking(job.opts.mlflow, job.opts.tensorboard)  # the tracking the sweep started with, still reachable
    # Where to run may differ from the first run (another cluster); what to run may not.
    job.opts.address, job.opts.num_cpus, job.opts.num_gpus = options.address, options.num_cpus, options.num_gpus
    job.opts.verbose = options.verbose
    return job, Plan(**meta["plan"])


def restore(job: Job, plan: Plan, callbacks: tuple, out: TextIO | None) -> tune.Tuner:
    """The Tuner that continues JOB: finished trials kept, errored ones resumed, searcher state kept."""
    from ray import tune as ray_tune

    from mmtune.tune import ray_runtime
    from mmtune.tune.tuner import build_tuner, make_trainable, tune_callbacks

    exp_dir = job.loc.local
    repaired = repair_checkpoints(exp_dir)
    for rel in repaired:
        storage.push(job.loc, rel)
    if repaired:
        log.warning("%d checkpoint(s) that Ray's saved state still named were already deleted; they now hold "
                    "the trial's newer checkpoint", len(repaired))
    if not tune_state_saved(exp_dir):
        # Killed before Tune's first state save: no trial had finished, so starting over loses nothing.
        log.warning("%s: Ray saved no experiment state yet; starting the sweep over", exp_dir)
        for child in exp_dir.iterdir():
            if child.name != META:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        storage.delete(job.loc, keep=(META,))
        return build_tuner(job, plan, callbacks, out)
    tuner = ray_tune.Tuner.restore(str(job.loc), trainable=make_trainable(job, plan, callbacks), resume_errored=True)
    # The restored callbacks and searcher are the first run's: its folder (or mirror) may have moved since, e.g.
    # a sweep resumed from its URI on a new head node, and its console is gone. Put this run's in their place.
    callbacks_, searcher = ray_runtime.restored_parts(tuner)
    callbacks_[:] = tune_callbacks(job, out)
    if hasattr(searcher, "rebind"):
        searcher.rebind(job.loc)
    return tuner


def repair_checkpoints(exp_dir: Path) -> list[str]:
    """Fill each missing older checkpoint index with (hard links to) the next newer checkpoint.

    Retention deletes a trial's previous checkpoint when it writes a new one; a driver killed before
    Tune's next state save leaves that state naming the deleted one, and the trial could never be
    restored. Its newer checkpoint is the right place to continue from. Returns the folders made.
    """
    repaired = []
    for trial in exp_dir.glob("trial_*"):
        present = sorted(int(d.name.split("_")[-1]) for d in trial.glob("checkpoint_*") if d.is_dir())
        for i in range(present[-1] if present else 0):
            if i not in present:
                newer = min(j for j in present if j > i)
                shutil.copytree(trial / f"checkpoint_{newer:06d}", trial / f"checkpoint_{i:06d}",
                                copy_function=os.link)
                repaired.append(f"{trial.name}/checkpoint_{i:06d}")
    return repaired


def tune_state_saved(exp_dir: Path) -> bool:
    """Whether Tune saved what a restore needs: a complete tuner.pkl and an experiment state.

    A driver killed while writing tuner.pkl leaves it cut short; one killed after it but before the
    first experiment state leaves nothing to restore (Ray would restore a 1-sample sweep from it).
    """
    from ray import tune as ray_tune

    states = any(exp_dir.glob("experiment_state-*.json"))
    if not ray_tune.Tuner.can_restore(str(exp_dir)):
        return False
    try:
        # Walks the opcodes without unpickling anything: a cut file has no STOP.
        for _ in pickletools.genops((exp_dir / "tuner.pkl").read_bytes()):
            pass
    except ValueError:
        if states:
            raise SweepError(f"{exp_dir / 'tuner.pkl'}: the file is damaged but trials were saved; "
                             "it cannot be resumed, start a new sweep (--overwrite)") from None
        return False
    return states

