"""Saturation and noise checks: ties at the best, the metric at its ceiling, a small val split, noise vs gaps."""
from __future__ import annotations

import json

from mmtune.model.status import TrialStatus as S
from tests.fake_experiment import FakeTrial, write_experiment
from mmtune.tune.analysis import analyze, header_rows
from mmtune.tune.experiment import Experiment
from mmtune.tune.noise import noise, saturation_warnings
from mmtune.tune.results import export

SMALL_VAL = {"samples": 54, "positives": 6, "source": {"made_from": "train.npz"}}


def tied_sweep(n_tied: int, other: float = 0.8) -> list[FakeTrial]:
    """N_TIED trials that all reach val/f1 1.0 (lower loss for later ones), and two that do not."""
    tied = [FakeTrial({"lr": 1e-3 + i * 1e-5, "dropout": 0.1}, [0.9, 1.0], extra={"val/loss": 0.5 - 0.01 * i})
            for i in range(n_tied)]
    return tied + [FakeTrial({"lr": 2e-3, "dropout": 0.2}, [0.7, other], extra={"val/loss": 0.6}) for _ in range(2)]


def test_a_saturated_sweep_on_a_small_val_split_warns_with_remedies(tmp_path):
    exp = Experiment.open(write_experiment(tmp_path, tied_sweep(17), validation=SMALL_VAL))
    warned = saturation_warnings(exp)
    text = "\n".join(warned)
    assert "reached its ceiling 1 in 17 trial(s)" in text and "cv: auto" in text
    assert "17 trials tie at the best val/f1 = 1.0000" in text and "val/loss" in text
    assert "only 6 samples of its rarer class (of 54)" in text
    # The best is the tie with the lowest val loss, not the first one started.
    assert exp.best().trial_id == "fake0_00016"


def test_export_writes_the_warnings_and_the_noise_into_summary_json(tmp_path):
    path = write_experiment(tmp_path, tied_sweep(3), validation=SMALL_VAL)
    summary = export(path)
    assert summary == json.loads((path / "summary.json").read_text())
    assert any("tie at the best" in w for w in summary["warnings"])
    assert summary["noise"]["source"].startswith("binomial") and summary["noise"]["gaps"][:2] == [0.0, 0.0]


def test_a_clear_winner_on_a_large_val_split_is_not_warned(tmp_path):
    trials = [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5, v], extra={"val/loss": 0.4}) for v in (0.62, 0.70, 0.85)]
    exp = Experiment.open(write_experiment(tmp_path, trials, validation={"samples": 2000, "positives": 600}))
    assert saturation_warnings(exp) == []
    n = noise(exp)
    assert n.source.startswith("binomial") and 0.005 < n.sd < 0.03 and n.gaps == [0.85 - 0.70, 0.85 - 0.62]


def test_runner_up_inside_the_fold_sd_is_warned(tmp_path):
    # CV trials report val/f1_sd: the noise comes from the folds, and a 0.01 gap is inside it.
    trials = [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.70, v], extra={"val/loss": 0.4, "val/f1_sd": 0.05})
              for v in (0.80, 0.81)]
    exp = Experiment.open(write_experiment(tmp_path, trials, validation={"samples": 2000, "positives": 600}))
    n = noise(exp)
    assert n.sd == 0.05 and n.source.startswith("CV")
    assert any("runner-up is within the noise" in w for w in saturation_warnings(exp))


def test_finalize_seed_spread_is_preferred_as_the_noise(tmp_path):
    path = write_experiment(tmp_path, tied_sweep(2))
    (path / "final").mkdir()
    (path / "final" / "summary.json").write_text(json.dumps({"configs": [
        {"n_seeds": 3, "std": {"val/f1": 0.04}}, {"n_seeds": 3, "std": {"val/f1": 0.08}},
        {"n_seeds": 1, "std": {"val/f1": 0.0}}]}))
    n = noise(Experiment.open(path))
    assert abs(n.sd - 0.06) < 1e-12 and n.source.startswith("finalize")


def test_report_shows_the_noise_next_to_the_gaps_and_the_warnings(tmp_path):
    doc = analyze(Experiment.open(write_experiment(tmp_path, tied_sweep(4), validation=SMALL_VAL)))
    rows = dict(header_rows(doc))
    assert "sd ≈" in rows["noise vs gaps"] and "gaps from the best" in rows["noise vs gaps"]
    assert any("ceiling" in w for w in doc.warnings)


def test_pruned_or_failed_trials_do_not_count_as_ties(tmp_path):
    trials = [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [1.0], S.FAILED), *tied_sweep(1)]
    exp = Experiment.open(write_experiment(tmp_path, trials, validation={"samples": 2000, "positives": 600}))
    assert not any("tie at the best" in w for w in saturation_warnings(exp))
