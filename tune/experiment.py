"""The one read/write model of an experiment folder: metadata, trial records, the `Trial` view and its ranking.

Everything that reads an experiment (results, status, report, finalize, resume) goes through here. Plain file
I/O only: importing this module imports neither Ray nor torch.
"""
from __future__ import annotations

import json
import logging
import math
import platform
import re
import subprocess
import time
from dataclasses import dataclass, field
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmtune.data.io import atomic_file
from mmtune.data.validation import Validation
from mmtune.model.metrics import is_better, is_finite, rank_key
from mmtune.model.status import TrialStatus
from mmtune.tune import records, storage
from mmtune.tune.errors import ResultsError
from mmtune.tune.space import SearchSpace, parse_space

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

META = "mmtune.json"  # what resume, export and the reports need: the space as read, data path, options, plan
CKPT_FILE = "checkpoint.pt"  # the file inside each of a trial's checkpoint_* folders
RAY_LOG = "ray.log"  # Ray's own output during the sweep
STUDY_DB = "study.db"  # the Optuna study of the sweep (SQLite), written by the driver only
STUDY_NAME = "mmtune"  # the study's name in STUDY_DB
SUMMARY = "summary.json"  # what `mmtune export` (and finalize) wrote: the best trial, the deployed config, noise
FINAL_DIR = "final"  # <experiment>/final: the finalize run and its outputs (tune/finalize.py)
TRIAL_ID = re.compile(r"^trial_([0-9a-f]+(?:_\d+)?)$")
PACKAGES = ("mmtune", "torch", "ray", "optuna", "numpy", "scikit-learn")


def read_meta(exp_dir: Path) -> dict[str, Any]:
    """The mmtune metadata of an experiment ({} when absent)."""
    p = Path(exp_dir) / META
    return json.loads(p.read_text()) if p.is_file() else {}


def write_meta(loc: storage.Location, meta: dict[str, Any]) -> None:
    """Atomically write the metadata (and upload it, for a remote experiment)."""
    with atomic_file(loc.local / META) as f:
        f.write(json.dumps(meta, indent=2, default=str))
    storage.push(loc, META)


def update_meta(loc: storage.Location, **changes: Any) -> None:
    """Change some fields of the metadata."""
    write_meta(loc, {**read_meta(loc.local), **changes})


def mark_interrupted(loc: storage.Location) -> None:
    """Record that the sweep at LOC stopped on Ctrl-C before its end: not finished, and `mmtune resume` continues it."""
    update_meta(loc, finished=False, interrupted=True, interrupted_at=time.time())


def study_storage(exp_dir: Path) -> optuna.storages.RDBStorage:
    """Optuna's SQLite storage of the experiment in EXP_DIR (created on first use)."""
    import optuna  # late: the read model imports no optimizer until a study is opened

    return optuna.storages.RDBStorage(f"sqlite:///{Path(exp_dir).resolve() / STUDY_DB}")


def load_study(exp_dir: Path) -> optuna.Study:
    """The sweep's Optuna study, as the searcher keeps it in EXP_DIR's study.db."""
    import optuna

    return optuna.load_study(study_name=STUDY_NAME, storage=study_storage(exp_dir))


