"""Shared fixtures: a small demo data set, tiny configs, one real Ray runtime for the session."""
from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

# One math thread per test process and per child it starts (a `mmtune train`, a sweep's driver): Ray's trial workers
# already run on one (Ray sets OMP_NUM_THREADS to their 1 CPU). On 2 shared cores, two spinning OpenMP threads in
# a test next to Ray's workers (or next to a second xdist worker) made in-process training 3-4x slower. Set before
# torch is first imported, which reads it; a value set by the caller is kept.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from mmtune.data.demo import make_demo  # noqa: E402
from mmtune.data.npz import load_dataset  # noqa: E402
from mmtune.model.config import TrainConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SMOKE = str(REPO / "search_spaces/smoke.yaml")
TINY = dict(d_model=16, nhead=2, num_layers=1, ff_mult=2, batch_size=32, train_steps=4, epochs=3, patience=0,
            device="cpu")


RAY_FIXTURES = {"ray_session", "subprocess_env", "s3_bucket"}  # a test using one runs Ray (or a server)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test that needs Ray (directly or through a fixture) is in the slow tier; the rest is the fast one.

    In an xdist worker, the tests are also put in the order their groups are handed out (below)."""
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput"):  # an xdist worker (every worker sorts alike: they must agree)
        rank = {name: i for i, name in enumerate((TIMING, *LONG_FIRST))}
        items.sort(key=lambda item: rank.get(xdist_group_of(item.nodeid), len(rank)))  # stable: order kept within


# `make test` runs the suite on two xdist workers (-n 2 --dist loadgroup --no-loadscope-reorder), in groups that a
# worker runs whole. The tests whose outcome hangs on timing (a node, a driver or a worker killed at a chosen moment;
# Ctrl-C; a loopback cluster) are one group: they run one after another on one worker, never two at once, while the
# other worker runs the rest. Every other test is grouped by its module, so that a module-scoped sweep runs once.
# (xdist's own loadgroup reads xdist_group marks through a node id it rewrites, which pytest 9.2 ignores: the
# groups are given to xdist's scheduler below instead.)
TIMING = "timing"
TIMING_TESTS = ("test_node_loss.py::", "test_cluster.py::", "test_interrupt.py::", "test_bench_faults.py::",
                "test_sweep.py::test_sigkill_driver_then_resume_loses_nothing")
# Handed out first, after the timing group, so that no long unit starts last: the longest other units in earlier
# runs on 2 cores. The units not named here follow in collection order.
LONG_FIRST = ("test_bench_quality.py", "test_bench_search.py", "test_bench_flow_cost.py", "test_bench_tasks.py",
              "test_tracking.py", "test_compare.py",
              "test_finalize.py", "test_racing_tune.py", "test_remote_storage.py", "test_packaging.py", "test_sweep.py",
              "test_faults.py", "test_api.py", "test_report.py", "test_loop.py", "test_cv.py", "test_dashboard.py")


def xdist_group_of(nodeid: str) -> str:
    """The xdist group of the test NODEID: TIMING, or its module's file name."""
    path, _, rest = nodeid.partition("::")
    module = path.rsplit("/", 1)[-1]
    return TIMING if f"{module}::{rest}".startswith(TIMING_TESTS) else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With --dist loadgroup: xdist's scope scheduler with xdist_group_of as the scope (a unit runs on one worker)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid)

    return GroupScheduling(config, log)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic approach-intent data set with train/val/test."""
    return make_demo(tmp_path_factory.mktemp("demo"), n_train=240, n_val=80, n_test=80, seed=0)


@pytest.fixture(scope="session")
def demo(demo_dir: Path):
    """The demo set loaded and standardized."""
    return load_dataset(demo_dir)


@pytest.fixture
def tiny_cfg() -> TrainConfig:
    """A model small enough to train in well under a second per epoch on CPU."""
    return TrainConfig(**TINY)


@pytest.fixture(scope="session")
def s3_port() -> Iterator[int]:
    """The port of the remote-storage tests' S3 server, and the environment that points clients at it.

    Set before the session's Ray starts: trial workers inherit the environment, and they write
    checkpoints to the bucket themselves.
    """
    port = _free_port()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in dict(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="test",
                               AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
                               AWS_EC2_METADATA_DISABLED="true").items():
            mp.setenv(key, value)
        yield port


@pytest.fixture(scope="session")
def ray_session(s3_port: int):
    """One real local Ray runtime for the whole session: 2 CPUs and 4 logical GPUs, private temp dir."""
    import ray

    # A short private temp dir: Ray's socket paths have a length limit, and a stale cluster file
    # from an earlier `ray stop` must not make init think it joins a cluster.
    tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    ray.init(num_cpus=2, num_gpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=tmp,
             object_store_memory=300 * 1024 * 1024, logging_level="ERROR", configure_logging=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def subprocess_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a child `mmtune` with its own embedded Ray in a private temp dir."""
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    ray_tmp = tempfile.mkdtemp(prefix="rs", dir="/tmp")
    env.update(RAY_TMPDIR=ray_tmp, PYTHONUNBUFFERED="1")
    return env


