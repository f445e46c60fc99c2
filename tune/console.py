"""A compact sweep progress view, and Ray's own console output routed to `<exp>/ray.log`."""
from __future__ import annotations

import contextlib
import io
import logging
import re
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

from ray import tune

from mmtune.model.metrics import is_better, rank_key, tie_breaker
from mmtune.model.status import STATUS_KEY, TrialStatus
from mmtune.tune.recorder import ended_status

log = logging.getLogger(__name__)

CAPTURED_LOGGERS = ("ray", "optuna")  # OptunaSearch runs in the driver: "A new study created in memory ..."
_UNRANKED = {TrialStatus.NAN, TrialStatus.INFEASIBLE}  # their metric values are placeholders, never "best"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_CONSOLE: list[TextIO] = []  # the real stdout while capture_ray_output redirects sys.stdout (a stack)


def console_stream() -> TextIO:
    """The terminal's stdout, also while capture_ray_output sends sys.stdout to the log."""
    return _CONSOLE[-1] if _CONSOLE else sys.stdout


def clock_str(seconds: float) -> str:
    """Elapsed time as mm:ss, or h:mm:ss from one hour on."""
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


def eta_str(elapsed: float, ended: int, total: int, after: float = 0.0) -> str:
    """Time left, if the trials still to end take as long on average as those that ended, and AFTER more trials'
    worth of work follows them (finalize's runs, counted in average trials)."""
    if ended < 1:
        return "ETA ?"
    if ended >= total:
        return "done"
    left = elapsed / ended * (total - ended + after)
    text = f"ETA ~{left:.0f} s" if left < 90 else f"ETA ~{left / 60:.0f} min" if left < 7200 else \
        f"ETA ~{left / 3600:.1f} h"
    return text + (" with finalize" if after else "")


class Progress(tune.Callback):
    """One line per ended trial and a heartbeat at most every INTERVAL_S, to OUT; never a line per epoch."""

    def __init__(self, num_samples: int, metric: str, out: TextIO | None = None, interval_s: float = 30.0, *,
                 clock: Callable[[], float] = time.monotonic, rungs: list[int] | None = None,
                 after: float = 0.0):
        # No mode: the metric's name decides it (model.metrics.mode_of), as for every ranking in mmtune.
        self.num_samples, self.metric, self.interval_s = num_samples, metric, interval_s
        self.rungs = rungs or []  # ASHA's rungs: where a trial Tune stopped was pruned
        self.after = after  # finalize's runs in average search trials, for an ETA of the whole flow
        self._out, self._clock = out, clock
        self.start = self.last_line = clock()
        self.best: dict[str, dict[str, Any]] = {}  # trial id -> its best result so far (metric and tie-breaker)
        self.status: dict[str, TrialStatus] = {}  # trial id -> its latest status
        self.ended: dict[str, TrialStatus] = {}  # trial id -> how it ended

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the Tuner; a stream may not pickle (a resume sets a new Progress).
        return {**self.__dict__, "_out": None}

    # Bookkeeping: pure, no Ray needed.
    def observe(self, trial_id: str, result: dict[str, Any]) -> None:
        """Take one result of a trial into account."""
        if result.get(STATUS_KEY) in TrialStatus.__members__.values():
            self.status[trial_id] = TrialStatus(result[STATUS_KEY])
        if is_better(result, self.best.get(trial_id), self.metric):
            self.best[trial_id] = {**{k: result.get(k) for k in (self.metric, tie_breaker(self.metric))},
                                   "epoch": _epoch(result)}

    def best_trial(self) -> tuple[str, float] | None:
        """(trial id, value) of the best rankable trial so far, ranked as everywhere (`rank_key`), or None."""
        ranked = [(t, r) for t, r in self.best.items() if self.status.get(t) not in _UNRANKED]
        if not ranked:
            return None
        trial, best = min(ranked, key=lambda tr: rank_key(tr[1], self.metric))
        return trial, float(best[self.metric])

    def summary(self, running: int) -> str:
        """Counts by status, running trials, best so far and ETA: the part every line shares."""
        counts = Counter(self.ended.values())
        by_status = ", ".join(f"{counts[s]} {s.value}" for s in TrialStatus if counts[s])
        ended = f"{len(self.ended)}/{self.num_samples} ended" + (f": {by_status}" if by_status else "")
        best = self.best_trial()
        best_str = f"best {self.metric} {best[1]:.4f} ({best[0]})" if best else f"best {self.metric} -"
        eta = eta_str(self._clock() - self.start, len(self.ended), self.num_samples, self.after)
        return " | ".join([ended, f"{running} running", best_str, eta])

    def _running(self, trials: list) -> int:
        # A trial that just ended may still say RUNNING while Tune processes its end.
        return sum(1 for t in trials if t.status == "RUNNING" and t.trial_id not in self.ended)

    def _print(self, text: str) -> None:
        now = self._clock()
        out = self._out if self._out is not None else console_stream()
        print(f"[{clock_str(now - self.start)}] {text}", file=out, flush=True)
        self.last_line = now

    def _ended(self, trial: Any, status: TrialStatus, trials: list) -> None:
        last = trial.last_result or {}
        self.observe(trial.trial_id, last)
        self.ended[trial.trial_id] = self.status[trial.trial_id] = status
        epoch = _epoch(last)
        at = f" at epoch {epoch}" if epoch is not None else ""
        self._print(f"trial {trial.trial_id} {status.value}{at}{self._ranked_by(trial.trial_id, status)} | "
                    f"{self.summary(self._running(trials))}")

    def _ranked_by(self, trial_id: str, status: TrialStatus) -> str:
        """' (best val/f1 0.9205 at epoch 7)': the value the trial is ranked by everywhere (its best epoch's, not
        its last one's); '' when it has none."""
        best = self.best.get(trial_id)
        if best is None or status in _UNRANKED:
            return ""
        at = f" at epoch {best['epoch']}" if best.get("epoch") is not None else ""
        return f" (best {self.metric} {best[self.metric]:.4f}{at})"

    def _heartbeat(self, trials: list) -> None:
        if self._clock() - self.last_line >= self.interval_s:
            self._print(self.summary(self._running(trials)))

    # Tune's callback hooks.
    def setup(self, **info: Any) -> None:
        self.start = self.last_line = self._clock()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.observe(trial.trial_id, result)
        self._heartbeat(trials)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._heartbeat(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, ended_status(trial.last_result or {}, self.rungs), trials)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, TrialStatus.FAILED, trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        # Fewer ended trials than asked for: Tune was stopped (Ctrl-C), and the sweep is to be resumed.
        word = "sweep ended" if len(self.ended) >= self.num_samples else "sweep stopped"
        self._print(f"{word} | {self.summary(self._running(trials))}")