def provenance() -> dict[str, Any]:
    """Package versions and the git commit of the code, captured when a sweep starts."""
    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return {"versions": versions, "git_commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Trial:
    """One trial as found on disk."""

    trial_id: str
    path: Path
    params: dict[str, Any]
    history: list[dict[str, Any]]  # one result per epoch, in order
    status: TrialStatus
    metric: str
    error: str | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    best_result: dict[str, Any] | None = None  # the best epoch's result: its metric, tie-breaker and the rest

    @property
    def epochs(self) -> int:
        return max((int(r.get("epoch", 0)) for r in self.history), default=0)

    @property
    def final_value(self) -> float | None:
        return self.history[-1].get(self.metric) if self.history else None

    @property
    def started(self) -> float | None:
        """When the trial started: its first report's timestamp less the time it had run by then."""
        if not self.history or "timestamp" not in self.history[0]:
            return None
        first = self.history[0]
        return float(first["timestamp"]) - float(first.get("time_total_s") or 0.0)

    @property
    def last_result(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def values(self) -> dict[int, float]:
        """Every finite value of the trial's metric, by epoch: the intermediate values the searcher tells Optuna."""
        return {int(r.get("epoch", 0)): float(r[self.metric]) for r in self.history if is_finite(r.get(self.metric))}

    def frozen(self, distributions: dict[str, Any], **user_attrs: Any) -> optuna.trial.FrozenTrial:
        """The trial as the searcher tells Optuna: COMPLETE with its best value, PRUNED, FAIL or still RUNNING, over
        the params DISTRIBUTIONS has; its times are the timeline's bars. A ValueError if a value is outside them."""
        from datetime import datetime

        from optuna.trial import TrialState, create_trial

        s = self.status
        full = s.usable and s is not TrialStatus.PRUNED and is_finite(self.best_value)
        state = (TrialState.COMPLETE if full else TrialState.PRUNED if s is TrialStatus.PRUNED
                 else TrialState.FAIL if s.finished else TrialState.RUNNING)
        params = {k: v for k, v in self.params.items() if k in distributions}
        frozen = create_trial(state=state, value=self.best_value if full else None, params=params,
                              distributions={k: distributions[k] for k in params}, intermediate_values=self.values,
                              user_attrs={"ray_trial_id": self.trial_id, "status": s.value, **user_attrs})
        if self.started is not None:
            frozen.datetime_start = datetime.fromtimestamp(self.started)
            end = self.started + float(self.last_result.get("time_total_s") or 0.0)
            frozen.datetime_complete = datetime.fromtimestamp(end) if state.is_finished() else None
        return frozen


def space_of(exp_dir: Path) -> SearchSpace:
    """The search space recorded with the experiment."""
    meta = read_meta(exp_dir)
    if not meta:
        raise ResultsError(f"{exp_dir}: not an mmtune experiment (no {META})")
    return parse_space(meta["space"], meta["space_file"])


def recorded_validation(meta: dict[str, Any], space: SearchSpace) -> Validation:
    """The validation an experiment's start decided (its metadata), or its recorded space's resolved `cv`."""
    scheme = meta.get("validation", {}).get("scheme")
    return Validation(**scheme) if scheme else space.validation


def load_trials(exp_dir: Path, space: SearchSpace) -> list[Trial]:
    """Every trial folder of the experiment in start order, with its per-epoch results, status and best epoch."""
    done = records.read_all(exp_dir)
    trials = []
    for d in sorted(p for p in Path(exp_dir).iterdir() if (p / "params.json").is_file()):
        history = _history(d / "result.json")
        match = TRIAL_ID.search(d.name)
        trial_id = history[0]["trial_id"] if history else (match.group(1) if match else d.name)
        record = done.get(trial_id) or {}
        if record and not history and record.get("last_result"):
            history = [record["last_result"]]
        params = trial_params(d, record, history)
        if params is None:
            log.warning("%s: params.json was cut short by a kill and the trial left no result; it is left out", d)
            continue
        t = Trial(trial_id, d, params, history,
                  TrialStatus(record.get("status", TrialStatus.UNFINISHED)), space.metric, record.get("error"))
        t.best_result = best_record(t)
        if t.best_result is not None:
            t.best_value, t.best_epoch = float(t.best_result[t.metric]), int(t.best_result.get("epoch", 0))
        trials.append(t)
    # Start order; trials that reported nothing yet go last, by folder age.
    return sorted(trials, key=lambda t: (t.started if t.started is not None else math.inf, t.path.stat().st_mtime,
                                         t.trial_id))


def trial_params(trial_dir: Path, record: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A trial's config: its params.json, or, where a kill cut that file (Tune writes it in place), the config its
    record or its last result carries; None when there is none."""
    try:
        return json.loads((trial_dir / "params.json").read_text())
    except (OSError, json.JSONDecodeError):
        pass
    for source in (record, history[-1] if history else {}):
        if isinstance(source.get("config"), dict):
            return source["config"]
    return None


def result_lines(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line of a trial's result.json, as written (a re-reported epoch appears twice); [] if none."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash, or being written
    return out


def _history(path: Path) -> list[dict[str, Any]]:
    by_epoch: dict[Any, dict] = {}
    for r in result_lines(path):
        by_epoch[r.get("epoch", len(by_epoch))] = r  # a re-reported epoch replaces the earlier report
    return [by_epoch[k] for k in sorted(by_epoch, key=lambda e: (e is None, e))]


def best_record(t: Trial) -> dict[str, Any] | None:
    """The result of the trial's best epoch by its metric, ties broken by the second key as the loop breaks them
    (None: failed, or no finite value)."""
    best = None
    if not t.status.failed:
        for r in t.history:
            if is_better(r, best, t.metric):
                best = r
    return best


def rank_trials(trials: list[Trial]) -> list[Trial]:
    """The one ranking of trials: usable ones with a finite best value, best first, by the best epoch's metric and
    then its second key (`model.metrics.rank_key`); only trials equal on both keep their start order."""
    scored = [t for t in trials if (t.status.usable or t.status is TrialStatus.UNFINISHED) and is_finite(t.best_value)]
    return sorted(scored, key=lambda t: rank_key(t.best_result or {}, t.metric))


def counts(trials: list[Trial]) -> dict[str, int]:
    """Trials by status, in the vocabulary's order, leaving out statuses no trial has."""
    return {s.value: n for s in TrialStatus if (n := sum(t.status is s for t in trials))}


@dataclass
class Experiment:
    """An experiment folder, finished, running or interrupted, read from disk."""

    path: Path
    meta: dict[str, Any] = field(repr=False)
    space: SearchSpace = field(repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "Experiment":
        """The experiment in the local folder PATH; a ResultsError when it is none."""
        path = Path(path).resolve()
        return cls(path, read_meta(path), space_of(path))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return bool(self.meta.get("finished"))

    @property
    def interrupted(self) -> bool:
        """Stopped by Ctrl-C and not resumed to its end yet."""
        return bool(self.meta.get("interrupted")) and not self.finished

    @property
    def validation(self) -> Validation:
        """How the trials were validated, as the sweep's start decided it."""
        return recorded_validation(self.meta, self.space)

    @cached_property
    def trials(self) -> list[Trial]:
        """Every trial in start order."""
        return load_trials(self.path, self.space)

    @cached_property
    def ranked(self) -> list[Trial]:
        """Trials with a usable finite value, best first."""
        return rank_trials(self.trials)

    @cached_property
    def full_budget(self) -> list[Trial]:
        """Ranked trials that ended without being pruned: their values come from the whole budget (or patience),
        so they compare with each other; a pruned trial's value is from fewer epochs."""
        return [t for t in self.ranked if t.status.usable and t.status is not TrialStatus.PRUNED]

    def best(self) -> Trial:
        """The best trial; a ResultsError when no trial has a usable value yet."""
        if not self.ranked:
            raise ResultsError(f"{self.path}: no trial has a finite value of {self.space.metric} yet "
                               "(all failed, diverged or unfinished)")
        return self.ranked[0]

    def wall_time(self) -> float | None:
        """Seconds from the start to the end (or to now, while unfinished: an `ended` is then an earlier run's)."""
        start = self.meta.get("started")
        return None if not start else ((self.finished and self.meta.get("ended")) or time.time()) - start

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json as `mmtune export` last wrote it ({} before the first export)."""
        return _json_or_none(self.path / SUMMARY) or {}

    @property
    def final(self) -> dict[str, Any] | None:
        """final/summary.json of the finalize run (None: not run, or unreadable)."""
        return _json_or_none(self.path / FINAL_DIR / SUMMARY)


def _json_or_none(path: Path) -> dict[str, Any] | None:
    """The JSON object in PATH, or None when it is missing or unreadable (a half-written file is never read:
    writers replace atomically)."""
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
