"""bench/search_efficiency.py --smoke (about a minute): every method and seed runs within its budget, and the
statistics come out whole."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_search_efficiency_smoke(tmp_path, subprocess_env):
    out, md, png = tmp_path / "search.json", tmp_path / "search.md", tmp_path / "search.png"
    cmd = [sys.executable, str(REPO / "bench/search_efficiency.py"), "--smoke", "--out", str(out), "--md", str(md),
           "--plot", str(png)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    res = json.loads(out.read_text())
    setting = res["setting"]
    methods, seeds, budget = setting["methods"], setting["seeds"], setting["budget"]
    assert setting["smoke"] and seeds == 2 and len(methods) >= 2
    assert set(res["per_method"]) == set(methods)
    for m in methods:
        runs = [r for r in res["runs"] if r["method"] == m]
        assert sorted(r["seed"] for r in runs) == list(range(seeds))
        for r in runs:
            assert 0 < r["epochs_used"] <= budget and r["epochs_reported"] <= budget
            assert r["trials"] >= 1 and len(r["curve"]) == budget and r["repeats_ignored"] >= 0
            assert r["best"] <= res["global_best"]
        v = res["per_method"][m]
        assert v["runs"] == seeds and 0 <= v["reached"] <= seeds
        lo, hi = v["best_ci"]
        assert lo <= v["median_best"] <= hi
        for key in ("epochs_to_target", "epochs_to_pooled"):  # None: not reached (+inf)
            (lo_e, hi_e), e = v[f"{key}_ci"], v[f"median_{key}"]
            lo_e, e, hi_e = (float("inf") if x is None else x for x in (lo_e, e, hi_e))
            assert lo_e <= e <= hi_e, (m, key, v)
    assert any(v["reached"] > 0 for v in res["per_method"].values())  # the global best is some run's best
    assert res["targets"]  # computed, met or not
    assert md.read_text().startswith("Setting:") and png.stat().st_size > 0
