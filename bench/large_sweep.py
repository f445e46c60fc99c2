"""Large sweeps: one `mmtune sweep` of N one-epoch tiny trials on one driver; does the per-trial cost stay flat?

One real sweep through the CLI's code path (`mmtune.tune.cli.run`: sweep, then export; finalize off) runs in a
subprocess, the driver, on an embedded local Ray with 2 CPUs. The trials are tiny (d_model 16, 1 layer, a few
batches, one epoch), so the driver's per-trial work shows. ASHA is off (epochs 1 = grace period: no rung). The
driver times, in itself (wall and the calling thread's CPU time), Optuna's suggest (`StudySearch.suggest`:
`study.ask` + TPE), the searcher's tells, Tune's experiment-state snapshots and mmtune's Tune callbacks, and inside
those TPE's `sample_relative` and every SQLite commit of study.db (nested: part of the others' time); every 100th
ended trial it sums the JSON state Tune caches per trial. This process samples the driver's RSS and CPU time every
second (and the PSS of the driver's whole process tree, Ray's processes included, every 10 s). After the sweep:
  windows         per WINDOW ended trials (by the end times in mmtune_trials/*.json): wall per trial, worker time
                  per trial (result.json's time_total_s), driver CPU per trial, driver RSS, suggest time, SQLite
                  commits per trial, Tune's cached state, and the driver hooks' wall and CPU ms per trial
  suggest_offline TPE's `study.ask` (as the searcher calls it) on SQLite copies of the study cut to its first k
                  trials, k in --suggest-at: median wall and CPU ms of 5 asks, and of their `sample_relative`
  study           finished trials by state; study.db size; Tune's experiment_state-*.json size
  flat            the last window's wall per trial over the second's (the first includes warm-up); <= 1.10 is flat
Prints one JSON object (and writes --out). 2000 trials took 28-35 min on a shared 2-core machine (load average
14-17); --trials 20 about a minute there.

    .venv/bin/python bench/large_sweep.py [--trials 2000] [--window 200] [--steps 4] [--out FILE] [--keep DIR]
"""
from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: bench/ is on the path, the repository root is not
    sys.path.insert(0, str(REPO))
from bench.sweep_overhead import Polling, pss_tree  # noqa: E402

CPUS = 2
NAME = "large"
FLAT_RATIO = 1.10
# Driver-side calls timed inside the driver: "module:Class.method" -> label.
HOOKS = {
    "mmtune.tune.searcher:StudySearch.suggest": "suggest",
    "mmtune.tune.searcher:StudySearch.on_trial_result": "searcher_result",
    "mmtune.tune.searcher:StudySearch.on_trial_complete": "searcher_complete",
    "mmtune.tune.searcher:StudySearch.save": "searcher_save",
    "ray.tune.execution.tune_controller:TuneController.save_to_dir": "experiment_state_save",
    "ray.tune.execution.experiment_state:_ExperimentCheckpointManager.sync_up_experiment_state":
        "experiment_state_sync",
    "mmtune.tune.recorder:TrialRecorder.on_trial_complete": "recorder",
    "mmtune.tune.console:Progress.on_trial_complete": "progress_complete",
    "mmtune.tune.console:Progress.on_trial_result": "progress_result",
    "ray.tune.logger.json:JsonLoggerCallback.on_trial_result": "json_logger_result",
    # Nested in the calls above (their time is part of theirs): TPE's model, and every SQLite commit of study.db.
    "optuna.samplers:TPESampler.sample_relative": "tpe_sample_relative",
    "sqlalchemy.engine.default:DefaultDialect.do_commit": "sqlite_commit",
}
NESTED = ("tpe_sample_relative", "sqlite_commit")
PROBE = "probe_tune_state_json_mb"  # Tune's cached per-trial JSON state, summed over its trials (every 100th end)


# ----------------------------------------------------------------------------------------------- the driver side

