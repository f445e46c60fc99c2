"""A multi-node Ray cluster on loopback, and what bench/faults.py and tests/test_node_loss.py see of a sweep on it.

The cluster is started as a user starts one (`ray start --head` / `ray start --address`, token auth), in one
private RAY_TMPDIR, with Ray's node health checks made fast (FAST_DETECTION). Each worker node is a
`ray start --block` in its own session, and every process of a node carries NODE_VAR=<its tag> in its environment:
a node is killed with SIGKILL to its process group, then to every process with its tag that left the group (never
by name). Closing the cluster kills every process it started.

A trial that was running on a node when it died goes on elsewhere from its last reported checkpoint, or the one
before (Ray registers a checkpoint just after writing its result, and the kill may fall between), then runs each
epoch once: `continued_once` is that rule, for the test to assert and the benchmark to count.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import yaml

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
NODE_VAR = "MMTUNE_NODE"  # set only in one node's environment: how its processes are found, never by name
# Ray's defaults take ~15 s to declare a killed node dead (5 missed checks, 3 s apart, after a 5 s delay; longer
# when the machine vanishes and checks time out). These make it ~3 s; cluster/README.md has values for real clusters.
FAST_DETECTION = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
                  "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
JOIN_TIMEOUT_S = 60
T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged_pids(tag: str) -> list[int]:
    """Every process of the node tagged TAG (NODE_VAR=TAG in its environment)."""
    from mmtune.tune.faults import pids_with_env

    return pids_with_env(NODE_VAR, tag)


def raylet_node_id(tag: str) -> str | None:
    """The node id of the raylet with NODE_VAR=TAG (from its command line), or None while it is not up."""
    for pid in tagged_pids(tag):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/raylet"):
            return next((a.split(b"=", 1)[1].decode() for a in args if a.startswith(b"--node_id=")), None)
    return None


@dataclass
class Node:
    """One node of the cluster: its name, process tag and Ray node id."""

    name: str
    tag: str
    proc: subprocess.Popen | None  # `ray start --block` of a worker (the head's `ray start` has returned)
    node_id: str = ""


class LoopbackCluster:
    """A head (1 CPU) and worker nodes (1 CPU each) on 127.0.0.1 in one private RAY_TMPDIR.

    ENV is the nodes' environment (RAY_ADDRESS dropped). RAY_TMP (default: a new folder) holds the cluster and is
    removed at close. LOGS gets each worker's output; with KEEP_RAY_LOGS, also Ray's own logs of every node.
    """

    def __init__(self, env: Mapping[str, str], logs: Path, ray_tmp: str | None = None, keep_ray_logs: bool = False):
        self.logs, self.keep_ray_logs = Path(logs), keep_ray_logs
        self.ray_tmp = ray_tmp or tempfile.mkdtemp(prefix="rk", dir="/tmp")  # short: Ray's socket paths are limited
        self.env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_TMPDIR=self.ray_tmp, PYTHONUNBUFFERED="1", RAY_AUTH_MODE="token", **FAST_DETECTION)
        self.address = f"127.0.0.1:{free_port()}"
        self.uid = Path(self.ray_tmp).name  # unique per cluster: node tags never match another cluster's
        self.nodes: dict[str, Node] = {}

    def __enter__(self) -> LoopbackCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_head(self) -> Node:
        """`ray start --head` (it returns once the head is up); the head node."""
        node = self.nodes["head"] = Node("head", f"{self.uid}-head", None)
        subprocess.run([RAY, "start", "--head", f"--port={self.address.rsplit(':', 1)[1]}",
                        "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                        "--disable-usage-stats"], env={**self.env, NODE_VAR: node.tag}, check=True,
                       capture_output=True, timeout=120)
        node.node_id = self._wait_for_raylet(node)
        return node

    def add_worker(self, name: str, registered: bool = True) -> Node:
        """Start worker node NAME; with REGISTERED, wait until the cluster lists it as alive."""
        tag = f"{self.uid}-{name}"
        with open(self.logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen([RAY, "start", f"--address={self.address}", "--node-ip-address=127.0.0.1",
                                     "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", "--block"],
                                    env={**self.env, NODE_VAR: tag}, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        node = self.nodes[name] = Node(name, tag, proc)
        node.node_id = self._wait_for_raylet(node)
        deadline = time.time() + JOIN_TIMEOUT_S
        while registered and node.node_id not in self.alive_nodes():
            if time.time() > deadline:
                raise RuntimeError(f"{name} did not join the cluster")
            time.sleep(1)
        return node

    def _wait_for_raylet(self, node: Node) -> str:
        """NODE's id, once its raylet runs; raise if its `ray start` ended or it takes too long."""
        deadline = time.time() + JOIN_TIMEOUT_S
        while (node_id := raylet_node_id(node.tag)) is None:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name}: `ray start` ended\n"
                                   + (self.logs / f"{node.name}.log").read_text(errors="replace")[-2000:])
            if time.time() > deadline:
                raise RuntimeError(f"no raylet for {node.name}")
            time.sleep(0.2)
        return node_id

    def alive_nodes(self) -> set[str]:
        """Ids of the nodes the cluster lists as alive, asked by a separate driver."""
        code = ("import json, ray; ray.init(address=%r, logging_level='ERROR');"
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))" % self.address)
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"could not list the cluster's nodes: {out.stderr[-2000:]}")
        return set(json.loads(out.stdout.strip().splitlines()[-1]))

    def kill(self, node: Node, check: bool = True, first: int | None = None) -> None:
        """SIGKILL the node, all but at once: process FIRST (one we froze), its process group, then every process
        that left the group (found before anything died, so they die microseconds later, not after a scan).

        A frozen (SIGSTOPped) process goes first: when its parent dies, its orphaned process group gets SIGHUP and
        SIGCONT from the kernel, and it would run on (finish an upload, send a report) until killed. With CHECK,
        raise if a process of the node survived.
        """
        escaped = tagged_pids(node.tag)
        for pid in ([first] if first in escaped else []):
            os.kill(pid, signal.SIGKILL)
        if node.proc is not None:
            try:
                os.killpg(node.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(50):  # then look again until none is left (a process may have been forking)
            for pid in escaped:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not (escaped := tagged_pids(node.tag)):
                break
            time.sleep(0.1)
        if node.proc is not None:
            node.proc.wait(timeout=30)
        if check and tagged_pids(node.tag):
            raise RuntimeError(f"processes of {node.name} survived SIGKILL")

    def live_results(self, exp_name: str) -> dict[str, list[dict[str, Any]]]:
        """Each trial of experiment EXP_NAME with its results as the driver has them now (its own copy, written as
        results arrive; the storage copy is synced later)."""
        from mmtune.tune.experiment import result_lines

        pattern = f"{self.ray_tmp}/ray/session_latest/artifacts/*/{exp_name}/driver_artifacts/trial_*/result.json"
        return {Path(p).parent.name.removeprefix("trial_"): result_lines(p) for p in glob.glob(pattern)}

    def running_on(self, exp_name: str, node: Node, min_epoch: int, max_epoch: int) -> tuple[str, dict] | None:
        """A trial of EXP_NAME on NODE whose last report is of epoch MIN_EPOCH..MAX_EPOCH: (trial id, that result)."""
        for trial, res in sorted(self.live_results(exp_name).items()):
            if res and res[-1].get("node_id") == node.node_id and min_epoch <= res[-1]["epoch"] <= max_epoch:
                return trial, res[-1]
        return None

    def close(self) -> None:
        """Kill every node, then whatever is left of the RAY_TMPDIR's processes, then remove that folder."""
        from mmtune.tune.faults import kill_processes_of

        for node in sorted(self.nodes.values(), key=lambda n: n.name == "head"):  # the workers, then the head
            self.kill(node, check=False)
        kill_processes_of(self.ray_tmp)
        ray_logs = Path(self.ray_tmp) / "ray/session_latest/logs"
        if self.keep_ray_logs and ray_logs.is_dir():  # Ray's logs of every node (GCS, raylets, workers)
            shutil.copytree(ray_logs, self.logs / f"ray-logs-{self.uid}", ignore_dangling_symlinks=True,
                            dirs_exist_ok=True)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- a sweep on it


def full_epochs_space(path: Path, samples: int, epochs: int, description: str, train_steps: int | None = None,
                      start: list[dict[str, Any]] | None = None) -> Path:
    """search_spaces/smoke.yaml at PATH with SAMPLES trials of EPOCHS epochs and ASHA out of the way (every trial runs
    all its epochs); TRAIN_STEPS batches per epoch (longer trials, to be caught mid-training); START configs first."""
    doc = yaml.safe_load((REPO / "search_spaces/smoke.yaml").read_text())
    doc.update(num_samples=samples, epochs=epochs, description=description, **({"start": start} if start else {}))
    doc["asha"] = {**doc.get("asha", {}), "grace_period": epochs}
    if train_steps:
        doc["fixed"] = {**doc.get("fixed", {}), "train_steps": train_steps}
    path.write_text(yaml.safe_dump(doc))
    return path


def live_records(exp: Path) -> dict[str, dict[str, Any]]:
    """The final records of EXP's ended trials so far; empty while a record is being renamed into place."""
    from mmtune.tune import records

    try:
        return records.read_all(exp)
    except (OSError, json.JSONDecodeError):
        return {}


def poll(done: Callable[[], T], proc: subprocess.Popen, timeout: float, every: float = 0.05) -> T | None:
    """DONE's first truthy value, asked every EVERY s; None when TIMEOUT runs out or PROC ends first (after a last
    look: what PROC did just before it ended still counts)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if found := done():
            return found
        if proc.poll() is not None:
            return done() or None
        time.sleep(every)
    return None


def failures(trial_dir: Path) -> int:
    """How many times Tune recorded the trial as failed (error.txt has one 'Failure #' per failure)."""
    p = trial_dir / "error.txt"
    return p.read_text().count("Failure # ") if p.is_file() else 0


def moved_off(exp: Path, node_id: str) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Trials of EXP that reported from node NODE_ID and then from elsewhere: (results there, results after)."""
    from mmtune.tune.experiment import result_lines

    out = {}
    for d in sorted(exp.glob("trial_*")):
        res = result_lines(d / "result.json")
        there = [r for r in res if r.get("node_id") == node_id]
        if there and len(there) < len(res):
            out[d.name.removeprefix("trial_")] = there, res[len(there):]
    return out


def continued_once(there: list[dict[str, Any]], after: list[dict[str, Any]], epochs: int) -> bool:
    """Whether a trial moved off a dead node (its results THERE, then AFTER) went on from the last or second-to-last
    epoch it reported there, then reported each epoch to EPOCHS once (module docstring)."""
    last, first = there[-1]["epoch"], after[0]["epoch"]
    return first in (last, last + 1) and [r["epoch"] for r in after] == list(range(first, epochs + 1))


def trials_on(exp: Path, node_id: str) -> list[str]:
    """Ids of EXP's trials that reported at least once from node NODE_ID."""
    from mmtune.tune.experiment import result_lines

    return sorted(d.name.removeprefix("trial_") for d in exp.glob("trial_*")
                  if any(r.get("node_id") == node_id for r in result_lines(d / "result.json")))
