"""Faults survived: a sweep hit by trial crashes, NaN trials, a killed worker and two killed drivers.

N fixed configs (the space's starting points, num_samples = N, smoke settings, ASHA off: grace
period = epochs) run on the demo data with 2 CPUs, while these faults are injected:
  - 3 trial crashes: `FaultInjector(kind="raise")` at epoch 2 for 3 configs (retried from checkpoint);
  - 2 NaN trials: `FaultInjector(kind="nan")` at epoch 1 for 2 other configs (they end "nan");
  - 1 worker SIGKILL: this process kills a running trial's worker (pid read from its result.json);
  - 2 driver SIGKILLs (process group + every process of its private Ray), each followed by a resume.
The driver runs in a subprocess (`--role driver` / `--role resume`) so that it can be SIGKILLed.
A clean run of the same sweep (one driver, no faults) gives the cost of the faults.

Measured (one JSON object on stdout, and in `--out FILE`):
  trials_lost       expected configs without a final record after the last resume (must be 0)
  trials_run_twice  trials recorded before a driver kill whose record changed afterwards or that got a
                    checkpoint written after the kill, plus configs recorded under two trial ids (must be 0)
  (--kill-delay 0, the default, kills a driver right after the record that reached --kill-at is written.)
  fault_cost_s      faulty wall time (first driver start to end of the last resume) - clean wall time
  statuses, faults_injected, retried_trials (result.json shows more than one worker pid)
Exits 1 when a trial is lost or run twice. Run from the repository root (a few minutes):

    .venv/bin/python bench/faults.py [--trials 20] [--epochs 3] [--out FILE] [--keep DIR]

--node-kill measures a lost node instead, on a two-node Ray cluster on loopback (bench/loopback.py, as in
tests/test_node_loss.py: head and worker, 1 CPU each, fast node-death detection): the same N configs without
injected faults (longer epochs: `train_steps` 60), storage a file:// folder both nodes see. Once a trial on the
worker has reported an epoch, the worker node is SIGKILLed (every process of it), and a new worker node is
started. The driver, on the head, survives: no resume. The clean run is the same sweep on a fresh two-node cluster.
Same JSON, with "node_kill": the trials that were on the dead node (last epoch there, first epoch after, where they
went on), trials the new node ran, failures Tune counted.
  trials_run_twice  also counts a trial that was on the dead node and did not continue from its last or
                    second-to-last reported epoch (Ray may not have registered the last one's checkpoint yet)

    .venv/bin/python bench/faults.py --node-kill [--trials 8] [--epochs 8] [--out FILE] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mmtune.tune.experiment import result_lines

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ is on the path, the repository root is not
    sys.path.insert(0, str(REPO))
from bench.loopback import (FAST_DETECTION, LoopbackCluster, continued_once, failures,  # noqa: E402
                            full_epochs_space, live_records, moved_off, poll, trials_on)
CPUS = 2
RAISE_EPOCH, NAN_EPOCH = 2, 1
PHASE_TIMEOUT_S = 900
NODE_KILL_STEPS = 60  # batches per epoch under --node-kill: ~1 s epochs, so a trial is caught mid-training


# ----------------------------------------------------------------------------- inputs


def configs(n: int) -> list[dict[str, Any]]:
    """N distinct configs of the smoke space; `dropout` alone tells them apart."""
    return [{"d_model": (16, 32)[i % 2], "nhead": 2, "num_layers": 1 + (i // 2) % 2, "aux_weight": 0.5,
             "dropout": round(0.2 * i / n, 6), "focal_gamma": 1.0, "lr": round(1e-3 * (0.5 + i / n), 8)}
            for i in range(n)]


def space_file(tmp: Path, n: int, epochs: int, train_steps: int | None = None) -> Path:
    """The smoke space with the N configs as starting points and ASHA out of the way."""
    return full_epochs_space(tmp / "faults_space.yaml", n, epochs, "bench/faults.py", train_steps, configs(n))


def fault_plan(tmp: Path, n: int) -> Path:
    """Which configs (by dropout) crash and which diverge; written for the driver subprocesses."""
    drop = [c["dropout"] for c in configs(n)]
    plan = {"markers": str(tmp / "markers"), "raise": [drop[n * k // 7] for k in (1, 3, 5)],
            "nan": [drop[n * k // 7] for k in (2, 4)]}
    path = tmp / "faults.json"
    path.write_text(json.dumps(plan))
    return path


def injectors(plan_file: str | None) -> tuple:
    """The FaultInjectors of a fault plan (none without one)."""
    from mmtune.tune.faults import FaultInjector

    if not plan_file:
        return ()
    plan = json.loads(Path(plan_file).read_text())
    return (*(FaultInjector(plan["markers"], RAISE_EPOCH, {"dropout": d}, "raise") for d in plan["raise"]),
            *(FaultInjector(plan["markers"], NAN_EPOCH, {"dropout": d}, "nan") for d in plan["nan"]))


# ----------------------------------------------------------------------------- subprocess roles


def role_driver(args: argparse.Namespace) -> None:
    """Start the sweep in this process (the subprocess that may be SIGKILLed)."""
    from mmtune.tune.sweep import SweepOptions, sweep

    exp = Path(args.exp)
    if args.address:  # a cluster: storage every node sees (file://), its CPUs
        where = dict(address=args.address, storage=f"file://{exp.parent}")
    else:
        where = dict(storage=str(exp.parent), num_cpus=CPUS)
    sweep(SweepOptions(data=args.data, space=args.space, name=exp.name, gpus_per_trial="0", max_failures=2, **where),
          callbacks=injectors(args.faults))


def role_resume(args: argparse.Namespace) -> None:
    """Resume the sweep in this process, with the same fault injectors."""
    from mmtune.tune.sweep import SweepOptions, sweep

    sweep(SweepOptions.for_experiment(args.exp, num_cpus=CPUS), callbacks=injectors(args.faults))


# ----------------------------------------------------------------------------- processes


def mentions(pid: int, marker: str) -> bool:
    """Whether process PID belongs to the Ray of MARKER (guards against a reused pid)."""
    try:
        return marker.encode() in Path(f"/proc/{pid}/environ").read_bytes() + Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Phase:
    """One driver or resume subprocess with its own RAY_TMPDIR; always cleaned up on exit."""

    def __init__(self, role: str, exp: Path, log: Path, extra: list[str], cluster: LoopbackCluster | None = None):
        # A driver that joins a cluster shares the cluster's environment (its RAY_TMPDIR, token auth); the cluster
        # removes that folder, not the phase.
        self.owns_tmp = cluster is None
        self.ray_tmp = tempfile.mkdtemp(prefix="rf", dir="/tmp") if cluster is None else cluster.ray_tmp
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} if cluster is None else dict(cluster.env)
        env.update(RAY_TMPDIR=self.ray_tmp, PYTHONUNBUFFERED="1")
        if cluster is not None:
            extra = [*extra, "--address", cluster.address]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--exp", str(exp), *extra]
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def __enter__(self) -> "Phase":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        if self.owns_tmp:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the process group, then every process of its Ray (a cluster's nodes are the cluster's to kill)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=30)
        if self.owns_tmp:
            from mmtune.tune.faults import kill_processes_of

            kill_processes_of(self.ray_tmp)

    def wait(self, timeout: float = PHASE_TIMEOUT_S) -> None:
        """Wait for a normal end; raise with the log's tail if it failed."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        if rc != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.log.name}: exit code {rc}\n{tail}")


