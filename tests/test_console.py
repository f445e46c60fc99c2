"""The compact progress view (driven directly, no Ray runtime) and Ray's output captured to ray.log (real Ray)."""
from __future__ import annotations

import io
import logging
import pickle
import re
import time
import warnings
from types import SimpleNamespace

import pytest

from mmtune.model.status import STATUS_KEY
from mmtune.tune.console import Progress, capture_ray_output, clock_str, eta_str, ray_init_kwargs


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(trial_id: str, last_result: dict | None = None, status: str = "RUNNING") -> SimpleNamespace:
    """A stand-in for Tune's Trial: the three attributes Progress reads."""
    return SimpleNamespace(trial_id=trial_id, last_result=last_result, status=status)


def result(epoch: int, value: float, status: str = "running", metric: str = "val/f1") -> dict:
    return {"epoch": epoch, "training_iteration": epoch, metric: value, STATUS_KEY: status}


def make(num_samples: int = 5, metric: str = "val/f1", interval_s: float = 30.0):
    out, clock = io.StringIO(), Clock()
    return Progress(num_samples, metric, out, interval_s, clock=clock, rungs=[2]), out, clock  # ASHA's rung: 2


def report(p: Progress, t: SimpleNamespace, trials: list, res: dict) -> None:
    t.last_result = res
    p.on_trial_result(0, trials, t, res)


def test_ended_lines_count_statuses_best_and_eta():
    p, out, clock = make()
    ts = [trial(f"abc_0000{i}") for i in range(5)]
    p.on_step_end(0, ts)
    clock.now += 31
    p.on_step_end(1, ts)  # heartbeat before anything ended: no ETA yet
    report(p, ts[0], ts, result(1, 0.70))
    report(p, ts[0], ts, result(2, 0.75))
    report(p, ts[0], ts, result(3, 0.72, "completed"))
    clock.now += 29
    p.on_trial_complete(2, ts, ts[0])
    ts[0].status = "TERMINATED"
    report(p, ts[1], ts, result(1, 0.60))
    report(p, ts[1], ts, result(2, 0.80))  # ASHA stops it while it still says running: pruned
    p.on_trial_complete(3, ts, ts[1])
    ts[1].status = "TERMINATED"
    report(p, ts[2], ts, result(1, 0.99))  # then raises for good: failed, but its value was real
    ts[2].status = "ERROR"
    p.on_trial_error(4, ts, ts[2])
    report(p, ts[3], ts, result(1, 0.95))  # diverges: its values never count as best
    report(p, ts[3], ts, result(2, 0.0, "nan"))
    p.on_trial_complete(5, ts, ts[3])
    ts[3].status = "TERMINATED"
    report(p, ts[4], ts, {"epoch": 1, "val/f1": float("nan"), STATUS_KEY: "running"})
    report(p, ts[4], ts, result(2, 0.78, "early_stopped"))
    clock.now += 60
    p.on_trial_complete(6, ts, ts[4])
    ts[4].status = "TERMINATED"
    p.on_experiment_end(ts)

    lines = out.getvalue().splitlines()
    assert len(lines) == 7, lines  # one heartbeat, five ends, one final line: nothing per epoch
    assert lines[0] == "[00:31] 0/5 ended | 5 running | best val/f1 - | ETA ?"
    # An ended trial shows the value it is ranked by: its best epoch's (0.75 at epoch 2), not its last (0.72).
    assert lines[1] == ("[01:00] trial abc_00000 completed at epoch 3 (best val/f1 0.7500 at epoch 2) | 1/5 ended: "
                        "1 completed | 4 running | best val/f1 0.7500 (abc_00000) | ETA ~4 min")
    assert ("trial abc_00001 pruned at epoch 2 (best val/f1 0.8000 at epoch 2) | 2/5 ended: 1 completed, 1 pruned"
            in lines[2])
    assert "best val/f1 0.8000 (abc_00001)" in lines[2]
    assert "trial abc_00002 failed at epoch 1 (best val/f1 0.9900 at epoch 1)" in lines[3] and "1 failed" in lines[3]
    assert "best val/f1 0.9900 (abc_00002)" in lines[3]
    assert "trial abc_00003 nan at epoch 2 |" in lines[4] and "(best" not in lines[4]
    assert "best val/f1 0.9900 (abc_00002)" in lines[4]  # 0.95 of the diverged trial is not a result
    assert "4/5 ended: 1 completed, 1 pruned, 1 nan, 1 failed | 1 running" in lines[4]
    assert all("ETA ~" in line for line in lines[1:5])
    assert lines[5].startswith("[02:00] trial abc_00004 early_stopped at epoch 2 (best val/f1 0.7800 at epoch 2) "
                               "| 5/5 ended")
    assert lines[5].endswith("| 0 running | best val/f1 0.9900 (abc_00002) | done")
    assert lines[6].startswith("[02:00] sweep ended | 5/5 ended: 1 completed, 1 early_stopped, 1 pruned")


