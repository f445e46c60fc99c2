"""Ray's `MLflowLoggerCallback` with mmtune's trial status and Ray trial id as run tags (its own module: it imports
MLflow, which only `--mlflow` needs)."""
from __future__ import annotations

from typing import Any

from mlflow.tracking import MlflowClient
from ray.air.integrations.mlflow import MLflowLoggerCallback

from mmtune.model.status import STATUS_KEY, TrialStatus
from mmtune.tune.recorder import ended_status

TRIAL_ID_TAG = "ray_trial_id"  # the same name as the Optuna trials' user attribute


class MLflowTrialLogger(MLflowLoggerCallback):
    """One MLflow run per trial: Ray logs its config as params and every numeric result per epoch; this adds
    the tags Ray leaves out (the status is a string, and Ray logs only numbers as metrics) and, after a resume,
    continues a trial's run instead of starting a second one."""

    def __init__(self, tracking_uri: str, rungs: list[int], **kw: Any):
        super().__init__(tracking_uri, **kw)
        self.rungs = rungs  # ASHA's rungs: where a trial Tune stopped was pruned

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

    def _client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)
