"""Fast tier: the report's analysis, figures and files on small experiment folders (no Ray, no sweep)."""
from __future__ import annotations

import re
import warnings

import pytest
from optuna.trial import TrialState

from mmtune.model.status import TrialStatus
from tests.fake_experiment import SPACE, FakeTrial, write_experiment
from mmtune.tune import analysis, figures
from mmtune.tune.analysis import Importance, analyze, edge_warning, trial_table
from mmtune.tune.experiment import Experiment
from mmtune.tune.report import write_report
from mmtune.tune.space import Param, parse_space

S = TrialStatus
FIGURES = ("history", "learning_curves", "importance", "parallel_coordinates", "slices", "contour", "timeline")


def trial(lr: float, dropout: float, *values: float, status: TrialStatus | None = S.COMPLETED) -> FakeTrial:
    return FakeTrial({"lr": lr, "dropout": dropout}, list(values), status)


def sweep(n: int) -> list[FakeTrial]:
    """N usable trials, better with dropout, none on the edge of lr's range; every third pruned by ASHA."""
    return [trial(10 ** (-3.5 + i / n), 0.03 + 0.2 * i / n, 0.3 + 0.01 * i, 0.4 + 0.02 * i,
                  status=S.PRUNED if i % 3 == 2 else S.COMPLETED) for i in range(n)]


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> analysis.Document:
    """A finished sweep of 15 usable trials (5 pruned), one failed and one that diverged, with its study.db."""
    exp = write_experiment(tmp_path_factory.mktemp("doc"), [
        *sweep(15), trial(1e-3, 0.1, 0.9, status=S.FAILED), trial(1e-3, 0.1, float("nan"), status=S.NAN)],
        study=True)
    return analyze(Experiment.open(exp), top_k=3)


@pytest.fixture(scope="module")
def no_values(tmp_path_factory: pytest.TempPathFactory) -> analysis.Document:
    """An interrupted sweep in which no trial has a value: one failed, one diverged, one not yet reported."""
    exp = write_experiment(tmp_path_factory.mktemp("none"), [
        trial(1e-3, 0.1, 0.5, status=S.FAILED), trial(1e-3, 0.1, float("nan"), status=S.NAN),
        FakeTrial({"lr": 1e-3, "dropout": 0.1}, [], None)], finished=False)
    return analyze(Experiment.open(exp))


def test_top_table_is_the_experiments_ranking(tmp_path):
    exp = Experiment.open(write_experiment(tmp_path, [
        trial(1e-3, 0.1, 0.5, 0.6), trial(2e-3, 0.1, 0.8, status=S.FAILED), trial(3e-3, 0.1, 0.7, status=S.PRUNED),
        trial(4e-3, 0.1, 0.6, 0.55, status=None), trial(5e-3, 0.1, 0.7, status=S.EARLY_STOPPED)]))
    doc = analysis.Document(exp, top_k=3, importance=Importance(None, "", 0))
    cols, rows = trial_table(doc, doc.top)
    assert cols[:6] == ["rank", "trial", "best val/f1", "best epoch", "epochs run", "status"]
    # Best first; the tie at 0.7 goes to the trial that started first; a failed trial has no rank.
    assert [r[:3] for r in rows] == [["1", "fake0_00002", "0.7000"], ["2", "fake0_00004", "0.7000"],
                                     ["3", "fake0_00000", "0.6000"]]
    assert [r[5] for r in rows] == ["pruned (ASHA)", "early stopped", "completed"]
    everyone = [r[:2] for r in trial_table(doc, doc.all_trials)[1]]
    assert everyone[3:] == [["4", "fake0_00003"], ["–", "fake0_00001"]]  # unfinished ranks; failed goes last


def test_edge_warning_names_the_side_and_the_range():
    assert edge_warning(Param("dropout", "float", low=0.1, high=1.1), 0.1) == \
        "widen dropout (best 0.1 at the low end of [0.1, 1.1])"
    assert "at the high end" in edge_warning(Param("dropout", "float", low=0.0, high=0.3), 0.3)
    assert edge_warning(Param("dropout", "float", low=0.0, high=1.0), 0.5) is None
    assert edge_warning(Param("lr", "float", low=1e-4, high=1e-1, log=True), 1.3e-4).startswith("widen lr")
    assert edge_warning(Param("lr", "float", low=1e-4, high=1e-2, log=True), 1e-3) is None  # log-aware middle
    assert edge_warning(Param("d_model", "categorical", choices=(16, 32)), 16) is None


def test_best_trial_at_the_low_end_of_lr_is_warned(tmp_path):
    exp = Experiment.open(write_experiment(tmp_path, [trial(1e-4, 0.15, 0.9), trial(1e-3, 0.1, 0.5)]))
    assert analysis.edge_warnings(exp) == ["widen lr (best 0.0001 at the low end of [0.0001, 0.01])"]


