"""Continue an interrupted sweep: check what Ray saved, repair what a kill left behind, restore the Tuner (Ray-side:
imported by `sweep()` only)."""
from __future__ import annotations

import json
import logging
import os
import pickletools
import shutil
from pathlib import Path
from typing import TextIO

from ray import tune

from mmtune.data.io import atomic_file
from mmtune.tune import ray_runtime, storage
from mmtune.tune.errors import SweepError
from mmtune.tune.experiment import META
from mmtune.tune.job import Job, SweepOptions, experiment_location, recorded_job
from mmtune.tune.resources import Plan
from mmtune.tune.tracking import check_tracking
from mmtune.tune.tuner import build_tuner, make_trainable, tune_callbacks

log = logging.getLogger(__name__)


def prepare(options: SweepOptions) -> tuple[Job, Plan]:
    """The recorded Job and plan of the experiment named by OPTIONS (before Ray starts)."""
    loc = experiment_location(options.storage, options.name or "")
    job, meta = recorded_job(str(loc))
    check_tracking(job.opts.mlflow, job.opts.tensorboard)  # the tracking the sweep started with, still reachable
    # Where to run may differ from the first run (another cluster); what to run may not.
    job.opts.address, job.opts.num_cpus, job.opts.num_gpus = options.address, options.num_cpus, options.num_gpus
    job.opts.verbose = options.verbose
    return job, Plan(**meta["plan"])


def restore(job: Job, plan: Plan, callbacks: tuple, out: TextIO | None) -> tune.Tuner:
    """The Tuner that continues JOB: finished trials kept, errored ones resumed, searcher state kept."""
    exp_dir = job.loc.local
    repaired = repair_checkpoints(exp_dir)
    for rel in repaired:
        storage.push(job.loc, rel)
    if repaired:
        log.warning("%s", repair_message(repaired))
    for name, how in repair_cut_state(exp_dir, ray_runtime.staging_roots()).items():
        log.warning("%s was cut short by the kill: %s", name, how)
    if not tune_state_saved(exp_dir):
        # Killed before Tune's first state save: no trial had finished, so starting over loses nothing. (Or its
        # only state was cut and no whole copy is left on this machine: what it had is lost, and said.)
        log.warning("%s: Ray saved no whole experiment state; starting the sweep over", exp_dir)
        for child in exp_dir.iterdir():
            if child.name != META:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        storage.delete(job.loc, keep=(META,))
        return build_tuner(job, plan, callbacks, out)
    tuner = tune.Tuner.restore(str(job.loc), trainable=make_trainable(job, plan, callbacks), resume_errored=True)
    # The restored callbacks and searcher are the first run's: its folder (or mirror) may have moved since, e.g.
    # a sweep resumed from its URI on a new head node, and its console is gone. Put this run's in their place.
    callbacks_, searcher = ray_runtime.restored_parts(tuner)
    callbacks_[:] = tune_callbacks(job, out)
    if hasattr(searcher, "rebind"):
        searcher.rebind(job.loc, saved_trial_ids(exp_dir))
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


def repair_message(repaired: list[str]) -> str:
    """What `repair_checkpoints` did (the folders in REPAIRED), in the user's words: what happened, what was lost."""
    # Retention leaves gaps in every trial that kept an older best, so the folders are not all ones Ray's state
    # names: say what holds for each trial counted.
    trials = len({rel.split("/")[0] for rel in repaired})
    return (f"{trials} trial(s) continue from their latest checkpoint; nothing was lost. Ray's saved state may name "
            "checkpoints these trials replaced with newer ones before the sweep stopped; those names now lead to the "
            "newer ones")


def tune_state_saved(exp_dir: Path) -> bool:
    """Whether Tune saved what a restore needs: a complete tuner.pkl and an experiment state.

    A driver killed while writing tuner.pkl leaves it cut short; one killed after it but before the
    first experiment state leaves nothing to restore (Ray would restore a 1-sample sweep from it).
    """
    states = any(exp_dir.glob(STATE_FILES[0]))
    if not tune.Tuner.can_restore(str(exp_dir)):
        return False
    if not whole_pickle(exp_dir / "tuner.pkl"):
        if states:
            raise SweepError(f"{exp_dir / 'tuner.pkl'}: the file is damaged but trials were saved; "
                             "it cannot be resumed, start a new sweep (--overwrite)") from None
        return False
    return states


# Tune's experiment state (JSON) and search-algorithm state (a pickle), one file of each per driver run. Ray writes
# them atomically in a staging folder on the driver's machine, then copies them into the experiment folder without
# a rename (ray/train/_internal/storage.py, _pyarrow_fs_copy_files): a driver killed mid-copy leaves them cut, and
# Ray then restores nothing and restarts as a 1-trial sweep (tune_controller.py, "Failed to restore the run state").
STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json")


def repair_cut_state(exp_dir: Path, staging_roots: list[Path]) -> dict[str, str]:
    """Put back each cut state file of EXP_DIR from Ray's staging copy (under STAGING_ROOTS, on this machine), or
    set it aside (`<name>.cut`) when there is none, so that Ray restores from a whole one; what was done, by file."""
    done = {}
    for pattern in STATE_FILES:
        for path in exp_dir.glob(pattern):
            if whole_state(path):
                continue
            staged = [p for root in staging_roots
                      for p in root.glob(f"session_*/artifacts/*/{exp_dir.name}/driver_artifacts/{path.name}")
                      if whole_state(p)]
            if staged:
                with atomic_file(path, "wb") as f, open(max(staged, key=lambda p: p.stat().st_mtime), "rb") as s:
                    shutil.copyfileobj(s, f)
                done[path.name] = "restored from Ray's staging copy on this machine; nothing was lost"
            else:
                path.rename(path.with_name(path.name + ".cut"))
                done[path.name] = ("no whole copy found, set aside; Ray restores from the previous run's state, or "
                                   "the sweep starts over")
    return done


def saved_trial_ids(exp_dir: Path) -> set[str] | None:
    """The Ray trials of the experiment state a restore of EXP_DIR starts from; None when it cannot be read.

    Tune restores from the greatest experiment state by name (ray/tune/execution/experiment_state.py,
    `_find_newest_experiment_checkpoint`), whose "trial_data" holds each trial as [its JSON, its runtime JSON]
    (tune_controller.py, `save_to_dir`).
    """
    try:
        newest = max(exp_dir.glob(STATE_FILES[0]))
        return {json.loads(entry[0])["trial_id"] for entry in json.loads(newest.read_text())["trial_data"]}
    except (ValueError, OSError, KeyError, IndexError, TypeError):
        return None


def whole_state(path: Path) -> bool:
    """Whether a Tune state file (JSON, or a pickle) was written to its end."""
    if path.suffix == ".json" and path.name.startswith("experiment_state"):
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return True
    return whole_pickle(path)


def whole_pickle(path: Path) -> bool:
    """Whether the pickle at PATH is whole; walks the opcodes without unpickling anything (a cut file has no STOP)."""
    try:
        for _ in pickletools.genops(path.read_bytes()):
            pass
    except (OSError, ValueError):
        return False
    return True
