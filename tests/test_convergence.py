"""Stop when converged (tune/convergence.py): the rule on synthetic trials, the searcher's wiring and its resume
(fast tier, a real SQLite study, no Ray runtime), the offline replay, and one real sweep that stops (slow tier)."""
from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmtune.tune.convergence import encode, min_trials, regret_bound, should_stop
from mmtune.tune.space import Param, SpaceError, parse_space

DIMS = (Param("lr", "float", 1e-4, 1e-2, log=True), Param("dropout", "float", 0.0, 0.3),
        Param("layers", "int", 1, 4), Param("d_model", "categorical", choices=(16, 32, 64)))
RAW = {"metric": "val/f1", "num_samples": 12, "seed": 0, "epochs": 4, "stop_when_converged": True,
       "fixed": {"d_model": 16, "nhead": 2, "num_layers": 1, "batch_size": 32, "train_steps": 4},
       "params": {"lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
                  "dropout": {"type": "float", "low": 0.0, "high": 0.3}}}


def points(n: int, value, seed: int = 0) -> list[tuple[dict, float]]:
    """N random configs of DIMS with VALUE(params, rng) as their full-budget value."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p = {"lr": float(np.exp(rng.uniform(math.log(1e-4), math.log(1e-2)))), "dropout": float(rng.uniform(0, 0.3)),
             "layers": int(rng.integers(1, 5)), "d_model": int(rng.choice([16, 32, 64]))}
        out.append((p, float(value(p, rng))))
    return out


def flat(p: dict, rng: np.random.Generator) -> float:
    return 0.80 + 0.002 * rng.standard_normal()  # every config alike, well inside a noise sd of 0.03


def trend(p: dict, rng: np.random.Generator) -> float:
    # Strongly better with lr, sampled only in its lower half: the upper half may hold much better configs.
    return 0.3 + 0.6 * (math.log(p["lr"]) - math.log(1e-4)) / math.log(100)


def decide(pts, sd=0.03, ended=None, num_samples=12, source="test"):
    return should_stop(pts, DIMS, ended=len(pts) if ended is None else ended, num_samples=num_samples, sd=sd,
                       source=source, metric="val/f1")


def test_encode_scales_log_and_one_hot():
    x = encode({"lr": 1e-3, "dropout": 0.15, "layers": 4, "d_model": 32}, DIMS)
    assert np.allclose(x, [0.5, 0.5, 1.0, 0.0, 1.0, 0.0])


def test_alike_trials_inside_the_noise_stop():
    d = decide(points(12, flat))
    assert d.stop and d.bound is not None and d.bound < 0.03
    assert d.reason.startswith("converged after 12 trials") and "0.0300 (test)" in d.reason


def test_a_trend_that_leaves_room_above_does_not_stop():
    pts = [(p, v) for p, v in points(30, trend) if p["lr"] < 1e-3][:12]
    d = decide(pts, sd=0.01)
    assert not d.stop and d.bound > 0.01, d
    assert d.reason.startswith("regret bound")


def test_fewer_ended_trials_than_the_minimum_never_stop():
    assert min_trials(12) == 8 and min_trials(60) == 20
    d = decide(points(7, flat))
    assert not d.stop and d.bound is None and "of the 8 ended trials" in d.reason
    # Ended counts every final state: 12 ended with only 2 full-budget values is still too few for the GP.
    d = decide(points(2, flat), ended=12)
    assert not d.stop and d.bound is None and "fewer than the 3" in d.reason


def test_long_sweeps_decide_every_5_percent_on_at_most_100_trials():
    from mmtune.tune.convergence import due

    assert due(0, -1) and due(9, 8) and due(40, 39) and not due(41, 40) and due(42, 40) and not due(690, 666) and due(699, 666)
    d = decide(points(300, flat), num_samples=300)  # the GP sees 100 of the 300, spread over the ranking
    assert d.stop and d.full == 300


def test_unknown_noise_never_stops():
    d = decide(points(12, flat), sd=None, source="no fold sd reported")
    assert not d.stop and d.bound is None and "unknown (no fold sd reported)" in d.reason


def test_the_bound_is_symmetric_in_the_direction():
    pts = points(10, trend)
    up = regret_bound(pts, DIMS, maximize=True)
    down = regret_bound([(p, -v) for p, v in pts], DIMS, maximize=False)
    assert up == pytest.approx(down, rel=1e-6)


def test_the_space_key_is_a_boolean():
    assert parse_space(RAW, "s.yaml").stop_when_converged is True
    assert parse_space({k: v for k, v in RAW.items() if k != "stop_when_converged"}, "s.yaml").stop_when_converged \
        is False
    with pytest.raises(SpaceError, match="'stop_when_converged' must be true or false"):
        parse_space({**RAW, "stop_when_converged": "yes"}, "s.yaml")


# ------------------------------------------------------------------------------- the searcher, without Ray's runtime


def _searcher(exp: Path, raw: dict):
    from mmtune.tune import storage
    from mmtune.tune.searcher import StudySearch

    return StudySearch(parse_space(raw, "s.yaml"), storage.Location(exp))


def _finish(searcher, n: int, value) -> None:
    """N trials told to the searcher's study as COMPLETE, with the best results the searcher saw of them."""
    from optuna.trial import TrialState, create_trial

    dists = searcher._space
    for i, (p, v) in enumerate(points(n, value)):
        params = {"lr": p["lr"], "dropout": p["dropout"]}
        searcher._ot_study.add_trial(create_trial(state=TrialState.COMPLETE, value=v, params=params,
                                                  distributions=dists, user_attrs={"ray_trial_id": f"t{i}"}))
        searcher._best[f"t{i}"] = {"val/f1": v, "val/loss": 0.5}