# ----------------------------------------------------------------------------- observation


def kill_a_worker(exp: Path, epochs: int, spare: set[float], ray_tmp: str) -> dict[str, Any] | None:
    """SIGKILL the worker of a running, uninjected trial that has reported an epoch; what was killed."""
    done = live_records(exp)
    for d in sorted(exp.glob("trial_*")):
        res = result_lines(d / "result.json")
        if not res or d.name.removeprefix("trial_") in done:
            continue
        last = res[-1]
        if not 1 <= last.get("epoch", 0) < epochs or last.get("config", {}).get("dropout") in spare:
            continue
        if mentions(last["pid"], ray_tmp):
            os.kill(last["pid"], signal.SIGKILL)
            return {"trial": d.name.removeprefix("trial_"), "pid": last["pid"], "epoch": last["epoch"],
                    "dropout": last["config"].get("dropout")}
    return None


def checkpoint_mtimes(exp: Path, trial_id: str) -> list[float]:
    """Modification times of a trial's checkpoint folders."""
    return [c.stat().st_mtime for c in (exp / f"trial_{trial_id}").glob("checkpoint_*")]


# ----------------------------------------------------------------------------- the two runs


def run_clean(args: argparse.Namespace, work: Path, data: Path, space: Path) -> float:
    """The sweep without any fault; its wall time."""
    t0 = time.perf_counter()
    with Phase("driver", work / "clean", work / "clean.log", ["--data", str(data), "--space", str(space)]) as ph:
        ph.wait()
    return time.perf_counter() - t0


