"""Turn an experiment folder (finished or not) into trials.csv, best_config.yaml and summary.json; the status table.

Reads through `tune.experiment` only: no Ray, no torch, no Optuna.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any


from mmtune.data.io import atomic_file, write_json
from mmtune.tune.defaults import defaults_lines
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import CKPT_FILE, SUMMARY, Experiment, Trial, counts
from mmtune.tune.noise import summary_entry
from mmtune.tune.recipe import write_recipe

BEST_CONFIG = "best_config.yaml"  # the config to deploy: finalize's winner, or the best trial's until finalize ran
BEST_TRIAL_CONFIG = "best_trial_config.yaml"  # the single best sweep trial's config


def trial_rows(exp: Experiment) -> tuple[list[str], list[list[Any]]]:
    """The columns and rows of trials.csv (one row per trial: status, epochs, best and final metric, params, node)."""
    space = exp.space
    cols = ["trial_id", "status", "epochs", "best_epoch", f"best {space.metric}", f"final {space.metric}",
            *space.names, "node_id", "gpu_ids", "error"]
    rows = [[t.trial_id, t.status.value, t.epochs, t.best_epoch, t.best_value, t.final_value,
             *[t.params.get(n) for n in space.names], t.last_result.get("node_id"), t.last_result.get("gpu_ids"),
             (t.error or "").strip().splitlines()[-1][:200] if t.error else ""] for t in exp.trials]
    return cols, rows


def write_trials_csv(exp: Experiment, path: Path) -> None:
    """trials.csv: the rows of `trial_rows`."""
    cols, rows = trial_rows(exp)
    with atomic_file(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        w.writerows(rows)


def best_checkpoint(t: Trial) -> tuple[Path, int]:
    """The trial's kept checkpoint closest to its best epoch, found by the epochs its records name (no checkpoint
    is opened)."""
    kept = {r["epoch"]: t.path / r["checkpoint_dir_name"] / CKPT_FILE for r in t.history
            if isinstance(r.get("epoch"), int) and r.get("checkpoint_dir_name")}
    kept = {e: p for e, p in kept.items() if p.is_file()}
    if not kept:
        raise ResultsError(f"trial {t.trial_id}: no checkpoint kept in {t.path}")
    epoch = min(kept, key=lambda e: (abs(e - (t.best_epoch or 0)), -e))
    return kept[epoch], epoch


def prune_checkpoints(exp: Experiment) -> int:
    """Keep each ended trial's best-epoch and latest checkpoints, delete the rest; return bytes freed."""
    freed = 0
    for t in exp.trials:
        if not t.status.finished:
            continue
        by_epoch = {r.get("epoch"): r.get("checkpoint_dir_name") for r in t.history}
        keep = {by_epoch.get(t.best_epoch), max((d.name for d in t.path.glob("checkpoint_*")), default=None)}
        for d in t.path.glob("checkpoint_*"):
            if d.name not in keep:
                freed += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                shutil.rmtree(d)
    return freed


def estimate_header(exp: Experiment, best: Trial, config_path: Path) -> str:
    """The header of the best trial's config: its value (with the fold sd when its folds reported one)."""
    metric = exp.space.metric
    sd = (best.best_result or {}).get(f"{metric}_sd")
    spread = f" +- {sd:.4f} over its folds" if isinstance(sd, float) else ""
    return (f"# Best trial {best.trial_id} of {exp.name}: {metric} = {best.best_value:.4f}{spread} at epoch "
            f"{best.best_epoch} ({exp.validation.describe()}).\n"
            f"# Reproduce: mmtune train --config {config_path} --data {exp.meta.get('data') or 'DATA'}\n")


