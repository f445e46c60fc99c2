"""The connection to Ray: joining a cluster or starting an embedded one, Tune's settings, and every workaround
that needs a private Ray API (kept here, in one place, each with the reason)."""
from __future__ import annotations

import logging
import os
from typing import Any

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
