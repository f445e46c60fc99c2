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


def test_a_free_slot_trains_the_leaders_next_seed_while_the_round_ends(tmp_path):
    """Driven as Tune drives it, 2 slots: while the round's last run trains (often the defaults' large model), the
    free slots start the next seed of the configs ahead, best first, never of one whose round is still running; the
    next round does not train those again, and the race still settles as without them."""
    from ray.tune.search import Searcher

    from mmtune.tune.tuner import RacingConfigs

    searcher = RacingConfigs(Race([0, 1, 2], 3, "val/f1", prior_sd=0.05), {r: {"q": r} for r in range(3)},
                             [(0, 0), (1, 1), (2, 2)])
    got = {t: searcher.suggest(t) for t in "ab"}
    assert [(c["q"], c["seed"]) for c in got.values()] == [(0, 0), (1, 0)]

    def end(trial_id: str, value: float) -> None:
        searcher.on_trial_complete(trial_id, {"val/f1": value, "val/loss": 0.5})

    end("a", 0.85)
    assert searcher.suggest("c")["q"] == 2  # the round's own runs first
    end("b", 0.9)
    ahead = [searcher.suggest(t) for t in "de"]  # config 2's seed 0 still trains: two slots would idle
    assert [(c["q"], c["seed"]) for c in ahead] == [(1, 1), (0, 1)]  # the leader's next seed first
    assert searcher.suggest("f") is None  # nothing more to start before the round ends
    snapshot = tmp_path / "searcher.json"
    searcher.save(str(snapshot))
    end("c", 0.2)
    end("d", 0.9)
    end("e", 0.85)
    last = [searcher.suggest(t) for t in "gh"]  # round 1 was trained ahead: config 2 is out, straight to seed 2
    assert [(c["q"], c["seed"]) for c in last] == [(0, 2), (1, 2)] and list(searcher.race.out) == [2]
    end("g", 0.9)
    end("h", 0.9)
    assert searcher.suggest("i") == Searcher.FINISHED and searcher.race.round == 2

    restored = RacingConfigs(Race([0], 1, "val/f1", None), {}, [])
    restored.restore(str(snapshot))  # a resumed finalize knows what was in flight and does not start it twice
    assert restored.running == {"c": (2, 0), "d": (1, 1), "e": (0, 1)} and restored.suggest("x") is None


def test_a_run_ahead_the_settled_race_will_not_count_is_stopped():
    """The race settles (one config left) while the leader's next seed trains ahead: finalize's scheduler stops that
    run at its next epoch rather than wait for a seed nobody counts."""
    from types import SimpleNamespace

    from ray.tune.search import Searcher

    from mmtune.tune.tuner import RaceScheduler, RacingConfigs

    searcher = RacingConfigs(Race([0, 1], 3, "val/f1", prior_sd=0.05), {0: {"q": 0}, 1: {"q": 1}}, [(0, 0), (1, 1),
                                                                                                  (2, 2)])
    scheduler = RaceScheduler(searcher)
    searcher.suggest("a"), searcher.suggest("b")
    searcher.on_trial_complete("a", {"val/f1": 0.9})
    assert searcher.suggest("c")["seed"] == 1  # ahead: config 0's seed 1
    assert scheduler.on_trial_result(None, SimpleNamespace(trial_id="c"), {}) == scheduler.CONTINUE
    searcher.on_trial_complete("b", {"val/f1": 0.1})
    assert searcher.suggest("d") == Searcher.FINISHED and searcher.race.over  # config 1 is 0.8 behind: out
    assert scheduler.on_trial_result(None, SimpleNamespace(trial_id="c"), {}) == scheduler.STOP
    searcher.on_trial_complete("c", {"val/f1": 0.95})
    assert searcher.race.values == {0: {0: 0.9}, 1: {0: 0.1}}  # what the race decided on, nothing more


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
    ahead = race["not_counted"]  # trained ahead of a round their config did not reach (timing decides how many)
    assert summary["trained"] == len(trained) - len(ahead) == sum(len(v) for v in race["values"].values()) - \
        summary["from_sweep"]
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