class HookTimer:
    """Times the HOOKS in this process; every call as [label, end time, wall s, CPU s of the calling thread] (CPU
    time does not count waiting for a core, so a busy machine inflates it far less), written to PATH as JSON lines."""

    def __init__(self, path: Path):
        self.path, self.events, self.written = path, [], 0
        self._lock = threading.Lock()

    def install(self) -> None:
        for target, label in HOOKS.items():
            module, attr = target.split(":")
            cls_name, method = attr.split(".")
            cls = getattr(importlib.import_module(module), cls_name)
            setattr(cls, method, self._wrap(getattr(cls, method), label))
        self._probe_tune_state()
        threading.Thread(target=self._flush_every, args=(5.0,), daemon=True).start()
        atexit.register(self.flush)

    def _wrap(self, fn: Callable, label: str) -> Callable:
        @functools.wraps(fn)
        def timed(*args: Any, **kw: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kw)
            finally:
                self.events.append((label, time.time(), time.perf_counter() - t0, time.thread_time() - c0))
        return timed

    def _probe_tune_state(self) -> None:
        """Every 100th ended trial: the size of the JSON state Tune caches for every trial (what each experiment
        snapshot writes out again)."""
        from mmtune.tune.recorder import TrialRecorder

        inner, ended = TrialRecorder.on_trial_complete, [0]

        def probed(rec: Any, iteration: int, trials: list, trial: Any, **info: Any) -> Any:
            ended[0] += 1
            if ended[0] % 100 == 0:
                size = sum(len(t._state_json or "") + len(t.run_metadata._cached_json or "") for t in trials)
                self.events.append((PROBE, time.time(), size / 2**20, 0.0))
            return inner(rec, iteration, trials, trial, **info)
        TrialRecorder.on_trial_complete = probed

    def flush(self) -> None:
        with self._lock:
            new, self.written = self.events[self.written:], len(self.events)
            with open(self.path, "a") as f:
                f.writelines(json.dumps(e) + "\n" for e in new)

    def _flush_every(self, seconds: float) -> None:
        while True:
            time.sleep(seconds)
            self.flush()


def driver_main(timing: str, argv: list[str]) -> None:
    """The driver: `mmtune ARGV` with the HOOKS timed into TIMING."""
    HookTimer(Path(timing)).install()
    from mmtune.tune.cli import run

    sys.exit(run(argv))


# ---------------------------------------------------------------------------------------------------- the setup

def space_file(tmp: Path, n: int, steps: int) -> Path:
    """A tiny one-epoch space (ASHA has no rung), 7 searched parameters, holdout validation."""
    doc = {
        "metric": "val/f1", "num_samples": n, "seed": 0, "epochs": 1, "cv": 0,
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "fixed": {"d_model": 16, "num_layers": 1, "ff_mult": 2, "batch_size": 32, "train_steps": steps,
                  "patience": 0, "device": "cpu"},
        "params": {"nhead": {"type": "categorical", "choices": [2, 4]},
                   "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                   "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
                   "dropout": {"type": "float", "low": 0.0, "high": 0.3},
                   "aux_weight": {"type": "float", "low": 0.0, "high": 1.0},
                   "focal_gamma": {"type": "float", "low": 0.0, "high": 3.0},
                   "modality_dropout": {"type": "float", "low": 0.0, "high": 0.3}},
    }
    path = tmp / "large_space.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def sweep_argv(data: Path, space: Path, storage: Path, n: int) -> list[str]:
    """The `mmtune` command line of the measured sweep (no finalize: the search alone is measured)."""
    return ["sweep", "--data", str(data), "--space", str(space), "--name", NAME, "--storage", str(storage),
            "--num-samples", str(n), "--epochs", "1", "--num-cpus", str(CPUS), "--gpus-per-trial", "0",
            "--finalize-top-k", "0", "--overwrite"]


# ------------------------------------------------------------------------------------------------- the sampling

def proc_rss_cpu(pid: int) -> tuple[float, float] | None:
    """(RSS in MB, user + system CPU seconds) of PID, or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    rss_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), None)
    if rss_kb is None:  # a zombie: exited, not yet reaped
        return None
    return rss_kb / 1024, (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(Polling):
    """Every second: driver RSS and CPU, trials ended, 1-min load average; every 10 s the tree's PSS."""

    def __init__(self, pid: int, records: Path):
        super().__init__()
        self.pid, self.records, self.rows, self.pss, self.tick = pid, records, [], [], 0

    def sample(self) -> bool:
        now, got = time.time(), proc_rss_cpu(self.pid)
        if got is None:
            return False  # the driver exited
        ended = sum(n.endswith(".json") for n in os.listdir(self.records)) if self.records.is_dir() else 0
        self.rows.append([round(now, 2), round(got[0], 1), round(got[1], 2), ended, os.getloadavg()[0]])
        if self.tick % 10 == 0:
            self.pss.append([round(now, 2), round(pss_tree(self.pid) / 2**20, 1)])
        self.tick += 1
        return True