def _epoch(result: dict[str, Any]) -> int | None:
    """The epoch of a trial's RESULT (Tune's iteration count when the result lacks one)."""
    return result.get("epoch", result.get("training_iteration"))


def ray_init_kwargs(verbose: bool) -> dict[str, Any]:
    """What `ray.init` needs for capture_ray_output: {"log_to_driver": True}, whatever VERBOSE."""
    # Without it (or with RAY_LOG_TO_DRIVER=0) the driver never receives the workers' stdout/stderr and ray.log
    # lacks them; the console stays clean either way, since capture_ray_output reroutes what arrives.
    return {"log_to_driver": True}


def _emit(handler: logging.Handler, source: str, level: int, line: str) -> None:
    """One line to HANDLER as a record named SOURCE (no logger is registered for it)."""
    handler.handle(logging.makeLogRecord({"name": source, "levelno": level, "levelname": logging.getLevelName(level),
                                          "msg": _ANSI.sub("", line)}))


class _LineLog(io.TextIOBase):
    """A text stream writing each line to the log, and everything to TEE too when given."""

    def __init__(self, handler: logging.Handler, source: str, tee: TextIO | None):
        self._handler, self._source, self._tee, self._buf = handler, source, tee, ""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self._tee is not None:
            self._tee.write(s)
        *lines, self._buf = (self._buf + s).split("\n")
        for line in lines:
            _emit(self._handler, self._source, logging.INFO, line)
        return len(s)

    def flush(self) -> None:
        if self._tee is not None:
            self._tee.flush()

    def close(self) -> None:
        if self._buf:  # a last line without its newline
            _emit(self._handler, self._source, logging.INFO, self._buf)
        self._buf = ""
        super().close()


@contextlib.contextmanager
def _loggers_to(handler: logging.Handler, verbose: bool) -> Iterator[None]:
    """The captured logger trees write to HANDLER; their console handlers stay only when VERBOSE."""
    # The tops and descendants with handlers of their own (e.g. ray.data, propagate=False).
    subs = [(n, lg) for n, lg in list(logging.root.manager.loggerDict.items()) if isinstance(lg, logging.Logger)
            and lg.handlers and n.split(".")[0] in CAPTURED_LOGGERS and n not in CAPTURED_LOGGERS]
    saved = []
    for name, lg in [(n, logging.getLogger(n)) for n in CAPTURED_LOGGERS] + subs:
        saved.append((lg, lg.handlers, lg.level, lg.propagate))
        top = name in CAPTURED_LOGGERS
        consoles = [h for h in lg.handlers
                    if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        kept = [h for h in lg.handlers if verbose or h not in consoles]
        if verbose and top and not lg.propagate and not consoles and logging.lastResort:
            # ray.init(configure_logging=False) leaves "ray" without handlers: Python's last resort printed it.
            kept.append(logging.lastResort)
        # A descendant that propagates reaches the file through its top logger already.
        lg.handlers = [*kept, handler] if top or not lg.propagate else kept
        if top and lg.getEffectiveLevel() > logging.INFO:
            lg.setLevel(logging.INFO)  # Ray's usual INFO lines belong in the file even if init asked for less
        if top and not verbose:
            lg.propagate = False  # nor may the root logger's console handlers print it
    try:
        yield
    finally:
        for lg, handlers, level, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
            lg.setLevel(level)


@contextlib.contextmanager
def _warnings_to(handler: logging.Handler, verbose: bool) -> Iterator[None]:
    """Python warnings shown in the driver go to HANDLER (and to the console when VERBOSE)."""
    with warnings.catch_warnings():  # restores showwarning on exit
        original = warnings.showwarning

        def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None):
            text = warnings.formatwarning(message, category, filename, lineno, line).rstrip()
            _emit(handler, "py.warnings", logging.WARNING, text)
            if verbose:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


