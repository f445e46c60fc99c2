"""What `mmtune sweep`, `mmtune resume` and the Python API (`mmtune.tune.api`) run: `sweep()`, then export, then finalize
as the sweep's start recorded, then export again. Text goes to OUT (the CLI passes stdout; None is silent).

Ray and torch are imported only when a sweep runs.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, TextIO

from mmtune.tune import finalize, leaderboard, storage
from mmtune.tune.errors import ResultsError, SweepError, SweepInterrupted
from mmtune.tune.experiment import Experiment, read_meta
from mmtune.tune.job import SweepOptions, time_budget
from mmtune.tune.results import export, status_table


def run(opts: SweepOptions, out: TextIO | None = None) -> Path:
    """Start (or with `opts.resume`, continue) the sweep OPTS asks for, export and finalize it; its local folder."""
    from mmtune.tune.sweep import sweep  # late: Ray

    check_options(opts.resume, opts.overwrite, opts.name)
    check_finalize_flags(opts.finalize_top_k, opts.finalize_seeds)
    try:
        exp = sweep(opts, out=out)
    except SweepInterrupted as e:
        export_ended(e.location, out)
        raise
    finish(exp.path, opts.storage, opts.name, opts.address, opts.num_cpus, out)
    return exp.path


def check_options(resume: bool, overwrite: bool, name: str | None) -> None:
    """Refuse contradicting resume options before anything runs."""
    if resume and overwrite:
        raise SweepError("--resume and --overwrite contradict each other; choose one")
    if resume and not name:
        raise SweepError("--resume needs --name (the experiment to continue)")


def check_finalize_flags(top_k: int, seeds: int) -> None:
    """Refuse impossible finalize counts before anything runs."""
    if top_k < 0:
        raise SweepError(f"--finalize-top-k {top_k}: use 0 (skip the re-evaluation) or a count >= 1")
    if seeds < 1:
        raise SweepError(f"--finalize-seeds {seeds}: must be >= 1 (use --finalize-top-k 0 to skip finalizing)")


def finish(exp_dir: Path, storage_path: str, name: str | None, address: str | None = None,
           num_cpus: int | None = None, out: TextIO | None = None) -> dict[str, Any]:
    """Export and show the sweep, then finalize it as its start recorded (the resource plan is the sweep's);
    returns export's summary (after finalizing: with the seeds' spread in its noise estimate)."""
    loc = storage.locate(storage_path, exp_dir.name if name is None else name)
    with storage.pushing(loc):
        summary = export(exp_dir)
    _say(out, status_table(exp_dir))
    _say(out, f"\nbest {summary['metric']} = {summary['best_value']:.4f} (trial {summary['best_trial']}, "
              f"epoch {summary['best_epoch']}); trials by status: {summary['trials_by_status']}")
    _say(out, f"best trial config: {summary['best_trial_config']}")
    if loc.remote:
        _say(out, f"stored at:   {loc.remote} (the paths above are its local copy)")
    _say(out, f"Ray's log:   {exp_dir / 'ray.log'}")
    top_k, seeds, race = finalize_settings(read_meta(exp_dir))
    if top_k == 0:
        _say(out, f"best config: {summary['best_config']} (the best trial's: finalizing was skipped)")
        _say(out, f"retrain it:  mmtune train --config {summary['best_config']} --data {summary['data']}")
    else:
        with interrupted_finalize(str(loc), top_k, seeds, race):  # from its first line on: a Ctrl-C may follow at once
            space = Experiment.open(exp_dir).space
            contend = " and the defaults" if space.defaults_contender else ""
            _say(out, f"\nfinalize: retraining the top {top_k} config(s){contend} x {seeds} seed(s) at the full "
                      f"budget, a second Tune run in {exp_dir / finalize.FINAL_DIR} with the same resource plan (a "
                      "config's first seed is its sweep trial when that trained the full budget: not trained again"
                      + ("; further seeds only for configs that can still win" if race and seeds > 1 else "") + ")")
            limit = time_budget(space, top_k, seeds)  # finalize's reserved share
            final = finalize.finalize(str(loc), top_k, seeds, address, num_cpus, out=out, race=race,
                                      time_budget=limit.finalize if limit else None)
        _say(out, "\n".join(leaderboard.result_lines(final)))
        summary = Experiment.open(exp_dir).summary  # finalize exported again: the seeds' noise
    if summary.get("warnings"):  # saturation and noise (also in summary.json and the report), each with its remedy
        _say(out, "\nwarnings:\n" + "\n".join(f"  - {w}" for w in summary["warnings"]))
    return summary


def export_ended(location: str, out: TextIO | None = None) -> None:
    """After a Ctrl-C in the search: trials.csv, best_trial_config.yaml and summary.json (unfinished) of what ended."""
    loc = storage.locate(location)
    if loc.remote:  # its mirror lacks what the trials wrote there, and pulling all of it is no quick job
        return
    try:
        export(loc.local)
    except (ResultsError, KeyboardInterrupt):  # no trial has a value yet, or a second Ctrl-C: the export can wait
        return
    _say(out, f"exported the trials so far: {loc.local / 'trials.csv'}")


@contextlib.contextmanager
def interrupted_finalize(location: str, top_k: int, seeds: int, race: bool = True) -> Iterator[None]:
    """A Ctrl-C in finalize: the sweep's results and best config stay as export wrote them; says how to re-run it."""
    try:
        yield
    except KeyboardInterrupt as e:
        raise SweepInterrupted(f"finalize of {location} was interrupted; the sweep's results and best_config.yaml are "
                               f"kept as they were. Re-run it: mmtune finalize {location} --top-k {top_k} --seeds "
                               f"{seeds}{'' if race else ' --no-race'}", location) from e


def finalize_settings(meta: dict[str, Any]) -> tuple[int, int, bool]:
    """(top-k, seeds, race) recorded when the sweep started; the defaults for one recorded before they existed."""
    options = meta.get("options", {})
    return (int(options.get("finalize_top_k", SweepOptions.finalize_top_k)),
            int(options.get("finalize_seeds", SweepOptions.finalize_seeds)),
            bool(options.get("finalize_race", SweepOptions.finalize_race)))


def _say(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)
