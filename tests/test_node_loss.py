"""Node loss: a worker node of a real two-node Ray cluster on loopback dies mid-sweep, and nothing is lost.

The cluster is bench/loopback.py's (the one bench/faults.py --node-kill uses): `ray start --head` / `ray start
--address` as a user starts one, private RAY_TMPDIR, token auth, Ray's node health checks made fast. Each worker
node is a `ray start --block` in its own session, killed by SIGKILL to every process of it (found by a tag in its
environment, never by name). The sweep is a separate `python -m mmtune.tune sweep --address ...` on the head, on
the local S3 server; bench/faults.py --node-kill runs the file:// case (a folder both nodes see), and the first test
checks its experiment as closely.

What Ray guarantees, and so what is asserted, for a trial that was running on the dead node: Tune learns of a
trial's checkpoint in two steps. The trial uploads the checkpoint to storage *before* its report leaves the node,
so the driver never sees a report whose checkpoint is not fully stored; the driver then writes the result
(result.json) and afterwards registers the checkpoint (a `save` round trip to the trial's actor). A node that dies
between the two leaves epoch L in result.json whose checkpoint was never registered. So, with L the last epoch
the dead node reported, the retry on a surviving node reports L + 1 first (or L, when the kill cut that round trip:
L is then trained again from the same checkpoint and RNG state, with the same result), then every epoch to the
end once. The epoch that was in flight on the dead node (never reported) is the only work done twice.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest

from bench.loopback import (LoopbackCluster, Node, continued_once, failures, full_epochs_space, live_records,
                            moved_off, poll, tagged_pids, trials_on)
from mmtune.tune.experiment import result_lines
from tests.conftest import REPO, rows, study_matches_trials_csv

SAMPLES, EPOCHS, STEPS = 6, 8, 60  # ~1 s per epoch on a busy 2-core machine: trials are long enough to be caught
NAME = "nodeloss"
TIMEOUT_S = 400


class SweepCluster(LoopbackCluster):
    """The loopback cluster with the test's `mmtune sweep` on its head."""

    sweep_proc: subprocess.Popen | None = None

    def sweep(self, *args: str) -> subprocess.Popen:
        """`mmtune sweep` joining this cluster, as a separate process on the head (no node tag in its environment)."""
        with open(self.logs / "sweep.out", "wb") as out, open(self.logs / "sweep.err", "wb") as err:
            self.sweep_proc = subprocess.Popen(
                [sys.executable, "-m", "mmtune.tune", "sweep", "--address", self.address, "--name", NAME,
                 "--gpus-per-trial", "0", "--cpus-per-trial", "1", "--max-failures", "2", "--finalize-top-k", "0",
                 *args],
                env=self.env, cwd=REPO, stdout=out, stderr=err)
        return self.sweep_proc

    def close(self) -> None:
        """The sweep first (by its own pid), then the cluster."""
        if self.sweep_proc is not None and self.sweep_proc.poll() is None:
            self.sweep_proc.kill()
            self.sweep_proc.wait(timeout=30)
        super().close()


@dataclass
class Storage:
    uri: str  # --storage
    exp: Path  # the experiment's local folder (the mirror, for S3)


@pytest.fixture
def shared(s3_bucket, tmp_path) -> Storage:
    """Storage both nodes see: the local S3 server (AWS_* set in this process's environment), where a cut upload is a
    real object. (The file:// case: bench/faults.py --node-kill, run by the first test below.)"""
    uri = f"{s3_bucket}/{tmp_path.name}"
    return Storage(uri, tmp_path / "mirror/remote/s3" / uri.removeprefix("s3://") / NAME)


@pytest.fixture
def cluster(shared, subprocess_env, tmp_path):
    """The head of a loopback cluster (a test adds its workers); every process it starts is killed at the end, also
    on failure."""
    env = {**subprocess_env, **{k: v for k, v in os.environ.items() if k.startswith("AWS_")},
           "MMTUNE_CACHE": str(tmp_path / "mirror")}
    c = SweepCluster(env, tmp_path, ray_tmp=env["RAY_TMPDIR"])
    try:
        c.start_head()
        yield c
    finally:
        c.close()


# ----------------------------------------------------------------------------- observing the sweep


