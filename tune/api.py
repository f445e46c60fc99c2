"""The Python API, for notebooks and scripts: run a sweep as `mmtune sweep` runs it, and read an experiment back.

`run_sweep` takes the CLI's options as keywords (the fields of `SweepOptions`) and goes through the same code path
as the CLI (`tune.pipeline.run`: `sweep()`, export, finalize as asked, export). It is quiet unless `progress` is set.
A Ctrl-C (Jupyter's "interrupt") stops the sweep or its finalize run as Tune does and raises
`tune.errors.SweepInterrupted`, a KeyboardInterrupt that says how to continue, instead of returning a half-done handle.
Ray and torch are imported only when a sweep or finalize runs; pandas when `.trials` is read.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from mmtune.model.config import TrainConfig, load_config
from mmtune.tune import finalize as finalizing, pipeline, storage
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import SUMMARY, Experiment, load_study
from mmtune.tune.job import SweepOptions, budget_option
from mmtune.tune.report import ReportResult, write_report
from mmtune.tune.results import BEST_CONFIG, BEST_TRIAL_CONFIG, trial_rows
from mmtune.tune.space import SearchSpace

if TYPE_CHECKING:
    import optuna
    import pandas as pd


DEFAULT_SPACE = "default"  # as the CLI's --space: the shipped default.yaml
POSITIONAL = ("data", "space")

Progress = bool | TextIO | None  # True: the CLI's text on stdout; a stream: there; False/None: quiet


@dataclass(frozen=True)
class ExperimentHandle:
    """An experiment seen from Python: its trials, best configs, Optuna study and summary; report and finalize."""

    location: str  # the experiment: a folder, or an object-store URI (read through its local mirror)

    @property
    def path(self) -> Path:
        """The local folder (for a URI, its local mirror)."""
        return storage.locate(self.location).local

    @property
    def experiment(self) -> Experiment:
        """The experiment as on disk now (`tune.experiment.Experiment`)."""
        return Experiment.open(self.path)

    @property
    def trials(self) -> pd.DataFrame:
        """One row per trial, the columns and values of trials.csv (nullable dtypes: a missing value is <NA>)."""
        import pandas as pd

        cols, rows = trial_rows(self.experiment)
        return pd.DataFrame(rows, columns=cols).convert_dtypes()

    @property
    def best_config(self) -> TrainConfig:
        """The config to deploy (best_config.yaml): finalize's winner, or the best trial's if finalize did not run."""
        return self._config(BEST_CONFIG)

    @property
    def best_trial_config(self) -> TrainConfig:
        """The single best sweep trial's config (best_trial_config.yaml)."""
        return self._config(BEST_TRIAL_CONFIG)

    @property
    def study(self) -> optuna.Study:
        """The sweep's Optuna study (study.db), loaded fresh."""
        return load_study(self.path)

    @property
    def summary(self) -> dict[str, Any]:
        """summary.json: the best trial, trials by status, seeds, provenance, warnings, the finalized winner."""
        return json.loads(self._file(SUMMARY).read_text())

    def report(self, **kw: Any) -> ReportResult:
        """Write report.html and report.md as `mmtune report` does (keywords of `write_report`, e.g. top_k)."""
        with storage.synced(self.location, checkpoints=False) as folder:
            return write_report(folder, **kw)

    def finalize(self, top_k: int = 3, seeds: int = 3, *, race: bool = True, time_budget: str | float | None = None,
                 progress: Progress = False, address: str | None = None, num_cpus: int | None = None) -> dict[str, Any]:
        """Retrain the top TOP_K configs with up to SEEDS seeds each (RACE: later seeds only for the configs that can
        still win; TIME_BUDGET: e.g. '30m') as `mmtune finalize` does; its summary."""
        with pipeline.interrupted_finalize(self.location, top_k, seeds, race):
            return finalizing.finalize(self.location, top_k, seeds, address, num_cpus, out=_stream(progress),
                                       race=race, time_budget=budget_option(time_budget))

    def _config(self, name: str) -> TrainConfig:
        return load_config(self._file(name))

    def _file(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            raise ResultsError(f"{path}: not written yet (run `mmtune export {self.location}` when the sweep has a "
                               "finished trial)")
        return path


def run_sweep(data: str | Path, space: str | Path | SearchSpace = DEFAULT_SPACE, *, progress: Progress = False,
              **options: Any) -> ExperimentHandle:
    """Run a sweep as `mmtune sweep` does (keywords: the CLI's options, e.g. name, num_samples, finalize_top_k)."""
    opts = sweep_options(data, space, **options)
    exp_dir = pipeline.run(opts, _stream(progress))
    return open_experiment(str(storage.locate(opts.storage, exp_dir.name)))


def resume_sweep(location: str | Path, *, progress: Progress = False, address: str | None = None,
                 num_cpus: int | None = None) -> ExperimentHandle:
    """Continue an interrupted sweep as `mmtune resume` does, and finalize it as its start asked."""
    opts = SweepOptions.for_experiment(location, address=address, num_cpus=num_cpus)
    pipeline.run(opts, _stream(progress))
    return open_experiment(location)


def open_experiment(location: str | Path) -> ExperimentHandle:
    """The experiment at LOCATION (a folder or URI; a URI is downloaded, without checkpoints, to its mirror)."""
    loc = storage.fetched(location, checkpoints=False)
    Experiment.open(loc.local)  # a ResultsError now when it is no experiment
    return ExperimentHandle(str(loc))


def sweep_options(data: str | Path, space: str | Path | SearchSpace = DEFAULT_SPACE, **options: Any) -> SweepOptions:
    """SweepOptions from DATA, SPACE and keyword OPTIONS (its field names); a TypeError names any unknown one."""
    known = [f.name for f in dataclasses.fields(SweepOptions) if f.name not in POSITIONAL]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"unknown sweep option(s) {', '.join(unknown)}; the options are {', '.join(known)}")
    for key in ("storage", "gpus_per_trial", "cv"):  # the CLI passes these as text (a path, "auto", "0.5", "5")
        if options.get(key) is not None:
            options[key] = str(options[key])
    return SweepOptions(data=str(data), space=space if isinstance(space, SearchSpace) else str(space), **options)


def _stream(progress: Progress) -> TextIO | None:
    return sys.stdout if progress is True else (progress or None)