def driver_phase(ph: Phase, exp: Path, at_records: int, worker: Callable[[], bool] | None,
                 delay: float) -> dict[str, Any]:
    """Wait for AT_RECORDS records (and the worker kill, if asked), then DELAY s, then SIGKILL the driver."""
    def ready() -> bool:
        worker_done = worker is None or worker() or len(live_records(exp)) >= at_records + 3
        return worker_done and len(live_records(exp)) >= at_records

    reached = poll(ready, ph.proc, PHASE_TIMEOUT_S) is not None
    poll(lambda: False, ph.proc, delay)  # DELAY s, or less if the driver ends
    if ph.proc.poll() is not None:
        return {"killed": False, "exit_code": ph.proc.returncode, "records": len(live_records(exp))}
    killed_at = time.time()
    ph.kill()
    before = live_records(exp)
    return {"killed": True, "reached": reached, "at": killed_at, "records": len(before), "before": before,
            "ckpts": {t: checkpoint_mtimes(exp, t) for t in before}}


def run_faulty(args: argparse.Namespace, work: Path, data: Path, space: Path) -> dict[str, Any]:
    """Driver, worker kill, driver kill, resume, driver kill, resume to the end."""
    exp, plan_file = work / "faulty", fault_plan(work, args.trials)
    plan = json.loads(plan_file.read_text())
    spare = set(plan["raise"]) | set(plan["nan"])
    victim: dict[str, Any] = {}
    kills = []
    t0 = time.perf_counter()
    common = ["--faults", str(plan_file)]
    with Phase("driver", exp, work / "faulty.log", ["--data", str(data), "--space", str(space), *common]) as ph:
        def worker() -> bool:
            if not victim:
                victim.update(kill_a_worker(exp, args.epochs, spare, ph.ray_tmp) or {})
            return bool(victim)
        kills.append(driver_phase(ph, exp, args.kill_at[0], worker, args.kill_delay))
    with Phase("resume", exp, work / "faulty.log", common) as ph:
        kills.append(driver_phase(ph, exp, args.kill_at[1], None, args.kill_delay))
    with Phase("resume", exp, work / "faulty.log", common) as ph:
        ph.wait()
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "exp": exp, "plan": plan, "victim": victim, "kills": kills}


def run_clean_cluster(args: argparse.Namespace, work: Path, data: Path, space: Path) -> float:
    """The sweep on a fresh two-node cluster, no fault; the driver's wall time."""
    with LoopbackCluster(os.environ, work, keep_ray_logs=bool(args.keep)) as cluster:
        cluster.start_head()
        cluster.add_worker("worker1")
        t0 = time.perf_counter()
        with Phase("driver", work / "clean", work / "clean.log", ["--data", str(data), "--space", str(space)],
                   cluster) as ph:
            ph.wait()
        return time.perf_counter() - t0


def run_node_kill(args: argparse.Namespace, work: Path, data: Path, space: Path) -> dict[str, Any]:
    """Driver on the head; the worker node SIGKILLed once a trial on it has reported an epoch; a new worker."""
    exp = work / "faulty"
    with LoopbackCluster(os.environ, work, keep_ray_logs=bool(args.keep)) as cluster:
        cluster.start_head()
        cluster.add_worker("worker1")
        t0 = time.perf_counter()
        with Phase("driver", exp, work / "faulty.log", ["--data", str(data), "--space", str(space)], cluster) as ph:
            worker = cluster.nodes["worker1"]
            found = poll(lambda: cluster.running_on(exp.name, worker, 1, args.epochs - 1), ph.proc, PHASE_TIMEOUT_S)
            if not found:
                raise RuntimeError(f"no trial reported on worker1 before the sweep ended\n"
                                   f"{(work / 'faulty.log').read_text(errors='replace')[-3000:]}")
            victim, dead = {"trial": found[0], "epoch": found[1]["epoch"]}, worker.node_id
            before, killed_at = live_records(exp), time.time()
            cluster.kill(worker, check=False)
            kill_s = time.perf_counter() - t0
            new = cluster.add_worker("worker2", registered=False).node_id
            ph.wait()
        wall = time.perf_counter() - t0
        alive = cluster.alive_nodes()
    return {"wall_s": wall, "exp": exp, "dead": dead, "new": new, "victim": {**victim, "killed_at_s": round(kill_s, 1)},
            "kills": [{"killed": True, "at": killed_at, "before": before}], "dead_declared": dead not in alive}


