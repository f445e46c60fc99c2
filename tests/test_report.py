"""`mmtune report` on a real (small) sweep: figures, tables, importance, warnings, an interrupted sweep, the CLI."""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_sweep
from tune import report
from tune.errors import ResultsError
from tune.results import load_trials, space_of
from tune.space import Param

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_TRIALS = 6


@pytest.fixture(scope="module")
def exp(ray_session, demo_dir, tmp_path_factory) -> Path:
    """A finished real smoke sweep of 6 trials, with its report written once."""
    exp_dir = run_sweep(demo_dir, tmp_path_factory.mktemp("res"), "report-smoke", num_samples=N_TRIALS)
    report.write_report(exp_dir, top_k=3)
    return exp_dir


def summary(exp_dir: Path) -> dict:
    return json.loads((exp_dir / "summary.json").read_text())


def section(md: str, title: str) -> str:
    """The body of one '## TITLE...' section of report.md."""
    match = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", md, re.M | re.S)
    assert match, f"no section {title!r} in report.md"
    return match.group(1)


def test_html_is_self_contained_with_every_figure(exp):
    html = (exp / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6
    assert "<img" in html and 'src="report/' not in html and "src='report/" not in html  # nothing to fetch
    pngs = sorted((exp / "report").glob("*.png"))
    assert {p.stem for p in pngs} == {"history", "learning_curves", "importance", "parallel_coordinates",
                                      "slices", "status"}
    for p in pngs:
        data = p.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), p
    md = (exp / "report.md").read_text()
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (exp / link).is_file(), link


