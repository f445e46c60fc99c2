"""Injected faults: a trial that raises, a killed worker, a corrupt checkpoint, a full disk."""
from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import threading
import time

import pytest
import torch
from ray import tune

from mmtune.model.checkpoint import FORMAT, save_checkpoint
from tests.conftest import run_sweep, study_matches_trials_csv
from mmtune.tune import records
from mmtune.tune.cli import run
from mmtune.tune.errors import SweepError
from mmtune.tune.experiment import CKPT_FILE, Experiment
from mmtune.tune.faults import FaultInjector
from mmtune.tune.results import export
from mmtune.tune.resume import tune_state_saved
from mmtune.tune.sweep import SweepOptions, sweep
from mmtune.tune.trainable import restore


def histories(exp):
    return {t.trial_id: t for t in Experiment.open(exp).trials}


def test_trial_that_raises_is_retried_from_its_checkpoint(ray_session, demo_dir, tmp_path):
    fault = FaultInjector(str(tmp_path / "markers"), epoch=2)
    exp = run_sweep(demo_dir, tmp_path, "retry", callbacks=[fault], no_asha=True, num_samples=2, epochs=4,
                    max_failures=1)
    trials = histories(exp)
    assert len(list((tmp_path / "markers").iterdir())) == 1  # the fault fired (once: markers are per match)
    for t in trials.values():
        assert t.status == "completed", (t.trial_id, t.status, t.error)
        epochs = [r["epoch"] for r in t.history]
        assert epochs == [1, 2, 3, 4]  # continued after the failure, not restarted from epoch 1
    raw = [json.loads(x) for t in trials.values() for x in (t.path / "result.json").read_text().splitlines()]
    assert sorted(r["epoch"] for r in raw).count(1) == 2  # each trial trained epoch 1 once


def test_trial_out_of_retries_is_recorded_failed(ray_session, demo_dir, tmp_path):
    fault = FaultInjector(str(tmp_path / "markers"), epoch=1)
    exp = run_sweep(demo_dir, tmp_path, "fail", callbacks=[fault], no_asha=True, num_samples=2, epochs=2,
                    max_failures=0)
    trials = histories(exp)
    failed = [t for t in trials.values() if t.status == "failed"]
    assert len(failed) == 1 and "injected fault at epoch 1" in failed[0].error
    ok = [t for t in trials.values() if t.status != "failed"]
    assert [t.status for t in ok] == ["completed"]
    # `mmtune resume` retries the failed trial from its checkpoint (the fault fires once) and keeps the other,
    # also after the experiment folder moved (as on a new head node): records go to the new place.
    kept = records.read(exp, ok[0].trial_id)
    exp = shutil.move(exp, tmp_path / "moved")
    sweep(SweepOptions.for_experiment(exp), callbacks=(fault,))
    export(exp)
    study_matches_trials_csv(exp)  # the retried trial's new outcome is in the study, nothing left running
    after = histories(exp)
    assert {t.status for t in after.values()} == {"completed"} and records.read(exp, ok[0].trial_id) == kept
    assert [r["epoch"] for r in after[failed[0].trial_id].history] == [1, 2]
    assert not (tmp_path / "fail").exists()


def test_worker_killed_with_sigkill_is_retried(ray_session, demo_dir, tmp_path):
    exp_dir = tmp_path / "killed"
    victim: dict = {}

    def kill_a_worker():
        deadline = time.time() + 120
        while time.time() < deadline and not victim:
            for result in exp_dir.glob("trial_*/result.json"):
                lines = result.read_text().splitlines()
                if len(lines) >= 2:
                    last = json.loads(lines[-1])
                    victim.update(trial=result.parent.name, pid=last["pid"], epoch=last["epoch"])
                    os.kill(last["pid"], signal.SIGKILL)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    exp = run_sweep(demo_dir, tmp_path, "killed", no_asha=True, num_samples=2, epochs=8, max_failures=2)
    killer.join()
    assert victim, "no worker was killed"
    t = histories(exp)[victim["trial"].removeprefix("trial_")]
    assert t.status == "completed" and [r["epoch"] for r in t.history] == list(range(1, 9))
    pids = {json.loads(x)["pid"] for x in (t.path / "result.json").read_text().splitlines()}
    assert victim["pid"] in pids and len(pids) == 2  # a new worker took over


def _state(epoch: int) -> dict:
    return {"format": FORMAT, "epoch": epoch, "weights": torch.zeros(3)}


