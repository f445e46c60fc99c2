"""bench/trial_profile.py --smoke: a default-space trial's epochs split into their phases, on tiny data."""
from __future__ import annotations

import json

import pytest

from bench import trial_profile


def test_trial_profile_smoke_splits_each_epoch_into_its_phases(tmp_path):
    out, md = tmp_path / "profile.json", tmp_path / "profile.md"
    result = trial_profile.main(["--smoke", "--epochs", "2", "--out", str(out), "--md", str(md)])
    assert json.loads(out.read_text()) == result
    (row,) = result["configs"]
    # Built as a trial of the default space on a set without val.npz: cv: auto's 5 folds, at least the space's
    # samples per epoch (the smoke's 64) and at least one pass over a fold's train rows.
    assert row["folds"] == 5 and row["samples_per_epoch"] >= max(64, 120 * 4 // 5)
    assert row["epochs_timed"] == 2 and row["first_epoch_s"] > 0
    m = row["median_s"]
    assert m["train"] > 0 and 0 < m["metrics"] <= m["evaluate"] and m["checkpoint"] > 0
    assert sum(row["share"][p] for p in ("train", "evaluate", "rest", "checkpoint")) == pytest.approx(1.0)
    # The resumable checkpoint holds every fold's weights and AdamW's two moments, in float32.
    assert row["checkpoint_mb"] * 1e6 >= row["folds"] * row["params"] * 3 * 4
    assert f"| {row['config']} | " in md.read_text()


def test_trial_profile_refuses_a_single_epoch(capsys):
    with pytest.raises(SystemExit) as e:
        trial_profile.main(["--smoke", "--epochs", "1"])
    assert e.value.code == 2 and "--epochs must be >= 2" in capsys.readouterr().err