def run_driver(argv: list[str], timing: Path, records: Path, log: Path) -> tuple[dict, Sampler]:
    """Run the driver subprocess to its end with a private Ray temp dir; its wall, exit code, and the samples."""
    from mmtune.tune.faults import kill_processes_of

    ray_tmp = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", str(timing), "--", *argv]
    t0 = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        with Sampler(proc.pid, records) as sampler:
            rc = proc.wait()
    t1 = time.time()
    kill_processes_of(ray_tmp)  # Ray's processes of this driver only (marked by its private temp dir)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    return {"start": t0, "end": t1, "rc": rc}, sampler


# ------------------------------------------------------------------------------------------------- the analysis

def trial_ends(exp: Path) -> list[tuple[float, float]]:
    """(end time from its durable record, the trial's own time: result.json's time_total_s) of every trial, by end."""
    from mmtune.tune import records

    out = []
    for tid, rec in records.read_all(exp).items():
        path = exp / f"trial_{tid}" / "result.json"
        lines = path.read_text().splitlines() if path.is_file() else []
        out.append((rec["ended"], json.loads(lines[-1])["time_total_s"] if lines else float("nan")))
    return sorted(out)


def at(rows: list[list[float]], t: float, col: int) -> float:
    """Column COL of the samples at time T, interpolated linearly between the neighbouring samples."""
    before = [r for r in rows if r[0] <= t]
    after = [r for r in rows if r[0] > t]
    if not before or not after:
        return (before or after)[-1 if before else 0][col]
    a, b = before[-1], after[0]
    return a[col] + (b[col] - a[col]) * (t - a[0]) / (b[0] - a[0])


def window_bounds(n: int, window: int) -> list[tuple[int, int]]:
    """[(a, b)] 0-based indices into the sorted end times: a window runs from trial a's end to trial b's (b - a
    trials). Ends 1, W, 2W, ... and the last bound them: the clock starts at the first trial's end."""
    bounds = sorted({0, *range(window - 1, n, window), n - 1})
    return list(zip(bounds, bounds[1:]))


def hook_stats(events: list[list], t0: float, t1: float, trials: int, col: int) -> dict[str, float]:
    """Per hook: ms per trial spent in it between T0 and T1, wall (COL 2) or thread CPU (COL 3) time."""
    out: dict[str, float] = {}
    for e in events:
        if t0 < e[1] <= t1 and e[0] != PROBE:
            out[e[0]] = out.get(e[0], 0.0) + e[col]
    return {k: round(v * 1000 / trials, 3) for k, v in sorted(out.items())}


def mean_between(rows: list[list[float]], t0: float, t1: float, col: int) -> float:
    """Mean of column COL over the samples from T0 to T1 (the value at T1 when none falls between)."""
    inside = [r[col] for r in rows if t0 <= r[0] <= t1]
    return statistics.mean(inside) if inside else at(rows, t1, col)


def probe_at(events: list[list], t: float) -> float | None:
    """The last probe of Tune's cached state (MB) at or before T."""
    seen = [e[2] for e in events if e[0] == PROBE and e[1] <= t]
    return round(seen[-1], 2) if seen else None


def windows(trials: list[tuple[float, float]], rows: list, events: list, window: int) -> list[dict]:
    """The per-window figures (see the module docstring); TRIALS: (end, worker time) by end."""
    out = []
    for a, b in window_bounds(len(trials), window):
        t0, t1, k = trials[a][0], trials[b][0], b - a
        sugg = [e[2] * 1000 for e in events if e[0] == "suggest" and t0 < e[1] <= t1]
        commits = sum(1 for e in events if e[0] == "sqlite_commit" and t0 < e[1] <= t1)
        out.append({
            "ends": [a + 1, b + 1], "wall_per_trial_s": round((t1 - t0) / k, 4),
            "worker_time_per_trial_s": round(statistics.median(w for _, w in trials[a + 1:b + 1]), 4),
            "driver_cpu_per_trial_s": round((at(rows, t1, 2) - at(rows, t0, 2)) / k, 4),
            "driver_rss_mb_at_end": round(at(rows, t1, 1), 1),
            "load_avg_1m": round(mean_between(rows, t0, t1, 4), 2),
            "suggest_ms_median": round(statistics.median(sugg), 2) if sugg else None,
            "suggest_ms_p90": round(sorted(sugg)[int(0.9 * (len(sugg) - 1))], 2) if sugg else None,
            "sqlite_commits_per_trial": round(commits / k, 2),
            "tune_state_json_mb": probe_at(events, t1),
            "driver_hooks_ms_per_trial": hook_stats(events, t0, t1, k, 2),
            "driver_hooks_cpu_ms_per_trial": hook_stats(events, t0, t1, k, 3),
        })
    return out


