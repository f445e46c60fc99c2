"""The sweep commands of the CLI: sweep, resume, export, status. Ray is imported only when they run."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tune import finalize, report, storage
from tune.errors import ResultsError, SweepError

BAD_INPUT = (SweepError, ResultsError)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the sweep sub-commands to the `mmtune` parser."""
    s = sub.add_parser("sweep", help="hyperparameter search (Ray Tune + Optuna TPE + ASHA)")
    s.add_argument("--data", required=True, help="data set folder")
    s.add_argument("--space", default="search_spaces/default.yaml", help="search-space YAML")
    s.add_argument("--name", help="experiment name (default <space>-<time>)")
    s.add_argument("--storage", default="results",
                   help="folder or URI holding experiments: a path, file://, s3://, gs://, ... "
                   "(multi-node clusters need shared storage)")
    s.add_argument("--address", help="Ray cluster to join ('auto', host:port); default: embedded local Ray")
    s.add_argument("--cpus-per-trial", type=float, default=1.0)
    s.add_argument("--gpus-per-trial", default="auto", help="'auto' (pack by memory estimate), 0, a fraction, or N")
    s.add_argument("--max-concurrent", type=int, help="cap on trials running at once")
    s.add_argument("--max-failures", type=int, default=2, help="retries of a failing trial from its checkpoint")
    s.add_argument("--num-samples", type=int, help="trials (overrides the YAML)")
    s.add_argument("--epochs", type=int, help="epoch budget per trial = ASHA max_t (overrides the YAML)")
    s.add_argument("--seed", type=int, help="sampler seed (overrides the YAML)")
    s.add_argument("--cv", help="validation of every trial: 0 (holdout), K >= 2 (K-fold CV, K x the cost) or "
                   "'auto' (5-fold when the holdout has < 50 of the rarer class); overrides the YAML's cv")
    s.add_argument("--overwrite", action="store_true", help="replace an experiment of the same name")
    s.add_argument("--resume", action="store_true", help="continue an unfinished experiment of the same name")
    s.add_argument("--allow-local-storage", action="store_true",
                   help="accept a plain --storage path on a multi-node cluster (it must be a shared mount)")
    s.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    s.add_argument("--num-gpus", type=int, help="GPUs of the embedded local Ray (default: detected; "
                   "logical GPUs for testing placement)")
    s.add_argument("--finalize-top-k", type=int, default=3, metavar="K",
                   help="at the end, retrain the top K configs over seeds and pick best_config.yaml by the lower "
                   "confidence bound (default 3; 0 skips it: best_config.yaml is then the best trial's)")
    s.add_argument("--finalize-seeds", type=int, default=3, metavar="S",
                   help="seeds per finalized config; each varies the initialization and the split (default 3)")
    _verbose_flag(s)

    r = sub.add_parser("resume", help="continue an interrupted sweep")
    r.add_argument("experiment", help="results/<experiment>")
    r.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    r.add_argument("--address", help="Ray cluster to join instead of the embedded one")
    _verbose_flag(r)

    e = sub.add_parser("export", help="write trials.csv, best_trial_config.yaml, summary.json from disk "
                       "(and best_config.yaml while no finalize result exists)")
    e.add_argument("experiment")
    e.add_argument("--out", help="where to write the best trial's config (default "
                   "<experiment>/best_trial_config.yaml)")

    st = sub.add_parser("status", help="table of an experiment's trials, read from disk")
    st.add_argument("experiment")

    report.add_parser(sub)
    finalize.add_parser(sub)


def _verbose_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: absent here, `mmtune --verbose sweep ...` (the top-level flag) keeps its value.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Ray's own output on the console too (it is always in <experiment>/ray.log)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from tune.job import experiment_location
    from tune.sweep import SweepOptions, sweep

    if args.resume and args.overwrite:
        raise SweepError("--resume and --overwrite contradict each other; choose one")
    if args.resume and not args.name:
        raise SweepError("--resume needs --name (the experiment to continue)")
    if args.resume:
        experiment_location(args.storage, args.name)  # a bad name fails here, with the flag named
    check_finalize_flags(args.finalize_top_k, args.finalize_seeds)
    opts = SweepOptions(
        data=args.data, space=args.space, name=args.name, storage=args.storage, address=args.address,
        num_cpus=args.num_cpus, num_gpus=args.num_gpus, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        num_samples=args.num_samples, epochs=args.epochs, seed=args.seed, cv=args.cv, overwrite=args.overwrite,
        resume=args.resume, allow_local_storage=args.allow_local_storage, verbose=args.verbose,
        finalize_top_k=args.finalize_top_k, finalize_seeds=args.finalize_seeds)
    return _finish(sweep(opts, out=sys.stdout).path, args.storage, args.name, args.address, args.num_cpus)


