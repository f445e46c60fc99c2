"""Fast tier: the experiment read model, export and status on small experiment folders (no Ray, no sweep)."""
from __future__ import annotations

import ast
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmtune.model.status import TrialStatus
from tests.conftest import REPO
from tests.fake_experiment import FakeTrial, write_experiment
from mmtune.tune.errors import ResultsError
from mmtune.tune.experiment import Experiment, rank_trials
from mmtune.tune.results import export, status_table

S = TrialStatus


@pytest.fixture
def exp(tmp_path: Path) -> Path:
    return write_experiment(tmp_path, [
        FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5, 0.7, 0.6, 0.65]),  # best at epoch 2, not its last
        FakeTrial({"lr": 5e-3, "dropout": 0.2}, [0.4], S.PRUNED),
        FakeTrial({"lr": 9e-3, "dropout": 0.0}, [0.9], S.FAILED, error="Traceback...\nRuntimeError: boom"),
        FakeTrial({"lr": 2e-4, "dropout": 0.3}, [0.7, 0.7], None),  # still running: ties with trial 0
    ])


def test_trials_carry_status_best_epoch_and_start_order(exp):
    e = Experiment.open(exp)
    assert [t.status for t in e.trials] == [S.COMPLETED, S.PRUNED, S.FAILED, S.UNFINISHED]
    first = e.trials[0]
    assert (first.best_value, first.best_epoch, first.final_value, first.epochs) == (0.7, 2, 0.65, 4)
    assert e.trials[2].best_value is None  # a failed trial's values are not results
    # One ranking: failed trials left out, ties go to the trial that started first.
    assert [t.trial_id for t in e.ranked] == ["fake0_00000", "fake0_00003", "fake0_00001"]
    assert e.best().trial_id == "fake0_00000"
    # Trials whose values compare at the full budget: not the pruned one, not the one still running.
    assert [t.trial_id for t in e.full_budget] == ["fake0_00000"]


def test_min_metrics_pick_the_lowest_epoch_and_rank_lowest_first(tmp_path):
    from tests.fake_experiment import SPACE

    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.5, 0.3, 0.4]),
                                      FakeTrial({"lr": 2e-3, "dropout": 0.1}, [0.6, 0.2], S.EARLY_STOPPED)],
                           space={**SPACE, "metric": "val/loss", "mode": "min"})
    e = Experiment.open(exp)
    assert [(t.best_value, t.best_epoch) for t in rank_trials(e.trials)] == [(0.2, 2), (0.3, 2)]


def test_status_predicates_partition_the_vocabulary():
    assert {s for s in S if s.usable} == {S.COMPLETED, S.EARLY_STOPPED, S.STOPPED, S.PRUNED}
    assert {s for s in S if s.failed} == {S.FAILED, S.NAN, S.INFEASIBLE}
    assert {s for s in S if not s.finished} == {S.RUNNING, S.UNFINISHED}
    assert {s for s in S if s.finished and not s.final} == {S.FAILED}  # the one status a resume retries
    assert not any(s.usable and s.failed for s in S)


def test_export_writes_csv_config_and_summary_without_checkpoints(exp):
    summary = export(exp)
    assert summary["best_trial"] == "fake0_00000" and summary["best_value"] == 0.7 and summary["best_epoch"] == 2
    assert summary["trials_by_status"] == {"completed": 1, "pruned": 1, "failed": 1, "unfinished": 1}
    assert summary["versions"] == {"python": "3.11"}  # the provenance recorded at the start, not re-read now
    assert any("no readable checkpoint" in n for n in summary["notes"])
    with open(exp / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed", "pruned", "failed", "unfinished"]
    assert rows[2]["error"] == "RuntimeError: boom" and rows[0]["best val/f1"] == "0.7"
    assert "lr: 0.001" in (exp / "best_config.yaml").read_text()


def test_export_of_an_experiment_with_no_usable_trial_says_so(tmp_path):
    exp = write_experiment(tmp_path, [FakeTrial({"lr": 1e-3, "dropout": 0.1}, [0.0], S.NAN)])
    with pytest.raises(ResultsError, match="no trial has a finite value"):
        export(exp)


def test_not_an_experiment(tmp_path):
    with pytest.raises(ResultsError, match="not an mmtune experiment"):
        Experiment.open(tmp_path)


def test_status_table(exp):
    text = status_table(exp)
    assert "4/4 trials started, finished" in text
    assert [line.split()[1] for line in text.splitlines()[2:]] == ["completed", "pruned", "failed", "unfinished"]


def test_status_export_and_report_do_not_import_ray(exp):
    code = (f"import sys; from mmtune.tune.cli import run; assert run(['status', {str(exp)!r}]) == 0; "
            f"assert run(['export', {str(exp)!r}]) == 0; "
            "import mmtune.tune.experiment, mmtune.tune.results, mmtune.tune.report; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ray" not in json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))


def _tune_imports() -> dict[str, set[str]]:
    """Module -> the tune modules it imports (at any depth of the file)."""
    graph = {}
    for path in (REPO / "tune").glob("*.py"):
        tree = ast.parse(path.read_text())
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "mmtune.tune":
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mmtune.tune."):
                deps.add(node.module.split(".")[2])
        graph[path.stem] = deps - {path.stem}
    return graph


def test_no_import_cycle_in_tune():
    graph = _tune_imports()

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        for dep in graph.get(mod, ()):
            assert dep not in stack, f"import cycle: {' -> '.join(stack + (dep,))}"
            visit(dep, stack + (dep,))

    for mod in graph:
        visit(mod, (mod,))


def test_no_tune_module_is_over_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (REPO / "tune").glob("*.py")}
    assert max(sizes.values()) <= 420, sizes