def read_events(timing: Path) -> list[list]:
    return [json.loads(line) for line in timing.read_text().splitlines()] if timing.is_file() else []


def study_facts(exp: Path) -> dict[str, Any]:
    """Trials in study.db by state, its size, and the size of Tune's experiment state."""
    from mmtune.tune.experiment import load_study

    study = load_study(exp)
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    state_files = sorted(exp.glob("experiment_state-*.json"))
    return {"trials_by_state": states, "finished": sum(v for k, v in states.items() if k != "RUNNING"),
            "study_db_mb": round((exp / "study.db").stat().st_size / 2**20, 2),
            "experiment_state_mb": round(state_files[-1].stat().st_size / 2**20, 2) if state_files else None,
            "searcher_state_mb": round(sum(p.stat().st_size for p in exp.glob("searcher-state-*.pkl")) / 2**20, 2)}


# ------------------------------------------------------------------------------------------------ offline suggest

def truncated_copy(src: Path, dst: Path, k: int) -> None:
    """A copy of the study.db SRC at DST holding only its first K trials (by number): every row of a later trial is
    deleted from each table with a trial_id column."""
    import sqlite3

    shutil.copyfile(src, dst)
    with sqlite3.connect(dst) as con:
        later = [r[0] for r in con.execute("SELECT trial_id FROM trials WHERE number >= ?", (k,))]
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            if table != "trials" and any(c[1] == "trial_id" for c in con.execute(f"PRAGMA table_info({table})")):
                con.executemany(f"DELETE FROM {table} WHERE trial_id = ?", [(t,) for t in later])
        con.executemany("DELETE FROM trials WHERE trial_id = ?", [(t,) for t in later])


