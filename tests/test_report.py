"""`mmtune report`: the command and its files on small experiment folders (fast), and on a real sweep (slow)."""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mmtune.model.status import TrialStatus
from tests import browser
from tests.conftest import REPO, run_sweep
from tests.fake_experiment import FakeTrial, write_experiment
from mmtune.tune import report
from mmtune.tune.cli import build_parser, run
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import Experiment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = {"history", "learning_curves", "importance", "parallel_coordinates", "slices", "contour", "timeline"}
N_TRIALS = 6
S = TrialStatus


def section(md: str, title: str) -> str:
    """The body of one '## TITLE...' section of report.md."""
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", md, re.M | re.S)
    assert match, f"no section {title!r} in report.md"
    return match.group(1)


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """A finished experiment whose best trial sits at the low end of lr's range."""
    return write_experiment(tmp_path, [FakeTrial({"lr": 1e-4, "dropout": 0.15}, [0.6, 0.8]),
                                       FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5], S.PRUNED)])


# ---------------------------------------------------------------- fast: the command, on written folders


def test_parser_of_the_report_command():
    args = build_parser().parse_args(["report", "results/x", "--top-k", "7"])
    assert (args.cmd, args.experiment, args.top_k, args.handler) == ("report", "results/x", 7, report.cmd_report)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "results/x", "--top-k", "0"])


def test_cli_report(fake, tmp_path, capsys):
    assert run(["report", str(fake), "--top-k", "1"]) == 0
    out = capsys.readouterr().out
    assert f"report: {fake / 'report.html'}" in out and f"markdown: {fake / 'report.md'}" in out
    assert "warning: widen lr (best 0.0001 at the low end" in out
    assert "## Top 1 trials" in (fake / "report.md").read_text()
    assert run(["report", str(tmp_path / "nothing-here")]) == 2
    assert "not an mmtune experiment" in capsys.readouterr().err


def test_report_command_prints_only_its_own_lines(tmp_path):
    """No Optuna INFO line (in-memory studies) or matplotlib warning (a parameter with one value) on the console."""
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5, 0.6]),
                                      FakeTrial({"lr": 1e-3, "dropout": 0.2}, [0.4, 0.5])], study=True)
    proc = subprocess.run([sys.executable, "-m", "mmtune.tune", "report", str(exp)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[0] == f"report: {exp / 'report.html'}"


def test_cli_prints_the_warnings_write_report_returns(tmp_path, capsys):
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5], None)], finished=False)
    assert report.cmd_report(argparse.Namespace(experiment=str(exp), top_k=2)) == 0
    printed = [line.removeprefix("warning: ") for line in capsys.readouterr().out.splitlines()
               if line.startswith("warning: ")]
    expected = report.write_report(exp, top_k=2).warnings
    assert printed == [w.replace("`", "") for w in expected] and len(printed) == 2  # too few trials; unfinished
    assert f"(continue it with mmtune resume {exp})" in printed[-1]


def test_report_of_an_interrupted_sweep(tmp_path):
    exp = write_experiment(tmp_path, [
        FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5, 0.6]), FakeTrial({"lr": 2e-3, "dropout": 0.1}, [0.4], None),
        FakeTrial({"lr": 3e-3, "dropout": 0.2}, [0.45], None), FakeTrial({"lr": 4e-3, "dropout": 0.2}, [0.3], S.NAN)],
        finished=False)
    result = report.write_report(exp)
    html = result.html.read_text()
    assert html.count("data:image/png;base64,") >= 5  # no importance figure from one finished trial
    md = result.markdown.read_text()
    assert "the sweep is not finished" in section(md, "Warnings") and "2 unfinished" in section(md, "Warnings")
    assert "2 unfinished" in md.split("## Warnings")[0] and "NOT finished" in md
    rows = section(md, "All trials").splitlines()
    for t in Experiment.open(exp).trials[1:3]:
        assert any(f"| {t.trial_id} |" in r and "| unfinished |" in r for r in rows), t.trial_id
    assert "not finished" in html and "unfinished" in html


def test_text_from_the_experiment_stays_text_in_the_html(tmp_path):
    from tests.fake_experiment import SPACE

    space = {**SPACE, "description": "<script>alert(1)</script> pose & <b>trajectory</b> | v2"}
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5, 0.6])], space=space)
    result = report.write_report(exp)
    html = result.html.read_text()
    assert "<script>" not in html and "<b>" not in html  # Python-Markdown's raw HTML is off
    assert "&lt;script&gt;alert(1)&lt;/script&gt; pose &amp; &lt;b&gt;trajectory&lt;/b&gt; | v2" in html
    assert "pose & <b>trajectory</b> \\| v2" in result.markdown.read_text()  # the pipe escaped for Markdown
    best_row = re.search(r"<tr>\s*<td><strong>1</strong></td>\s*<td>(\w+)</td>", html)
    assert best_row and best_row.group(1) == Experiment.open(exp).ranked[0].trial_id  # the best row is marked


def test_wall_time_of_a_resumed_unfinished_sweep_counts_to_now(tmp_path):
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5])])
    meta = json.loads((exp / "mmtune.json").read_text())
    assert Experiment.open(exp).wall_time() == pytest.approx(meta["ended"] - meta["started"])
    meta.update(started=meta["started"] - 3600, finished=False)  # resumed: `ended` is the earlier run's end
    (exp / "mmtune.json").write_text(json.dumps(meta))
    assert Experiment.open(exp).wall_time() > 3600 + 100
    assert "min since start" in dict(analysis_header(exp))["state"]


def analysis_header(exp: Path) -> list[tuple[str, str]]:
    from mmtune.tune.analysis import analyze, header_rows

    return header_rows(analyze(Experiment.open(exp)))


