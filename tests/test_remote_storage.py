"""Experiments on object storage: a real S3 server (moto) on loopback, real Ray, real sweeps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import SMOKE, remote_files, run_sweep, study_matches_trials_csv
from mmtune.tune import records, storage
from mmtune.tune.cli import run
from mmtune.tune.errors import SweepError
from mmtune.tune.experiment import META, Experiment
from mmtune.tune.faults import FaultInjector
from mmtune.tune.results import export
from mmtune.tune.sweep import SweepOptions, sweep


@pytest.mark.slow
def test_sweep_on_s3_then_every_command_from_another_machine(ray_session, s3_bucket, demo_dir, tmp_path,
                                                               monkeypatch, capsys):
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "head"))
    assert run(["sweep", "--data", str(demo_dir), "--space", SMOKE, "--storage", f"{s3_bucket}/exps",
                "--name", "remote", "--finalize-top-k", "1", "--finalize-seeds", "1"]) == 0
    uri = f"{s3_bucket}/exps/remote"
    files = remote_files(uri)
    n = json.loads(storage.read_text(uri, META))["space"]["num_samples"]
    assert len([f for f in files if f.startswith(f"{records.RECORDS_DIR}/")]) == n
    # Written by the trial workers (final/: the finalize run's own trials).
    assert len({f.split("/")[0] for f in files if "/checkpoint_" in f and not f.startswith("final/")}) == n
    for name in ("trials.csv", "best_config.yaml", "best_trial_config.yaml", "summary.json", "best/checkpoint.pt",
                 "study.db", "ray.log", "final/summary.json", "final/winner/seed_0.pt"):
        assert files.get(name), name
    summary = json.loads(storage.read_text(uri, "summary.json"))
    # The sweep finalized on the bucket: best_config.yaml is the re-evaluated winner (top 1: the best trial's config).
    finalized = storage.read_text(uri, "best_config.yaml")
    assert summary["best_config_from"] == "finalize" and "Finalized winner" in finalized

    # A machine with none of the sweep's local files (a new head node, a laptop) works from the URI alone.
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "laptop"))
    assert run(["status", uri]) == 0
    assert summary["best_trial"] in capsys.readouterr().out
    assert not list((tmp_path / "laptop").rglob("checkpoint_*"))  # status downloads results, not weights
    assert run(["export", uri, "--out", str(tmp_path / "best.yaml")]) == 0
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported == yaml.safe_load(storage.read_text(uri, "best_trial_config.yaml"))
    assert run(["export", uri]) == 0
    assert storage.read_text(uri, "best_config.yaml") == finalized  # an export never overwrites the winner
    assert run(["report", uri]) == 0
    assert run(["finalize", uri, "--top-k", "1", "--seeds", "1"]) == 0
    files = remote_files(uri)
    assert files.get("report.html") and files.get("report/history.png")
    assert files.get("final/summary.json") and files.get("final/winner/seed_0.pt")
    assert json.loads(storage.read_text(uri, "final/summary.json"))["winner"]["trial_id"] == summary["best_trial"]


@pytest.mark.slow
def test_resume_from_the_uri_on_a_new_head_node(ray_session, s3_bucket, demo_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "old-head"))
    fault = FaultInjector(str(tmp_path / "markers"), epoch=1)
    run_sweep(demo_dir, f"{s3_bucket}/exps", "lost-head", callbacks=(fault,), no_asha=True, num_samples=2,
              epochs=2, max_failures=0)
    uri = f"{s3_bucket}/exps/lost-head"
    statuses = {k: v["status"] for k, v in _remote_records(uri).items()}
    assert sorted(statuses.values()) == ["completed", "failed"]

    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path / "new-head"))  # the old head's files are gone
    # The fault fires once per marker: the retried trial now trains through.
    local = sweep(SweepOptions.for_experiment(uri), callbacks=(fault,)).path
    after = _remote_records(uri)
    assert set(after) == set(statuses) and {r["status"] for r in after.values()} == {"completed"}
    assert str(local).startswith(str(tmp_path / "new-head"))
    trials = Experiment.open(local).trials
    export(local)
    study_matches_trials_csv(local)  # the same study continued from the uploaded study.db: the retried trial told
    assert remote_files(uri)["study.db"] == (local / "study.db").stat().st_size
    assert all([r["epoch"] for r in t.history] == [1, 2] for t in trials)  # continued from its checkpoint


def _remote_records(uri: str) -> dict[str, dict]:
    names = [f for f in remote_files(uri) if f.startswith(f"{records.RECORDS_DIR}/")]
    return {n.split("/")[-1].removesuffix(".json"): json.loads(storage.read_text(uri, n)) for n in names}


@pytest.mark.parametrize("storage_arg, words", [
    ("s3://no-such-bucket/exps", "cannot write there"),
    ("s3://mmtune-test/exps?endpoint_override=127.0.0.1:1", "not in the URI"),
    ("nosuchfs://host/exps", "cannot open this storage URI"),
])
def test_bad_storage_uri_exits_2_before_ray(s3_bucket, demo_dir, tmp_path, capsys, storage_arg, words):
    import ray

    started = ray.is_initialized()
    code = run(["sweep", "--data", str(demo_dir), "--space", SMOKE, "--storage", storage_arg, "--name", "x"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and storage_arg in err and "Traceback" not in err
    assert ray.is_initialized() == started  # refused before Ray would start


def test_locate_maps_uris_to_a_mirror_and_refuses_climbing(tmp_path, monkeypatch):
    monkeypatch.setenv("MMTUNE_CACHE", str(tmp_path))
    loc = storage.locate("s3://bucket/a/b", "exp")
    assert loc.remote == "s3://bucket/a/b/exp" and loc.ray_storage == "s3://bucket/a/b"
    assert loc.local == tmp_path / "remote/s3/bucket/a/b/exp"
    assert storage.locate("file:///x/y", "exp") == storage.Location(Path("/x/y/exp"))
    with pytest.raises(SweepError, match=r"without '\.\.'"):
        storage.locate("s3://bucket/../etc")
