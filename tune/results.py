"""Turn an experiment folder (read from disk, finished or not) into trials.csv, best_config.yaml and summary.json."""
from __future__ import annotations

import csv
import json
import math
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from model.checkpoint import CheckpointError, load_checkpoint
from model.io import atomic_file
from model.metrics import is_better
from model.run import write_json
from tune import records
from tune.errors import ResultsError
from tune.runner import read_meta
from tune.space import SearchSpace, parse_space
from tune.trainable import CKPT_FILE

FAILED = {"failed", "nan", "infeasible"}
TRIAL_ID = re.compile(r"^trial_([0-9a-f]+(?:_\d+)?)$")


@dataclass
class Trial:
    """One trial as found on disk."""

    trial_id: str
    path: Path
    params: dict[str, Any]
    history: list[dict[str, Any]]  # one result per epoch, in order
    status: str
    error: str | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return max((int(r.get("epoch", 0)) for r in self.history), default=0)

    @property
    def final_value(self) -> float | None:
        return self.history[-1].get(self.extra["metric"]) if self.history else None


def space_of(exp_dir: Path) -> SearchSpace:
    """The search space recorded with the experiment."""
    meta = read_meta(exp_dir)
    if not meta:
        raise ResultsError(f"{exp_dir}: not an mmtune experiment (no mmtune.json)")
    return parse_space(meta["space"], meta["space_file"])


def load_trials(exp_dir: Path, space: SearchSpace) -> list[Trial]:
    """Every trial folder of the experiment, with its per-epoch results and status."""
    done = records.read_all(exp_dir)
    trials = []
    for d in sorted(p for p in exp_dir.iterdir() if (p / "params.json").is_file()):
        history = _history(d / "result.json")
        match = TRIAL_ID.search(d.name)
        trial_id = history[0]["trial_id"] if history else (match.group(1) if match else d.name)
        record = done.get(trial_id)
        if record and not history and record.get("last_result"):
            history = [record["last_result"]]
        t = Trial(trial_id, d, json.loads((d / "params.json").read_text()), history,
                  record["status"] if record else "unfinished", record.get("error") if record else None,
                  extra={"metric": space.metric})
        _pick_best(t, space)
        trials.append(t)
    return trials


def _history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    by_epoch: dict[Any, dict] = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        by_epoch[r.get("epoch", len(by_epoch))] = r  # a re-reported epoch replaces the earlier report
    return [by_epoch[k] for k in sorted(by_epoch, key=lambda e: (e is None, e))]


def _pick_best(t: Trial, space: SearchSpace) -> None:
    """The trial's best epoch by the sweep metric (not its last)."""
    if t.status in FAILED:
        return
    for r in t.history:
        v = r.get(space.metric)
        if isinstance(v, (int, float)) and math.isfinite(v) and is_better(v, t.best_value, space.mode):
            t.best_value, t.best_epoch = float(v), int(r.get("epoch", 0))


def best_trial(trials: list[Trial], space: SearchSpace) -> Trial:
    """The trial with the best epoch; ties go to the earlier trial."""
    best = None
    for t in trials:
        if t.best_value is not None and (best is None or is_better(t.best_value, best.best_value, space.mode)):
            best = t
    if best is None:
        raise ResultsError("no trial has a finite value of the metric yet (all failed, diverged or unfinished)")
    return best