@pytest.mark.parametrize("bad, warned", [(1, True), (0, False)])
def test_failure_share_of_a_quarter_is_warned(tmp_path, bad, warned):
    ok = [trial(1e-3, 0.1, 0.5)] * (4 - bad)
    failed = [trial(1e-3, 0.1, 0.5, status=S.INFEASIBLE)] * bad
    unfinished = [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5], None)]  # not ended: not in the share
    exp = Experiment.open(write_experiment(tmp_path, ok + failed + unfinished))
    found = analysis.failure_warnings(exp)
    assert found == (["1 of 4 ended trials (25%) failed, diverged or were infeasible (1 infeasible); see the "
                      "error column of trials.csv and narrow the space"] if warned else [])


def test_one_in_five_failed_is_not_warned(tmp_path):
    exp = Experiment.open(write_experiment(tmp_path, [trial(1e-3, 0.1, 0.5)] * 4 + [trial(1e-3, 0.1, 0.5,
                                                                                         status=S.FAILED)]))
    assert analysis.failure_warnings(exp) == []


def test_too_few_trials_for_importance_is_warned():
    assert analysis.importance_warnings(Importance(None, "", 9))[0].startswith("only 9 full-budget trial(s)")
    assert analysis.importance_warnings(Importance({"lr": 1.0}, "", 10)) == []


def test_unfinished_sweep_is_warned(no_values):
    (w,) = analysis.progress_warnings(no_values.experiment)
    assert w.startswith("the sweep is not finished (3 of 4 trials started, 1 unfinished)")
    assert f"`mmtune resume {no_values.experiment.path}`" in w
    assert analysis.progress_warnings(Experiment.open(write_experiment(no_values.experiment.path.parent,
                                                                       [trial(1e-3, 0.1, 0.5)], name="done"))) == []


def test_importance_from_ten_usable_trials(doc):
    imp = doc.importance
    assert imp.trials == 10  # full-budget trials only: not the pruned, the failed or the diverged
    assert set(imp.values) == {"lr", "dropout"} and abs(sum(imp.values.values()) - 1.0) < 0.01
    assert imp.note == "computed from 10 full-budget trials (5 pruned trial(s) left out)"
    assert doc.warnings == []  # 2 of 17 failed is under a quarter, 10 trials suffice, nothing on an edge


def test_importance_needs_two_usable_trials(tmp_path):
    exp = Experiment.open(write_experiment(tmp_path, [trial(1e-3, 0.1, 0.5), trial(2e-3, 0.2, 0.6, status=S.NAN),
                                                      FakeTrial({"lr": 1e-3, "dropout": 0.2}, [0.7], None)]))
    imp = analysis.importance(analysis.study_of(exp))
    assert (imp.values, imp.trials) == (None, 1)
    assert imp.note == "not computed: 1 full-budget trial(s) with a finite value; at least 2 needed"


def test_asha_rungs_are_the_epochs_where_trials_can_be_stopped():
    assert parse_space(SPACE, "fake.yaml").rungs == [1, 2]  # a milestone at the budget (4) stops nothing
    space = {**SPACE, "epochs": 30, "asha": {"grace_period": 2, "reduction_factor": 3}}
    assert parse_space(space, "fake.yaml").rungs == [2, 6, 18]


def test_header_names_the_best_trial_and_counts_by_status(doc):
    head = dict(analysis.header_rows(doc))
    assert head["best value"] == "0.6800 (trial fake0_00014, epoch 2)"
    assert head["trials by status"] == "10 completed, 5 pruned (ASHA), 1 nan, 1 failed"
    assert head["state"].startswith("finished; 17 of 4 trials started; ") and "wall time" in head["state"]


def outcomes(study) -> dict[str, tuple]:
    """Ray trial id -> (Optuna state, value, intermediate values) of each trial of STUDY."""
    return {t.user_attrs["ray_trial_id"]: (t.state, t.value, t.intermediate_values) for t in study.trials}


def test_study_of_reads_study_db_and_the_trials_on_disk_alike(doc, tmp_path):
    study = doc.study
    assert study.user_attrs["source"] == "study.db" and len(study.trials) == 17
    assert analysis.state_counts(study) == {"COMPLETE": 10, "PRUNED": 5, "FAIL": 2}
    older = Experiment.open(write_experiment(tmp_path, [*sweep(15), trial(1e-3, 0.1, 0.9, status=S.FAILED),
                                                        trial(1e-3, 0.1, float("nan"), status=S.NAN)]))
    rebuilt = analysis.study_of(older)  # no study.db: built from the trials on disk as the searcher tells them
    assert rebuilt.user_attrs["source"] == "trials on disk" and outcomes(rebuilt) == outcomes(study)
    assert all(t.datetime_start < t.datetime_complete for t in rebuilt.trials)  # the timeline's bars


