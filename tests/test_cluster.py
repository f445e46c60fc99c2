"""A real two-node Ray cluster on this machine: trials on both nodes, GPU trials only on the GPU node."""
from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SMOKE, remote_files
from mmtune.tune.faults import kill_processes_of

RAY = str(Path(sys.executable).parent / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_nodes(subprocess_env):
    """Head: 1 CPU + 4 logical GPUs; worker: 1 CPU, no GPU. Stopped by our own pids, always."""
    env = {**subprocess_env, "RAY_AUTH_MODE": "token"}  # joining nodes need the token in this Ray
    port = free_port()
    address = f"127.0.0.1:{port}"
    try:
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        "--num-gpus=4", "--include-dashboard=false", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([RAY, "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        "--num-gpus=0", "--disable-usage-stats"], env=env, check=True, capture_output=True,
                       timeout=120)
        yield address, env
    finally:
        kill_processes_of(env["RAY_TMPDIR"])


def nodes_of(address: str, env: dict) -> dict[str, float]:
    """Node id -> GPUs, asked of the cluster by a separate driver."""
    code = ("import json, ray; ray.init(address=%r, logging_level='ERROR');"
            "print(json.dumps({n['NodeID']: n['Resources'].get('GPU', 0) for n in ray.nodes() if n['Alive']}))"
            % address)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def sweep(address: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmtune.tune", "sweep", "--address", address, "--space", SMOKE,
                           "--finalize-top-k", "0", *args],
                          env=env, capture_output=True, text=True, timeout=400, cwd=REPO)


def rows(exp: Path) -> list[dict]:
    with open(exp / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_node_cluster(two_nodes, s3_bucket, demo_dir, tmp_path):
    address, env = two_nodes
    env = {**env, "MMTUNE_CACHE": str(tmp_path / "mirror")}
    deadline = time.time() + 60
    while len(nodes := nodes_of(address, env)) < 2 and time.time() < deadline:
        time.sleep(1)
    assert len(nodes) == 2, nodes
    gpu_node = next(n for n, g in nodes.items() if g)
    base = ["--data", str(demo_dir), "--storage", str(tmp_path), "--num-samples", "4"]

    # A plain local path on a multi-node cluster is refused before anything runs.
    refused = sweep(address, env, *base, "--name", "refused", "--gpus-per-trial", "0")
    assert refused.returncode == 2 and "--allow-local-storage" in refused.stderr
    assert not (tmp_path / "refused").exists()

    # CPU trials spread over both nodes, on shared storage (S3): each node uploads its trials' checkpoints.
    cpu = sweep(address, env, *base[:2], "--storage", f"{s3_bucket}/cluster", *base[4:], "--name", "cpu",
                "--gpus-per-trial", "0")
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    assert "cluster: 2 node(s), 2 CPUs, 4 GPUs" in cpu.stdout and "concurrent trials: 2" in cpu.stdout
    uri = f"{s3_bucket}/cluster/cpu"
    exp = tmp_path / "mirror/remote/s3" / uri.removeprefix("s3://")  # the sweep's local mirror
    trials = rows(exp)
    assert len(trials) == 4 and {t["node_id"] for t in trials} == set(nodes)
    remote = remote_files(uri)
    assert remote.get("best_config.yaml") and remote.get("best/checkpoint.pt") and remote.get("trials.csv")
    assert all(any(f.startswith(f"trial_{t['trial_id']}/checkpoint_") for f in remote) for t in trials)

    # GPU trials land only where GPUs are, packed several per GPU; the head's single CPU bounds them.
    gpu = sweep(address, env, *base, "--name", "gpu", "--gpus-per-trial", "auto", "--allow-local-storage")
    assert gpu.returncode == 0, gpu.stderr[-3000:]
    assert "trial(s) per GPU" in gpu.stdout and "concurrent trials: 1" in gpu.stdout
    trials = rows(tmp_path / "gpu")
    assert len(trials) == 4 and {t["node_id"] for t in trials} == {gpu_node}
    assert all(t["gpu_ids"] not in ("", None) for t in trials)
