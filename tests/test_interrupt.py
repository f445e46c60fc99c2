"""Ctrl-C as a terminal sends it (SIGINT to the whole process group) during a real `mmtune sweep`: in the search,
then resumed to its end; and in finalize."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from mmtune.model.config import load_config
from mmtune.tune import records
from mmtune.tune.experiment import FINAL_DIR, SUMMARY, Experiment, read_meta
from mmtune.tune.faults import kill_processes_of
from tests.conftest import SMOKE, resume_cli, study_matches_trials_csv

TRIAL_ENDED = r"^\[[\d:]+\] trial \w+ \w+"  # the progress line of an ended trial
FINALIZE_STARTS = r"^finalize: retraining"
LINE_TIMEOUT_S = 240  # generous: the machine is shared; a line normally comes within seconds
EXIT_TIMEOUT_S = 120


class Console:
    """The merged stdout and stderr of a child process, read line by line in a thread."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.lines, self.seen = proc, queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = LINE_TIMEOUT_S) -> str:
        """The first new line matching PATTERN; fails if the process ends or TIMEOUT passes first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {timeout} s:\n{self.text[-3000:]}") from None
            if line is None:
                raise AssertionError(f"the process ended before a line matched {pattern!r}:\n{self.text[-3000:]}")
            self.seen.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to exit and read the rest of its output; its exit code."""
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return code

    @property
    def text(self) -> str:
        return "".join(self.seen)


def ctrl_c_at(pattern: str, env: dict[str, str], *args: str) -> tuple[int, str, float]:
    """Run `mmtune sweep ARGS` in its own session, send SIGINT to its process group (a terminal's Ctrl-C) when a
    line matches PATTERN; its exit code, its output and when the signal was sent."""
    cmd = [sys.executable, "-m", "mmtune.tune", "sweep", "--space", SMOKE, "--num-cpus", "2", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    console = Console(proc)
    try:
        console.wait_for(pattern)
        sent = time.time()
        assert proc.poll() is None, f"the process ended before the Ctrl-C could be sent:\n{console.text[-3000:]}"
        os.killpg(proc.pid, signal.SIGINT)
        return console.finish(), console.text, sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        kill_processes_of(env["RAY_TMPDIR"])  # what a failed run of its Ray left behind


def test_ctrl_c_in_the_search_stops_it_resumably_and_resume_runs_every_trial_once(demo_dir, tmp_path,
                                                                                  subprocess_env):
    storage, name, n = (tmp_path / "res").resolve(), "ctrl-c", 4
    exp = storage / name
    code, out, sent = ctrl_c_at(TRIAL_ENDED, subprocess_env, "--data", str(demo_dir), "--name", name, "--storage",
                                str(storage), "--num-samples", str(n), "--epochs", "2", "--finalize-top-k", "1",
                                "--finalize-seeds", "1")
    assert code == 130, out[-3000:]
    assert f"mmtune resume {exp}" in out and "Traceback" not in out, out[-3000:]
    meta = read_meta(exp)
    assert meta["finished"] is False and meta["interrupted"] is True and meta["interrupted_at"] >= sent - 1
    assert Experiment.open(exp).interrupted
    assert not (exp / FINAL_DIR).exists() and "finalize:" not in out  # neither finalize nor its announcement
    assert "sweep stopped |" in out and "sweep ended" not in out
    status = subprocess.run([sys.executable, "-m", "mmtune.tune", "status", str(exp)], env=subprocess_env,
                            capture_output=True, text=True, timeout=60)
    assert f"interrupted (continue it: mmtune resume {exp})" in status.stdout.splitlines()[0], status.stdout
    before = records.read_all(exp)
    assert len(before) < n, "the sweep should be stopped before its end"

    proc = resume_cli(exp, subprocess_env)
    resumed = Experiment.open(exp)
    assert len(resumed.trials) == n and resumed.finished and not resumed.interrupted
    assert all(t.status.final for t in resumed.trials), [t.status for t in resumed.trials]
    after = records.read_all(exp)
    for trial_id, rec in before.items():  # the trials that ended before Ctrl-C kept as they were, not run again
        assert after[trial_id] == rec
        assert all(c.stat().st_mtime < sent for c in (exp / f"trial_{trial_id}").glob("checkpoint_*"))
    assert len(study_matches_trials_csv(exp)) == n  # the study agrees, none left running
    assert (exp / FINAL_DIR / SUMMARY).is_file() and "best config:" in proc.stdout  # finalized as usual


def test_ctrl_c_in_finalize_keeps_the_sweep_and_its_best_trial_config(demo_dir, tmp_path, subprocess_env):
    storage, name = (tmp_path / "res").resolve(), "ctrl-c-final"
    exp = storage / name
    # Two configs x 3 seeds, not raced: at least 4 runs train (a first seed may be the sweep's own trial, taken at
    # once, and a race can end early), so on a loaded machine finalize still runs when the Ctrl-C comes.
    code, out, _ = ctrl_c_at(FINALIZE_STARTS, subprocess_env, "--data", str(demo_dir), "--name", name, "--storage",
                             str(storage), "--num-samples", "2", "--epochs", "2", "--finalize-top-k", "2",
                             "--finalize-seeds", "3", "--no-finalize-race")
    assert code == 130, out[-3000:]
    assert f"mmtune finalize {exp}" in out, out[-3000:]
    assert "every finalize run failed" not in out and "Traceback" not in out
    assert read_meta(exp)["finished"] is True  # the search itself had ended
    best = exp / "best_config.yaml"
    assert best.read_text().startswith("# No finalize run yet")
    assert load_config(best) == load_config(exp / "best_trial_config.yaml")
    assert not (exp / FINAL_DIR / SUMMARY).exists()
