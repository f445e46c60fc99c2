"""Real sweeps: Ray Tune + OptunaSearch + ASHA on the demo data, results, failures, resume."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mmtune.model.config import load_config
from mmtune.model.loop import fit
from tests.conftest import REPO, SMOKE, resume_cli, rows, run_sweep, study_matches_trials_csv
from mmtune.model.status import TrialStatus
from mmtune.tune import records
from mmtune.tune.cli import run
from mmtune.tune.errors import SweepError
from mmtune.tune.faults import kill_processes_of
from mmtune.tune.ray_runtime import cluster_nodes
from mmtune.tune.resources import plan_resources
from mmtune.tune.searcher import INTERRUPTED
from mmtune.tune.space import load_space
from mmtune.tune.job import prepare
from mmtune.tune.sweep import SweepOptions, sweep



@pytest.fixture(scope="module")
def smoke_exp(ray_session, demo_dir, tmp_path_factory) -> Path:
    return run_sweep(demo_dir, tmp_path_factory.mktemp("res"), "smoke")


def test_smoke_sweep_writes_every_result(smoke_exp):
    trials = rows(smoke_exp)
    space = load_space(SMOKE)
    assert len(trials) == space.num_samples
    assert {t["status"] for t in trials} <= {"completed", "pruned", "early_stopped"}
    assert all(1 <= int(t["epochs"]) <= space.epochs for t in trials)
    summary = json.loads((smoke_exp / "summary.json").read_text())
    assert summary["trials"] == space.num_samples and summary["finished"] is True
    assert summary["best_value"] == max(float(t["best val/f1"]) for t in trials)
    assert summary["selection"].startswith("best epoch")
    assert {"torch", "ray", "optuna"} <= set(summary["versions"]) and summary["seeds"]["sampler"] == space.seed
    assert (smoke_exp / "best" / "checkpoint.pt").is_file()
    # Each trial keeps its best-epoch checkpoint and its latest one, no more.
    for t in trials:
        kept = list((smoke_exp / f"trial_{t['trial_id']}").glob("checkpoint_*"))
        assert 1 <= len(kept) <= 2
    # Per-epoch reports: training_iteration is the epoch.
    best_dir = smoke_exp / f"trial_{summary['best_trial']}"
    lines = [json.loads(x) for x in (best_dir / "result.json").read_text().splitlines()]
    assert [r["training_iteration"] for r in lines] == [r["epoch"] for r in lines]


def test_asha_stopped_some_trials(smoke_exp):
    # 4 trials, grace 1, reduction 2, max_t 3: the rungs cannot let everyone run to the end.
    epochs = [int(t["epochs"]) for t in rows(smoke_exp)]
    assert sum(epochs) < 4 * 3


def test_study_tells_optuna_how_each_trial_ended(smoke_exp):
    states = study_matches_trials_csv(smoke_exp)
    # The stock OptunaSearch would tell a pruned trial COMPLETE with its last (short-budget) value.
    assert "PRUNED" in states.values() and "COMPLETE" in states.values(), states


def test_best_config_retrains_to_the_same_value(smoke_exp, demo):
    summary = json.loads((smoke_exp / "summary.json").read_text())
    cfg = load_config(smoke_exp / "best_config.yaml")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial (1 CPU per trial)
    try:
        result, _ = fit(cfg, demo)
    finally:
        torch.set_num_threads(threads)
    at_epoch = result.history[summary["best_epoch"] - 1]["val/f1"]
    assert at_epoch == pytest.approx(summary["best_value"], abs=1e-9)


def test_status_and_export_commands(smoke_exp, tmp_path, capsys):
    assert run(["status", str(smoke_exp)]) == 0
    out = capsys.readouterr().out
    assert "4/4 trials started, finished" in out and "best val/f1" in out
    target = tmp_path / "best.yaml"
    assert run(["export", str(smoke_exp), "--out", str(target)]) == 0
    assert load_config(target) == load_config(smoke_exp / "best_trial_config.yaml")
    # No finalize run: best_config.yaml is the best trial's too.
    assert load_config(smoke_exp / "best_config.yaml") == load_config(target)


def test_disk_full_while_writing_results_keeps_earlier_files(smoke_exp, tmp_path, capsys):
    import shutil

    exp = tmp_path / "copy"
    shutil.copytree(smoke_exp, exp)
    before = (exp / "summary.json").read_text()
    (exp / ".summary.json.tmp").symlink_to("/dev/full")  # the next summary write finds the disk full
    assert run(["export", str(exp)]) == 1
    err = capsys.readouterr().err
    assert "no space left" in err and "summary.json" in err and "Traceback" not in err
    assert (exp / "summary.json").read_text() == before and not (exp / ".summary.json.tmp").exists()
    assert (exp / "best_config.yaml").is_file() and (exp / "trials.csv").is_file()


def test_same_name_is_refused_unless_overwrite(smoke_exp, demo_dir):
    opts = SweepOptions(data=str(demo_dir), space=SMOKE, name="smoke", storage=str(smoke_exp.parent))
    with pytest.raises(SweepError, match="finished experiment of that name exists.*mmtune resume"):
        prepare(opts)
    opts.overwrite = True
    assert prepare(opts).loc.local == smoke_exp


def test_failed_and_nan_trials_do_not_stop_the_sweep(ray_session, demo_dir, tmp_path):
    space = yaml.safe_load(Path(SMOKE).read_text())
    space.update(num_samples=5, epochs=2, asha={"grace_period": 2, "reduction_factor": 2})
    space["fixed"]["grad_clip"] = 0.0
    # device=cuda fails on this CPU-only machine: a real error inside the trial, not a mock.
    space["params"] = {"lr": {"type": "categorical", "choices": [1e-3, 1e6]},
                       "device": {"type": "categorical", "choices": ["cpu", "cuda"]}}
    space["start"] = [{"lr": 1e-3, "device": "cpu"}, {"lr": 1e6, "device": "cpu"}, {"lr": 1e-3, "device": "cuda"}]
    path = tmp_path / "faulty.yaml"
    path.write_text(yaml.safe_dump(space))
    exp = run_sweep(demo_dir, tmp_path, "faulty", space=str(path), max_failures=0)
    by_status: dict[str, list] = {}
    for t in rows(exp):
        by_status.setdefault(t["status"], []).append(t)
    assert len(rows(exp)) == 5
    assert by_status.get("failed") and by_status.get("nan") and by_status.get("completed"), by_status
    assert all(t["device"] == "cuda" for t in by_status["failed"])
    assert "CUDA is not available" in by_status["failed"][0]["error"]
    assert all(float(t["lr"]) == 1e6 for t in by_status["nan"])
    study_matches_trials_csv(exp)  # failed and diverged trials are FAIL, with the reason
    summary = json.loads((exp / "summary.json").read_text())
    assert summary["best_params"] == {"lr": 1e-3, "device": "cpu"}


def test_infeasible_config_is_reported_not_crashed(ray_session, demo_dir, tmp_path):
    """A config that passes each parameter's check but not the combination (eta_min >= lr)."""
    from mmtune.tune.tuner import FixedConfigs

    point = {"lr": 1e-3, "eta_min": 5e-3}
    exp = sweep(SweepOptions(data=str(demo_dir), space=SMOKE, name="infeasible", storage=str(tmp_path),
                             num_samples=1), searcher=FixedConfigs([point]))
    [trial] = exp.trials
    assert trial.status is TrialStatus.INFEASIBLE and "eta_min" in trial.last_result["error"]
    assert trial.last_result["val/f1"] == 0.0 and trial.best_value is None  # ranked last, never best
    assert records.read(exp.path, trial.trial_id)["status"] == "infeasible"