def wait_until(c: SweepCluster, what: str, done: Callable[[], Any], timeout: float = TIMEOUT_S, every: float = 0.1):
    """DONE's first truthy value; fail with the sweep's output if the sweep ends or time runs out first."""
    if found := poll(done, c.sweep_proc, timeout, every):
        return found
    pytest.fail(f"{what}: not seen (sweep exit {c.sweep_proc.poll()})\n"
                + (c.logs / "sweep.err").read_text(errors="replace")[-3000:])


def running_on(c: SweepCluster, node: Node, min_epoch: int, max_epoch: int = EPOCHS - 2) -> tuple[str, dict] | None:
    """A trial of the sweep on NODE whose last report is of epoch MIN_EPOCH..MAX_EPOCH: (trial id, that result)."""
    return c.running_on(NAME, node, min_epoch, max_epoch)


def storage_fs(shared: Storage):
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(shared.uri)
    return fs, f"{root}/{NAME}"


def catch_checkpoint_upload(c: SweepCluster, node: Node, shared: Storage) -> dict[str, Any]:
    """Freeze (SIGSTOP) a trial of NODE the moment the folder of its next checkpoint appears in storage, and keep it
    frozen if that checkpoint file is not there yet (or is short): the upload is cut, so its report cannot have
    left the node. The node is then killed, that process first, as a node dies mid-upload; the freeze only fixes
    that moment.

    If the file is already whole, its report may be on its way (and the driver may write it seconds later): that
    moment is let go (SIGCONT) and the trial's next checkpoint is tried.
    """
    import pyarrow.fs as pafs

    fs, root = storage_fs(shared)
    attempts = 0
    while True:
        trial, last = wait_until(c, f"a trial on {node.name} past epoch 2", lambda: running_on(c, node, 2, EPOCHS - 1),
                                 every=0.02)
        index = int(last["checkpoint_dir_name"].rsplit("_", 1)[1]) + 1  # the folder of its next epoch's checkpoint
        folder = f"{root}/trial_{trial}/checkpoint_{index:06d}"
        assert last["pid"] in tagged_pids(node.tag), last  # the trial's process is one of the node's
        whole = fs.get_file_info(f"{root}/trial_{trial}/{last['checkpoint_dir_name']}/checkpoint.pt").size
        if not whole:
            continue  # its last checkpoint not visible yet
        if fs.get_file_info(folder).type != pafs.FileType.NotFound:
            time.sleep(0.05)
            continue  # there already: the driver has not written the trial's latest report yet
        attempts += 1
        if not wait_for_folder(c, fs, folder, trial, last["epoch"]):
            continue  # reported already: missed
        os.kill(last["pid"], signal.SIGSTOP)  # at once: the upload is under way
        held = {i.path.rsplit("/", 1)[1]: i.size for i in fs.get_file_info(pafs.FileSelector(folder))}
        if held.get("checkpoint.pt", 0) < 0.9 * whole:  # checkpoints grow by a few hundred bytes per epoch
            return {"trial": trial, "epoch": last["epoch"], "folder": folder.rsplit("/", 1)[1], "held": held,
                    "previous_size": whole, "attempts": attempts, "pid": last["pid"]}
        os.kill(last["pid"], signal.SIGCONT)


def wait_for_folder(c: SweepCluster, fs, folder: str, trial: str, epoch: int) -> bool:
    """Poll (every few ms) until FOLDER exists in storage: True; False once the trial reported past EPOCH."""
    import pyarrow.fs as pafs

    deadline, n = time.time() + 60, 0
    while time.time() < deadline and c.sweep_proc.poll() is None:
        if fs.get_file_info(folder).type != pafs.FileType.NotFound:
            return True
        n += 1
        if n % 100 == 0 and c.live_results(NAME).get(trial, [{}])[-1].get("epoch") != epoch:
            return False
        time.sleep(0.001)
    return False


# ----------------------------------------------------------------------------- what must hold afterwards


def check_nothing_lost(c: SweepCluster, shared: Storage, dead: Node, new: Node,
                       before: dict[str, dict]) -> dict[str, Any]:
    """The sweep's end state after the node loss; returns what the victims did (for the caller's own checks)."""
    out, err = (c.logs / "sweep.out").read_text(), (c.logs / "sweep.err").read_text(errors="replace")
    assert c.sweep_proc.returncode == 0, err[-3000:]
    assert "cluster: 2 node(s), 2 CPUs" in out and "concurrent trials: 2" in out, out[:2000]
    assert "retried up to 2 time(s)" in out, out[:2000]  # the plan says how many node losses a trial survives
    alive = c.alive_nodes()
    assert dead.node_id not in alive and new.node_id in alive, "the cluster did not declare the killed node dead"
    return check_experiment(f"{shared.uri.removeprefix('file://')}/{NAME}", shared.exp, c.env, dead.node_id,
                            new.node_id, before, SAMPLES, EPOCHS)