def run_sweep(data: Path, storage: Path, name: str, space: str = SMOKE, callbacks: tuple = (),
              no_asha: bool = False, **options) -> Path:
    """A real sweep in this process on the session's Ray runtime, exported; returns its folder."""
    from ray.tune.schedulers import FIFOScheduler

    from mmtune.tune.results import export
    from mmtune.tune.sweep import SweepOptions, sweep

    opts = SweepOptions(data=str(data), space=space, name=name, storage=str(storage), **options)
    exp = sweep(opts, scheduler=FIFOScheduler() if no_asha else None, callbacks=callbacks)
    export(exp.path)
    return exp.path


def resume_cli(exp: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`mmtune resume EXP` in a subprocess with ENV (a `subprocess_env`), its Ray processes cleaned up after; it must
    succeed (--debug: a failure shows its traceback)."""
    from mmtune.tune.faults import kill_processes_of

    proc = subprocess.run([sys.executable, "-m", "mmtune.tune", "--debug", "resume", str(exp), "--num-cpus", "2"],
                          env=env, capture_output=True, text=True, timeout=400)
    kill_processes_of(env["RAY_TMPDIR"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def rows(exp: Path) -> list[dict]:
    """The rows of an experiment's trials.csv."""
    with open(exp / "trials.csv") as f:
        return list(csv.DictReader(f))


def study_matches_trials_csv(exp: Path) -> dict[str, str]:
    """Check, trial by trial, that study.db says what trials.csv says; returns the states by trial id.

    A trial's latest Optuna trial counts (a failed trial retried by a resume is added anew).
    """
    import optuna

    study = optuna.load_study(study_name="mmtune", storage=f"sqlite:///{exp / 'study.db'}")
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.get_trials(deepcopy=False)
              if "ray_trial_id" in t.user_attrs}
    assert not [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    states = {}
    for row in rows(exp):
        t = by_ray[row["trial_id"]]
        assert t.user_attrs["status"] == row["status"], (row, t.user_attrs)
        if row["status"] in ("completed", "early_stopped", "stopped"):
            # Told the value mmtune ranks the trial by: its best epoch, not its last.
            assert t.state == optuna.trial.TrialState.COMPLETE and t.value == float(row["best val/f1"]), row
        elif row["status"] == "pruned":
            assert t.state == optuna.trial.TrialState.PRUNED and t.last_step == int(row["epochs"]), row
        else:
            assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["reason"].startswith(row["status"])
        assert sorted(t.intermediate_values) == list(range(1, int(row["epochs"]) + 1)) or row["status"] != "completed"
        states[row["trial_id"]] = t.state.name
    return states


@pytest.fixture(scope="session")
def s3_bucket(s3_port: int) -> Iterator[str]:
    """A real S3 endpoint (moto's server) on loopback with an empty bucket; returns the bucket's URI."""
    import pyarrow.fs as pafs

    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", s3_port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.2)
        pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{s3_port}", scheme="http",
                          allow_bucket_creation=True).create_dir("mmtune-test")
        yield "s3://mmtune-test"
    finally:
        server.terminate()
        server.wait(10)


def remote_files(uri: str) -> dict[str, int]:
    """Every file under URI with its size, by path relative to URI."""
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return {i.path[len(path) + 1:]: i.size for i in infos if i.type == pafs.FileType.File}
