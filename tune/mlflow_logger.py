"""Ray's `MLflowLoggerCallback` with mmtune's trial status and Ray trial id as run tags (its own module: it imports
MLflow, which only `--mlflow` needs)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import RunInfo
from mlflow.store.tracking.file_store import _make_persisted_run_info_dict
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.uri import append_to_uri_path, is_local_uri
from mlflow.utils.yaml_utils import write_yaml
from ray.air.integrations.mlflow import MLflowLoggerCallback

from mmtune.model.status import STATUS_KEY, TrialStatus
from mmtune.tune import records
from mmtune.tune.recorder import ended_status

log = logging.getLogger(__name__)

TRIAL_ID_TAG = "ray_trial_id"  # the same name as the Optuna trials' user attribute


class MLflowTrialLogger(MLflowLoggerCallback):
    """One MLflow run per trial: Ray logs its config as params and every numeric result per epoch; this adds
    the tags Ray leaves out (the status is a string, and Ray logs only numbers as metrics) and, after a resume,
    continues a trial's run instead of starting a second one."""

    def __init__(self, tracking_uri: str, rungs: list[int], exp_dir: Path, **kw: Any):
        super().__init__(tracking_uri, **kw)
        self.rungs = rungs  # ASHA's rungs: where a trial Tune stopped was pruned
        self.exp_dir = exp_dir  # the sweep's trial records: how a run a kill cut had ended

    def setup(self, *args: Any, **kwargs: Any) -> None:
        if is_local_uri(self.tracking_uri):
            repair_cut_runs(Path(local_file_uri_to_path(self.tracking_uri)), records.read_all(self.exp_dir))
        super().setup(*args, **kwargs)

    def log_trial_start(self, trial: Any) -> None:
        if trial not in self._trial_runs and (run_id := self._earlier_run(trial.trial_id)) is not None:
            self._client().update_run(run_id, status="RUNNING")  # a resumed sweep: the trial's run goes on
            self._trial_runs[trial] = run_id
        super().log_trial_start(trial)
        self._client().set_tag(self._trial_runs[trial], TRIAL_ID_TAG, trial.trial_id)

    def _earlier_run(self, trial_id: str) -> str | None:
        """The run an interrupted sweep left for TRIAL_ID (Ray keeps its trial-to-run map in memory only, so a
        resume would start a second run and leave this one RUNNING forever)."""
        runs = self._client().search_runs([self.mlflow_util.experiment_id], f"tags.{TRIAL_ID_TAG} = '{trial_id}'",
                                          max_results=1)
        return runs[0].info.run_id if runs else None

    def log_trial_end(self, trial: Any, failed: bool = False) -> None:
        status = TrialStatus.FAILED if failed else ended_status(trial.last_result or {}, self.rungs)
        if trial in self._trial_runs:
            self._client().set_tag(self._trial_runs[trial], STATUS_KEY, status.value)
        super().log_trial_end(trial, failed)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """A run still RUNNING whose trial this sweep no longer has ends KILLED: its trial started after Ray's last
        save before a driver kill, so the resume could not continue it (the study says "interrupted")."""
        ours, client = {t.trial_id for t in trials}, self._client()
        for run in client.search_runs([self.mlflow_util.experiment_id], "attributes.status = 'RUNNING'"):
            if run.data.tags.get(TRIAL_ID_TAG) not in ours:
                client.set_terminated(run.info.run_id, status="KILLED")
        super().on_experiment_end(trials, **info)

    def _client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)


def repair_cut_runs(root: Path, ended: dict[str, dict[str, Any]]) -> None:
    """Make a file store that a kill cut readable again. MLflow's file store writes a run's meta.yaml in place (when
    it creates the run and at every status change), and one empty meta.yaml makes every search of its experiment fail.
    A run that names its trial gets its meta.yaml back from its own files and the trial's record (ENDED, by trial
    id); a run cut before it named one holds no results and is hidden (meta.yaml renamed: MLflow skips such a run)."""
    for meta in sorted(root.glob("*/*/meta.yaml")):
        try:
            if isinstance(yaml.safe_load(meta.read_text()), dict):
                continue
        except (OSError, yaml.YAMLError):
            pass
        run = meta.parent
        tag = run / "tags" / TRIAL_ID_TAG
        if not tag.is_file():
            meta.rename(meta.with_suffix(".yaml.cut"))
            log.warning("MLflow run %s was cut by a kill before it named its trial; it holds no results and is "
                        "hidden from MLflow (its files are kept)", run)
            continue
        trial_id = tag.read_text().strip()
        write_yaml(str(run), meta.name, _make_persisted_run_info_dict(rebuilt_info(run, ended.get(trial_id))),
                   overwrite=True)  # MLflow's own serializer, the only one its reader is sure to take
        log.warning("MLflow run %s of trial %s: a kill cut its meta.yaml; rebuilt from the run's files, nothing "
                    "lost", run.name, trial_id)


def rebuilt_info(run: Path, record: dict[str, Any] | None) -> RunInfo:
    """RunInfo of the file-store run folder RUN from its files; RECORD: its trial's, None if the trial never ended."""
    times = [int(line.split()[0]) for f in (run / "metrics").rglob("*") if f.is_file()
             for line in f.read_text().splitlines() if line.strip()]
    tag = {f.name: f.read_text() for f in (run / "tags").glob("mlflow.*")}
    failed = record is not None and record.get("status") == TrialStatus.FAILED.value
    artifacts = MlflowClient(run.parent.parent.as_uri()).get_experiment(run.parent.name).artifact_location
    return RunInfo(run_id=run.name, experiment_id=run.parent.name, user_id=tag.get("mlflow.user", ""),
                   status="KILLED" if record is None else "FAILED" if failed else "FINISHED",
                   start_time=min(times, default=int(run.stat().st_mtime * 1000)),
                   end_time=max(times) if record is not None and times else None, lifecycle_stage="active",
                   artifact_uri=append_to_uri_path(artifacts, run.name, "artifacts"),
                   run_name=tag.get("mlflow.runName"))
