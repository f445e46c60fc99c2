"""`mmtune dashboard`: optuna-dashboard on an experiment's study.db, bound to loopback unless asked otherwise.

The study is SQLite, written by the sweep's driver as trials end; the dashboard reads it on every request, so it
shows a running sweep as it goes.
"""
from __future__ import annotations

import argparse
import errno
import importlib.util
from pathlib import Path

from mmtune.tune import storage
from mmtune.tune.errors import ResultsError, SweepError
from mmtune.tune.experiment import STUDY_DB, study_storage

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add `mmtune dashboard` to the `mmtune` parser."""
    d = sub.add_parser("dashboard", help="serve the experiment's Optuna study with optuna-dashboard (also while "
                       "the sweep runs)")
    d.add_argument("experiment", help="results/<experiment> (or its URI: the local mirror is pulled first)")
    d.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the dashboard has no login)")
    d.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")


def cmd_dashboard(args: argparse.Namespace) -> int:
    """Serve the study until Ctrl-C."""
    if importlib.util.find_spec("optuna_dashboard") is None:
        raise SweepError("mmtune dashboard needs optuna-dashboard: pip install -e '.[dashboard]' (make installs it)")
    if not 0 < args.port < 65536:
        raise SweepError(f"--port {args.port}: give a port between 1 and 65535")
    from optuna_dashboard import run_server

    db = study_file(args.experiment)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"optuna-dashboard of {db}: http://{host}:{args.port}/dashboard (Ctrl-C stops it)", flush=True)
    if args.host not in LOOPBACK:
        print(f"note: bound to {args.host}, so other machines can reach it; it has no login", flush=True)
    try:
        run_server(study_storage(db.parent), host=args.host, port=args.port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise SweepError(f"--port {args.port}: already in use on {args.host}; pick another --port") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise SweepError(f"--host {args.host}: not an address of this machine") from None
        raise
    return 0


def study_file(location: str | Path) -> Path:
    """The study.db of the experiment LOCATION (a folder, or a URI whose mirror is pulled first)."""
    db = storage.fetched(location, checkpoints=False).local / STUDY_DB
    if not db.is_file():
        raise ResultsError(f"{db}: no such file; pass results/<experiment> of an mmtune sweep (its driver writes "
                           f"{STUDY_DB} when the first trial starts)")
    return db
