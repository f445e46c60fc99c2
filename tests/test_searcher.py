"""Fast tier: the study's bookkeeping (`tune.searcher`) on a real SQLite study and small experiment folders."""
from __future__ import annotations

import pickle

import optuna
import pytest
from optuna.trial import TrialState

from mmtune.model.status import TrialStatus
from tests.fake_experiment import FakeTrial, write_experiment
from mmtune.tune.experiment import Experiment, load_study
from mmtune.tune.searcher import STUDY_NAME, make_sampler, reconcile, study_storage, tell
from mmtune.tune.space import SEARCHERS, parse_space

S = TrialStatus
DISTS = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
         "dropout": optuna.distributions.FloatDistribution(0.0, 0.3)}


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    return optuna.create_study(study_name=STUDY_NAME, storage=study_storage(tmp_path), direction="maximize")




def test_tell_records_status_best_value_pruned_and_reason(study):
    done, cut, bad = (study.ask(DISTS) for _ in range(3))
    for t, values in ((done, [0.5, 0.7, 0.6]), (cut, [0.4])):
        for step, v in enumerate(values, 1):
            t.report(v, step)
    first, second, third = study.get_trials()
    tell(study, first, S.EARLY_STOPPED)
    tell(study, second, S.PRUNED)
    tell(study, third, S.INFEASIBLE, error="eta_min must be below lr")
    a, b, c = study.get_trials()
    assert (a.state, a.value, a.user_attrs["status"]) == (TrialState.COMPLETE, 0.7, "early_stopped")  # best, not last
    assert (b.state, b.value, b.last_step) == (TrialState.PRUNED, 0.4, 1)
    assert c.state == TrialState.FAIL and c.user_attrs["reason"] == "infeasible: eta_min must be below lr"


def test_reconcile_settles_what_a_driver_kill_and_a_retry_left(study, tmp_path):
    exp = write_experiment(tmp_path / "res", [
        FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5, 0.8, 0.7]),  # fake0_00000: ended; its tell was lost
        FakeTrial({"lr": 2e-3, "dropout": 0.2}, [0.6, 0.9]),  # fake0_00001: failed, then retried to the end
        FakeTrial({"lr": 3e-3, "dropout": 0.0}, [0.3], None),  # fake0_00002: running, Tune resumes it
    ])
    ended = study.ask(DISTS)
    ended.set_user_attr("ray_trial_id", "fake0_00000")
    retried = study.ask(DISTS)
    retried.set_user_attr("ray_trial_id", "fake0_00001")
    study.tell(retried, state=TrialState.FAIL)
    running = study.ask(DISTS)
    running.set_user_attr("ray_trial_id", "fake0_00002")
    # A starting point asked just before the kill: only some of its params were written.
    study.enqueue_trial({"lr": 5e-3, "dropout": 0.25})
    cut_short = study.ask({"lr": DISTS["lr"]})

    changed = reconcile(study, Experiment.open(exp), skip={running.number})
    assert changed == 3
    trials = study.get_trials()
    assert (trials[0].state, trials[0].value, trials[0].user_attrs["status"]) == (TrialState.COMPLETE, 0.8, "completed")
    assert trials[1].state == TrialState.FAIL  # Optuna cannot reopen it ...
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == retried.number)
    assert (retry.state, retry.value, retry.user_attrs["ray_trial_id"]) == (TrialState.COMPLETE, 0.9, "fake0_00001")
    assert trials[2].state == TrialState.RUNNING  # in SKIP: Tune will resume and tell it
    assert trials[cut_short.number].state == TrialState.FAIL
    assert trials[cut_short.number].user_attrs["reason"].startswith("interrupted")
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert [t.system_attrs["fixed_params"] for t in waiting] == [{"lr": 5e-3, "dropout": 0.25}]  # queued whole
    assert reconcile(study, Experiment.open(exp), skip={running.number}) == 0  # nothing told twice


@pytest.mark.parametrize("name", SEARCHERS)
def test_every_sampler_is_seeded_and_takes_starting_points(name, tmp_path):
    raw = {"searcher": name, "seed": 3, "num_samples": 9, "params": {"lr": {"type": "float", "low": 1e-4,
           "high": 1e-2, "log": True}, "batch_size": {"type": "categorical", "choices": [16, 32]}},
           "start": [{"lr": 1e-3, "batch_size": 32}]}
    space = parse_space(raw, "space.yaml")

    def draws() -> list[dict]:
        study = optuna.create_study(sampler=make_sampler(space), direction="maximize")
        study.enqueue_trial(dict(space.start[0]))
        out = []
        for i in range(5):
            t = study.ask(space.distributions())
            study.tell(t, float(i))
            out.append(t.params)
        return out

    first = draws()
    assert first[0] == {"lr": 1e-3, "batch_size": 32}
    assert first == draws()  # same seed, same proposals
    assert all(1e-4 <= p["lr"] <= 1e-2 and p["batch_size"] in (16, 32) for p in first)


