"""bench/large_sweep.py run small: one real sweep, every trial recorded and told, the figures present and sane."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import REPO

TRIALS, WINDOW = 20, 8


@pytest.mark.slow
def test_large_sweep_bench_small(tmp_path, subprocess_env):
    out = tmp_path / "large.json"
    cmd = [sys.executable, str(REPO / "bench/large_sweep.py"), "--trials", str(TRIALS), "--window", str(WINDOW),
           "--suggest-at", f"{TRIALS},{TRIALS + 1}", "--out", str(out), "--keep", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    res = json.loads(out.read_text())

    # Every trial ended, was recorded, exported and told to the study (one epoch each, ASHA off: all complete).
    assert res["rc"] == 0 and res["trials_recorded"] == TRIALS and res["trials_csv_rows"] == TRIALS
    assert res["study"]["finished"] == TRIALS and res["study"]["trials_by_state"] == {"COMPLETE": TRIALS}
    assert res["study"]["study_db_mb"] > 0 and res["study"]["experiment_state_mb"] > 0

    # Windows cover the trials end to end: ends 1-8, 8-16, 16-20; per-trial figures positive and finite.
    wins = res["windows"]
    assert [w["ends"] for w in wins] == [[1, 8], [8, 16], [16, 20]]
    for w in wins:
        for key in ("wall_per_trial_s", "worker_time_per_trial_s", "driver_cpu_per_trial_s", "driver_rss_mb_at_end"):
            assert math.isfinite(w[key]) and w[key] > 0, (key, w)
        assert w["suggest_ms_median"] > 0  # the driver timed Optuna's suggest in every window
        assert {"suggest", "searcher_complete", "experiment_state_sync", "sqlite_commit"} <= set(
            w["driver_hooks_cpu_ms_per_trial"])
        assert w["sqlite_commits_per_trial"] >= 9  # at least the ask's: a new trial and its 7 params, and a tell
    assert res["search_wall_s"] == pytest.approx(sum(w["wall_per_trial_s"] * (b - a) for w in wins
                                                     for a, b in [w["ends"]]), rel=0.01)

    # The driver was sampled while it ran (an embedded Ray driver holds hundreds of MB), and its tree's PSS.
    rows = res["samples"]["rows"]
    assert len(rows) >= 5 and rows[-1][3] == TRIALS  # the last sample saw every record
    assert 100 < res["driver_rss_mb"]["peak"] < 4000 and res["tree_pss_mb_peak"] > res["driver_rss_mb"]["peak"]

    # Offline TPE asks at the counts the study holds (21 > 20 finished trials: left out).
    offline = res["suggest_offline"]
    assert [o["n_finished"] for o in offline] == [TRIALS]
    assert all(len(o["ask_ms"]) == 5 and o["ask_ms_median"] > 0 for o in offline)
    assert offline[-1]["sample_relative_ms_median"] > 0  # past the random start-up: TPE's relative sampler ran
    assert isinstance(res["flat"]["met"], bool)