def test_plan_packs_small_models_on_logical_gpus(ray_session, demo):
    space = load_space(SMOKE)
    plan = plan_resources(space, demo.modalities, cluster_nodes())
    assert plan.gpus == 4 and plan.trials_per_gpu > 1 and plan.gpus_per_trial == 1 / plan.trials_per_gpu
    assert plan.concurrent == 2  # two CPUs bound it
    assert "cluster: 1 node(s), 2 CPUs, 4 GPUs" in plan.describe()
    assert "retried up to 3 time(s)" in plan_resources(space, demo.modalities, cluster_nodes(), max_failures=3).describe()


def test_plan_on_heterogeneous_nodes(demo, monkeypatch):
    monkeypatch.setenv("MMTUNE_GPU_GB", "16")
    nodes = [{"CPU": 8.0, "GPU": 4.0}, {"CPU": 8.0}]
    small = load_space(SMOKE).with_overrides(num_samples=100)
    plan = plan_resources(small, demo.modalities, nodes)
    # GPU trials fit only on the GPU node: its 8 CPUs bound them, not the GPUs.
    assert plan.trials_per_gpu == 8 and plan.concurrent == 8
    big = load_space(REPO / "search_spaces/default.yaml").with_overrides(num_samples=100)
    monkeypatch.setenv("MMTUNE_GPU_GB", "1")
    plan = plan_resources(big, demo.modalities, nodes)
    assert plan.trials_per_gpu == 1 and plan.concurrent == 4 and "one trial per GPU" in plan.describe()
    assert plan_resources(big, demo.modalities, nodes, max_concurrent=3).concurrent == 3
    cpu_only = plan_resources(small, demo.modalities, [{"CPU": 2.0}])
    assert cpu_only.gpus_per_trial == 0 and cpu_only.concurrent == 2
    with pytest.raises(SweepError, match="no node has that many GPUs"):
        plan_resources(small, demo.modalities, nodes, gpus_per_trial="8")


