"""bench/search_quality.py --smoke (about 2-3 minutes): every method runs through the real CLI on one data seed, and
the JSON is complete and consistent (regret as defined, the oracle the best of its trials)."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from mmtune.tune.defaults import DEFAULTS_ID
from tests.conftest import REPO

SWEEPS = ("holdout_best", "default_sweep", "cv_on", "cv_off", "holdout_best_eq")


@pytest.mark.slow
def test_search_quality_smoke(tmp_path, subprocess_env):
    out, md = tmp_path / "quality.json", tmp_path / "quality.md"
    cmd = [sys.executable, str(REPO / "bench/search_quality.py"), "--smoke", "--out", str(out), "--md", str(md)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    res = json.loads(out.read_text())
    st = res["setting"]
    assert st["smoke"] and st["data_seeds"] == [0] and st["seeds"] == 2 and set(st["methods"]) == {"defaults", *SWEEPS}
    # The smoke setting skips nothing: every method ran once on every data seed.
    assert res["skipped"] == [] and res["notes"] == [], res["skipped"]
    by = {(r["method"], r["data_seed"]): r for r in res["runs"]}
    assert len(by) == len(res["runs"]) and set(by) == {(m, d) for m in st["methods"] for d in st["data_seeds"]}
    for (m, d), r in by.items():
        assert len(r["test_f1"]) == st["seeds"] and all(0 <= v <= 1 for v in r["test_f1"])
        assert r["retrain_wall_s"] > 0 and r["config"]
        v = res["per_method"][m]["per_data_seed"][str(d)]
        assert v["mean"] == pytest.approx(statistics.fmean(r["test_f1"]))
        if m not in SWEEPS:
            continue
        tests = [t["test_f1"] for t in r["oracle_trials"].values()]
        assert r["oracle"] == max(tests) and r["oracle_trials"][r["oracle_trial"]]["test_f1"] == r["oracle"]
        # regret can be negative (a retrain may beat every trial's checkpoint); only its definition must hold
        assert r["regret"] == pytest.approx(r["oracle"] - statistics.fmean(r["test_f1"]))
        if r["chosen_trial"] == DEFAULTS_ID:  # finalize kept the defaults, which the sweep never trained
            assert r["regret_ckpt"] is None
        else:
            assert r["chosen_trial"] in r["oracle_trials"] and r["regret_ckpt"] >= -1e-12
        assert r["sweep_wall_s"] > 0 and r["search_epoch_folds"] > 0 and r["folds"] >= 1
    assert by[("holdout_best", 0)]["folds"] == 1 and by[("holdout_best", 0)]["finalize_epoch_folds"] is None
    assert by[("default_sweep", 0)]["finalize_epoch_folds"] > 0  # the default flow finalizes
    k = by[("cv_on", 0)]["folds"]
    assert k >= 2 and by[("cv_off", 0)]["trials"] == k * st["num_samples"] and by[("cv_off", 0)]["folds"] == 1
    assert res["cv_on_minus_cv_off"] is not None
    assert {t: type(v["met"]) for t, v in res["targets"].items()} == {
        "iii_beats_i_by_more_than_i_sd": bool, "iii_beats_ii": bool, "median_regret_iii_at_most_0.01": bool}
    assert md.read_text().startswith("Setting:") and "Target 3" in md.read_text()