def test_markdown_top_table_starts_with_the_best_trial(exp):
    s = summary(exp)
    md = (exp / "report.md").read_text()
    top = section(md, "Top 3 trials")
    rows = [line for line in top.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == 3
    assert rows[0].startswith(f"| 1 | {s['best_trial']} | {s['best_value']:.4f} | {s['best_epoch']} |")
    header = top.splitlines()[2]
    assert all(name in header for name in ("best epoch", "epochs run", "status", "lr", "d_model"))
    head = md.split("## Warnings")[0]
    assert s["best_trial"] in head and "best_config.yaml" in head and "val/f1 (max" in head
    assert f"{N_TRIALS} of {N_TRIALS} trials started" in head


def test_importance_names_its_evaluator(exp):
    md = (exp / "report.md").read_text()
    imp = section(md, "Hyperparameter importance")
    assert "FanovaImportanceEvaluator" in imp and "seed=0" in imp
    assert "FanovaImportanceEvaluator" in (exp / "report.html").read_text()
    rows = [line for line in imp.splitlines() if line.startswith("| ") and not line.startswith("| parameter")]
    names = {r.split("|")[1].strip() for r in rows}
    assert names <= set(space_of(exp).names) and names  # computed from 6 trials
    assert abs(sum(float(r.split("|")[2]) for r in rows) - 1.0) < 0.01


def test_warnings_of_a_small_finished_sweep(exp):
    warnings = section((exp / "report.md").read_text(), "Warnings")
    assert f"only {N_TRIALS} finished trial(s)" in warnings  # below what the importance estimate needs
    # num_layers is searched over [1, 2]: whatever the best trial drew sits on an edge.
    assert re.search(r"widen num_layers \(best [12] at the (low|high) end of \[1, 2\]\)", warnings)
    assert "not finished" not in warnings


def test_edge_warning_logic_on_crafted_params(exp):
    space = space_of(exp)
    best = next(t for t in load_trials(exp, space) if t.trial_id == summary(exp)["best_trial"])
    v = best.params["dropout"]  # a float parameter of the smoke space
    assert Param("dropout", "float", low=v, high=v + 1.0).on_edge(v) == "low"
    assert report.edge_warning(Param("dropout", "float", low=v, high=v + 1.0), v) == \
        f"widen dropout (best {v:.4g} at the low end of [{v:.4g}, {v + 1.0:.4g}])"
    assert "at the high end" in report.edge_warning(Param("dropout", "float", low=v - 1.0, high=v), v)
    assert report.edge_warning(Param("dropout", "float", low=v - 1.0, high=v + 1.0), v) is None
    lr = best.params["lr"]  # log-aware: 5 % of the log span
    assert report.edge_warning(Param("lr", "float", low=lr / 1.1, high=lr * 100, log=True), lr).startswith("widen lr")
    assert report.edge_warning(Param("lr", "float", low=lr / 10, high=lr * 10, log=True), lr) is None
    assert report.edge_warning(Param("d_model", "categorical", choices=(16, 32)), 16) is None


def test_cmd_report_prints_where_it_is(exp, tmp_path, capsys):
    copy = shutil.copytree(exp, tmp_path / "copy")
    args = argparse.Namespace(experiment=str(copy), top_k=2)
    assert report.cmd_report(args) == 0
    out = capsys.readouterr().out
    assert f"report: {copy / 'report.html'}" in out and "report.md" in out and "warning: widen" in out
    assert "## Top 2 trials" in (copy / "report.md").read_text()


def test_parser_of_the_report_command():
    p = argparse.ArgumentParser()
    report.add_parser(p.add_subparsers(dest="cmd"))
    args = p.parse_args(["report", "results/x", "--top-k", "7"])
    assert (args.cmd, args.experiment, args.top_k) == ("report", "results/x", 7)
    with pytest.raises(SystemExit):
        p.parse_args(["report", "results/x", "--top-k", "0"])


def _cli_has_report() -> bool:
    from tune.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "report" in sub.choices


@pytest.mark.skipif(not _cli_has_report(), reason="`report` is not wired into tune/commands.py yet")
def test_cli_report(exp, tmp_path, capsys):
    from tune.cli import run

    copy = shutil.copytree(exp, tmp_path / "copy")
    (copy / "report.html").unlink()
    assert run(["report", str(copy), "--top-k", "2"]) == 0
    assert (copy / "report.html").is_file() and str(copy / "report.html") in capsys.readouterr().out
    assert run(["report", str(tmp_path / "nothing-here")]) == 2
    assert "not an mmtune experiment" in capsys.readouterr().err


def test_report_of_an_interrupted_sweep(exp, tmp_path):
    copy = shutil.copytree(exp, tmp_path / "interrupted")
    for name in ("report.html", "report.md"):
        (copy / name).unlink()
    shutil.rmtree(copy / "report")
    lost = sorted((copy / "mmtune_trials").glob("*.json"))[:2]  # these trials never recorded their end
    for p in lost:
        p.unlink()
    meta = json.loads((copy / "mmtune.json").read_text())
    meta["finished"] = False
    meta.pop("ended", None)
    (copy / "mmtune.json").write_text(json.dumps(meta))

    html = report.write_report(copy).read_text()
    assert html.count("data:image/png;base64,") >= 6
    md = (copy / "report.md").read_text()
    assert "the sweep is not finished" in section(md, "Warnings") and "2 unfinished" in section(md, "Warnings")
    assert "2 unfinished" in md.split("## Warnings")[0] and "NOT finished" in md
    rows = section(md, "All trials").splitlines()
    for p in lost:
        assert any(f"| {p.stem} |" in r and "| unfinished |" in r for r in rows), p.stem
    assert "not finished" in html and "unfinished" in html


def test_not_an_experiment_and_bad_top_k(tmp_path):
    with pytest.raises(ResultsError, match="not an mmtune experiment"):
        report.write_report(tmp_path)
    with pytest.raises(ResultsError, match="top-k"):
        report.write_report(tmp_path, top_k=0)


def test_missing_matplotlib_names_the_extra(exp, monkeypatch):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ResultsError, match=re.escape("pip install mmtune[report]")):
        report.write_report(exp)


def test_importing_the_module_is_cheap():
    code = ("import sys, tune.report; heavy = {'matplotlib', 'ray', 'optuna', 'torch'} & set(sys.modules); "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