def time_asks(space_path: Path, db: Path, asks: int = 5) -> dict[str, Any]:
    """`study.ask` as the searcher calls it (its sampler, SQLite storage) on the study in DB: ms per ask (the first
    one also fills Optuna's trial cache) and the part in TPE's `sample_relative`."""
    import optuna

    from mmtune.tune.experiment import STUDY_NAME
    from mmtune.tune.searcher import make_sampler
    from mmtune.tune.space import load_space

    space = load_space(space_path)
    sampler = make_sampler(space)
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{db}", sampler=sampler)
    relative, total = [], []  # (wall s, CPU s of this thread)
    inner = sampler.sample_relative

    def timed_relative(*a: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return inner(*a)
        finally:
            relative.append((time.perf_counter() - t0, time.thread_time() - c0))
    sampler.sample_relative = timed_relative
    for _ in range(asks):
        t0, c0 = time.perf_counter(), time.thread_time()
        trial = study.ask(fixed_distributions=space.distributions())
        total.append((time.perf_counter() - t0, time.thread_time() - c0))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # FAIL: TPE ignores it, the next ask sees the same k
    return {"ask_ms": [round(w * 1000, 2) for w, _ in total], **ms_medians("ask", total),
            **(ms_medians("sample_relative", relative) if relative else {})}


def ms_medians(name: str, times: list[tuple[float, float]]) -> dict[str, float]:
    """The median wall and CPU milliseconds of TIMES, keyed NAME_ms_median and NAME_cpu_ms_median."""
    return {f"{name}_ms_median": round(statistics.median(w for w, _ in times) * 1000, 2),
            f"{name}_cpu_ms_median": round(statistics.median(c for _, c in times) * 1000, 2)}


def suggest_offline(exp: Path, space: Path, points: list[int], tmp: Path) -> list[dict]:
    """TPE's ask time on copies of the sweep's study.db cut to its first k trials, for k in POINTS (up to the
    trials it holds)."""
    from mmtune.tune.experiment import STUDY_DB, load_study

    n = len(load_study(exp).get_trials(deepcopy=False, states=optuna_finished()))
    out = []
    for k in [p for p in points if p <= n]:
        db = tmp / f"ask_{k}.db"
        truncated_copy(exp / STUDY_DB, db, k)
        out.append({"n_finished": k, **time_asks(space, db)})
        db.unlink()
    return out


def optuna_finished() -> tuple:
    """Optuna's finished trial states."""
    from optuna.trial import TrialState

    return tuple(s for s in TrialState if s.is_finished())


# --------------------------------------------------------------------------------------------------------- main

def summarize(args: argparse.Namespace, run: dict, sampler: Sampler, exp: Path, space: Path, tmp: Path,
              timing: Path) -> dict[str, Any]:
    """The JSON object of the run."""
    trials, rows, events = trial_ends(exp), sampler.rows, read_events(timing)
    ends = [e for e, _ in trials]
    wins = windows(trials, rows, events, args.window)
    rss = [r[1] for r in rows]
    ratio = wins[-1]["wall_per_trial_s"] / wins[min(1, len(wins) - 1)]["wall_per_trial_s"] if wins else None
    with open(exp / "trials.csv") as f:
        csv_rows = sum(1 for _ in f) - 1
    return {
        "setting": {"trials": args.trials, "window": args.window, "steps_per_epoch": args.steps, "epochs": 1,
                    "cpus": CPUS, "model": "d_model 16, 1 layer, ff_mult 2, batch 32", "asha": "off (no rung)",
                    "searcher": "tpe (multivariate, constant liar)", "params": 7, "command": ["mmtune", *run["argv"]],
                    "nested_hooks": list(NESTED)},
        "rc": run["rc"], "total_wall_s": round(run["end"] - run["start"], 1),
        "first_trial_end_s": round(ends[0] - run["start"], 1) if ends else None,
        "search_wall_s": round(ends[-1] - ends[0], 3) if ends else None,  # ms: the test sums the windows to it
        "after_last_trial_s": round(run["end"] - ends[-1], 1) if ends else None,
        "wall_per_trial_s": round((ends[-1] - ends[0]) / max(1, len(ends) - 1), 4) if ends else None,
        "trials_recorded": len(ends), "trials_csv_rows": csv_rows, "study": study_facts(exp),
        "driver_rss_mb": {"at_first_trial_end": round(at(rows, ends[0], 1), 1) if ends and rows else None,
                          "at_last_trial_end": round(at(rows, ends[-1], 1), 1) if ends and rows else None,
                          "peak": max(rss, default=None)},
        "tree_pss_mb_peak": max((p[1] for p in sampler.pss), default=None),
        "load_avg_1m_mean": round(statistics.mean(r[4] for r in rows), 2) if rows else None,
        "flat": {"last_over_second_window": round(ratio, 3) if ratio else None, "target": FLAT_RATIO,
                 "met": bool(ratio is not None and ratio <= FLAT_RATIO)},
        "windows": wins,
        "suggest_offline": suggest_offline(exp, space, args.suggest_at, tmp),
        "samples": {"columns": ["time", "driver_rss_mb", "driver_cpu_s", "trials_ended", "load_1m"],
                    "rows": rows[::max(1, len(rows) // 600)]},
        "tree_pss_mb": sampler.pss,
    }


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Make the data and space, run the sweep, summarize."""
    from mmtune.data.demo import make_demo

    data = make_demo(tmp / "demo", n_train=200, n_val=100, n_test=50, seed=0)
    space = space_file(tmp, args.trials, args.steps)
    storage, timing = tmp / "results", tmp / "driver_hooks.jsonl"
    timing.unlink(missing_ok=True)  # --keep: a run before this one
    argv = sweep_argv(data, space, storage, args.trials)
    run, sampler = run_driver(argv, timing, storage / NAME / "mmtune_trials", tmp / "driver.log")
    run["argv"] = argv
    if run["rc"] != 0:
        tail = (tmp / "driver.log").read_text()[-3000:]
        raise SystemExit(f"the sweep failed (exit {run['rc']}):\n{tail}")
    return summarize(args, run, sampler, storage / NAME, space, tmp, timing)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=2000)
    p.add_argument("--window", type=int, default=200, help="ended trials per window")
    p.add_argument("--steps", type=int, default=4, help="batches in a trial's one epoch")
    p.add_argument("--suggest-at", type=lambda s: [int(x) for x in s.split(",")], default=[100, 500, 1000, 2000],
                   help="finished-trial counts at which TPE's ask is timed offline")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--keep", help="work in this folder and keep it (the experiment, driver.log, driver_hooks.jsonl)")
    return p.parse_args(argv)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--driver":  # the subprocess: --driver TIMING -- MMTUNE-ARGS
        driver_main(sys.argv[2], sys.argv[4:])
    args = parse_args()
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        out = measure(args, Path(args.keep).resolve())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = measure(args, Path(tmp))
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
