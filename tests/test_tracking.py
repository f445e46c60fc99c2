"""Tracking on request: a real sweep with --mlflow (a local MLflow file store) and --tensorboard (real event files),
read back with MLflow's client and TensorBoard's own event reader."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from mmtune.model.status import STATUS_KEY
from tests.conftest import SMOKE, rows
from mmtune.tune.experiment import Experiment

NAME = "tracked"


@pytest.fixture(scope="module")
def tracked(ray_session, demo_dir, tmp_path_factory) -> Iterator[tuple[Path, str]]:
    """`mmtune sweep` of the smoke space with both trackers, finalized with 1 config x 2 seeds without the race (its
    first seed may be the sweep's own trial, not trained again; the second is always trained: a race of one config is
    settled before it); (experiment, URI)."""
    from mmtune.tune.cli import run

    tmp = tmp_path_factory.mktemp("tracked")
    uri = f"file://{tmp / 'mlruns'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens a file store only when asked to
        assert run(["sweep", "--data", str(demo_dir), "--space", SMOKE, "--storage", str(tmp / "res"), "--name", NAME,
                    "--mlflow", uri, "--tensorboard", "--finalize-top-k", "1", "--finalize-seeds", "2",
                    "--no-finalize-race"]) == 0
        yield tmp / "res" / NAME, uri


def test_mlflow_has_one_run_per_trial_with_params_epochs_and_status(tracked):
    from mlflow.tracking import MlflowClient

    exp, uri = tracked
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(NAME)
    runs = {r.data.tags["ray_trial_id"]: r for r in client.search_runs([experiment.experiment_id])}
    trials = {t.trial_id: t for t in Experiment.open(exp).trials}
    assert sorted(runs) == sorted(trials) == sorted(r["trial_id"] for r in rows(exp))
    for row in rows(exp):
        run, trial = runs[row["trial_id"]], trials[row["trial_id"]]
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        for metric in ("val/f1", "val/loss", "train/loss"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == list(range(1, int(row["epochs"]) + 1)), (metric, row)
        assert run.data.tags[STATUS_KEY] == row["status"] and run.info.status == "FINISHED"
    # The finalize run keeps the sweep's tracking, in an experiment of its own: one run per run it trained.
    final = client.get_experiment_by_name(f"{NAME}/final")
    trained = len(Experiment.open(exp / "final").trials)
    assert trained == 2 - Experiment.open(exp).final["from_sweep"] >= 1
    assert len(client.search_runs([final.experiment_id])) == trained


def test_tensorboard_event_files_hold_epochs_and_hparams(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    exp, _ = tracked
    trials = Experiment.open(exp).trials
    assert trials and all(list(t.path.glob("events.out.tfevents.*")) for t in trials)
    for t in trials:
        events = EventAccumulator(str(t.path), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        assert [s.step for s in events.Scalars("ray/tune/val/f1")] == list(range(1, t.epochs + 1))
        assert events.Scalars("ray/tune/val/f1")[-1].value == pytest.approx(t.history[-1]["val/f1"])
        content = events.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        assert set(start.session_start_info.hparams) == set(t.params)
        setup = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
        assert "ray/tune/val/f1" in {m.name.tag for m in setup.experiment.metric_infos}
    assert list((exp / "final").glob("trial_*/events.out.tfevents.*"))


def test_tracking_is_recorded_for_resume(tracked):
    options = Experiment.open(tracked[0]).meta["options"]
    assert options["mlflow"] == tracked[1] and options["tensorboard"] is True


def test_a_store_mlflow_refuses_fails_before_ray_naming_the_flag(demo_dir, tmp_path, monkeypatch, capsys):
    from mmtune.tune.cli import run

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = f"file://{tmp_path / 'mlruns'}"
    assert run(["sweep", "--data", str(demo_dir), "--space", SMOKE, "--storage", str(tmp_path), "--name", "x",
                "--mlflow", uri]) == 2
    err = capsys.readouterr().err
    assert f"--mlflow {uri}" in err and "sqlite:///" in err and "MLFLOW_ALLOW_FILE_STORE" in err
    assert not (tmp_path / "x").exists()  # nothing started


def test_a_file_store_a_kill_cut_is_rebuilt_with_nothing_lost(tmp_path, monkeypatch):
    """MLflow's file store writes a run's meta.yaml in place; an empty one (a SIGKILL mid-write) made every search of
    the experiment fail, and with it `mmtune resume --mlflow`. The repair rebuilds a run that names its trial (status
    from the trial's record, metrics untouched) and hides one cut before it named a trial."""
    from mlflow.tracking import MlflowClient

    from mmtune.tune.mlflow_logger import TRIAL_ID_TAG, repair_cut_runs

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    root = tmp_path / "mlruns"
    client = MlflowClient(tracking_uri=root.as_uri())
    exp_id = client.create_experiment("cut")
    runs = {}
    for trial in ("t_done", "t_cut_mid_run"):
        run = client.create_run(exp_id, run_name=trial, tags={TRIAL_ID_TAG: trial})
        for step in (1, 2, 3):
            client.log_metric(run.info.run_id, "val/f1", 0.1 * step, step=step, timestamp=1_000 * step)
        runs[trial] = run.info.run_id
    orphan = client.create_run(exp_id).info.run_id  # killed before Ray's logger could tag it
    for run_id in (*runs.values(), orphan):
        (root / exp_id / run_id / "meta.yaml").write_text("")
    with pytest.raises(AttributeError):  # what resume died of
        client.search_runs([exp_id])

    repair_cut_runs(root, {"t_done": {"status": "completed"}})

    found = {r.data.tags[TRIAL_ID_TAG]: r for r in client.search_runs([exp_id])}
    assert set(found) == {"t_done", "t_cut_mid_run"}  # the orphan is hidden, its files kept
    assert (root / exp_id / orphan / "meta.yaml.cut").is_file()
    assert found["t_done"].info.status == "FINISHED" and found["t_done"].info.end_time == 3_000
    assert found["t_cut_mid_run"].info.status == "KILLED" and found["t_cut_mid_run"].info.end_time is None
    for trial, r in found.items():
        assert r.info.run_id == runs[trial] and r.info.run_name == trial and r.info.start_time == 1_000
        assert [m.value for m in client.get_metric_history(r.info.run_id, "val/f1")] == pytest.approx([0.1, 0.2, 0.3])
    client.update_run(runs["t_cut_mid_run"], status="RUNNING")  # what a resumed trial's logger does next
    client.set_terminated(runs["t_cut_mid_run"])
    assert client.get_run(runs["t_cut_mid_run"]).info.status == "FINISHED"


def test_a_run_whose_trial_the_sweep_no_longer_has_ends_killed(tmp_path, monkeypatch):
    """At the end of a sweep, a run left RUNNING by a trial the sweep does not have (one a driver kill cut before
    Ray saved it) is ended KILLED; the runs of the sweep's own trials are left as they are."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from mmtune.tune.mlflow_logger import TRIAL_ID_TAG, MLflowTrialLogger

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = f"file://{tmp_path / 'mlruns'}"
    logger = MLflowTrialLogger(uri, [], tmp_path, experiment_name="cut")
    logger.setup()
    client = MlflowClient(tracking_uri=uri)
    runs = {tid: client.create_run(logger.mlflow_util.experiment_id, tags={TRIAL_ID_TAG: tid}).info.run_id
            for tid in ("kept", "forgotten")}
    logger.on_experiment_end([SimpleNamespace(trial_id="kept")])
    assert client.get_run(runs["forgotten"]).info.status == "KILLED"
    assert client.get_run(runs["kept"]).info.status == "RUNNING"
