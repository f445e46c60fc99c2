"""The time budget (tune/budget.py): durations, the split between search and finalize, and real sweeps it bounds."""
from __future__ import annotations

import pytest
import yaml

from mmtune.model.status import TrialStatus
from mmtune.tune.budget import DurationError, expected_epochs, parse_duration, split, words
from mmtune.tune.recorder import ended_status
from mmtune.tune.defaults import point
from mmtune.tune.space import SpaceError, load_space


@pytest.mark.parametrize("text, seconds", [("90m", 5400), ("1.5h", 5400), ("1h30m", 5400), ("45s", 45),
                                           ("3600", 3600), (120, 120), ("2d", 172800)])
def test_durations_are_read_in_seconds(text, seconds):
    assert parse_duration(text, "--time-budget") == seconds


@pytest.mark.parametrize("bad", ["ninety minutes", "90x", "-5m", 0, "", True, "1h 30m"])
def test_a_bad_duration_says_where_and_how_to_write_one(bad):
    with pytest.raises(DurationError, match="--time-budget: .*(e.g. 90m|positive)"):
        parse_duration(bad, "--time-budget")


def test_words():
    assert [words(s) for s in (5400, 720, 45, 3725)] == ["1h30m", "12m", "45s", "1h2m5s"]


def test_asha_expected_epochs_and_the_split_between_search_and_finalize():
    # The default space: every trial trains to epoch 4, a third on to 12.
    assert expected_epochs([4], 3, 12) == pytest.approx(4 + 8 / 3)
    assert expected_epochs([], 3, 12) == 12 and expected_epochs([1, 3], 3, 9) == pytest.approx(1 + 2 / 3 + 6 / 9)
    limit = split(5400, 24, [4], 3, 12, 9)  # 24 trials ~ 13.3 full ones, against 9 finalize runs
    assert limit.search + limit.finalize == pytest.approx(5400)
    assert limit.finalize / limit.search == pytest.approx(9 / (24 * (4 + 8 / 3) / 12))
    assert "search 53m44s, finalize 36m16s reserved" in limit.describe()
    alone = split(600, 24, [4], 3, 12, 0)
    assert (alone.search, alone.finalize) == (600, 0) and "for the search" in alone.describe()


def test_the_space_key_is_checked_with_its_file_named(tmp_path):
    raw = yaml.safe_load(open("search_spaces/smoke.yaml"))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**raw, "time_budget": "2h"}))
    assert load_space(path).time_budget == 7200
    path.write_text(yaml.safe_dump({**raw, "time_budget": "two hours"}))
    with pytest.raises(SpaceError, match=r"s\.yaml: key 'time_budget': 'two hours' is not a duration"):
        load_space(path)


def test_a_trial_tune_stops_off_a_rung_was_cut_not_pruned():
    running = {"trial_status": "running", "training_iteration": 4}
    assert ended_status(running, [4]) is TrialStatus.PRUNED  # ASHA stops only at its rungs
    assert ended_status({**running, "training_iteration": 7}, [4]) is TrialStatus.STOPPED
    assert ended_status({"trial_status": "completed", "training_iteration": 12}, [4]) is TrialStatus.COMPLETED


@pytest.mark.slow
def test_a_time_budget_bounds_a_real_sweep_and_its_finalize(ray_session, demo_dir, tmp_path, capsys):
    from mmtune.tune import finalize as fin
    from mmtune.tune.cli import run
    from mmtune.tune.errors import ResultsError
    from mmtune.tune.experiment import Experiment

    raw = yaml.safe_load(open("search_spaces/smoke.yaml"))
    # Long trials without ASHA (each ~2 min): none can end in 20 s on 2 CPUs, and each has reported epochs by then
    # (a trial's worker starts in 2-8 s on a loaded machine; an epoch of the smoke model takes ~0.1 s).
    raw.update(epochs=3000, num_samples=6, asha={"grace_period": 3000})
    space = tmp_path / "long.yaml"
    space.write_text(yaml.safe_dump(raw))
    assert run(["sweep", "--data", str(demo_dir), "--space", str(space), "--storage", str(tmp_path), "--name", "tb",
                "--time-budget", "20s", "--finalize-top-k", "0"]) == 0
    assert "time budget 20s for the search (no finalize)" in capsys.readouterr().out
    trials = Experiment.open(tmp_path / "tb").trials
    assert any(t.status is TrialStatus.STOPPED and 0 < t.epochs < 3000 for t in trials) and len(trials) < 6
    assert not any(t.status in (TrialStatus.PRUNED, TrialStatus.COMPLETED) for t in trials)
    # Finalize's own share: 2 s cannot train a 3000-epoch run, so every run is cut and none is taken as a seed.
    with pytest.raises(ResultsError, match="the time budget .* stopped every finalize run"):
        fin.finalize(tmp_path / "tb", top_k=1, seeds=1, time_budget=2)
    assert (tmp_path / "tb" / "best_config.yaml").is_file()  # the sweep's own best config stays


def test_the_flow_estimate_multiplies_probes_by_the_flows_epochs():
    from mmtune.tune.estimate import estimate_flow

    est = estimate_flow(2.0, 5.0, 30.0, (36, 12), 2, "the probes")
    assert est.search == pytest.approx(30 * 2.0 / 2) and est.finalize == pytest.approx((36 * 2.0 + 12 * 5.0) / 2)
    assert est.describe() == (f"estimate: about {words(30 + 66)} (search ~{words(30)}, finalize <= {words(66)}), from "
                              "probes of the probes")
    assert "finalize" not in estimate_flow(2.0, 0.0, 30.0, (0, 0), 1, "p").describe()


def test_the_plan_probes_configs_of_the_space_and_the_defaults_on_a_trials_cpus(demo_dir, tmp_path):
    from mmtune.tune.estimate import flow_estimate, probe_configs
    from mmtune.tune.job import SweepOptions, prepare
    from mmtune.tune.resources import Plan

    job = prepare(SweepOptions(data=str(demo_dir), space="default", storage=str(tmp_path), name="e"))
    drawn = probe_configs(job.space, 4)
    assert len(drawn) == 4 and drawn[0] == job.space.train_config(point(job.space))  # the first start point
    assert drawn == probe_configs(job.space, 4) and len({(c.d_model, c.lr) for c in drawn}) == 4  # seeded, distinct
    plan = Plan(nodes=1, cpus=2, gpus=0, cpus_per_trial=1, gpus_per_trial=0, concurrent=2)
    line = flow_estimate(job, plan)
    assert line.startswith("estimate: about ") and "finalize <= " in line
    assert "probes of 4 configs of the space (" in line and "per trial-epoch on 1 CPU) and the defaults (" in line
    assert flow_estimate(job, Plan(1, 2, 1, 1, 1, 1)).startswith("estimate: none (trials train on GPUs")
