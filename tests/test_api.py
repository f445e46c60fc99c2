"""The Python API (`mmtune.tune.api`): a real tiny sweep run and finalized through it, its handle read back, and the README's
example checked against the real API."""
from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import pandas as pd
import pytest

from mmtune.model.config import TrainConfig, load_config
from mmtune.model.status import TrialStatus
from tests.conftest import REPO, SMOKE, rows, study_matches_trials_csv
from tests.fake_experiment import FakeTrial, write_experiment
from mmtune.tune import api
from mmtune.tune.errors import ResultsError
from mmtune.tune.results import export

TOP_K, SEEDS = 2, 1


def csv_text(exp_dir: Path) -> str:
    with open(exp_dir / "trials.csv", newline="") as f:
        return f.read()


def frame_as_csv(handle: api.ExperimentHandle) -> str:
    """The handle's DataFrame written as the csv module writes trials.csv."""
    return handle.trials.to_csv(index=False, lineterminator="\r\n")


# ---------------------------------------------------------------- fast: no Ray


def test_open_experiment_gives_the_trials_csv_frame(tmp_path):
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5, 0.6, 0.55], extra={"gpu_ids": [0]}),
                                      FakeTrial({"lr": 2e-3, "dropout": 0.2}, [0.4], TrialStatus.FAILED,
                                                error="Traceback\nValueError: boom"),
                                      FakeTrial({"lr": 3e-3, "dropout": 0.0}, [0.3], None)])
    export(exp)
    handle = api.open_experiment(exp)
    df = handle.trials
    assert frame_as_csv(handle) == csv_text(exp)  # row for row, value for value
    assert list(df["status"]) == ["completed", "failed", "unfinished"] and pd.isna(df["best_epoch"].iloc[1])
    assert handle.path == exp.resolve() and handle.summary["trials"] == 3
    assert isinstance(handle.best_trial_config, TrainConfig)
    assert handle.best_config == load_config(exp / "best_config.yaml")  # finalize did not run: the best trial's


def test_open_experiment_refuses_what_is_none(tmp_path):
    with pytest.raises(ResultsError, match="not an mmtune experiment"):
        api.open_experiment(tmp_path)
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5])], name="unexported")
    with pytest.raises(ResultsError, match="best_config.yaml: not written yet"):
        api.open_experiment(exp).best_config


def test_unknown_options_are_a_type_error_naming_them(tmp_path):
    with pytest.raises(TypeError, match="num_sample, overwite"):
        api.run_sweep(tmp_path, SMOKE, num_sample=4, overwite=True)  # refused before anything runs
    opts = api.sweep_options(tmp_path, Path(SMOKE), storage=tmp_path, gpus_per_trial=0.5, cv=5, finalize_top_k=0)
    assert (opts.storage, opts.gpus_per_trial, opts.cv, opts.finalize_top_k) == (str(tmp_path), "0.5", "5", 0)
    assert opts.space == SMOKE and opts.data == str(tmp_path)


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_readme_example_uses_the_real_api():
    """Every name the README's example imports, every keyword it passes and every attribute it reads exists."""
    tree = ast.parse(readme_example())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
    assert imported and all(hasattr(api, name) for name in imported)
    [call] = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "run_sweep"]
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    kwargs.pop("progress")
    api.sweep_options(*[ast.literal_eval(a) for a in call.args], **kwargs)  # a TypeError if the README drifted
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and getattr(n.value, "id", "") == "exp"}
    assert used and all(hasattr(api.ExperimentHandle, a) for a in used), used


# ---------------------------------------------------------------- slow: a real sweep through the API


@pytest.fixture(scope="module")
def swept(ray_session, demo_dir, tmp_path_factory) -> tuple[api.ExperimentHandle, str]:
    """The smoke space swept through `run_sweep` and finalized at its end (2 configs x 1 seed); its progress text."""
    out = io.StringIO()
    handle = api.run_sweep(demo_dir, SMOKE, name="api-smoke", storage=tmp_path_factory.mktemp("api"),
                           finalize_top_k=TOP_K, finalize_seeds=SEEDS, progress=out)
    return handle, out.getvalue()


def test_sweep_through_the_api_is_the_cli_path(swept):
    handle, text = swept
    # The CLI's text after the sweep, finalize included, went to the stream given as progress.
    for line in ("best trial config:", f"finalize: retraining the top {TOP_K} config(s) x {SEEDS} seed(s)",
                 "winner: sweep trial", "best config:"):
        assert line in text, line
    summary = handle.summary
    assert summary["best_config_from"] == "finalize" and (handle.path / "final" / "leaderboard.csv").is_file()
    assert handle.experiment.finished and len(handle.experiment.trials) == 4


def test_trials_frame_is_trials_csv_row_for_row(swept):
    handle, _ = swept
    assert frame_as_csv(handle) == csv_text(handle.path)
    df = handle.trials
    assert list(df["trial_id"]) == [r["trial_id"] for r in rows(handle.path)]
    assert df["best val/f1"].max() == pytest.approx(handle.summary["best_value"])


def test_best_configs_and_study(swept):
    handle, _ = swept
    assert isinstance(handle.best_config, TrainConfig)
    assert handle.best_config == load_config(handle.path / "best_config.yaml")
    assert "Finalized winner" in (handle.path / "best_config.yaml").read_text()
    assert handle.best_trial_config == load_config(handle.path / "best_trial_config.yaml")
    study = handle.study
    assert len(study.trials) == len(rows(handle.path))
    study_matches_trials_csv(handle.path)


def test_report_and_finalize_from_the_handle(swept, capsys):
    handle, _ = swept
    result = handle.report(top_k=2)
    assert result.html == handle.path / "report.html" and result.html.is_file()
    final = handle.finalize(top_k=1, seeds=1)  # quiet by default, as in a notebook
    assert capsys.readouterr().out == ""
    assert final["top_k"] == 1 and final["winner"]["trial_id"] == handle.summary["finalized_winner"]
    assert handle.best_config == load_config(handle.path / "best_config.yaml")
    assert "Finalized winner" in (handle.path / "best_config.yaml").read_text()
    assert api.open_experiment(handle.location).trials.equals(handle.trials)


def test_readme_example_runs_as_written_on_a_real_sweep(swept, tmp_path, monkeypatch):
    """The README's example, executed: every statement as written, but its run_sweep call (a full default sweep)
    swapped for open_experiment of the smoke sweep above, reached as results/nb from the working folder."""
    handle, _ = swept
    tree = ast.parse(readme_example())
    [assign] = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.value.func, "id", "") == "run_sweep"]
    assign.value = ast.parse("open_experiment('results/nb')", mode="eval").body
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "nb").symlink_to(handle.path, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(ast.fix_missing_locations(tree), "README.md", "exec"), scope)
    exp = scope["exp"]
    assert exp.path.resolve() == handle.path.resolve() and exp.best_config == handle.best_config
    assert (handle.path / "report.html").is_file() and exp.trials.equals(handle.trials)
