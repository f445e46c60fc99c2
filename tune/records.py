"""Durable per-trial records, written by the driver the moment a trial ends (plain file I/O, no Ray).

Tune saves its experiment state only every few seconds, so a driver killed with SIGKILL can forget
that a trial finished. These files are the source of truth that resume honours.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmtune.data.io import atomic_file
from mmtune.model.status import TrialStatus
from mmtune.tune import storage

RECORDS_DIR = "mmtune_trials"


def _path(exp_dir: str | Path, trial_id: str) -> Path:
    return Path(exp_dir) / RECORDS_DIR / f"{trial_id}.json"


def read(exp_dir: str | Path, trial_id: str) -> dict[str, Any] | None:
    """The final record of TRIAL_ID, or None while it has not ended; EXP_DIR may be a remote URI."""
    text = storage.read_text(str(exp_dir), f"{RECORDS_DIR}/{trial_id}.json")
    return json.loads(text) if text is not None else None


def final(exp_dir: str | Path, trial_id: str) -> dict[str, Any] | None:
    """The record of a trial that ended for good (not failed: a resume retries those), or None."""
    rec = read(exp_dir, trial_id)
    return rec if rec is not None and TrialStatus(rec["status"]).final else None


def read_all(exp_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every record of the experiment, by trial id."""
    folder = Path(exp_dir) / RECORDS_DIR
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}


def write(loc: storage.Location, trial_id: str, record: dict[str, Any]) -> None:
    """Write a record atomically and durably (fsync before rename), and upload it for a remote experiment."""
    with atomic_file(_path(loc.local, trial_id), durable=True) as f:
        json.dump(record, f, default=str)
    storage.push(loc, f"{RECORDS_DIR}/{trial_id}.json")
