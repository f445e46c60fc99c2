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