@contextlib.contextmanager
def _worker_output_to(handler: logging.Handler, verbose: bool) -> Iterator[None]:
    """The worker stdout/stderr lines (and raylet messages) that Ray forwards to the driver go to HANDLER."""
    # Private Ray API, checked against Ray 2.60 (ray/_private/worker.py, ray/_private/ray_logging), as Ray has
    # no public hook: `connect()` registers the handler "ray_print_logs" = partial(print_to_stdstream, ...) on
    # `global_worker_stdstream_dispatcher`, through which the `print_logs` thread emits every forwarded batch;
    # `listen_error_messages` calls the module global `print_to_stdstream` for raylet messages.
    try:
        from ray._private import ray_logging, worker as ray_worker

        dispatcher = ray_logging.global_worker_stdstream_dispatcher
        original, print_worker_logs = ray_worker.print_to_stdstream, ray_worker.print_worker_logs
        autoscaler_events = ray_worker.filter_autoscaler_events
        dedup = {False: ray_logging.stdout_deduplicator, True: ray_logging.stderr_deduplicator}
        lock, handlers = dispatcher._lock, dispatcher.handlers
    except (ImportError, AttributeError) as e:
        log.debug("worker output not captured (Ray's internals changed): %r", e)
        yield
        return
    if not any(name == "ray_print_logs" for name, _ in handlers):
        log.debug("worker output is not forwarded to this driver (ray.init(log_to_driver=False)?)")
    out, err, last_batch = console_stream(), sys.stderr, [0.0]

    def sink(data: dict, ignore_prefix: bool = False) -> None:
        last_batch[0] = time.monotonic()
        pid, is_err = data.get("pid"), bool(data.get("is_err"))
        source = pid if pid in ("raylet", "autoscaler") else f"worker.{'stderr' if is_err else 'stdout'}"
        # The autoscaler's batch is the monitor's whole log; Ray's console shows only its events.
        lines = autoscaler_events(data.get("lines", [])) if pid == "autoscaler" else data.get("lines", [])
        for line in lines:
            _emit(handler, source, logging.INFO, f"{_worker_prefix(data)}{line}")
        if verbose:  # what Ray's own handler prints, to the real streams (sys.stdout is redirected)
            for batch in [data] if pid == "autoscaler" else dedup[is_err].deduplicate(data):
                print_worker_logs(batch, err if is_err else out, ignore_prefix)

    with lock:
        dispatcher.handlers = [(n, sink if n == "ray_print_logs" else h) for n, h in handlers]
    ray_worker.print_to_stdstream = sink
    try:
        yield
    finally:
        # Forwarding lags ~50-100 ms: the last lines of a sweep (workers Tune killed at its end, the raylet's
        # notes on them) come after fit() returns. Wait until none came for 0.5 s (at most 2 s).
        start = time.monotonic()
        while (now := time.monotonic()) < start + 2 and now - max(last_batch[0], start) < 0.5:
            time.sleep(0.05)
        ray_worker.print_to_stdstream = original
        with lock:
            dispatcher.handlers = [(n, dict(handlers).get(n, h) if h is sink else h) for n, h in dispatcher.handlers]


def _worker_prefix(data: dict) -> str:
    """'(train_trial pid=123) ' as Ray prints it before a forwarded line."""
    pid, ip, name = data.get("pid"), data.get("ip"), data.get("actor_name") or data.get("task_name")
    if pid in ("raylet", "autoscaler"):
        return ""  # the record's source names them
    where = f", ip={ip}" if ip and ip != data.get("localhost") else ""
    return f"({name + ' ' if name else ''}pid={pid}{where}) "


@contextlib.contextmanager
def capture_ray_output(log_path: Path, verbose: bool) -> Iterator[None]:
    """While active, Ray's console output (logs, worker lines, Tune's prints, warnings) is appended to LOG_PATH.

    It reaches the console too only when VERBOSE; `Progress` keeps printing to the real stdout.
    """
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    real_out = sys.stdout
    _CONSOLE.append(real_out)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(_loggers_to(handler, verbose))
            stack.enter_context(_warnings_to(handler, verbose))
            # Tune print()s its experiment table, "View detailed results here" and a TensorBoard hint at verbose=0.
            stdout = stack.enter_context(_LineLog(handler, "driver.stdout", real_out if verbose else None))
            stack.enter_context(contextlib.redirect_stdout(stdout))
            stack.enter_context(_worker_output_to(handler, verbose))
            yield
    finally:
        _CONSOLE.pop()
        handler.close()