def test_a_searcher_state_cut_by_a_kill_is_rebuilt_from_the_study(tmp_path):
    from mmtune.tune import storage
    from mmtune.tune.searcher import StudySearch

    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                         "num_samples": 4}, "space.yaml")
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3}, [0.5])], space={**space.raw, "metric": "val/f1"})
    searcher = StudySearch(space, storage.Location(exp))
    searcher.set_search_properties(None, None, {})
    first, second = searcher.suggest("ray_a"), searcher.suggest("ray_b")
    searcher.on_trial_complete("ray_a", {"val/f1": 0.5, "training_iteration": 1, "trial_status": "completed"})
    (exp / "searcher-state.pkl").write_bytes(b"")  # Ray's copy of it, cut by the driver's death

    restored = pickle.loads(pickle.dumps(searcher))  # as tuner.pkl gives it back: no Optuna objects inside
    restored.rebind(storage.Location(exp))
    restored.restore(str(exp / "searcher-state.pkl"))
    assert set(restored._ot_trials) == {"ray_a", "ray_b"} and restored._completed_trials == {"ray_a"}
    restored.on_trial_complete("ray_a", {"val/f1": 0.9, "training_iteration": 1})  # a re-report: not told twice
    restored.on_trial_complete("ray_b", {"val/f1": 0.7, "training_iteration": 2, "trial_status": "completed"})
    study = load_study(exp)
    assert [(t.params, t.value) for t in study.get_trials()] == [(first, 0.5), (second, 0.7)]


def test_the_sweep_asks_for_the_defaults_first_then_the_spaces_start_points(tmp_path):
    from mmtune.tune import storage
    from mmtune.tune.searcher import StudySearch

    raw = {"params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                      "dropout": {"type": "float", "low": 0.0, "high": 0.3}},
           "num_samples": 4, "start": [{"lr": 5e-3, "dropout": 0.2}]}
    for contend, expected in ((True, [{"lr": 1e-3, "dropout": 0.1}, {"lr": 5e-3, "dropout": 0.2}]),
                              (False, [{"lr": 5e-3, "dropout": 0.2}])):
        space = parse_space({**raw, "defaults_contender": contend}, "space.yaml")
        exp = write_experiment(tmp_path, [], name=f"e{contend}", space={**space.raw, "metric": "val/f1"})
        searcher = StudySearch(space, storage.Location(exp))
        searcher.set_search_properties(None, None, {})
        assert [searcher.suggest(f"t{i}") for i in range(len(expected))] == expected


def test_a_result_re_reported_for_a_trial_told_before_a_driver_kill_changes_nothing(tmp_path):
    """A driver killed after telling a trial but before Tune saved that: on resume Tune re-runs the trial, whose
    trainable re-reports its last result from its durable record; the study keeps what it was told."""
    from mmtune.tune import storage
    from mmtune.tune.searcher import StudySearch

    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                         "num_samples": 2}, "space.yaml")
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3}, [0.5])], space={**space.raw, "metric": "val/f1"})
    searcher = StudySearch(space, storage.Location(exp))
    searcher.set_search_properties(None, None, {})
    searcher.suggest("ray_a")
    last = {"val/f1": 0.5, "training_iteration": 1, "trial_status": "completed"}
    searcher.on_trial_result("ray_a", last)
    searcher.on_trial_complete("ray_a", last)
    saved = pickle.loads(pickle.dumps({**searcher.__getstate__(), "_completed_trials": set()}))  # before the tell
    restored = pickle.loads(pickle.dumps(searcher))
    restored.__dict__.update(saved)
    restored.rebind(storage.Location(exp))
    # The re-report: Tune numbers it after the iteration its saved state had, which need not be the last told.
    again = {**last, "training_iteration": 2}
    restored.on_trial_result("ray_a", again)
    restored.on_trial_complete("ray_a", again)
    (trial,) = load_study(exp).get_trials()
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.COMPLETE, 0.5, {1: 0.5})