def write_trials_csv(trials: list[Trial], space: SearchSpace, path: Path) -> None:
    """One row per trial: params, best and final metric, epochs, status, node."""
    cols = ["trial_id", "status", "epochs", "best_epoch", f"best {space.metric}", f"final {space.metric}",
            *space.names, "node_id", "gpu_ids", "error"]
    with atomic_file(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for t in trials:
            last = t.history[-1] if t.history else {}
            err = (t.error or "").strip().splitlines()[-1][:200] if t.error else ""
            w.writerow([t.trial_id, t.status, t.epochs, t.best_epoch, t.best_value, t.final_value,
                        *[t.params.get(n) for n in space.names], last.get("node_id"), last.get("gpu_ids"), err])


def best_checkpoint(t: Trial) -> tuple[Path, int]:
    """The trial's kept checkpoint closest to its best epoch; corrupt files are named and skipped."""
    found, bad = [], []
    for d in sorted(t.path.glob("checkpoint_*"), reverse=True):
        try:
            found.append((load_checkpoint(d / CKPT_FILE)["epoch"], d / CKPT_FILE))
        except CheckpointError as e:
            bad.append(str(e))
    if not found:
        raise ResultsError(f"trial {t.trial_id}: no readable checkpoint in {t.path}" + (f" ({bad[0]})" if bad else ""))
    epoch, path = min(found, key=lambda x: (abs(x[0] - (t.best_epoch or 0)), -x[0]))
    return path, epoch


def prune_checkpoints(exp_dir: Path) -> int:
    """Keep each ended trial's best-epoch and latest checkpoints, delete the rest; return bytes freed."""
    space = space_of(exp_dir)
    freed = 0
    for t in load_trials(exp_dir, space):
        if t.status == "unfinished":
            continue
        by_epoch = {r.get("epoch"): r.get("checkpoint_dir_name") for r in t.history}
        keep = {by_epoch.get(t.best_epoch), max((d.name for d in t.path.glob("checkpoint_*")), default=None)}
        for d in t.path.glob("checkpoint_*"):
            if d.name not in keep:
                freed += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                shutil.rmtree(d)
    return freed


def export(exp_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write trials.csv, best_config.yaml (or OUT), best/checkpoint.pt and summary.json; return the summary."""
    exp_dir = Path(exp_dir).resolve()
    space = space_of(exp_dir)
    trials = load_trials(exp_dir, space)
    if not trials:
        raise ResultsError(f"{exp_dir}: no trial has started yet")
    write_trials_csv(trials, space, exp_dir / "trials.csv")
    best = best_trial(trials, space)
    cfg = space.train_config(best.params)
    config_path = Path(out) if out else exp_dir / "best_config.yaml"
    header = (f"# Best trial {best.trial_id} of {exp_dir.name}: {space.metric} = {best.best_value:.4f} at epoch "
              f"{best.best_epoch}.\n# Reproduce: mmtune train --config {config_path} --data DATA\n")
    with atomic_file(config_path) as f:
        f.write(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    notes = []
    try:
        src, epoch = best_checkpoint(best)
        (exp_dir / "best").mkdir(exist_ok=True)
        with atomic_file(exp_dir / "best" / CKPT_FILE, "wb") as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f)
        if epoch != best.best_epoch:
            notes.append(f"best checkpoint is from epoch {epoch}; epoch {best.best_epoch} was not kept")
    except ResultsError as e:
        notes.append(str(e))
    summary = _summary(exp_dir, space, trials, best, config_path, notes)
    write_json(summary, exp_dir / "summary.json")
    return summary


def _summary(exp_dir: Path, space: SearchSpace, trials: list[Trial], best: Trial, config_path: Path,
             notes: list[str]) -> dict[str, Any]:
    meta = read_meta(exp_dir)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status] = counts.get(t.status, 0) + 1
    return {
        "experiment": exp_dir.name, "metric": space.metric, "mode": space.mode,
        "best_value": best.best_value, "best_trial": best.trial_id, "best_epoch": best.best_epoch,
        "best_params": best.params, "selection": "best epoch of each trial (not its last)",
        "best_config": str(config_path), "best_checkpoint": str(exp_dir / "best" / CKPT_FILE),
        "trials": len(trials), "trials_by_status": counts, "epochs_run": sum(t.epochs for t in trials),
        "seeds": {"sampler": space.seed, "training": space.train_config(best.params).seed,
                  "split": space.train_config(best.params).split_seed},
        "search_space": meta.get("space"), "data": meta.get("data"), "plan": meta.get("plan"),
        "finished": meta.get("finished", False),
        "wall_time_s": (meta.get("ended") or time.time()) - meta.get("started", time.time()),
        "versions": _versions(), "git_commit": _git_commit(), "notes": notes,
    }


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("mmtune", "torch", "ray", "optuna", "numpy", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def status_table(exp_dir: str | Path) -> str:
    """A table of the experiment's trials, read from disk."""
    exp_dir = Path(exp_dir).resolve()
    space = space_of(exp_dir)
    trials = load_trials(exp_dir, space)
    meta = read_meta(exp_dir)
    head = (f"{exp_dir.name}: {len(trials)}/{space.num_samples} trials started, "
            f"{'finished' if meta.get('finished') else 'not finished'}; metric {space.metric} ({space.mode})")
    cols = ["trial", "status", "epochs", f"best {space.metric}", "@epoch", *space.names]
    rows = [[t.trial_id, t.status, t.epochs, _fmt(t.best_value), t.best_epoch or "",
             *[_fmt(t.params.get(n)) for n in space.names]] for t in trials]
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    lines = [head, "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