def test_the_searcher_finishes_once_converged_records_it_and_says_it_once(tmp_path, caplog):
    from ray.tune.search import Searcher

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "mmtune.json").write_text(json.dumps({"space": RAW, "space_file": "s.yaml",
                                                 "validation": {"samples": 200, "positives": 60}}))
    s = _searcher(exp, RAW)
    _finish(s, 7, flat)
    assert s.suggest("new0") not in (None, Searcher.FINISHED)  # 7 ended (+1 running): below the minimum of 8
    s._ot_study.tell(s._ot_trials["new0"], 0.8)  # the 8th trial ends
    s._best["new0"] = {"val/f1": 0.8, "val/loss": 0.5}
    asked = len(s._ot_study.get_trials())
    with caplog.at_level(logging.WARNING, logger="mmtune.tune.searcher"):
        assert s.suggest("new1") == Searcher.FINISHED
        assert s.suggest("new2") == Searcher.FINISHED
    assert len(s._ot_study.get_trials()) == asked  # no Optuna trial asked for a trial that will not run
    said = [r.getMessage() for r in caplog.records if "converged after" in r.getMessage()]
    assert len(said) == 1 and "binomial approximation on 60 val samples" in said[0], said
    recorded = json.loads((exp / "mmtune.json").read_text())["converged"]
    assert recorded["stop"] and recorded["ended"] == 8 and recorded["reason"] == s.converged["reason"]

    # Resumed: from Tune's saved searcher state, or from one saved before the stop (the record holds).
    s.save(str(tmp_path / "state.pkl"))
    again = _searcher(exp, RAW)
    again.restore(str(tmp_path / "state.pkl"))
    assert again.suggest("new3") == Searcher.FINISHED
    older = _searcher(exp, {**RAW, "stop_when_converged": False})
    older._reopen()
    assert older.suggest("new4") == Searcher.FINISHED


def test_the_rule_off_or_the_noise_unknown_never_finishes(tmp_path):
    from ray.tune.search import Searcher

    for raw, meta in ((dict(RAW, stop_when_converged=False), {"validation": {"samples": 200, "positives": 60}}),
                      (RAW, {})):  # no validation counts and no fold sd: the noise is unknown
        exp = tmp_path / f"exp{len(meta)}"
        exp.mkdir()
        (exp / "mmtune.json").write_text(json.dumps(meta))
        s = _searcher(exp, raw)
        _finish(s, 12, flat)
        assert s.suggest("new") not in (None, Searcher.FINISHED)
        assert "converged" not in json.loads((exp / "mmtune.json").read_text())


# ------------------------------------------------------------------------------- the offline replay


