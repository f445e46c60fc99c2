"""The connection to Ray: joining a cluster or starting an embedded one, Tune's settings, and every workaround
that needs a private Ray API (kept here, in one place, each with the reason)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any, Iterator

from mmtune.tune.errors import SweepError

log = logging.getLogger(__name__)

# Tune reads these when a Tuner runs, not at import; they are applied by `connect`, never at import time.
TUNE_DEFAULTS = {
    # Tune saves its experiment state every max(10 s, 19 x save time) by default; a short period keeps a
    # driver crash from forgetting recent trial events (the durable records cover the rest).
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # Only result.json is read back (results, report); the CSV and TensorBoard loggers Tune adds by default
    # would write every result twice more.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    # Snapshots forced by checkpoint retention are intended here; Ray's warning about them is noise.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
            **init_kwargs: Any) -> None:
    """Join ADDRESS (or RAY_ADDRESS), or start an embedded local Ray bound to 127.0.0.1; apply Tune's settings.

    A runtime that is already up (a test's, a notebook's) is used as it is.
    """
    for key, value in TUNE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, **init_kwargs)
        return
    _loopback_only()
    # Ray says at every start that token authentication is on (its secure default, which we keep): noise here.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", logging_level=logging.WARNING, configure_logging=False, **init_kwargs)


def _loopback_only() -> None:
    """Keep every server of the embedded runtime on loopback, so nobody else can submit work to it.

    Ray turns 127.0.0.1 into the machine's routable address unless clustering is off (its own mechanism on
    macOS/Windows). The driver read that switch when it imported Ray (private: ray._private.ray_constants);
    the processes it starts read the environment.
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def cluster_nodes() -> list[dict[str, float]]:
    """Resources of each live node of the connected cluster."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def restored_parts(tuner: Any) -> tuple[list, Any]:
    """The (mutable) list of Tune callbacks and the searcher that `Tuner.restore` unpickled from the first run.

    Ray offers no way to pass callbacks or a searcher to a restore, and they hold state of the first run (its
    folder, its console). Private: `Tuner._local_tuner.get_run_config()` and `._tune_config` (Ray 2.60).
    """
    local = getattr(tuner, "_local_tuner", None)
    callbacks = local.get_run_config().callbacks if local is not None else None
    config = getattr(local, "_tune_config", None)
    if callbacks is None or config is None:
        raise SweepError("Ray's restored Tuner has no callbacks to update; this Ray version is not supported by "
                         "`mmtune resume` (see constraints.txt)")
    return callbacks, config.search_alg


def staging_roots() -> list[Path]:
    """Where this machine's Ray sessions keep their folders (Tune's staging copies of its state among them)."""
    try:  # private API (ray/_common/utils.py): RAY_TMPDIR, else TMPDIR on Linux, else /tmp, then "ray"
        from ray._common.utils import get_default_ray_temp_dir

        return [Path(get_default_ray_temp_dir())]
    except (ImportError, AttributeError):
        return [Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"]


@contextlib.contextmanager
def tune_stop_signal() -> Iterator[None]:
    """Around `Tuner.fit()`: a KeyboardInterrupt after it when Tune ended its run on a stop signal (Ctrl-C).

    Ray 2.60, ray/tune/tune.py: `run` (l. 897) calls `_setup_signal_catching` (l. 214-244), which in the main
    thread gives SIGUSR1 and (unless TUNE_DISABLE_SIGINT_HANDLER) SIGINT one handler; on a signal it sets
    `experiment_interrupted_event` and puts back the SIGINT handler it found (l. 225-227). The loop then ends
    (l. 991), the state is saved (l. 1006), the trials are stopped (l. 1024) and `run` returns just as after a
    finished run (l. 1044-1065 only log), and fit() wraps that in a ResultGrid (impl/tuner_internal.py l. 526-536;
    raise_on_failed_trial=False, l. 616). So only SIGINT no longer being Tune's handler tells. Tune leaves its
    handlers installed after a normal end; they are put back here, so that a later Ctrl-C (export, finalize)
    raises instead of reaching a stale handler. Ray's own processes block SIGINT (ray/_private/services.py
    l. 1046-1049), so a terminal's Ctrl-C, sent to the whole process group, stops the driver only.
    """
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is None:  # no SIGUSR1 (Windows): Tune's handler cannot be told apart, and a stop goes unnoticed
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, usr1)}
    try:
        yield
    finally:
        tune_handler = signal.getsignal(usr1)  # Tune's, if it set up its handlers here (not in a thread or client)
        set_up = tune_handler is not before[usr1]
        caught = set_up and not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0"))
        stopped = caught and signal.getsignal(signal.SIGINT) is not tune_handler
        if set_up:
            for sig, handler in before.items():
                signal.signal(sig, handler)
    if stopped:
        raise KeyboardInterrupt("Tune stopped on a stop signal")
