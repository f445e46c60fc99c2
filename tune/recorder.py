"""The Tune callback that writes each trial's durable record (see `tune.records`) the moment it ends."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ray import tune

from mmtune.model.status import STATUS_KEY, TrialStatus
from mmtune.tune import records, storage

# Ray's bookkeeping in a result, left out of the record.
RAY_KEYS = {"config", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname",
            "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "done",
            "training_iteration", "should_checkpoint", "experiment_tag"}


def _clean(result: dict[str, Any]) -> dict[str, Any]:
    """The reportable part of a Tune result (no Ray bookkeeping, finite floats)."""
    return {k: v for k, v in result.items() if k not in RAY_KEYS and not (isinstance(v, float) and math.isnan(v))}


def ended_status(result: dict[str, Any], rungs: list[int]) -> TrialStatus:
    """The status of a trial that Tune says is complete, from its last result and ASHA's RUNGS."""
    status = TrialStatus(result.get(STATUS_KEY, TrialStatus.COMPLETED))
    if status is not TrialStatus.RUNNING:
        return status
    # Still running when it ended: Tune stopped it before its budget. ASHA stops only at a rung; elsewhere it was
    # the time budget (or a stopper).
    return TrialStatus.PRUNED if result.get("training_iteration") in rungs else TrialStatus.STOPPED


class TrialRecorder(tune.Callback):
    """Writes a trial's final record when it completes, is stopped or fails for good."""

    def __init__(self, loc: storage.Location, rungs: list[int]):
        self.loc, self.rungs = loc, rungs  # ASHA's rungs: where a trial Tune stopped was pruned

    def _write(self, trial: Any, status: TrialStatus, error: str | None = None) -> None:
        # The local copy is current: a resume pulls a remote experiment before it starts.
        if records.final(self.loc.local, trial.trial_id) is not None:
            return  # a trial that a resume re-reported keeps the record it ended with
        last = trial.last_result or {}
        records.write(self.loc, trial.trial_id, {
            "trial_id": trial.trial_id, "status": status.value, "config": trial.config,
            "epochs": last.get("training_iteration", 0), "last_result": _clean(last),
            "error": error, "ended": time.time(),
        })

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, ended_status(trial.last_result or {}, self.rungs))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = None
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text()[-2000:]
        self._write(trial, TrialStatus.FAILED, error)
