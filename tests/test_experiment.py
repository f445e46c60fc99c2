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


def test_a_params_file_cut_by_a_kill_is_read_from_the_record_or_the_trial_left_out(exp):
    """Tune writes params.json in place, so a SIGKILL can leave it empty: the read model (resume, results) goes on."""
    (exp / "trial_fake0_00000" / "params.json").write_text("")  # ended: its record carries the config
    (exp / "trial_fake0_00003" / "params.json").write_text('{"lr": 0.0')  # no record, no config in its results
    cut = exp / "trial_fake0_00009"
    cut.mkdir()
    (cut / "params.json").write_text("")  # killed as it started: nothing else
    e = Experiment.open(exp)
    assert [t.trial_id for t in e.trials] == ["fake0_00000", "fake0_00001", "fake0_00002"]
    assert e.trials[0].params == {"lr": 1e-3, "dropout": 0.1}
    assert e.best().trial_id == "fake0_00000"


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
    assert any("no checkpoint kept" in n for n in summary["notes"])
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


def test_status_export_and_report_stay_light(exp):
    """`mmtune status` and `export` run, and the report's modules import, without Ray, torch or Optuna."""
    code = (f"import sys; from mmtune.tune.cli import run; assert run(['status', {str(exp)!r}]) == 0; "
            f"assert run(['export', {str(exp)!r}]) == 0; "
            "import mmtune.tune.experiment, mmtune.tune.results, mmtune.tune.report; "
            "import json; print(json.dumps(sorted(m for m in ('ray', 'torch', 'optuna') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


PACKAGES = ("data", "model", "tune")
MAX_DEFERRED = 15  # function-level imports of mmtune modules in tune/, each deferring a heavy or optional dependency


def _imports(path: Path) -> list[tuple[ast.ImportFrom, bool]]:
    """The mmtune imports of the module at PATH, each with whether it sits inside a function; imports under
    `if TYPE_CHECKING:` are for annotations only and never run."""
    found: list[tuple[ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom) and (child.module or "").startswith("mmtune."):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(ast.parse(path.read_text()), False)
    return found


def _import_graph() -> dict[str, set[str]]:
    """'package.module' -> the mmtune modules it imports, at any depth of the file (functions included)."""
    graph = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).glob("*.py"):
            deps = set()
            for node, _ in _imports(path):
                parts = node.module.split(".")[1:]
                if len(parts) == 1:  # from mmtune.tune import storage, sweep
                    deps |= {f"{parts[0]}.{a.name}" for a in node.names}
                else:
                    deps.add(".".join(parts[:2]))
            graph[f"{pkg}.{path.stem}"] = {d for d in deps if d in _modules()} - {f"{pkg}.{path.stem}"}
    return graph


def _modules() -> set[str]:
    return {f"{pkg}.{p.stem}" for pkg in PACKAGES for p in (REPO / pkg).glob("*.py")}


def test_no_import_cycle_in_any_package_counting_function_level_imports():
    graph = _import_graph()

    def visit(mod: str, stack: tuple[str, ...]) -> None:
        for dep in graph.get(mod, ()):
            assert dep not in stack, f"import cycle: {' -> '.join(stack + (dep,))}"
            visit(dep, stack + (dep,))

    for mod in graph:
        visit(mod, (mod,))


def test_layers_import_only_downwards():
    """data <- model <- tune: the training core knows nothing of the sweep."""
    rank = {"data": 0, "model": 1, "tune": 2}
    for mod, deps in _import_graph().items():
        upward = [d for d in deps if rank[d.split(".")[0]] > rank[mod.split(".")[0]]]
        assert not upward, f"{mod} imports {upward} from a higher layer"


def test_deferred_imports_in_tune_are_few_and_say_why():
    deferred = []
    for path in sorted((REPO / "tune").glob("*.py")):
        lines = path.read_text().splitlines()
        for node, in_function in _imports(path):
            if in_function:
                where = " ".join(lines[node.lineno - 2:node.end_lineno])  # the line above, for a comment there
                deferred.append((f"{path.name}:{node.lineno}", "# late:" in where))
    assert len(deferred) <= MAX_DEFERRED, deferred
    assert all(ok for _, ok in deferred), [w for w, ok in deferred if not ok]


def test_no_tune_module_is_over_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (REPO / "tune").glob("*.py")}
    assert max(sizes.values()) <= 420, sizes