def test_replay_stops_where_the_rule_would_and_counts_what_it_saves(tmp_path):
    import optuna
    from optuna.trial import TrialState, create_trial

    from bench.convergence_replay import one_sweep
    from tests.fake_experiment import FakeTrial, write_experiment

    raw = {k: v for k, v in RAW.items() if k != "stop_when_converged"}
    pts = points(12, flat)
    exp = write_experiment(tmp_path / "ds0", [FakeTrial({"lr": p["lr"], "dropout": p["dropout"]}, [v - 0.01, v])
                                              for p, v in pts], name="m", space=raw,
                           validation={"samples": 200, "positives": 60})
    study = optuna.create_study(study_name="mmtune", storage=f"sqlite:///{exp / 'study.db'}", direction="maximize")
    dists = parse_space(raw, "s.yaml").distributions()
    t0 = datetime(2026, 1, 1)
    for i, (p, v) in enumerate(pts):  # two at a time: trial i starts just after trial i - 2 ended
        t = create_trial(state=TrialState.COMPLETE, value=v, params={"lr": p["lr"], "dropout": p["dropout"]},
                         distributions=dists, intermediate_values={1: v - 0.01, 2: v},
                         user_attrs={"ray_trial_id": f"fake0_{i:05d}"})
        start, end = 10 * (i // 2) + 0.5 * (i >= 2), 10 * (i // 2 + 1) - (i % 2)
        t.datetime_start, t.datetime_complete = t0 + timedelta(seconds=start), t0 + timedelta(seconds=end)
        study.add_trial(t)
    units = tmp_path / "units"
    units.mkdir()
    (units / "ds0-m.json").write_text(json.dumps({"oracle_trials": {
        f"fake0_{i:05d}": {"test_f1": 0.7 + 0.001 * i} for i in range(12)}}))
    out = one_sweep(exp, max_trials=100)
    rule = out["variants"]["rule"]
    # The 8th trial to end is trial 6, at 40 s (trial 7 ended at 39 s); trials 8-11 start after it, at 40.5 s on.
    assert rule["stop"]["ended"] == 8 and rule["trials_run"] == 8 and rule["trials_saved"] == 4
    assert rule["epochs_saved"] == 8 and out["epochs"] == 24
    best_val = max(range(12), key=lambda i: pts[i][1])
    assert rule["best_at_end"]["trial"] == f"fake0_{best_val:05d}"
    assert rule["best_at_stop"]["trial"] == f"fake0_{max(range(8), key=lambda i: pts[i][1]):05d}"
    assert rule["test_f1_cost"] == pytest.approx(rule["best_at_end"]["test_f1"] - rule["best_at_stop"]["test_f1"])


# ------------------------------------------------------------------------------- a real sweep (slow)


def test_a_converged_sweep_ends_early_lets_its_trials_finish_and_says_why(ray_session, demo_dir, tmp_path, caplog):
    """Trials that differ by next to nothing (dropout within 0.001, one seed): the rule stops the sweep at its
    minimum of 8 ended trials, long before num_samples 16; the trials running then finish."""
    from mmtune.model.status import TrialStatus
    from mmtune.tune.experiment import Experiment
    from tests.conftest import run_sweep, study_matches_trials_csv

    space = tmp_path / "alike.yaml"
    space.write_text(yaml.safe_dump({
        "metric": "val/f1", "num_samples": 16, "seed": 0, "epochs": 2, "stop_when_converged": True,
        "asha": {"grace_period": 2}, "cv": 0,  # no rung below the budget: every trial trains it all
        "fixed": {"d_model": 16, "nhead": 2, "num_layers": 1, "ff_mult": 2, "batch_size": 32, "train_steps": 2,
                  "patience": 0, "lr": 1.0e-3},
        "params": {"dropout": {"type": "float", "low": 0.0, "high": 0.001}}}))
    with caplog.at_level(logging.WARNING, logger="mmtune.tune.searcher"):
        path = run_sweep(demo_dir, tmp_path / "res", "alike", space=str(space))
    exp = Experiment.open(path)
    said = [r.getMessage() for r in caplog.records if "converged after 8 trials" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    assert 8 <= len(exp.trials) < 16  # the 8 that ended, and those running when the rule said stop
    assert all(t.status.final and t.status is not TrialStatus.FAILED for t in exp.trials)  # none killed
    assert exp.finished and exp.meta["converged"]["stop"] and exp.meta["converged"]["ended"] == 8
    assert exp.meta["converged"]["reason"] in said[0]
    study_matches_trials_csv(path)  # the study holds exactly these trials, none left RUNNING


def test_the_light_commands_do_not_import_the_rule():
    import subprocess
    import sys

    code = ("import sys, mmtune.tune.cli, mmtune.tune.commands, mmtune.tune.results, mmtune.tune.report; "
            "print(sorted(m for m in ('mmtune.tune.convergence', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]