def test_a_sweep_stopped_before_its_trial_count_says_stopped_not_ended():
    p, out, _ = make(num_samples=3)
    ts = [trial("t1"), trial("t2", status="TERMINATED")]  # Tune terminates running trials on a Ctrl-C
    report(p, ts[0], ts, result(1, 0.5, "completed"))
    p.on_trial_complete(1, ts, ts[0])
    p.on_experiment_end(ts)
    assert out.getvalue().splitlines()[-1].startswith("[00:00] sweep stopped | 1/3 ended: 1 completed")


def test_min_mode_picks_the_lowest_loss():
    p, out, _ = make(num_samples=3, metric="val/loss")
    ts = [trial("t1"), trial("t2"), trial("t3")]
    for t, values in zip(ts, [(0.9, 0.5, 0.6), (0.8, 0.4), (1.2, 0.1)]):
        for epoch, value in enumerate(values, 1):
            report(p, t, ts, result(epoch, value, metric="val/loss"))
    ts[2].last_result = result(2, 9.9, "nan", metric="val/loss")
    p.observe("t3", ts[2].last_result)
    p.on_trial_complete(1, ts, ts[0])
    assert p.best_trial() == ("t2", 0.4)  # t3's 0.1 is excluded: it diverged
    assert "best val/loss 0.4000 (t2)" in out.getvalue()
    # Tune stopped it at epoch 3, off ASHA's rung (2): the time budget or a stopper, not ASHA.
    assert "trial t1 stopped at epoch 3 (best val/loss 0.5000 at epoch 2)" in out.getvalue()


def test_heartbeat_at_most_every_interval_and_bounded_output():
    """A 16-trial sweep of 10 epochs each, a result every 3 s: one line per trial plus a few heartbeats."""
    p, out, clock = make(num_samples=16, interval_s=30.0)
    ts = [trial(f"x_{i:05d}") for i in range(16)]
    for i in range(0, 16, 2):  # two at a time
        for epoch in range(1, 11):
            clock.now += 3
            for t in ts[i:i + 2]:
                report(p, t, ts, result(epoch, epoch / 10 + i / 100, "running" if epoch < 10 else "completed"))
            p.on_step_end(epoch, ts)
        for t in ts[i:i + 2]:
            p.on_trial_complete(epoch, ts, t)
            t.status = "TERMINATED"
    p.on_experiment_end(ts)
    lines = out.getvalue().splitlines()
    stamps = [int(m[1]) * 60 + int(m[2]) for line in lines for m in [re.match(r"\[(\d+):(\d+)\]", line)]]
    heartbeats = [line for line in lines if "trial " not in line and "sweep ended" not in line]
    assert len(lines) == 16 + 1 + len(heartbeats) and len(lines) < 30, lines
    assert heartbeats and all(b - a >= 0 for a, b in zip(stamps, stamps[1:]))
    assert "16/16 ended: 16 completed" in lines[-1] and "best val/f1 1.1400 (x_00014)" in lines[-1]


def test_formatting_helpers_and_pickling():
    assert clock_str(61) == "01:01" and clock_str(3725) == "1:02:05"
    assert eta_str(10, 0, 5) == "ETA ?" and eta_str(10, 5, 5) == "done"
    assert eta_str(60, 2, 4) == "ETA ~60 s" and eta_str(600, 2, 4) == "ETA ~10 min"
    assert eta_str(7200, 1, 3) == "ETA ~4.0 h"
    # Finalize's runs after the search, in average trials: 2 trials left plus 3 trials' worth of finalize.
    assert eta_str(20, 2, 4, after=3.0) == "ETA ~50 s with finalize"
    p, _, _ = make()
    p.observe("t", result(1, 0.5))
    copy = pickle.loads(pickle.dumps(p))  # Tune pickles its callbacks with the Tuner
    assert copy.best_trial() == ("t", 0.5) and copy._out is None
    assert ray_init_kwargs(False) == ray_init_kwargs(True) == {"log_to_driver": True}


def test_capture_restores_loggers_and_warnings(tmp_path):
    """Without Ray running: logger state and showwarning are back after the block; records went to the file."""
    ray_logger = logging.getLogger("ray")
    before = (list(ray_logger.handlers), ray_logger.level, ray_logger.propagate, warnings.showwarning)
    with capture_ray_output(tmp_path / "x" / "ray.log", verbose=False):
        logging.getLogger("ray.tune.foo").info("MARKER-INFO")
        warnings.warn("MARKER-WARNING")
        print("MARKER-PRINT", end="")  # no newline: still written when the block ends
    after = (list(ray_logger.handlers), ray_logger.level, ray_logger.propagate, warnings.showwarning)
    assert after == before
    text = (tmp_path / "x" / "ray.log").read_text()
    assert "INFO ray.tune.foo: MARKER-INFO" in text and "MARKER-WARNING" in text and "MARKER-PRINT" in text