def export(exp_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write trials.csv, best_trial_config.yaml (or OUT), best/checkpoint.pt and summary.json; return the summary.

    best_config.yaml is written too (the best trial's) only when no finalize result exists: an export never
    overwrites the finalized winner. Reads records only: no checkpoint is opened, nor torch imported.
    """
    exp = Experiment.open(exp_dir)
    if not exp.trials:
        raise ResultsError(f"{exp.path}: no trial has started yet")
    write_trials_csv(exp, exp.path / "trials.csv")
    best = exp.best()
    config_path = Path(out) if out else exp.path / BEST_TRIAL_CONFIG
    recipe = (exp.space, exp.validation, best.params, [best.best_epoch or exp.space.epochs])
    write_recipe(config_path, estimate_header(exp, best, config_path), *recipe)
    finalized = exp.final
    if out is None and finalized is None:
        deploy = exp.path / BEST_CONFIG
        write_recipe(deploy, "# No finalize run yet: the single best trial's config (`mmtune finalize` re-evaluates "
                     "the top configs over seeds and replaces this file).\n" + estimate_header(exp, best, deploy),
                     *recipe)
    notes = []
    try:
        src, epoch = best_checkpoint(best)
        with atomic_file(exp.path / "best" / CKPT_FILE, "wb") as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f)
        if epoch != best.best_epoch:
            notes.append(f"best checkpoint is from epoch {epoch}; epoch {best.best_epoch} was not kept")
    except ResultsError as e:
        notes.append(str(e))
    summary = _summary(exp, best, config_path, notes)
    deploy = exp.path / BEST_CONFIG
    summary.update(best_trial_config=str(config_path), best_config=str(deploy if deploy.is_file() else config_path),
                   best_config_from="best trial" if finalized is None else "finalize")
    if finalized is not None:
        summary.update(finalized_winner=finalized.get("winner", {}).get("trial_id"),
                       defaults=finalized.get("defaults"), defaults_line=" ".join(defaults_lines(finalized)) or None)
    write_json(summary, exp.path / SUMMARY)
    return summary


def _summary(exp: Experiment, best: Trial, config_path: Path, notes: list[str]) -> dict[str, Any]:
    space, meta = exp.space, exp.meta
    cfg = space.train_config(best.params)
    return {
        "experiment": exp.name, "metric": space.metric, "mode": space.mode,
        "best_value": best.best_value, "best_trial": best.trial_id, "best_epoch": best.best_epoch,
        "best_params": best.params, "selection": "best epoch of each trial (not its last)",
        "best_config": str(config_path), "best_checkpoint": str(exp.path / "best" / CKPT_FILE),
        "trials": len(exp.trials), "trials_by_status": counts(exp.trials),
        "epochs_run": sum(t.epochs for t in exp.trials),
        "seeds": {"sampler": space.seed, "training": cfg.seed, "split": cfg.split_seed},
        "search_space": meta.get("space"), "data": meta.get("data"), "plan": meta.get("plan"),
        "finished": exp.finished, "wall_time_s": exp.wall_time(),
        # Recorded when the sweep started: the code and packages that ran it, not those exporting it.
        **meta.get("provenance", {}), "notes": notes, **summary_entry(exp),
    }


def status_table(exp_dir: str | Path) -> str:
    """A table of the experiment's trials, read from disk."""
    exp = Experiment.open(exp_dir)
    space = exp.space
    state = ("finished" if exp.finished else f"interrupted (continue it: mmtune resume {exp.path})"
             if exp.interrupted else "not finished")
    head = f"{exp.name}: {len(exp.trials)}/{space.num_samples} trials started, {state}; metric {space.metric} ({space.mode})"
    cols = ["trial", "status", "epochs", f"best {space.metric}", "@epoch", *space.names]
    rows = [[t.trial_id, t.status.value, t.epochs, _fmt(t.best_value), t.best_epoch or "",
             *[_fmt(t.params.get(n)) for n in space.names]] for t in exp.trials]
    return format_table(head, cols, rows)


def format_table(head: str, cols: list[str], rows: list[list[Any]]) -> str:
    """HEAD, then COLS and ROWS as left-aligned text columns."""
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    lines = [head, "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
