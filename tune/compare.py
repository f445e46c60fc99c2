"""`mmtune compare`: a sweep's best_config.yaml against the plain defaults, retrained over the same seeds, paired on
test F1: does the sweep's config beat what `mmtune train` would have trained without a sweep, on the user's data?

Both arms train in this process through `train_run`, the one training entry point (`mmtune train` calls it too),
once per training seed 0..S-1: (a) the defaults (`TrainConfig()`, or the config a user would have trained without a
sweep) and (b) the experiment's best_config.yaml. Only `seed` is set; each arm keeps the `split_seed` its config
records (a split is part of a config as deployed), so an arm's seeds vary the initialization, sampler and dropout
but never its split, the split stays the same for every seed pair, and the pair of seed s is what `mmtune train
--seed s` gives with either config. Runs land in <exp>/compare/<arm>/seed<s>/; a run whose summary.json, timing and
config match is kept, so an interrupted compare resumes. The paired table goes to <exp>/compare/summary.json.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from mmtune.data.io import write_json
from mmtune.data.npz import DataError
from mmtune.data.validation import Validation
from mmtune.model.config import ConfigError, TrainConfig, load_config
from mmtune.model.run import train_run
from mmtune.tune.errors import ResultsError, SweepInterrupted
from mmtune.tune.experiment import Experiment
from mmtune.tune.results import BEST_CONFIG
from mmtune.tune.selection import NOISE_SE

log = logging.getLogger(__name__)

COMPARE_DIR = "compare"  # <exp>/compare: the runs of both arms and summary.json
TIMING = "timing.json"  # beside a run's summary.json: its wall time, written last (a run without it is retrained)
ARMS = ("defaults", "winner")
LABELS = {"defaults": "defaults", "winner": "sweep's config"}


def compare(exp_dir: str | Path, data: str | Path | None = None, seeds: int = 3, out: TextIO | None = None,
            baseline_config: str | Path | None = None, baseline_overrides: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    """Train the defaults (BASELINE_CONFIG and BASELINE_OVERRIDES on top of `TrainConfig()`) and EXP_DIR's
    best_config.yaml with seeds 0..SEEDS-1 on DATA (default: the sweep's), pair their test F1 and write and
    return the summary; progress lines go to OUT. Ctrl-C keeps the finished runs and raises SweepInterrupted."""
    exp = Path(exp_dir).resolve()
    root, arms = _check(exp, data, seeds, baseline_config, baseline_overrides)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    try:
        for i, (s, arm) in enumerate(((s, a) for s in range(seeds) for a in ARMS), start=1):
            prefix = f"[{i}/{seeds * len(ARMS)}] {LABELS[arm]}, seed {s}"
            runs[arm].append(_run(arms[arm], s, root, exp / COMPARE_DIR / arm / f"seed{s}", prefix, out))
    except KeyboardInterrupt as e:
        again = f"mmtune compare {exp} --data {root} --seeds {seeds}" + (
            f" --baseline-config {baseline_config}" if baseline_config else "")
        raise SweepInterrupted(f"compare of {exp} was interrupted; its finished runs are kept in {exp / COMPARE_DIR} "
                               f"and are not trained again. Continue: {again}", str(exp)) from e
    summary = summarize(runs, {"experiment": str(exp), "data": str(root), "test": _test_counts(root),
                               "configs": {"defaults": str(baseline_config or "TrainConfig defaults"),
                                           "winner": str(exp / BEST_CONFIG)},
                               "baseline_overrides": baseline_overrides or {}})
    write_json(summary, exp / COMPARE_DIR / "summary.json")
    return summary


def _check(exp: Path, data: str | Path | None, seeds: int, baseline_config: str | Path | None,
           baseline_overrides: dict[str, Any] | None) -> tuple[Path, dict[str, TrainConfig]]:
    """Refuse what cannot give a paired test comparison before anything trains; the data folder and both configs."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ConfigError(f"--seeds {seeds}: a paired comparison needs at least 2 seeds to estimate its noise")
    meta = Experiment.open(exp).meta  # a ResultsError when EXP is no experiment
    if not (exp / BEST_CONFIG).is_file():
        raise ResultsError(f"{exp / BEST_CONFIG}: missing; the sweep has not exported a config yet. Run `mmtune "
                           f"export {exp}` (the best trial's) or `mmtune finalize {exp}` (the re-evaluated winner)")
    if data is None and not meta.get("data"):
        raise ResultsError(f"{exp / 'mmtune.json'}: no 'data' recorded; pass --data (a folder with test.npz)")
    root = Path(data or meta["data"]).resolve()
    if not (root / "test.npz").is_file():
        raise DataError(f"{root / 'test.npz'}: missing; compare scores both configs on a held-out test split. Add "
                        f"test.npz to {root} (the keys of train.npz, samples no run trains on) or pass --data a "
                        "folder that has one")
    arms = {"defaults": load_config(baseline_config, baseline_overrides),
            "winner": load_config(exp / BEST_CONFIG)}
    for arm, cfg in arms.items():
        if Validation.of(cfg).cross_validated:
            where = {"defaults": baseline_config or "the baseline overrides", "winner": exp / BEST_CONFIG}[arm]
            raise ConfigError(f"{where}: cv {cfg.cv} trains {cfg.cv} fold models and tests none; compare needs a "
                              "config that trains one model (cv: 0; a sweep's best_config.yaml is one)")
    return root, arms


def _run(cfg: TrainConfig, seed: int, root: Path, run_dir: Path, prefix: str, out: TextIO | None
         ) -> dict[str, Any]:
    """One arm's run with training seed SEED: trained, or kept from an earlier compare when it is the same run."""
    cfg = replace(cfg, seed=seed)
    kept = _kept(cfg, root, run_dir)
    if kept is not None:
        _say(out, f"{prefix}: kept from an earlier compare (test F1 {kept['test_f1']:.4f}) {run_dir}")
        return kept
    _say(out, f"{prefix}: training -> {run_dir}")
    t0 = time.perf_counter()
    summary = train_run(cfg, Validation.of(cfg).load(root), run_dir, save_best_only=True)
    wall = time.perf_counter() - t0
    if "test" not in summary:
        raise ResultsError(f"{run_dir / 'summary.json'}: no test metrics (status {summary['status']}: no epoch "
                           "improved, so no model was tested); this config cannot be compared on this data")
    write_json({"wall_s": wall}, run_dir / TIMING)
    run = _record(seed, run_dir, summary, wall)
    _say(out, f"{prefix}: test F1 {run['test_f1']:.4f} after {summary['epochs_run']} epochs ({wall:.0f} s)")
    return run


def _kept(cfg: TrainConfig, root: Path, run_dir: Path) -> dict[str, Any] | None:
    """The record of the finished run in RUN_DIR when it trained CFG on ROOT; None when it has to be trained."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        wall = json.loads((run_dir / TIMING).read_text())["wall_s"]
        same = load_config(run_dir / "config.yaml") == cfg and summary["data"]["source"] == str(root)
    except (OSError, ValueError, KeyError, ConfigError):  # missing or cut short: that run did not finish
        return None
    if not same:
        log.info("%s: trained another config or data set; training it again", run_dir)
        return None
    return _record(cfg.seed, run_dir, summary, wall) if "test" in summary else None


def _record(seed: int, run_dir: Path, summary: dict[str, Any], wall: float) -> dict[str, Any]:
    return {"seed": seed, "dir": str(run_dir), "test_f1": float(summary["test"]["f1"]), "test": summary["test"],
            "epochs_run": summary["epochs_run"], "status": summary["status"], "wall_s": float(wall)}


def _test_counts(root: Path) -> dict[str, int]:
    """Samples and positives of ROOT's test split: how precise one run's test F1 can be."""
    with np.load(root / "test.npz", allow_pickle=False) as z:
        y = z["y"]
    return {"samples": int(len(y)), "positives": int(np.sum(y == 1))}


def summarize(runs: dict[str, list[dict[str, Any]]], info: dict[str, Any]) -> dict[str, Any]:
    """The paired table of RUNS (by arm, one per seed, in seed order): F1 per seed, the gain, its noise, a verdict."""
    pairs = [{"seed": d["seed"], "defaults": d["test_f1"], "winner": w["test_f1"], "gain": w["test_f1"] - d["test_f1"]}
             for d, w in zip(runs["defaults"], runs["winner"])]
    gain = mean_interval([p["gain"] for p in pairs])
    wall = {arm: statistics.fmean(r["wall_s"] for r in runs[arm]) for arm in ARMS}
    return {**info, "seeds": [p["seed"] for p in pairs], "paired": pairs,
            "arms": {arm: {"runs": runs[arm], "test_f1_mean": statistics.fmean(r["test_f1"] for r in runs[arm]),
                           "wall_s_mean": wall[arm], "wall_x_defaults": wall[arm] / wall["defaults"]} for arm in ARMS},
            "gain": gain, "verdict": verdict(gain["mean"], gain["se"])}


def mean_interval(values: list[float]) -> dict[str, Any]:
    """Mean, sd, standard error and Student t 95 % interval of VALUES (two or more), and their count."""
    from scipy import stats  # late: only here

    n, mean, sd = len(values), statistics.fmean(values), statistics.stdev(values)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    return {"mean": mean, "sd": sd, "se": se, "ci95": [mean - half, mean + half], "n": n}


def verdict(mean: float, se: float) -> str:
    """'inside the noise' when |MEAN| <= NOISE_SE standard errors, else which arm tests better."""
    if abs(mean) <= NOISE_SE * se:
        return "inside the noise"
    return "the sweep's config is better" if mean > 0 else "the defaults are better"


def table_lines(summary: dict[str, Any]) -> list[str]:
    """The paired table for the console: one row per seed, the mean gain with its noise, the verdict, wall times."""
    t, g, arms = summary["test"], summary["gain"], summary["arms"]
    lines = [f"compare: {summary['configs']['winner']} against {summary['configs']['defaults']}",
             f"test split: {summary['data']}/test.npz, {t['samples']} samples, {t['positives']} positive",
             "", f"{'seed':>4}  {'defaults':>9}  {LABELS['winner']:>14}  {'gain':>7}"]
    lines += [f"{p['seed']:>4}  {p['defaults']:>9.4f}  {p['winner']:>14.4f}  {p['gain']:>+7.4f}"
              for p in summary["paired"]]
    lines += [f"{'mean':>4}  {arms['defaults']['test_f1_mean']:>9.4f}  {arms['winner']['test_f1_mean']:>14.4f}  "
              f"{g['mean']:>+7.4f}", "",
              f"gain (test F1, sweep's config - defaults): {g['mean']:+.4f} +- {g['se']:.4f} (se over {g['n']} seeds); "
              f"95 % t interval [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}]",
              f"verdict: {summary['verdict']} (|gain| {'<=' if summary['verdict'] == 'inside the noise' else '>'} "
              f"{NOISE_SE:g} se)",
              "wall per run: " + ", ".join(f"{LABELS[a]} {arms[a]['wall_s_mean']:.0f} s "
                                           f"({arms[a]['wall_x_defaults']:.2f} x the defaults)" for a in ARMS),
              f"runs and summary.json: {Path(summary['experiment']) / COMPARE_DIR}"]
    return lines


def _say(out: TextIO | None, text: str) -> None:
    log.info(text)
    if out is not None:
        print(text, file=out, flush=True)
