"""bench/search_efficiency.py: its statistics over several seeds on hand-made runs (fast), and --smoke on one seed
(about 40 s): every method runs within its budget through real sweeps, and the statistics come out whole."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import search_efficiency as se
from tests.conftest import REPO


def _run(method: str, seed: int, values: list[float]) -> dict:
    """A run as bench() returns it: one event per reported epoch, 1 s apart."""
    events = [{"n": i + 1, "t": float(i + 1), "trial_id": f"t{i // 2}", "epoch": i % 2 + 1, "value": v}
              for i, v in enumerate(values)]
    return {"method": method, "seed": seed, "events": events, "trials": len(values) // 2, "wall_s": 10.0 + seed}


def test_statistics_over_seeds_on_hand_made_runs() -> None:
    budget = 6
    runs = [_run("tpe_asha", s, [0.5, 0.8 + s / 100, 0.7, 0.7, 0.6, 0.6]) for s in range(3)]
    runs += [_run("random_asha", s, [0.5, 0.6, 0.6, 0.7 + s / 100, 0.6, 0.6]) for s in range(3)]
    runs += [_run("random_fifo", s, [0.4, 0.5, 0.6, 0.6, 0.65, 0.7 - s / 100]) for s in range(3)]
    res = se.analyse(runs, ["tpe_asha", "random_asha", "random_fifo"], budget)
    assert res["global_best"] == pytest.approx(0.82) and res["target"] == pytest.approx(0.99 * 0.82)
    per = res["per_method"]
    assert per["tpe_asha"]["median_best"] == pytest.approx(0.81) and per["random_fifo"]["median_best"] == 0.69
    assert per["tpe_asha"]["median_curve"] == pytest.approx([0.5, 0.81, 0.81, 0.81, 0.81, 0.81])
    assert per["tpe_asha"]["reached"] == 1 and per["random_asha"]["reached"] == 0  # only seed 2 reaches 0.8118
    for m, v in per.items():
        lo, hi = v["best_ci"]
        assert v["runs"] == 3 and lo <= v["median_best"] <= hi, m
    # (a) reaches (c)'s final median (0.69) at epoch 2, (c) at epoch 6: within a third of the epochs
    one = res["targets"]["a_reaches_c_final_with_third_of_epochs"]
    assert (one["epochs_a"], one["epochs_c"], one["met"]) == (2.0, 6.0, True)
    two = res["targets"]["a_best_above_b_and_c_ci_disjoint"]
    assert two["met"] == (two["a"][1][0] > max(two["b"][1][1], two["c"][1][1]))  # every (a) above every (b), (c)
    assert two["met"]
    p = res["pairwise_mannwhitney"]["tpe_asha vs random_fifo"]
    assert p["p_best"] == pytest.approx(0.1) and p["median_diff"] == pytest.approx(0.12)  # 3 vs 3, all above
    assert se.analyse(runs[:1] + runs[3:4] + runs[6:7], ["tpe_asha", "random_asha", "random_fifo"],
                      budget)["pairwise_mannwhitney"]["tpe_asha vs random_fifo"]["p_best"] is None  # one seed each


@pytest.mark.slow
def test_search_efficiency_smoke(tmp_path, subprocess_env):
    out, md, png = tmp_path / "search.json", tmp_path / "search.md", tmp_path / "search.png"
    cmd = [sys.executable, str(REPO / "bench/search_efficiency.py"), "--smoke", "--seeds", "1", "--out", str(out),
           "--md", str(md), "--plot", str(png)]  # one seed: the path (several: the analysis test above)
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    res = json.loads(out.read_text())
    setting = res["setting"]
    methods, seeds, budget = setting["methods"], setting["seeds"], setting["budget"]
    assert setting["smoke"] and seeds == 1 and methods == ["tpe_asha", "random_asha", "random_fifo"]
    assert set(res["per_method"]) == set(methods)
    for m in methods:
        runs = [r for r in res["runs"] if r["method"] == m]
        assert sorted(r["seed"] for r in runs) == list(range(seeds))
        for r in runs:
            assert 0 < r["epochs_used"] <= budget and r["epochs_reported"] <= budget
            assert r["trials"] >= 1 and len(r["curve"]) == budget and r["best"] <= res["global_best"]
            assert r["epochs_reported"] == r["epochs_on_disk"]  # every epoch counted once, repeats left out
            check_repeats(r, setting)
        v = res["per_method"][m]
        assert v["runs"] == seeds and 0 <= v["reached"] <= seeds
        lo, hi = v["best_ci"]
        assert lo <= v["median_best"] <= hi
        for key in ("epochs_to_target", "epochs_to_pooled"):  # None: not reached (+inf)
            (lo_e, hi_e), e = v[f"{key}_ci"], v[f"median_{key}"]
            lo_e, e, hi_e = (float("inf") if x is None else x for x in (lo_e, e, hi_e))
            assert lo_e <= e <= hi_e, (m, key, v)
    assert any(v["reached"] > 0 for v in res["per_method"].values())  # the global best is some run's best
    check_targets(res)
    assert md.read_text().startswith("Setting:") and png.stat().st_size > 0


def check_repeats(r: dict, setting: dict) -> None:
    """Only a trial that ran all its epochs gets its last result again, once; ASHA stops such a trial (no repeat),
    FIFO lets it end, and only a trial still holding its slot when the budget runs out can miss its repeat."""
    repeated, run_out = r["repeated_trials"], r["trials_run_out"]
    assert r["repeats_ignored"] == len(repeated) == len(set(repeated)) and set(repeated) <= set(run_out), r
    if r["method"] == "random_fifo":
        assert len(run_out) - setting["concurrency"] <= len(repeated), r
    else:
        assert repeated == [], r


def check_targets(res: dict) -> None:
    """Both targets of the smoke methods, each a bool verdict that follows from its own numbers."""
    t, per = res["targets"], res["per_method"]
    assert set(t) == {"a_reaches_c_final_with_third_of_epochs", "a_best_above_b_and_c_ci_disjoint"}
    one, two = t["a_reaches_c_final_with_third_of_epochs"], t["a_best_above_b_and_c_ci_disjoint"]
    assert type(one["met"]) is bool and type(two["met"]) is bool
    assert one["value_c"] == per["random_fifo"]["median_best"] and one["budget"] == res["setting"]["budget"]
    e_a, e_c = (float("inf") if one[k] is None else one[k] for k in ("epochs_a", "epochs_c"))  # None: not reached
    assert all(isinstance(v, (int, float)) for v in (e_a, e_c, one["value_c"]))
    assert one["met"] == (e_a < float("inf") and e_a <= e_c / 3), one
    for key, m in (("a", "tpe_asha"), ("b", "random_asha"), ("c", "random_fifo")):
        assert two[key] == [per[m]["median_best"], per[m]["best_ci"]], (key, two)
    (a, (a_lo, _)), (b, (_, b_hi)), (c, (_, c_hi)) = two["a"], two["b"], two["c"]
    assert two["met"] == (a > max(b, c) and a_lo > max(b_hi, c_hi)), two
