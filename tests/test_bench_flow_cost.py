"""bench/flow_cost.py's path on tiny data: units run as a user runs them, one file each, skipped when on file."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_flow_cost_smoke_keeps_one_file_per_unit_and_skips_finished_ones(tmp_path, capsys):
    from bench import flow_cost

    out, keep = tmp_path / "out", tmp_path / "work"
    args = ["--smoke", "--seeds", "1", "--units", "train,default", "--out", str(out), "--keep", str(keep)]
    units = flow_cost.main(args)
    train, flow = units["train"], units["default"]
    assert len(train["test_f1"]) == len(flow["test_f1"]) == 1 and 0 <= flow["test_f1"][0] <= 1
    assert flow["validation"]["folds"] == 5  # no val.npz and few positives: cv auto chose 5 folds
    assert flow["trials"] == 2 and flow["converged"] is None  # the stop is off as shipped
    assert flow["finalize_grid"] == 4 and flow["trained_in_finalize"] + flow["from_sweep"] <= 4
    assert 0 < flow["finalize_wall_s"] < flow["wall_s"] and train["wall_per_run_s"] > 0
    assert flow["estimate"]["total_s"] >= flow["estimate"]["search_s"] > 0  # the plan's, before the first trial
    assert not (keep / "data" / "val.npz").exists()
    # The shipped flow: the defaults are the study's first trial (inside the default space) and a finalize contender.
    from mmtune.tune.defaults import point
    from mmtune.tune.experiment import Experiment, load_study

    exp = Experiment.open(keep / "default")
    assert load_study(exp.path).get_trials()[0].params == point(exp.space)
    final = json.loads((exp.path / "final" / "summary.json").read_text())
    assert sum(c["defaults"] for c in final["configs"]) == 1 and final["defaults"]["gain"]
    stored = {p.name: p.read_text() for p in (out / "units").iterdir()}
    assert set(stored) == {"train.json", "default.json"} and json.loads(stored["train.json"])["smoke"]
    table = (out / "table.md").read_text()
    assert "| default |" in table and "| train |" in table
    flow_cost.main(args)  # every unit on file: nothing runs again, nothing changes
    assert {p.name: p.read_text() for p in (out / "units").iterdir()} == stored
