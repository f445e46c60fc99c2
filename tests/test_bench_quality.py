"""bench/search_quality.py: its analysis of several retrain seeds on hand-made runs (fast), and --smoke (about 2
minutes): every method runs through the real CLI on one data seed, and the JSON is complete and consistent (regret
as defined, the oracle the best of its trials)."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from bench import search_quality as sq
from mmtune.tune.defaults import DEFAULTS_ID
from tests.conftest import REPO

SWEEPS = ("holdout_best", "default_sweep", "cv_on", "cv_off", "holdout_best_eq")


@pytest.mark.slow
def test_search_quality_smoke(tmp_path, subprocess_env):
    out, md = tmp_path / "quality.json", tmp_path / "quality.md"
    cmd = [sys.executable, str(REPO / "bench/search_quality.py"), "--smoke", "--seeds", "1", "--out", str(out), "--md",
           str(md)]  # one retrain seed: the smoke checks the path (several: the analysis test below)
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    res = json.loads(out.read_text())
    st = res["setting"]
    assert st["smoke"] and st["data_seeds"] == [0] and st["seeds"] == 1 and set(st["methods"]) == {"defaults", *SWEEPS}
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


def test_analysis_of_several_seeds_compares_means_against_the_baselines_sd() -> None:
    def run(method: str, f1: list[float], oracle: float | None = None) -> dict:
        sweep = {} if oracle is None else {"oracle": oracle, "regret": oracle - statistics.fmean(f1), "regret_ckpt": 0.0}
        return {"method": method, "data_seed": 0, "test_f1": f1, "sweep_wall_s": 1.0, "retrain_wall_s": 2.0, **sweep}

    runs = [run("defaults", [0.50, 0.54]), run("holdout_best", [0.55, 0.61], 0.6),
            run("default_sweep", [0.60, 0.60], 0.605)]
    a = sq.analyse(runs, [0])
    assert a["per_method"]["defaults"]["per_data_seed"]["0"] == pytest.approx(
        {"mean": 0.52, "sd": statistics.stdev([0.50, 0.54])})
    (one,) = a["targets"]["iii_beats_i_by_more_than_i_sd"]["per_seed"]
    assert one["diff"] == pytest.approx(0.08) and one["sd_b"] == pytest.approx(0.0283, abs=1e-4)
    assert one["se"] == pytest.approx(statistics.stdev([0.50, 0.54]) / 2 ** 0.5) and one["beyond_2se"]
    assert a["targets"]["iii_beats_i_by_more_than_i_sd"]["met"]
    (two,) = a["targets"]["iii_beats_ii"]["per_seed"]  # +0.02 against (ii)'s sd 0.042: not met
    assert two["diff"] == pytest.approx(0.02) and not two["beyond_2se"] and not a["targets"]["iii_beats_ii"]["met"]
    regret = a["targets"]["median_regret_iii_at_most_0.01"]
    assert regret["median_regret"] == pytest.approx(0.005) and regret["met"]


def test_the_budget_levers_over_data_seeds_have_a_t_interval() -> None:
    race = {"runs_raced": 9, "runs_full": 9, "same_pick": True, "test_f1_raced": 0.5, "test_f1_full": 0.5}
    runs = [{"method": m, "data_seed": d, "test_f1": [v, v + 0.02], "sweep_wall_s": 100.0, "retrain_wall_s": 1.0,
             "race": race} for d, (a, b) in enumerate([(0.55, 0.52), (0.54, 0.58), (0.60, 0.57)])
            for m, v in (("cv_samples", a), ("cv_steps", b))]
    a = sq.analyse(runs, [0, 1, 2])
    assert [x["diff"] for x in a["samples_minus_steps"]] == pytest.approx([0.03, -0.04, 0.03])
    m = a["samples_minus_steps_over_seeds"]
    se = statistics.stdev([0.03, -0.04, 0.03]) / 3 ** 0.5
    assert m["mean"] == pytest.approx(0.02 / 3) and m["se"] == pytest.approx(se)
    assert m["ci95"] == pytest.approx([0.02 / 3 - 4.3027 * se, 0.02 / 3 + 4.3027 * se], abs=1e-4)
    line = next(ln for ln in sq.target_lines({**a, "cv_on_minus_cv_off": None}) if "over 3 data seeds" in ln)
    assert line.endswith("no difference shown.")
    assert sq.analyse(runs[:2], [0])["samples_minus_steps_over_seeds"] is None  # one data seed: no interval