def report_node_kill(args: argparse.Namespace, clean_s: float, f: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of the node-kill runs (the same keys as the default mode's, plus node_kill)."""
    exp = f["exp"]
    after = live_records(exp)
    twice = run_twice(exp, f["kills"], after)
    victims = {}
    for tid, (there, rest) in moved_off(exp, f["dead"]).items():
        victims[tid] = v = {"last_epoch_on_dead_node": there[-1]["epoch"], "first_epoch_after": rest[0]["epoch"],
                            "epochs_after": [r["epoch"] for r in rest], "retried_on": rest[0].get("node_id"),
                            "failures": failures(exp / f"trial_{tid}")}
        if not continued_once(there, rest, args.epochs):
            twice.append({"trial": tid, "node_kill": v})
    return {"mode": "node_kill", **outcome(args, clean_s, f, after, twice, failed_is_lost=True),
            "node_kill": {"killed": f["victim"], "dead_node": f["dead"], "declared_dead": f["dead_declared"],
                          "trials_on_dead_node": victims, "new_node": f["new"],
                          "new_node_trials": trials_on(exp, f["new"]), "health_checks": FAST_DETECTION}}


def outcome(args: argparse.Namespace, clean_s: float, f: dict[str, Any], after: dict[str, dict],
            twice: list[dict[str, Any]], failed_is_lost: bool) -> dict[str, Any]:
    """The keys every mode reports: trials finished, lost and run twice, the fault's cost, statuses, retries.
    FAILED_IS_LOST: a trial that ended failed counts as lost (nothing injected should fail it)."""
    expected = {c["dropout"] for c in configs(args.trials)}
    finished = {rec["config"]["dropout"] for rec in after.values() if not failed_is_lost or rec["status"] != "failed"}
    statuses: dict[str, int] = {}
    for rec in after.values():
        statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
    twice_ids = {x.get("trial") or f"config dropout={x['config_dropout']}" for x in twice}
    return {
        "trials_expected": args.trials, "epochs": args.epochs,
        "trials_finished": len(after),
        "trials_lost": len(expected - finished),
        "trials_run_twice": len(twice_ids),
        "fault_cost_s": round(f["wall_s"] - clean_s, 1),
        "clean_wall_s": round(clean_s, 1), "faulty_wall_s": round(f["wall_s"], 1),
        "statuses": statuses,
        "retried_trials": retried(f["exp"]),
        "run_twice_details": twice,
    }


# ----------------------------------------------------------------------------- report


def run_twice(exp: Path, kills: list[dict[str, Any]], after: dict[str, dict]) -> list[dict[str, Any]]:
    """Trials recorded before a kill that changed or trained again afterwards; configs under two ids."""
    found = []
    for n, k in enumerate(kills, 1):
        for tid, rec in k.get("before", {}).items():
            new_ckpts = [m for m in checkpoint_mtimes(exp, tid) if m > k["at"]]
            if after.get(tid) != rec or new_ckpts:
                found.append({"trial": tid, "kill": n, "record_changed": _changed(rec, after.get(tid) or {}),
                              "checkpoints_after_kill": len(new_ckpts),
                              "before": _brief(rec), "after": _brief(after.get(tid))})
    by_config: dict[float, list[str]] = {}
    for tid, rec in after.items():
        by_config.setdefault(rec["config"]["dropout"], []).append(tid)
    found += [{"config_dropout": d, "trials": ids} for d, ids in by_config.items() if len(ids) > 1]
    return found


def _changed(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two records."""
    return sorted(key for key in {*a, *b} if a.get(key) != b.get(key))


def _brief(rec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The identifying part of a record."""
    return rec and {k: rec.get(k) for k in ("status", "epochs", "ended")}


def retried(exp: Path) -> dict[str, list[int]]:
    """Trials whose results came from more than one worker process: their pids."""
    out = {}
    for d in sorted(exp.glob("trial_*")):
        pids = list(dict.fromkeys(r["pid"] for r in result_lines(d / "result.json") if "pid" in r))
        if len(pids) > 1:
            out[d.name.removeprefix("trial_")] = pids
    return out


def report(args: argparse.Namespace, clean_s: float, f: dict[str, Any]) -> dict[str, Any]:
    """The JSON summary of both runs."""
    exp = f["exp"]
    after = live_records(exp)
    twice = run_twice(exp, f["kills"], after)
    if args.keep:  # the records as they were at each kill, for a closer look
        (Path(args.keep) / "records_at_kills.json").write_text(
            json.dumps([k.get("before") for k in f["kills"]], indent=1, default=str))
    markers = Path(f["plan"]["markers"])
    return {
        **outcome(args, clean_s, f, after, twice, failed_is_lost=False),
        "faults_injected": {
            "markers": sorted(p.name for p in markers.iterdir()) if markers.is_dir() else [],
            "planned": {"raise_dropouts": f["plan"]["raise"], "nan_dropouts": f["plan"]["nan"]},
            "worker_killed": f["victim"] or None,
            "kill_delay_s": args.kill_delay,
            "driver_kills": [{k: v for k, v in x.items() if k not in ("before", "ckpts")} for x in f["kills"]],
        },
    }


def run_bench(args: argparse.Namespace) -> int:
    """Both runs in a work folder; print and write the JSON; 1 if a trial was lost or run twice."""
    from mmtune.data.demo import make_demo

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mmtune-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = make_demo(work / "demo", n_train=240, n_val=80, n_test=80)
        if args.node_kill:
            space = space_file(work, args.trials, args.epochs, NODE_KILL_STEPS)
            clean_s = 0.0 if args.no_clean else run_clean_cluster(args, work, data, space)
            out = report_node_kill(args, clean_s, run_node_kill(args, work, data, space))
        else:
            space = space_file(work, args.trials, args.epochs)
            clean_s = 0.0 if args.no_clean else run_clean(args, work, data, space)
            out = report(args, clean_s, run_faulty(args, work, data, space))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if out["trials_lost"] or out["trials_run_twice"] else 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (the --role ones are internal)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, help="configs, one trial each (default 20; 8 with --node-kill)")
    p.add_argument("--epochs", type=int, help="epochs per trial (default 3; 8 with --node-kill)")
    p.add_argument("--node-kill", action="store_true",
                   help="kill a worker node of a two-node loopback cluster mid-sweep instead (see above)")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--keep", help="work in this folder and keep it (experiments, logs, markers)")
    p.add_argument("--kill-at", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="records before the first and second driver kill (default: 3,10 for 20 trials)")
    p.add_argument("--kill-delay", type=float, default=0.0,
                   help="seconds between reaching --kill-at and the driver kill (default 0: right after a "
                        "trial's record is written)")
    p.add_argument("--no-clean", action="store_true", help="skip the clean baseline (fault_cost_s is then 0)")
    p.add_argument("--role", choices=["bench", "driver", "resume"], default="bench", help=argparse.SUPPRESS)
    p.add_argument("--exp", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--space", help=argparse.SUPPRESS)
    p.add_argument("--faults", help=argparse.SUPPRESS)
    p.add_argument("--address", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.trials = args.trials or (8 if args.node_kill else 20)
    args.epochs = args.epochs or (8 if args.node_kill else 3)
    if args.role == "bench" and args.node_kill:
        if args.trials < 4 or args.epochs < 3:
            p.error("--node-kill needs --trials >= 4 and --epochs >= 3")
    elif args.role == "bench":
        if args.trials < 7 or args.epochs < RAISE_EPOCH + 1:
            p.error("need --trials >= 7 (5 injected configs and spares) and --epochs >= 3")
        args.kill_at = args.kill_at or [max(2, round(0.15 * args.trials)), round(0.5 * args.trials)]
    return args


def main() -> int:
    """Dispatch on --role."""
    args = parse()
    if args.role == "driver":
        role_driver(args)
    elif args.role == "resume":
        role_resume(args)
    else:
        return run_bench(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