def test_not_an_experiment_and_bad_top_k(tmp_path):
    with pytest.raises(ResultsError, match="not an mmtune experiment"):
        report.write_report(tmp_path)
    with pytest.raises(ResultsError, match="top-k"):
        report.write_report(tmp_path, top_k=0)


@pytest.mark.parametrize("missing", ["matplotlib", "markdown"])
def test_a_missing_report_dependency_names_the_extra(fake, monkeypatch, missing):
    for mod in [m for m in sys.modules if m == missing or m.startswith(f"{missing}.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, missing, None)  # import MISSING -> ImportError
    with pytest.raises(ResultsError, match=re.escape(f"mmtune report needs {missing}: pip install mmtune[report]")):
        report.write_report(fake)
    assert not (fake / "report.html").exists()


def test_importing_the_module_is_cheap():
    code = ("import sys, mmtune.tune.report; heavy = {'matplotlib', 'ray', 'optuna', 'torch'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------- the report in a real browser (headless Chromium)


@pytest.fixture
def chromium() -> None:
    """Skip where Debian's chromium is missing, unless MMTUNE_REQUIRE_CHROMIUM is set (`.ci/run` sets it)."""
    if not browser.available():
        if os.environ.get("MMTUNE_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")


@pytest.fixture
def written(tmp_path: Path) -> Path:
    """report.html of a finished fake experiment of 12 trials (3 pruned) with its study.db."""
    trials = [FakeTrial({"lr": 10 ** (-3.5 + i / 12), "dropout": 0.02 * i}, [0.3 + 0.02 * i, 0.4 + 0.03 * i],
                        S.PRUNED if i % 4 == 3 else S.COMPLETED) for i in range(12)]
    return report.write_report(write_experiment(tmp_path, trials, study=True)).html


@pytest.mark.slow
def test_report_renders_in_chromium(chromium, written, tmp_path):
    page = browser.open_page(written, tmp_path / "report.png")
    assert page.errors == [] and page.broken == []
    assert [alt for alt, _ in page.images] == ["Optimization history", "Learning curves", "Hyperparameter importance",
                                               "Parallel coordinates", "Parameter slices", "Contour", "Timeline"]
    assert page.screenshot.read_bytes().startswith(PNG_MAGIC)  # kept under the test's tmp_path to look at


@pytest.mark.slow
def test_the_browser_check_fails_on_a_broken_image_and_a_console_error(chromium, written, tmp_path):
    html = written.read_text().replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
    broken = tmp_path / "broken.html"
    broken.write_text(html.replace("</body>", "<script>console.error('boom'); missing();</script></body>"))
    page = browser.open_page(broken, tmp_path / "broken.png")
    assert page.broken == ["Optimization history"]
    assert page.errors[0] == "boom" and page.errors[1].startswith("ReferenceError: missing is not defined")


# ---------------------------------------------------------------- slow: a real sweep's files


@pytest.fixture(scope="module")
def exp(ray_session, demo_dir, tmp_path_factory) -> Path:
    """A finished real smoke sweep of 6 trials, with its report written once."""
    exp_dir = run_sweep(demo_dir, tmp_path_factory.mktemp("res"), "report-smoke", num_samples=N_TRIALS)
    report.write_report(exp_dir, top_k=3)
    return exp_dir


def summary(exp_dir: Path) -> dict:
    return json.loads((exp_dir / "summary.json").read_text())


@pytest.mark.slow
def test_html_is_self_contained_with_every_figure(exp):
    html = (exp / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)
    assert "<img" in html and 'src="report/' not in html and "src='report/" not in html  # nothing to fetch
    pngs = sorted((exp / "report").glob("*.png"))
    assert {p.stem for p in pngs} == FIGURES
    for p in pngs:
        data = p.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), p
    md = (exp / "report.md").read_text()
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (exp / link).is_file(), link


@pytest.mark.slow
def test_markdown_top_table_starts_with_the_best_trial(exp):
    s = summary(exp)
    md = (exp / "report.md").read_text()
    top = section(md, "Top 3 trials")
    rows = [line for line in top.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 3
    assert rows[0].startswith(f"| **1** | {s['best_trial']} | {s['best_value']:.4f} | {s['best_epoch']} |")
    header = top.splitlines()[2]
    assert all(name in header for name in ("best epoch", "epochs run", "status", "lr", "d_model"))
    head = md.split("## Warnings")[0]
    assert s["best_trial"] in head and "best_config.yaml" in head and "val/f1 (max" in head
    assert f"{N_TRIALS} of {N_TRIALS} trials started" in head


@pytest.mark.slow
def test_importance_names_its_evaluator(exp):
    md = (exp / "report.md").read_text()
    imp = section(md, "Hyperparameter importance")
    assert "FanovaImportanceEvaluator" in imp and "seed=0" in imp and "](report/importance.png)" in imp
    assert "FanovaImportanceEvaluator" in (exp / "report.html").read_text()
    full = len(Experiment.open(exp).full_budget)  # the study's COMPLETE trials: the sweep kept study.db
    assert f"({full} full-budget trials of the {N_TRIALS} in the study from study.db;" in imp


@pytest.mark.slow
def test_warnings_of_a_small_finished_sweep(exp):
    warnings = section((exp / "report.md").read_text(), "Warnings")
    full = len(Experiment.open(exp).full_budget)  # the trials ASHA did not prune
    assert f"only {full} full-budget trial(s)" in warnings  # below what the importance estimate needs
    # num_layers is searched over [1, 2]: whatever the best trial drew sits on an edge.
    assert re.search(r"widen num_layers \(best [12] at the (low|high) end of \[1, 2\]\)", warnings)
    assert "not finished" not in warnings