def test_corrupt_latest_checkpoint_falls_back_to_an_older_one(tmp_path, caplog):
    trial = tmp_path / "trial_x"
    save_checkpoint(_state(3), trial / "checkpoint_000002" / CKPT_FILE)
    bad = save_checkpoint(_state(5), trial / "checkpoint_000004" / CKPT_FILE)
    bad.write_bytes(bad.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        state = restore(tune.Checkpoint.from_directory(str(bad.parent)))
    assert state["epoch"] == 3
    assert str(bad) in caplog.text and "instead of the unreadable" in caplog.text
    bad_old = trial / "checkpoint_000002" / CKPT_FILE
    bad_old.write_bytes(b"garbage")
    assert restore(tune.Checkpoint.from_directory(str(bad.parent))) is None


def test_disk_full_while_training_keeps_earlier_files(demo_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["--d-model", "16", "--nhead", "2", "--num-layers", "1", "--ff-mult", "2", "--train-steps", "2",
             "--device", "cpu", "--checkpoint-dir", str(run_dir)]
    assert run(["train", "--data", str(demo_dir), "--epochs", "1", *flags]) == 0
    before = (run_dir / "best.pt").read_bytes()
    (run_dir / ".last.pt.tmp").symlink_to("/dev/full")  # the next checkpoint write hits a full disk
    code = run(["train", "--data", str(demo_dir), "--epochs", "2", *flags])
    err = capsys.readouterr().err
    assert code == 1 and "no space left" in err and "last.pt" in err and "Traceback" not in err
    assert not (run_dir / ".last.pt.tmp").exists()
    assert (run_dir / "best.pt").read_bytes() != b"" and len(before) > 0
    assert (run_dir / "config.yaml").is_file()


def test_tuner_state_cut_by_a_driver_kill_starts_over_or_says_why(tmp_path):
    assert not tune_state_saved(tmp_path)  # nothing saved yet
    state = pickle.dumps({"trainable": "x" * 1000})
    (tmp_path / "tuner.pkl").write_bytes(b"")  # killed right as Ray opened the file
    assert not tune_state_saved(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(state[:-20])  # killed halfway through
    assert not tune_state_saved(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(state)  # killed before Tune's first experiment state
    assert not tune_state_saved(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(state[:-20])
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    with pytest.raises(SweepError, match="tuner.pkl"):  # trials were saved: never silently start over
        tune_state_saved(tmp_path)
    (tmp_path / "tuner.pkl").write_bytes(state)
    assert tune_state_saved(tmp_path)


def test_state_files_cut_by_a_driver_kill_are_put_back_from_rays_staging_copy(tmp_path):
    """Ray copies its state files into the experiment without a rename: a kill mid-copy leaves them cut, and Ray
    would restart a 1-trial sweep. The resume takes the whole staging copy, or sets a cut file aside."""
    from mmtune.tune.resume import repair_cut_state, whole_state

    exp, root = tmp_path / "res" / "swept", tmp_path / "ray"
    staged = root / "session_1" / "artifacts" / "t0" / "swept" / "driver_artifacts"
    for folder in (exp, staged):
        folder.mkdir(parents=True)
    state, search = {"runner_data": {}, "trial_data": []}, pickle.dumps({"counter": 3, "total_samples": 6})
    (staged / "experiment_state-b.json").write_text(json.dumps(state))
    (staged / "search_gen_state-b.json").write_bytes(search)
    (exp / "experiment_state-a.json").write_text(json.dumps(state))  # an earlier run's, whole
    (exp / "experiment_state-b.json").write_text("")  # cut at its first byte
    (exp / "search_gen_state-b.json").write_bytes(search[:-3])  # cut before its STOP
    (exp / "search_gen_state-c.json").write_bytes(search[:5])  # cut, with no staging copy
    assert not whole_state(exp / "experiment_state-b.json") and not whole_state(exp / "search_gen_state-b.json")
    done = repair_cut_state(exp, [root])
    assert set(done) == {"experiment_state-b.json", "search_gen_state-b.json", "search_gen_state-c.json"}
    assert json.loads((exp / "experiment_state-b.json").read_text()) == state
    assert (exp / "search_gen_state-b.json").read_bytes() == search
    assert not (exp / "search_gen_state-c.json").exists() and (exp / "search_gen_state-c.json.cut").is_file()
    assert "set aside" in done["search_gen_state-c.json"] and repair_cut_state(exp, [root]) == {}
