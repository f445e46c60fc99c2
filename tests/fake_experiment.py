"""Small experiment folders written as a sweep leaves them, without running one: for the fast test tier.

The files are the real formats (mmtune.json, Tune's params.json and result.json lines, mmtune's trial
records and, when asked, the searcher's Optuna study in study.db), so everything that reads an experiment
reads these the same way.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtune.model.status import STATUS_KEY, TrialStatus
from mmtune.tune import records, storage
from mmtune.tune.experiment import META, STUDY_DB
from mmtune.tune.space import parse_space

SPACE = {  # a small space: two searched parameters, val/f1 maximized
    "metric": "val/f1", "mode": "max", "num_samples": 4, "seed": 0, "epochs": 4,
    "asha": {"grace_period": 1, "reduction_factor": 2},
    "fixed": {"d_model": 16, "nhead": 2, "num_layers": 1, "batch_size": 32, "train_steps": 4},
    "params": {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
               "dropout": {"type": "float", "low": 0.0, "high": 0.3}},
}


@dataclass
class FakeTrial:
    """One trial: its params, the metric per epoch, and how it ended (None: no record, still unfinished)."""

    params: dict[str, Any]
    values: list[float]
    status: TrialStatus | None = TrialStatus.COMPLETED
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more keys for every epoch's result
    per_epoch: dict[str, list[float]] = field(default_factory=dict)  # more keys, one value per epoch


def write_experiment(root: Path, trials: list[FakeTrial], name: str = "exp", space: dict[str, Any] | None = None,
                     finished: bool = True, data: str = "/data/demo", validation: dict | None = None,
                     study: bool = False) -> Path:
    """Write experiment NAME under ROOT with TRIALS (started 10 s apart, in order), and its study.db when STUDY;
    returns its folder."""
    space = dict(space or SPACE)
    exp = Path(root) / name
    exp.mkdir(parents=True)
    start = time.time() - 10 * len(trials) - 100
    meta = {"name": name, "data": data, "space_file": str(exp / "space.yaml"), "space": space,
            "options": {"data": data, "space": str(exp / "space.yaml"), "name": name, "storage": str(root)},
            "plan": {}, "started": start, "finished": finished, "ended": start + 10 * len(trials) + 5 if finished else None,
            "provenance": {"versions": {"python": "3.11"}, "git_commit": None},
            **({"validation": validation} if validation else {})}
    (exp / META).write_text(json.dumps(meta))
    for i, t in enumerate(trials):
        _write_trial(exp, f"fake0_{i:05d}", t, start + 10 * i, space)
    if study:
        _write_study(exp, trials, space)
    return exp


def _write_study(exp: Path, trials: list[FakeTrial], space: dict[str, Any]) -> None:
    """The study the searcher keeps: COMPLETE with the best value, PRUNED, FAIL, or RUNNING while unrecorded."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    best = max if space["mode"] == "max" else min
    dists = parse_space(space, "fake.yaml").distributions()
    study = optuna.create_study(study_name="mmtune", storage=f"sqlite:///{exp / STUDY_DB}",
                                direction="maximize" if space["mode"] == "max" else "minimize")
    for i, t in enumerate(trials):
        values = {e: v for e, v in enumerate(t.values, start=1) if math.isfinite(v)}
        state = (TrialState.RUNNING if t.status is None else TrialState.PRUNED if t.status is TrialStatus.PRUNED
                 else TrialState.FAIL if t.status.failed or not values else TrialState.COMPLETE)
        study.add_trial(create_trial(
            state=state, value=best(values.values()) if state is TrialState.COMPLETE else None, params=t.params,
            distributions={k: dists[k] for k in t.params}, intermediate_values=values,
            user_attrs={"ray_trial_id": f"fake0_{i:05d}", "status": (t.status or TrialStatus.UNFINISHED).value}))


def _write_trial(exp: Path, trial_id: str, t: FakeTrial, started: float, space: dict[str, Any]) -> None:
    d = exp / f"trial_{trial_id}"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(t.params))
    lines = []
    for epoch, value in enumerate(t.values, start=1):
        last = epoch == len(t.values)
        status = t.status if last and t.status not in (None, TrialStatus.PRUNED, TrialStatus.FAILED) else TrialStatus.RUNNING
        lines.append(json.dumps({"trial_id": trial_id, "epoch": epoch, "training_iteration": epoch,
                                 space["metric"]: value, STATUS_KEY: status.value, "timestamp": started + epoch,
                                 "time_total_s": float(epoch), "node_id": "node0", **t.extra,
                                 **{k: v[epoch - 1] for k, v in t.per_epoch.items()}}))
    (d / "result.json").write_text("".join(line + "\n" for line in lines))
    if t.status is not None:
        last = json.loads(lines[-1]) if lines else {}
        records.write(storage.Location(exp), trial_id, {
            "trial_id": trial_id, "status": t.status.value, "config": t.params, "epochs": len(t.values),
            "last_result": last, "error": t.error, "ended": started + len(t.values) + 1})
