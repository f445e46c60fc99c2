"""`mmtune dashboard`: optuna-dashboard on a real finished sweep's study.db, asked over HTTP on a free loopback port."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, _free_port, rows, run_sweep, study_matches_trials_csv


@pytest.fixture(scope="module")
def exp(ray_session, demo_dir, tmp_path_factory) -> Path:
    return run_sweep(demo_dir, tmp_path_factory.mktemp("res"), "dash")


def _get(url: str, deadline: float) -> dict:
    """GET URL as JSON, retrying while the server starts."""
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.load(r)
        except (urllib.error.URLError, ConnectionError):
            if time.time() > deadline:
                raise
            time.sleep(0.3)


def _dashboard(exp_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmtune.tune", "dashboard", str(exp_dir), "--port", str(port)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_dashboard_serves_the_study_as_trials_csv_says(exp):
    expected = study_matches_trials_csv(exp)  # the study's state of every trial, checked against trials.csv
    port = _free_port()
    proc = _dashboard(exp, port)
    try:
        deadline = time.time() + 60
        (study,) = _get(f"http://127.0.0.1:{port}/api/studies", deadline)["study_summaries"]
        assert study["study_name"] == "mmtune"
        detail = _get(f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", deadline)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    trials = detail["trials"]
    assert len(trials) == len(rows(exp)) == len(expected)
    states = {next(a["value"] for a in t["user_attrs"] if a["key"] == "ray_trial_id"): t["state"] for t in trials}
    assert states == {trial_id: state.capitalize() for trial_id, state in expected.items()}
    assert f"http://127.0.0.1:{port}/dashboard" in output.splitlines()[0]


def test_dashboard_follows_the_study_while_the_searcher_writes_it(tmp_path):
    """The driver's writes to study.db while the dashboard serves it: new trials, intermediate values and how each
    ended appear as they happen (the searcher itself writes, as in a sweep; no Ray runtime needed)."""
    from mmtune.tune.searcher import StudySearch
    from mmtune.tune.space import parse_space
    from mmtune.tune.storage import Location

    space = parse_space({"params": {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
                         "metric": "val/f1", "num_samples": 4}, "space.yaml")
    searcher = StudySearch(space, Location(tmp_path))
    searcher.set_search_properties(None, None, {})
    searcher.suggest("ray_a")  # study.db exists once the first trial is asked for
    port = _free_port()
    proc = _dashboard(tmp_path, port)
    try:
        deadline = time.time() + 60
        (study,) = _get(f"http://127.0.0.1:{port}/api/studies", deadline)["study_summaries"]
        url = f"http://127.0.0.1:{port}/api/studies/{study['study_id']}"
        _shows(url, [("ray_a", "Running", [])])
        searcher.on_trial_result("ray_a", {"val/f1": 0.4, "training_iteration": 1, "trial_status": "running"})
        searcher.suggest("ray_b")
        _shows(url, [("ray_a", "Running", [0.4]), ("ray_b", "Running", [])])
        searcher.on_trial_complete("ray_a", {"val/f1": 0.6, "training_iteration": 2, "trial_status": "completed"})
        # Stopped while running at epoch 2, ASHA's first rung (grace_period 2): pruned.
        searcher.on_trial_complete("ray_b", {"val/f1": 0.3, "training_iteration": 2, "trial_status": "running"})
        _shows(url, [("ray_a", "Complete", [0.4, 0.6]), ("ray_b", "Pruned", [0.3])])
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _shows(url: str, want: list[tuple[str, str, list[float]]], timeout: float = 30) -> None:
    """Wait until the dashboard's API shows WANT: (ray trial id, state, intermediate values) per trial."""
    deadline = time.time() + timeout
    while True:
        seen = [(next((a["value"] for a in t["user_attrs"] if a["key"] == "ray_trial_id"), None), t["state"],
                 [v["value"] for v in sorted(t["intermediate_values"], key=lambda v: v["step"])])
                for t in _get(url, deadline)["trials"]]
        if seen == want or time.time() > deadline:
            assert seen == want
            return
        time.sleep(0.3)


def test_a_folder_without_study_db_is_refused_naming_the_file(tmp_path, capsys):
    from mmtune.tune.cli import run

    assert run(["dashboard", str(tmp_path)]) == 2
    assert f"{tmp_path / 'study.db'}: no such file" in capsys.readouterr().err


def test_a_port_in_use_is_refused_naming_the_flag(tmp_path):
    import optuna

    optuna.create_study(study_name="mmtune", storage=f"sqlite:///{tmp_path / 'study.db'}")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _dashboard(tmp_path, port)
        try:
            output = proc.communicate(timeout=60)[0]
        finally:
            proc.kill()
    assert proc.returncode == 2 and f"--port {port}: already in use" in output