def test_verbose_ray_warnings_reach_stderr_like_before(tmp_path, capsys, monkeypatch):
    """After ray.init(configure_logging=False) "ray" has no handler: Python's last resort printed its warnings."""
    monkeypatch.setattr(logging.getLogger("ray"), "handlers", [])
    for verbose in (False, True):
        with capture_ray_output(tmp_path / "ray.log", verbose=verbose):
            logging.getLogger("ray.tune").warning("MARKER-%s", verbose)
    assert capsys.readouterr().err == "MARKER-True\n"
    assert "MARKER-False" in (tmp_path / "ray.log").read_text() and logging.getLogger("ray").handlers == []


@pytest.mark.slow
def test_real_sweep_output_goes_to_ray_log_not_console(ray_session, tmp_path, capfd):
    from ray import tune
    from ray._private import ray_logging, worker as ray_worker

    def trainable(config):
        import logging as lg

        print(f"MARKER-WORKER-STDOUT {config['x']}", flush=True)
        lg.getLogger("ray").warning("MARKER-WORKER-RAYLOG %s", config["x"])
        for epoch in range(1, 4):
            tune.report({"epoch": epoch, "val/f1": config["x"] * epoch,
                         STATUS_KEY: "running" if epoch < 3 else "completed"})

    xs = [0.1, 0.2, 0.3]
    markers = [f"MARKER-WORKER-{kind} {x}" for x in xs for kind in ("STDOUT", "RAYLOG")]
    log_path = tmp_path / "ray.log"
    dispatch_before = list(ray_logging.global_worker_stdstream_dispatcher.handlers)
    capfd.readouterr()
    with capture_ray_output(log_path, verbose=False):
        warnings.warn("MARKER-DRIVER-WARNING")
        logging.getLogger("ray.tune").warning("MARKER-DRIVER-RAYLOG")
        tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search(xs)},
                           tune_config=tune.TuneConfig(metric="val/f1", mode="max"),
                           run_config=tune.RunConfig(name="capture", storage_path=str(tmp_path), verbose=0,
                                                     callbacks=[Progress(3, "val/f1", clock=Clock())]))
        assert not tuner.fit().errors
        deadline = time.monotonic() + 10  # worker output reaches the driver asynchronously
        while time.monotonic() < deadline and not all(m in log_path.read_text() for m in markers):
            time.sleep(0.2)
    console = capfd.readouterr()
    text = log_path.read_text()

    assert all(m in text for m in markers), text
    assert "(trainable pid=" in text and "View detailed results here" in text and "MARKER-DRIVER-WARNING" in text
    assert "WARNING ray.tune: MARKER-DRIVER-RAYLOG" in text and "INFO ray.tune.tune: Wrote the latest" in text
    both = console.out + console.err
    assert "MARKER" not in both and "View detailed results" not in both, both
    lines = console.out.splitlines()
    assert sum("trial " in line and " completed at epoch 3 (best val/f1 " in line for line in lines) == 3, console.out
    assert all(line.startswith("[00:00] ") for line in lines), lines  # stamped by the given clock, which stood still
    assert "3/3 ended: 3 completed" in lines[-1] and "best val/f1 0.9000" in lines[-1]
    assert len(lines) < 10 and not console.err.strip(), console
    # Everything Ray-side is back as it was.
    assert ray_logging.global_worker_stdstream_dispatcher.handlers == dispatch_before
    assert ray_worker.print_to_stdstream.__module__ == "ray._private.worker"


@pytest.mark.slow
def test_verbose_shows_ray_output_on_the_console_too(ray_session, tmp_path, capfd, caplog):
    from ray import tune

    def trainable(config):
        print("MARKER-VERBOSE-WORKER", flush=True)
        tune.report({"epoch": 1, "val/f1": 0.5, STATUS_KEY: "completed"})

    log_path = tmp_path / "ray.log"
    capfd.readouterr()
    with capture_ray_output(log_path, verbose=True):
        logging.getLogger("ray.tune").warning("MARKER-VERBOSE-DRIVER")
        tune.Tuner(trainable, run_config=tune.RunConfig(name="verbose", storage_path=str(tmp_path), verbose=0)).fit()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "MARKER-VERBOSE-WORKER" not in log_path.read_text():
            time.sleep(0.2)
    console = capfd.readouterr()
    both, text = console.out + console.err, log_path.read_text()
    for marker in ("MARKER-VERBOSE-WORKER", "View detailed results here"):
        assert marker in text and marker in both, (marker, both)
    # pytest hangs its own handlers on the non-propagating "ray" logger: they stand for the console here.
    assert "MARKER-VERBOSE-DRIVER" in text and "MARKER-VERBOSE-DRIVER" in caplog.text
    assert "(trainable pid=" in console.out  # Ray's own prefix, printed by Ray's printer
