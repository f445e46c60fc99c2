"""Durable per-trial records, written by the driver the moment a trial ends.

Tune saves its experiment state only every few seconds, so a driver killed with SIGKILL can forget
that a trial finished. These files are the source of truth that resume honours.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ray import tune

from model.io import atomic_file
from tune import storage

RECORDS_DIR = "mmtune_trials"
ASHA_STOPPED = "stopped"  # still improving when the scheduler stopped it
FAILED = "failed"  # out of retries; the one status that a resume retries


def _path(exp_dir: str | Path, trial_id: str) -> Path:
    return Path(exp_dir) / RECORDS_DIR / f"{trial_id}.json"


def read(exp_dir: str | Path, trial_id: str) -> dict[str, Any] | None:
    """The final record of TRIAL_ID, or None while it has not ended; EXP_DIR may be a remote URI."""
    text = storage.read_text(str(exp_dir), f"{RECORDS_DIR}/{trial_id}.json")
    return json.loads(text) if text is not None else None


def final(exp_dir: str | Path, trial_id: str) -> dict[str, Any] | None:
    """The record of a trial that ended for good (not failed: a resume retries those), or None."""
    rec = read(exp_dir, trial_id)
    return rec if rec is not None and rec["status"] != FAILED else None


def read_all(exp_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every final record of the experiment, by trial id."""
    folder = Path(exp_dir) / RECORDS_DIR
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def write(loc: storage.Location, trial_id: str, record: dict[str, Any]) -> None:
    """Write a record atomically and durably (fsync before rename), and upload it for a remote experiment."""
    with atomic_file(_path(loc.local, trial_id), durable=True) as f:
        json.dump(record, f, default=str)
    storage.push(loc, f"{RECORDS_DIR}/{trial_id}.json")


def _clean(result: dict[str, Any]) -> dict[str, Any]:
    """The reportable part of a Tune result (no Ray bookkeeping, finite floats)."""
    skip = {"config", "trial_id", "date", "timestamp", "time_this_iter_s", "time_total_s", "pid", "hostname",
            "node_ip", "time_since_restore", "iterations_since_restore", "checkpoint_dir_name", "done",
            "training_iteration", "should_checkpoint", "experiment_tag"}
    return {k: v for k, v in result.items() if k not in skip and not (isinstance(v, float) and math.isnan(v))}


class TrialRecorder(tune.Callback):
    """Writes a trial's final record when it completes, is stopped or fails for good."""

    def __init__(self, loc: storage.Location, status_key: str):
        self.loc, self.status_key = loc, status_key

    def _write(self, trial: Any, status: str, error: str | None = None) -> None:
        # The local copy is current: a resume pulls a remote experiment before it starts.
        if final(self.loc.local, trial.trial_id) is not None:
            return  # a trial that a resume re-reported keeps the record it ended with
        last = trial.last_result or {}
        write(self.loc, trial.trial_id, {
            "trial_id": trial.trial_id, "status": status, "config": trial.config,
            "epochs": last.get("training_iteration", 0), "last_result": _clean(last),
            "error": error, "ended": time.time(),
        })

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        status = (trial.last_result or {}).get(self.status_key, "completed")
        self._write(trial, ASHA_STOPPED if status == "running" else status)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        error = None
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text()[-2000:]
        self._write(trial, FAILED, error)
