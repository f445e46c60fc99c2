"""bench/faults.py run tiny: every fault fires, and no trial is lost or run twice after two driver kills."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_faults_bench_tiny_loses_nothing(tmp_path, subprocess_env):
    out = tmp_path / "faults.json"
    cmd = [sys.executable, str(REPO / "bench/faults.py"), "--trials", "7", "--epochs", "3", "--kill-at", "2,4",
           "--no-clean", "--out", str(out), "--keep", str(tmp_path / "work")]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert out.is_file(), proc.stderr[-3000:]
    res = json.loads(out.read_text())
    fired = res["faults_injected"]
    assert len(fired["markers"]) == 5  # 3 crashes, 2 NaN
    assert fired["worker_killed"] and [k["killed"] for k in fired["driver_kills"]] == [True, True]
    assert res["trials_finished"] == 7 and res["trials_lost"] == 0
    assert res["trials_run_twice"] == 0, res["run_twice_details"]
    assert proc.returncode == 0
