"""Finalize's outputs and words: final/leaderboard.csv, final/summary.json, <exp>/best_config.yaml (through the one
recipe function), and the leaderboard and winner text that the console and the report share. No Ray, no torch.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from mmtune.data.io import atomic_file, write_json
from mmtune.model.metrics import metric_name
from mmtune.tune.candidates import metric_keys
from mmtune.tune.defaults import DEFAULTS_ID, DEFAULTS_WON, defaults_lines
from mmtune.tune.experiment import SUMMARY, Experiment, read_meta
from mmtune.tune.racing import Race
from mmtune.tune.recipe import write_recipe
from mmtune.tune.results import BEST_CONFIG
from mmtune.tune.selection import Candidate, Choice, gain, rule_text
from mmtune.tune.space import SearchSpace

WINNER_DIR = "winner"


def write_outputs(exp: Experiment, out: Path, choice: Choice, pairs: list[tuple[int, int]], requested: int,
                  seconds: float, seeds_vary: str, checkpoints: list[str], race: Race | None,
                  ahead: list[str] = ()) -> dict[str, Any]:
    """<exp>/best_config.yaml (the winner's recipe), final/leaderboard.csv and final/summary.json; the summary.
    AHEAD: the race's runs trained ahead of a round their config did not reach (not counted as seeds)."""
    space, winner = exp.space, choice.winner
    config = write_best_config(exp, choice, pairs[0])
    write_leaderboard(out / "leaderboard.csv", choice, space)
    summary = {
        "experiment": exp.name, "metric": space.metric, "mode": space.mode, "epochs": space.epochs,
        "selection": rule_text(space.metric, _contend(choice)), "choice": choice.reason,
        "leader": choice.leader.trial.trial_id,
        "tied": [c.trial.trial_id for c in choice.tied], "top_k": len(choice.ordered), "top_k_requested": requested,
        "seeds": [s for s, _ in pairs], "split_seeds": [sp for _, sp in pairs], "holdout": {"how": seeds_vary},
        # Runs the sweep had already trained (a candidate's own trial, at its full budget), not trained again.
        "from_sweep": sum(bool(r.get("from_sweep")) for c in choice.ordered for r in c.runs),
        # Seeds after the first went only to the configs that could still win (None: every seed of every config).
        "race": None if race is None else {**race.to_dict(), **dict(zip(("sd", "sd_source", "dof"), race.sd())),
                                           "not_counted": list(ahead)},
        "trained": sum(not r.get("from_sweep") for c in choice.ordered for r in c.runs),
        "validation": exp.validation.to_dict(),
        "winner": {**_entry(winner, choice, space.metric), "config": str(config), "checkpoints": checkpoints},
        "configs": [_entry(c, choice, space.metric) for c in choice.ordered],
        "defaults": defaults_entry(choice, space.metric),
        "best_config": str(config), "leaderboard": str(out / "leaderboard.csv"), "data": exp.meta.get("data"),
        "plan": read_meta(out).get("plan"), "wall_time_s": seconds,
    }
    write_json(summary, out / SUMMARY)
    return summary


def write_best_config(exp: Experiment, choice: Choice, seeds: tuple[int, int]) -> Path:
    """<exp>/best_config.yaml: the winner's recipe (first seed pair), readable by `mmtune train --config`."""
    winner, metric, path = choice.winner, exp.space.metric, exp.path / BEST_CONFIG
    m, s, n = winner.mean[metric], winner.std[metric], len(winner.ok_runs)
    header = (f"# Finalized winner of {exp.name}: {who(winner.trial.trial_id, winner.sweep_rank, winner.defaults)}, "
              f"{metric} {m:.4f} +- {s:.4f} over {n} seed(s), bound {winner.bound(metric):.4f}"
              f"{'' if winner.num_params is None else f', {winner.num_params:,} params'}.\n"
              f"# Chosen by: {choice.reason} (rule: {rule_text(metric, _contend(choice))}).\n"
              + (f"# {DEFAULTS_WON}: this file holds the defaults (the untuned config).\n" if winner.defaults else "")
              + f"# The single best sweep trial's config is best_trial_config.yaml beside the experiment.\n"
              f"# Reproduce: mmtune train --config {path} --data {exp.meta.get('data') or 'DATA'}\n")
    write_recipe(path, header, exp.space, exp.validation, winner.trial.params,
                 [r["best_epoch"] for r in winner.ok_runs if r.get("best_epoch")], seeds)
    return path


def write_leaderboard(path: Path, choice: Choice, space: SearchSpace) -> None:
    """One row per config, winner first: ranks, the rule's numbers, mean and std of every metric, params."""
    metric, ordered = space.metric, choice.ordered
    keys = metric_keys([r for c in ordered for r in c.ok_runs])
    cols = ["final_rank", "sweep_rank", "trial_id", "defaults", f"sweep best {metric}", "n_seeds", "failed_seeds",
            f"{metric} se", f"{metric} bound", "num_params", "tied",
            *[f"{k} {stat}" for k in keys for stat in ("mean", "std")], *space.names]
    with atomic_file(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i, c in enumerate(ordered, start=1):
            stats = [x for k in keys for x in (c.mean.get(k, math.nan), c.std.get(k, math.nan))]
            w.writerow([i, c.sweep_rank, c.trial.trial_id, c.defaults, c.trial.best_value, len(c.ok_runs), c.failed,
                        c.se(metric), c.bound(metric), c.num_params, c in choice.tied, *stats,
                        *[c.trial.params.get(n) for n in space.names]])


def _entry(c: Candidate, choice: Choice, metric: str) -> dict[str, Any]:
    return {"rank": c.rank, "sweep_rank": c.sweep_rank, "trial_id": c.trial.trial_id,
            "sweep_best_value": c.trial.best_value, "sweep_best_epoch": c.trial.best_epoch, "params": c.trial.params,
            "num_params": c.num_params, "n_seeds": len(c.ok_runs), "failed_seeds": c.failed, "se": c.se(metric),
            "bound": c.bound(metric), "tied": c in choice.tied, "mean": c.mean, "std": c.std, "runs": c.runs,
            "left_race": c.left_race, "cut_by_time_budget": c.cut, "defaults": c.defaults}


def _contend(choice: Choice) -> bool:
    return any(c.defaults for c in choice.ordered)


def defaults_entry(choice: Choice, metric: str) -> dict[str, Any] | None:
    """Whether the defaults won, and the gain over them on the finalize seeds (the metric, and test F1 where the runs
    have it) of the searched config they beat or lost to; None: they did not contend."""
    d = next((c for c in choice.ordered if c.defaults), None)
    if d is None:
        return None
    # The config the defaults beat, or lost to: the rule's pick, or when the rule picked the defaults themselves,
    # the best searched config by bound.
    searched = [c for c in [choice.winner, choice.pick, *choice.ordered] if c is not None and not c.defaults]
    rival = searched[0] if searched else None
    keys = dict.fromkeys([metric, metric_name("test", metric.split("/", 1)[1])])
    gains = {k: g for k in keys if rival is not None and (g := gain(rival, d, choice.ordered, k)) is not None}
    return {"trial_id": d.trial.trial_id, "won": d is choice.winner,
            "versus": None if rival is None else rival.trial.trial_id, "gain": gains}


def leaderboard_rows(summary: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The leaderboard of a finalize summary: column names and one row per config, best first."""
    metric = summary["metric"]
    test = metric.replace("val/", "test/", 1)
    bound = "LCB" if summary.get("mode", "max") == "max" else "UCB"
    cols = ["#", "sweep rank", "trial", f"sweep {metric}", f"{metric} mean ± std", "n", bound, "params", "tied",
            f"{test} mean ± std", "seeds"]
    rows = [[i, _fmt(c["sweep_rank"]), c["trial_id"] + (" (defaults)" if c.get("defaults") and
                                                         c["trial_id"] != DEFAULTS_ID else ""),
             _fmt(c["sweep_best_value"]), _pm(c, metric), c["n_seeds"],
             _fmt(c.get("bound")), _fmt(c.get("num_params")), "yes" if c.get("tied") else "", _pm(c, test),
             _seeds(c)]
            for i, c in enumerate(summary["configs"], start=1)]
    return cols, rows


def leaderboard_table(summary: dict[str, Any]) -> str:
    """The leaderboard of a finalize summary as aligned text, best first."""
    cols, rows = leaderboard_rows(summary)
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths)) for r in [cols, *rows])


def _seeds(c: dict[str, Any]) -> str:
    """How many seeds a config got and why, how many of them the sweep's own run, how many failed."""
    from_sweep = sum(bool(r.get("from_sweep")) for r in c["runs"])
    notes = [f"{from_sweep} from the sweep"] if from_sweep else []
    notes += [f"{c['failed_seeds']} failed"] if c["failed_seeds"] else []
    notes += [c["left_race"]] if c.get("left_race") else []
    notes += [f"{c['cut_by_time_budget']} cut by the time budget"] if c.get("cut_by_time_budget") else []
    return f"{c['n_seeds'] + c['failed_seeds']}" + (f" ({', '.join(notes)})" if notes else "")


def _pm(c: dict[str, Any], key: str) -> str:
    m, s = c["mean"].get(key), c["std"].get(key)
    return "-" if m is None or not math.isfinite(m) else f"{m:.4f} ± {s:.4f}"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else "-"
    return "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def result_lines(summary: dict[str, Any]) -> list[str]:
    """What the console shows after a finalize run: the leaderboard, the winner and why, where the files are."""
    w = summary["winner"]
    return [leaderboard_table(summary), "", *winner_lines(summary), f"leaderboard: {summary['leaderboard']}",
            f"checkpoints: {Path(summary['leaderboard']).parent / WINNER_DIR}/ ({len(w['checkpoints'])} file(s))",
            f"retrain it:  mmtune train --config {summary['best_config']} --data {summary['data'] or 'DATA'}"]


def winner_lines(summary: dict[str, Any]) -> list[str]:
    """The finalized winner and how it was chosen, the seeds and splits, the config to deploy."""
    w, metric = summary["winner"], summary["metric"]
    return [f"winner: {who(w['trial_id'], w['sweep_rank'], w.get('defaults', False))}, {metric} {_pm(w, metric)} "
            f"(n={w['n_seeds']}, bound {_fmt(w.get('bound'))}) over seeds {summary['seeds']}; {summary['choice']}",
            *defaults_lines(summary), f"seeds and splits: {summary['holdout']['how']}", *race_lines(summary),
            f"best config: {summary['best_config']} (the finalized winner)"]


def who(trial_id: str, sweep_rank: int | None, is_defaults: bool) -> str:
    """A finalize candidate in words: its sweep trial and rank, and whether it is the defaults."""
    if trial_id == DEFAULTS_ID:
        return "the defaults (not trained by the sweep)"
    rank = "not ranked: no usable value" if sweep_rank is None else f"sweep rank {sweep_rank}"
    return f"{'the defaults, ' if is_defaults else ''}sweep trial {trial_id} ({rank})"


def race_lines(summary: dict[str, Any]) -> list[str]:
    """What finalize's race saved: runs trained and taken from the sweep, configs that left it early, the sd used."""
    race = summary.get("race")
    if not race:
        return []
    out = len(race["out"])
    sd = "no noise estimate" if race["sd"] is None else f"sd {race['sd']:.4f}: {race['sd_source']}"
    ahead = len(race.get("not_counted", ()))
    extra = f" (and {ahead} trained ahead of a round their config did not reach, not counted)" if ahead else ""
    return [f"race: {summary['trained']} run(s) trained{extra}, {summary['from_sweep']} taken from the sweep, of at "
            f"most {len(race['ranks']) * race['seeds']}; {out} config(s) left the race early ({sd})"]
