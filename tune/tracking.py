"""Tracking on request: `--mlflow URI` (Ray's MLflow logger) and `--tensorboard` (Ray's TensorBoardX logger).

Both are off by default: they cost time on every epoch of every trial (BENCHMARKS.md). Ray is imported only
when a sweep builds its callbacks; the checks here run before Ray starts.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from mmtune.tune.errors import SweepError
from mmtune.tune.experiment import META


def check_tracking(mlflow_uri: str | None, tensorboard: bool) -> None:
    """Refuse tracking that cannot work (a missing package, a store MLflow will not open) before Ray starts."""
    if tensorboard and importlib.util.find_spec("tensorboardX") is None:
        raise SweepError("--tensorboard needs tensorboardX: pip install -e '.[tensorboard]' (make installs it)")
    if mlflow_uri is not None:
        check_mlflow(mlflow_uri)


def check_mlflow(uri: str) -> None:
    """Open the MLflow tracking store at URI once, so a bad URI fails now with the flag named, not in a callback."""
    if not uri:
        raise SweepError("--mlflow needs a tracking URI, e.g. sqlite:///mlflow.db or http://127.0.0.1:5000")
    if importlib.util.find_spec("mlflow") is None:
        raise SweepError("--mlflow needs MLflow: pip install -e '.[mlflow]' (make installs it)")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except (MlflowException, OSError) as e:
        reason = str(getattr(e, "message", e)).strip().splitlines()[0]
        raise SweepError(f"--mlflow {uri}: MLflow cannot use this tracking store ({reason}). Use e.g. "
                         "sqlite:///mlflow.db or a running tracking server's http(s):// URI; a file:// store "
                         "also needs MLFLOW_ALLOW_FILE_STORE=true in the environment") from None


def tracking_name(exp_dir: Path) -> str:
    """The MLflow experiment of the trials in EXP_DIR: its name, `<exp>/final` for a finalize run."""
    return f"{exp_dir.parent.name}/{exp_dir.name}" if (exp_dir.parent / META).is_file() else exp_dir.name


def tracking_callbacks(exp_dir: Path, mlflow: str | None, tensorboard: bool, rungs: list[int]) -> list:
    """Ray's logger callbacks for the tracking asked for (none by default); RUNGS: ASHA's, for the trials' status."""
    callbacks: list = []
    if tensorboard:
        from ray.tune.logger import TBXLoggerCallback

        callbacks.append(TBXLoggerCallback())  # event files in each trial folder; HParams when a trial ends
    if mlflow:
        from mmtune.tune.mlflow_logger import MLflowTrialLogger  # late: MLflow (~1 s), only when asked for

        callbacks.append(MLflowTrialLogger(mlflow, rungs, exp_dir, experiment_name=tracking_name(exp_dir)))
    return callbacks