@pytest.mark.parametrize("flag, value, words", [
    ("--gpus-per-trial", "1.5", "fraction"), ("--cpus-per-trial", "0", "> 0"),
    ("--max-concurrent", "0", ">= 1"), ("--name", "../escape", "no '/' or '..'"),
    ("--epochs", "0", "epochs"), ("--num-samples", "-2", "num_samples"),
    ("--finalize-top-k", "-1", "--finalize-top-k -1"), ("--finalize-seeds", "0", "--finalize-seeds 0"),
])
def test_bad_sweep_flags_exit_2_before_ray(demo_dir, tmp_path, capsys, flag, value, words):
    code = run(["sweep", "--data", str(demo_dir), "--space", SMOKE, "--storage", str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert code == 2 and words in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_space_exits_2_before_ray_starts(demo_dir, tmp_path, subprocess_env):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  d_modl: {type: int, low: 8, high: 16}\n")
    proc = subprocess.run([sys.executable, "-m", "mmtune.tune", "sweep", "--data", str(demo_dir), "--space", str(bad),
                           "--storage", str(tmp_path / "res")], capture_output=True, text=True, env=subprocess_env)
    assert proc.returncode == 2
    assert f"{bad}: key 'params.d_modl'" in proc.stderr and "Traceback" not in proc.stderr
    assert "cluster:" not in proc.stdout and not (tmp_path / "res").exists()
    assert not list(Path(subprocess_env["RAY_TMPDIR"]).iterdir())  # Ray never started


def _kill_tree(proc: subprocess.Popen, ray_tmp: str) -> None:
    """SIGKILL the driver's process group, then any process of its Ray (found by its temp dir)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    kill_processes_of(ray_tmp)


def test_resume_after_a_kill_between_tuner_pkl_and_the_first_state_runs_the_whole_sweep(smoke_exp, tmp_path):
    # The folder a driver leaves when killed after writing tuner.pkl, before Tune's first experiment state.
    exp = tmp_path / "res" / smoke_exp.name
    exp.mkdir(parents=True)
    shutil.copy(smoke_exp / "tuner.pkl", exp)
    meta = json.loads((smoke_exp / "mmtune.json").read_text())
    (exp / "mmtune.json").write_text(json.dumps({**meta, "finished": False}))
    sweep(SweepOptions.for_experiment(exp))  # a restore from tuner.pkl alone would run a 1-trial sweep
    assert len(records.read_all(exp)) == load_space(SMOKE).num_samples


def test_resume_after_a_kill_between_the_trial_list_and_the_searcher_state_runs_no_extra_trial(smoke_exp, tmp_path):
    """Tune saves (and copies into the experiment folder) its trial list, then the searcher's state and its trial
    counter: a driver killed in between leaves a trial list that holds a trial they do not count. Made here from a
    finished sweep by taking its last trial out of both; the resume runs no trial beyond num_samples, and the study
    still says what trials.csv says."""
    import pickle

    exp = tmp_path / "res" / smoke_exp.name
    shutil.copytree(smoke_exp, exp)
    n = load_space(SMOKE).num_samples
    last = max(records.read_all(exp).values(), key=lambda r: r["ended"])["trial_id"]
    (gen_file,) = exp.glob("search_gen_state-*.json")  # a pickle, despite its name
    gen = pickle.loads(gen_file.read_bytes())
    assert gen["counter"] == n
    gen_file.write_bytes(pickle.dumps({**gen, "counter": n - 1}))
    (searcher_file,) = exp.glob("searcher-state-*.pkl")
    state = pickle.loads(searcher_file.read_bytes())
    state["_ot_trials"].pop(last)
    state["_completed_trials"].discard(last)
    searcher_file.write_bytes(pickle.dumps(state))
    meta = json.loads((exp / "mmtune.json").read_text())
    (exp / "mmtune.json").write_text(json.dumps({**meta, "finished": False}))
    sweep(SweepOptions.for_experiment(exp))
    assert len(records.read_all(exp)) == len(rows(exp)) == n
    assert len(study_matches_trials_csv(exp)) == n


KILL_POINTS = {
    "start": lambda exp: (exp / "mmtune.json").is_file(),  # Ray may not have saved any state yet
    "first_checkpoint": lambda exp: any(exp.glob("trial_*/checkpoint_*")),  # checkpoints being written
    "mid_sweep": lambda exp: len(records.read_all(exp)) >= 2,
}


@pytest.mark.slow
@pytest.mark.parametrize("when", list(KILL_POINTS))
def test_sigkill_driver_then_resume_loses_nothing(demo_dir, tmp_path, subprocess_env, monkeypatch, when):
    storage, name, n = tmp_path / "res", "killed", 6
    cmd = [sys.executable, "-m", "mmtune.tune", "sweep", "--data", str(demo_dir), "--space", SMOKE, "--name", name,
           "--storage", str(storage), "--num-samples", str(n), "--num-cpus", "2", "--finalize-top-k", "0"]
    mlflow_uri = f"file://{tmp_path / 'mlruns'}"  # tracked where trials are cut mid-training: their runs go on
    if when == "mid_sweep":
        cmd += ["--mlflow", mlflow_uri]
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 opens a file store only when asked to
        subprocess_env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    exp = storage / name
    proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while not KILL_POINTS[when](exp) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        killed_at = time.time()
    finally:
        _kill_tree(proc, subprocess_env["RAY_TMPDIR"])
    before = records.read_all(exp)
    assert len(before) < n, "the sweep should be killed before it ends"
    if when == "mid_sweep":  # MLflow's file store writes meta.yaml in place: the kill can cut one, here one is cut
        next((tmp_path / "mlruns").glob("*/*/meta.yaml")).write_text("")
    proc = resume_cli(exp, subprocess_env)
    after = records.read_all(exp)
    assert len(after) == n and len(rows(exp)) == n  # exactly num_samples trials
    assert {r["status"] for r in after.values()} <= {"completed", "pruned"}, after  # none lost to the kill
    for trial_id, rec in before.items():
        assert after[trial_id] == rec  # finished trials kept as they were
        ckpts = list((exp / f"trial_{trial_id}").glob("checkpoint_*"))
        assert all(c.stat().st_mtime < killed_at for c in ckpts), "a finished trial trained again"
    assert "best config:" in proc.stdout
    # The searcher came back with its history: every trial, those before the kill included, is in its study.
    # The study came back with its history: it says what trials.csv says, trial by trial, nothing left running.
    assert len(study_matches_trials_csv(exp)) == n
    if when == "mid_sweep":
        _one_finished_run_per_trial(mlflow_uri, name, exp)


def _one_finished_run_per_trial(uri: str, name: str, exp: Path) -> None:
    """MLflow holds one finished run per trial of trials.csv, each with every epoch the trial ran. The only other
    runs are of trials the driver started after Ray's last save, which the resume could not continue (the study
    says "interrupted"): ended KILLED, none left RUNNING."""
    import optuna
    from mlflow.tracking import MlflowClient

    trials = rows(exp)
    study = optuna.load_study(study_name="mmtune", storage=f"sqlite:///{exp / 'study.db'}")
    forgotten = {t.user_attrs.get("ray_trial_id") for t in study.trials  # None: killed before the id was set
                 if t.user_attrs.get("reason") == INTERRUPTED}
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
    kept = [r for r in runs if r.data.tags["ray_trial_id"] not in forgotten]
    assert sorted(r.data.tags["ray_trial_id"] for r in kept) == sorted(t["trial_id"] for t in trials)
    assert {r.info.status for r in kept} == {"FINISHED"}
    epochs = {t["trial_id"]: int(t["epochs"]) for t in trials}
    for r in kept:
        steps = {m.step for m in client.get_metric_history(r.info.run_id, "val/f1")}
        assert steps == set(range(1, epochs[r.data.tags["ray_trial_id"]] + 1)), r.data.tags
    assert {r.info.status for r in runs if r.data.tags["ray_trial_id"] in forgotten} <= {"KILLED"}


LISTENERS = r'''
import json, os, socket, struct, sys
from pathlib import Path
from mmtune.tune.ray_runtime import connect
connect(None, num_cpus=1)
import ray
ray.get(ray.remote(lambda: 1).remote())  # a worker too
def table():
    t = {}
    for fn in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(fn).read().splitlines()[1:]:
            p = line.split()
            if p[3] == "0A":  # LISTEN
                ip = p[1].split(":")[0]
                raw = bytes.fromhex(ip)  # the kernel prints 32-bit words in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                t[p[9]] = socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
    return t
session = ray.get_runtime_context().gcs_address
tmp = os.environ["RAY_TMPDIR"]
listening, tab = {}, table()
for d in Path("/proc").iterdir():
    if not d.name.isdigit():
        continue
    try:
        mine = int(d.name) == os.getpid() or tmp in (d / "cmdline").read_bytes().decode(errors="ignore")
        fds = list((d / "fd").iterdir()) if mine else []
    except OSError:
        continue
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in tab:
            listening.setdefault(tab[link[8:-1]], []).append(d.name)
print(json.dumps({"gcs": session, "node_ip": ray.util.get_node_ip_address(), "listening": listening}))
ray.shutdown()
'''


def test_embedded_ray_listens_on_loopback_only(subprocess_env):
    """Every listening socket of the embedded runtime (driver, GCS, raylet, workers) is on loopback."""
    proc = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, env=subprocess_env,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["gcs"].startswith("127.0.0.1:") and seen["node_ip"] == "127.0.0.1"
    assert seen["listening"], "found no listening socket at all: the check itself is broken"
    assert all(a in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for a in seen["listening"]), seen["listening"]


def test_default_space_with_epochs_below_its_first_rung_runs(ray_session, demo_dir, tmp_path):
    """`mmtune sweep --epochs 1` on the shipped default space (first rung at epoch 4): no rung fits the budget, so
    the sweep runs without early stopping and says so, and the recorded space reads back for resume and export."""
    from mmtune.tune.experiment import Experiment

    exp = run_sweep(demo_dir, tmp_path, "epochs1", space="default", num_samples=1, epochs=1, cv="0")
    plan = json.loads((exp / "mmtune.json").read_text())["plan"]
    assert plan["early_stopping"].startswith("none: --epochs 1 leaves no ASHA rung below the budget")
    (row,) = rows(exp)
    assert row["status"] == "completed" and row["epochs"] == "1"
    assert Experiment.open(exp).space.rungs == []
