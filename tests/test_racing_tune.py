"""Finalize's race on real Ray Tune: the racing searcher hands out rounds, waits for each, and finishes when the
race is settled; `mmtune finalize` with the race trains only the seeds it asks for and says why."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mmtune.tune.racing import Race

pytestmark = pytest.mark.slow

# A config scores q, moved by d at seed 1: q 0.9 leads, 0.85 stays close (their seed 1 swaps them), 0.2 is far
# behind after one seed.
CONFIGS = {0: {"q": 0.9, "d": -0.05}, 1: {"q": 0.85, "d": 0.05}, 2: {"q": 0.2, "d": 0.0}}


def test_the_racing_searcher_runs_rounds_and_stops_when_settled(ray_session, tmp_path):
    from ray import tune

    from mmtune.tune.tuner import RacingConfigs

    def scored(config: dict) -> None:  # defined here: Ray pickles it by value, the workers lack this test module
        for epoch in range(2):  # the searcher takes each run's best epoch
            value = config["q"] + config["d"] * (config["seed"] == 1) - 0.1 * (1 - epoch)
            tune.report({"val/f1": value, "val/loss": 0.5})

    race = Race([0, 1, 2], 3, "val/f1", prior_sd=0.05)
    searcher = RacingConfigs(race, CONFIGS, [(0, 0), (1, 1), (2, 2)])
    grid = tune.Tuner(scored, tune_config=tune.TuneConfig(metric="val/f1", mode="max", search_alg=searcher,
                                                          num_samples=9, max_concurrent_trials=2),
                      run_config=tune.RunConfig(name="race", storage_path=str(tmp_path), verbose=0)).fit()
    ran = sorted((r.config["q"], r.config["seed"]) for r in grid)
    # Seed 1: all three; q 0.2 is 0.7 behind (> 2 x 0.05 x sqrt 2) and leaves; seeds 2 and 3: the two others
    # (after seed 2 their means tie).
    assert ran == [(0.2, 0), (0.85, 0), (0.85, 1), (0.85, 2), (0.9, 0), (0.9, 1), (0.9, 2)]
    assert list(race.out) == [2] and race.round == 2
    assert race.values[0] == {0: pytest.approx(0.9), 1: pytest.approx(0.85), 2: pytest.approx(0.9)}


def test_finalize_races_on_a_real_sweep_and_the_leaderboard_says_why(ray_session, demo_dir, tmp_path):
    from mmtune.tune import finalize as fin
    from mmtune.tune.cli import run
    from tests.conftest import SMOKE

    assert run(["sweep", "--data", str(demo_dir), "--space", SMOKE, "--storage", str(tmp_path), "--name", "race",
                "--finalize-top-k", "0"]) == 0
    exp = tmp_path / "race"
    summary = fin.finalize(exp, top_k=3, seeds=3)
    race = summary["race"]
    trained = [p for p in (exp / "final").glob("trial_*") if p.is_dir()]
    assert summary["trained"] == len(trained) == sum(len(v) for v in race["values"].values()) - summary["from_sweep"]
    for c in summary["configs"]:
        ran = race["values"][str(c["rank"])]
        assert c["n_seeds"] + c["failed_seeds"] == len(ran)  # each config got exactly the seeds the race gave it
        assert (c["left_race"] is not None) == (str(c["rank"]) in race["out"])
        if c["left_race"] is None:  # in the race to its end: every seed, or the race was settled around it
            assert len(ran) == 3 or len(race["out"]) == len(summary["configs"]) - 1
    assert summary["winner"]["left_race"] is None
    lines = "\n".join(fin_lines(summary))
    assert f"race: {summary['trained']} run(s) trained" in lines and "of at most 9" in lines
    # The same sweep without the race trains every seed it has not: the race never trains more.
    shutil.rmtree(exp / "final")
    full = fin.finalize(exp, top_k=3, seeds=3, race=False)
    most = 3 * len(full["configs"])
    assert full["race"] is None and full["trained"] == most - full["from_sweep"] >= summary["trained"]
    assert json.loads((exp / "final/summary.json").read_text())["trained"] == full["trained"]


def fin_lines(summary: dict) -> list[str]:
    from mmtune.tune.leaderboard import result_lines

    return result_lines(summary)
