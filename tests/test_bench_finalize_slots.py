"""bench/finalize_slots.py on hand-made trial folders: span, summed run time and slot occupancy as defined."""
from __future__ import annotations

import json

import pytest

from bench.finalize_slots import slots


def test_occupancy_is_the_runs_time_over_slots_times_span(tmp_path):
    for name, end, took in (("trial_a", 100.0, 100.0), ("trial_b", 60.0, 50.0), ("trial_c", 90.0, 30.0)):
        (tmp_path / name).mkdir()
        lines = [{"timestamp": end - took / 2, "time_total_s": took / 2}, {"timestamp": end, "time_total_s": took}]
        (tmp_path / name / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "trial_never_reported").mkdir()  # a run with no result yet is left out
    r = slots(tmp_path, 2)
    assert r["runs"] == 3 and r["span_s"] == 100.0 and r["run_s_sum"] == 180.0
    assert r["slots_busy"] == pytest.approx(0.9) and r["span_at_full_occupancy_s"] == 90.0