def check_experiment(where: str, exp: Path, env: dict[str, str], dead: str, new: str, before: dict[str, dict],
                     samples: int, epochs: int) -> dict[str, Any]:
    """After a node loss: `mmtune export` of WHERE works, and the experiment (local folder EXP) lost nothing and ran
    nothing twice; what the victims did."""
    export = subprocess.run([sys.executable, "-m", "mmtune.tune", "export", where],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    from mmtune.tune import records

    # Exactly num_samples trials, each ended once with all its epochs; every config once.
    table = rows(exp)
    after = records.read_all(exp)
    assert len(table) == samples and set(after) == {r["trial_id"] for r in table}, (len(table), sorted(after))
    assert {r["status"] for r in table} == {"completed"} and {int(r["epochs"]) for r in table} == {epochs}, table
    assert all(rec["status"] == "completed" and rec["epochs"] == epochs for rec in after.values()), after
    configs = [json.dumps(rec["config"], sort_keys=True) for rec in after.values()]
    assert len(set(configs)) == samples, "a config ran under two trial ids"
    # Trials that had ended before the kill were not touched again.
    for tid, rec in before.items():
        assert after[tid] == rec, f"trial {tid} ended before the kill, and its record changed"

    victims, moved = {}, moved_off(exp, dead)
    for r in table:
        tid = r["trial_id"]
        res = result_lines(exp / f"trial_{tid}" / "result.json")
        assert [x["training_iteration"] for x in res] == [x["epoch"] for x in res], tid
        if tid not in moved:
            # Not hit by the kill: each epoch once, from one worker, and never a failure.
            assert [x["epoch"] for x in res] == list(range(1, epochs + 1)), (tid, [x["epoch"] for x in res])
            assert len({x["pid"] for x in res}) == 1 and failures(exp / f"trial_{tid}") == 0, tid
            continue
        # Running on the dead node when it died: continued on a surviving node from its last checkpoint.
        on_dead, rest = moved[tid]
        last, first = on_dead[-1]["epoch"], rest[0]["epoch"]
        assert [x["epoch"] for x in on_dead] == list(range(1, last + 1)), (tid, on_dead)
        assert all(x["node_id"] != dead for x in rest), (tid, "dead node's reports after others'")
        assert continued_once(on_dead, rest, epochs), \
            f"trial {tid}: the dead node reported up to epoch {last}, the retry {[x['epoch'] for x in rest]}"
        assert rest[0]["iterations_since_restore"] == 1, rest[0]
        if first == last:  # the kill cut the checkpoint's registration: epoch `last` replayed, identically
            assert rest[0]["val/f1"] == on_dead[-1]["val/f1"] and rest[0]["val/loss"] == on_dead[-1]["val/loss"]
        assert failures(exp / f"trial_{tid}") == 1, f"trial {tid}: a node loss must count as one failure"
        victims[tid] = {"last_on_dead_node": last, "first_after": first, "retried_on": rest[0]["node_id"][:8]}
    assert len(victims) == 1, victims  # the dead node had one CPU: one trial was running there

    # The node started after the kill joined and ran trials.
    on_new = trials_on(exp, new)
    assert on_new, "the new worker node got no trial"

    # trials.csv, the records and study.db agree: every trial told once, COMPLETE, with every epoch's value.
    import optuna

    states = study_matches_trials_csv(exp)
    study = optuna.load_study(study_name="mmtune", storage=f"sqlite:///{exp / 'study.db'}")
    assert len(study.trials) == samples and set(states.values()) == {"COMPLETE"}, states
    assert all(sorted(t.intermediate_values) == list(range(1, epochs + 1)) for t in study.trials)
    print(f"trials on the new node: {len(on_new)}")
    return victims


# ----------------------------------------------------------------------------- the tests


def start(cluster: SweepCluster, shared: Storage, demo_dir: Path, tmp_path: Path) -> Node:
    worker = cluster.add_worker("worker1")
    space = full_epochs_space(tmp_path / "space.yaml", SAMPLES, EPOCHS, "tests/test_node_loss.py", STEPS)
    cluster.sweep("--data", str(demo_dir), "--space", str(space), "--storage", shared.uri)
    return worker


@pytest.mark.slow
def test_worker_node_killed_mid_training(tmp_path, subprocess_env):
    """bench/faults.py --node-kill (the same loopback cluster, its sweep on file:// storage both nodes see): a worker
    node dies while one of its trials trains; a new node joins; the sweep ends with nothing lost or run twice, as the
    benchmark counts it and as the experiment's files show it."""
    # Enough work after the kill for the new node: a trial that ends on the head hands its actor to the next trial
    # (reuse_actors), and in a loaded run the new node's first actor started slower than 5 trials x 6 epochs took.
    out, work, trials, epochs = tmp_path / "node_kill.json", tmp_path / "work", SAMPLES, EPOCHS
    cmd = [sys.executable, str(REPO / "bench/faults.py"), "--node-kill", "--trials", str(trials), "--epochs",
           str(epochs), "--no-clean", "--out", str(out), "--keep", str(work)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert out.is_file(), proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["trials_finished"] == trials and res["trials_lost"] == 0, res
    assert res["trials_run_twice"] == 0, res["run_twice_details"]
    killed = res["node_kill"]
    assert killed["declared_dead"] and len(killed["trials_on_dead_node"]) == 1, killed
    assert [v["failures"] for v in killed["trials_on_dead_node"].values()] == [1], killed
    assert proc.returncode == 0
    victims = check_experiment(str(work / "faulty"), work / "faulty", subprocess_env, killed["dead_node"],
                               killed["new_node"], {}, trials, epochs)  # the benchmark checked the ended records
    trial, epoch = killed["killed"]["trial"], killed["killed"]["epoch"]
    assert trial in victims and victims[trial]["last_on_dead_node"] >= epoch >= 1, (victims, killed)


@pytest.mark.slow
def test_worker_node_killed_during_checkpoint_upload(cluster, shared, demo_dir, tmp_path):
    """A worker node dies while a trial uploads a checkpoint it has not reported yet: the retry continues from the
    last reported checkpoint, never from the half-uploaded one (that would skip an epoch in result.json)."""
    worker = start(cluster, shared, demo_dir, tmp_path)
    caught = catch_checkpoint_upload(cluster, worker, shared)
    before = live_records(shared.exp)
    cluster.kill(worker, first=caught["pid"])  # the frozen trial first: it must not resume mid-kill
    new = cluster.add_worker("worker2", registered=False)
    cluster.sweep_proc.wait(timeout=TIMEOUT_S)
    victims = check_nothing_lost(cluster, shared, worker, new, before)
    v = victims.get(caught["trial"])
    # The upload was cut, so its report never reached the driver.
    assert v is not None and v["last_on_dead_node"] == caught["epoch"], (caught, victims)
    # The cut folder was to hold epoch `last + 1`; continuing from it would report `last + 2` first.
    assert v["first_after"] <= caught["epoch"] + 1, (caught, v)
    print(f"upload cut: {caught}; victim: {v}")


def test_restore_never_picks_a_checkpoint_newer_than_the_latest(tmp_path):
    """The trainable's fallback, when the checkpoint Tune hands back is unreadable, takes the newest *older* one.

    A newer folder is one whose report never reached the driver, like the upload a node death cut short: it may be
    half-written, and its epoch is in no result. Only file:// storage has a fallback (object storage fetches the
    latest only).
    """
    from ray import tune

    from mmtune.model.checkpoint import FORMAT, save_checkpoint
    from mmtune.tune.trainable import restore

    for index in range(3):
        save_checkpoint({"format": FORMAT, "epoch": index + 1}, tmp_path / f"checkpoint_{index:06d}" / "checkpoint.pt")
    (tmp_path / "checkpoint_000001" / "checkpoint.pt").write_bytes(b"cut short")  # the latest Tune knows of
    state = restore(tune.Checkpoint.from_directory(str(tmp_path / "checkpoint_000001")))
    assert state["epoch"] == 1, f"restored epoch {state['epoch']} from a checkpoint newer than the latest"