def check_finalize_flags(top_k: int, seeds: int) -> None:
    """Refuse impossible finalize counts before anything runs."""
    if top_k < 0:
        raise SweepError(f"--finalize-top-k {top_k}: use 0 (skip the re-evaluation) or a count >= 1")
    if seeds < 1:
        raise SweepError(f"--finalize-seeds {seeds}: must be >= 1 (use --finalize-top-k 0 to skip finalizing)")


def cmd_resume(args: argparse.Namespace) -> int:
    from tune.sweep import SweepOptions, sweep

    opts = SweepOptions.for_experiment(args.experiment, address=args.address, num_cpus=args.num_cpus,
                                       verbose=args.verbose)
    print(f"resuming {args.experiment}")
    return _finish(sweep(opts, out=sys.stdout).path, opts.storage, opts.name, args.address, args.num_cpus)


def _finish(exp_dir: Path, storage_path: str, name: str | None, address: str | None = None,
            num_cpus: int | None = None) -> int:
    """Export and show the sweep, then finalize it as its start recorded (the resource plan is the sweep's)."""
    from tune.experiment import read_meta
    from tune.results import export, status_table

    loc = storage.locate(storage_path, exp_dir.name if name is None else name)
    with storage.pushing(loc):
        summary = export(exp_dir)
    print(status_table(exp_dir))
    print(f"\nbest {summary['metric']} = {summary['best_value']:.4f} (trial {summary['best_trial']}, "
          f"epoch {summary['best_epoch']}); trials by status: {summary['trials_by_status']}")
    print(f"best trial config: {summary['best_trial_config']}")
    if loc.remote:
        print(f"stored at:   {loc.remote} (the paths above are its local copy)")
    print(f"Ray's log:   {exp_dir / 'ray.log'}")
    top_k, seeds = finalize_settings(read_meta(exp_dir))
    if top_k == 0:
        print(f"best config: {summary['best_config']} (the best trial's: finalizing was skipped)")
        print(f"retrain it:  mmtune train --config {summary['best_config']} --data {summary['data']}")
        _print_warnings(summary)
        return 0
    print(f"\nfinalize: retraining the top {top_k} config(s) x {seeds} seed(s) at the full budget, a second Tune "
          f"run in {exp_dir / finalize.FINAL_DIR} with the same resource plan")
    final = finalize.finalize(str(loc), top_k, seeds, address, num_cpus, out=sys.stdout)
    print("\n".join(finalize.result_lines(final)))
    with storage.pushing(loc):
        summary = export(exp_dir)  # summary.json again: its noise estimate now has the seeds' spread
    _print_warnings(summary)
    return 0


def _print_warnings(summary: dict) -> None:
    """The sweep's saturation and noise warnings (also in summary.json and the report), each with its remedy."""
    if summary.get("warnings"):
        print("\nwarnings:")
        print("\n".join(f"  - {w}" for w in summary["warnings"]))


def finalize_settings(meta: dict) -> tuple[int, int]:
    """(top-k, seeds) recorded when the sweep started; the defaults for one recorded before they existed."""
    from tune.job import SweepOptions

    options = meta.get("options", {})
    return (int(options.get("finalize_top_k", SweepOptions.finalize_top_k)),
            int(options.get("finalize_seeds", SweepOptions.finalize_seeds)))


def cmd_export(args: argparse.Namespace) -> int:
    from tune.results import export

    with storage.synced(args.experiment) as exp_dir:
        summary = export(exp_dir, args.out)
    kept = " (the finalized winner's, left as it is)" if summary["best_config_from"] == "finalize" else ""
    print(f"best {summary['metric']} = {summary['best_value']:.4f} (trial {summary['best_trial']}); "
          f"wrote {summary['best_trial_config']}, trials.csv, summary.json; best config: {summary['best_config']}"
          f"{kept}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tune.results import status_table

    with storage.synced(args.experiment, checkpoints=False) as exp_dir:
        print(status_table(exp_dir))
    return 0


HANDLERS = {"sweep": cmd_sweep, "resume": cmd_resume, "export": cmd_export, "status": cmd_status,
            "report": report.cmd_report, "finalize": finalize.cmd_finalize}