def test_unreadable_study_db_falls_back_to_the_trials_on_disk(tmp_path, caplog):
    exp = write_experiment(tmp_path, [trial(1e-3, 0.1, 0.5), trial(2e-3, 0.2, 0.6, status=None)])
    (exp / "study.db").write_bytes(b"not a database")
    study = analysis.study_of(Experiment.open(exp))
    assert study.user_attrs["source"] == "trials on disk" and "study.db unreadable" in caplog.text
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]


def test_optunas_figures_draw_the_full_budget_trials_only(doc):
    """Importance, slices, parallel coordinates and contour rest on the study's COMPLETE trials only (Optuna reads no
    others), so the pruned trials' values, from fewer epochs, are left out without a copy of the study."""
    full = doc.experiment.full_budget
    assert analysis.state_counts(doc.study)["COMPLETE"] == len(full) == doc.importance.trials == 10
    slices = dict((p.name, draw) for p, draw in figures.specs(doc))["slices"]()
    for ax in slices.axes[:2]:  # one panel per parameter; the last axes is the colour bar
        values = sorted(float(v) for v in ax.collections[0].get_offsets()[:, 1])
        assert values == sorted(t.best_value for t in full)


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_draws(doc, name):
    from matplotlib.figure import Figure

    fig = {p.name: draw for p, draw in figures.specs(doc)}[name]()
    assert isinstance(fig, Figure) and fig.axes and fig.axes[0].has_data()


def test_captions_say_how_many_trials_each_figure_uses(doc):
    captions = {p.name: p.caption for p, _ in figures.specs(doc)}
    for name in ("history", "importance", "parallel_coordinates", "slices", "contour"):
        assert "10 full-budget trials of the 17 in the study from study.db" in captions[name], name
    assert "each of the 17 trials" in captions["timeline"] and "FanovaImportanceEvaluator, seed=0" in captions[
        "importance"]


def test_optuna_plots_leave_matplotlib_and_warnings_as_they_were(doc, tmp_path):
    import matplotlib
    from matplotlib import pyplot as plt

    before = dict(matplotlib.rcParams)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's ExperimentalWarning included
        plots = figures.draw_all(doc, tmp_path)
    assert all(p.path is not None for p in plots)
    assert dict(matplotlib.rcParams) == before and plt.get_fignums() == []  # no ggplot style, no figure kept


def test_figures_of_an_experiment_without_values(no_values, tmp_path):
    from matplotlib.figure import Figure

    drawn = {p.name: draw() for p, draw in figures.specs(no_values)}
    assert drawn.pop("importance") is None and all(isinstance(f, Figure) for f in drawn.values())
    texts = [t.get_text() for t in drawn["slices"].axes[0].texts]
    assert texts == ["fewer than 1 trial(s) have run their full budget with a finite value"]
    (tmp_path / "importance.png").write_bytes(b"stale")  # an earlier report's figure is no longer true
    plots = figures.draw_all(no_values, tmp_path)
    assert [p.name for p in plots] == list(FIGURES)
    assert {p.name for p in plots if p.path is None} == {"importance"}
    assert not (tmp_path / "importance.png").exists()


def test_write_report_writes_files_and_returns_the_warnings_it_lists(tmp_path):
    exp = write_experiment(tmp_path, [trial(1e-4, 0.15, 0.9), *sweep(2), trial(1e-3, 0.1, 0.5, status=S.FAILED),
                                      FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.2], None)], finished=False)
    result = write_report(exp, top_k=2)
    assert (result.html, result.markdown) == (exp / "report.html", exp / "report.md")
    assert [p.name for p in result.figures] == [f"{n}.png" for n in FIGURES]
    for p in result.figures:
        assert p.parent == exp / "report" and p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    md = result.markdown.read_text()
    listed = re.search(r"^## Warnings\n\n(.*?)\n\n## ", md, re.M | re.S).group(1)
    assert [line.removeprefix("- ") for line in listed.splitlines()] == result.warnings
    assert [w.split(" (")[0] for w in result.warnings] == [
        "widen lr", "1 of 4 ended trials", "only 3 full-budget trial(s) with a finite value: the importance estimate "
        "needs about 10 or more, so treat it as rough", "the sweep is not finished"]
    top = re.search(r"^## Top 2 trials\n\n(.*?)\n\n## ", md, re.M | re.S).group(1).splitlines()
    assert [r.split(" | ")[1] for r in top[2:]] == ["fake0_00000", "fake0_00002"]
    html = result.html.read_text()
    assert html.count("data:image/png;base64,") == 7 and "widen lr" in html and "Top 2 trials" in html
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (exp / link).is_file(), link
