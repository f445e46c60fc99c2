"""The sweep commands of the CLI: sweep, resume, export, status. Ray is imported only when they run."""
from __future__ import annotations

import argparse

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
    s.add_argument("--overwrite", action="store_true", help="replace an experiment of the same name")
    s.add_argument("--resume", action="store_true", help="continue an unfinished experiment of the same name")
    s.add_argument("--allow-local-storage", action="store_true",
                   help="accept a plain --storage path on a multi-node cluster (it must be a shared mount)")
    s.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    s.add_argument("--num-gpus", type=int, help="GPUs of the embedded local Ray (default: detected; "
                   "logical GPUs for testing placement)")

    r = sub.add_parser("resume", help="continue an interrupted sweep")
    r.add_argument("experiment", help="results/<experiment>")
    r.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")
    r.add_argument("--address", help="Ray cluster to join instead of the embedded one")

    e = sub.add_parser("export", help="write trials.csv, best_config.yaml, summary.json from disk")
    e.add_argument("experiment")
    e.add_argument("--out", help="where to write the best config (default <experiment>/best_config.yaml)")

    st = sub.add_parser("status", help="table of an experiment's trials, read from disk")
    st.add_argument("experiment")

    report.add_parser(sub)
    finalize.add_parser(sub)


def cmd_sweep(args: argparse.Namespace) -> int:
    from tune import runner

    if args.resume and args.overwrite:
        raise SweepError("--resume and --overwrite contradict each other; choose one")
    if args.resume:
        if not args.name:
            raise SweepError("--resume needs --name (the experiment to continue)")
        args.experiment = str(runner.experiment_dir(args.storage, args.name))
        return cmd_resume(args)

    opts = runner.SweepOptions(
        data=args.data, space=args.space, name=args.name, storage=args.storage, address=args.address,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
        max_failures=args.max_failures, num_samples=args.num_samples, epochs=args.epochs, seed=args.seed,
        overwrite=args.overwrite, allow_local_storage=args.allow_local_storage)
    prepared = runner.prepare(opts)  # every input checked before Ray starts
    s = prepared.space
    print(f"sweep {prepared.name}: {s.num_samples} trials x <= {s.epochs} epochs, metric {s.metric} ({s.mode}), "
          f"{len(s.params)} parameters from {args.space}")
    runner.connect(args.address, args.num_cpus, args.num_gpus)
    nodes = runner.cluster_nodes()
    runner.check_cluster(prepared, nodes)
    plan = runner.plan_resources(s, prepared.data, opts, nodes)
    print(plan.describe(), flush=True)
    return _finish(runner.run(prepared, plan))


def cmd_resume(args: argparse.Namespace) -> int:
    from tune import runner

    prepared = runner.prepare_resume(args.experiment)
    print(f"resuming {prepared.loc}")
    runner.connect(args.address, args.num_cpus)
    return _finish(runner.resume(prepared))


def _finish(loc: storage.Location) -> int:
    from tune.results import export, status_table

    with storage.pushing(loc) as exp_dir:
        summary = export(exp_dir)
    print(status_table(exp_dir))
    print(f"\nbest {summary['metric']} = {summary['best_value']:.4f} (trial {summary['best_trial']}, "
          f"epoch {summary['best_epoch']}); trials by status: {summary['trials_by_status']}")
    print(f"best config: {summary['best_config']}")
    if loc.remote:
        print(f"stored at:   {loc.remote} (the paths above are its local copy)")
    print(f"retrain it:  mmtune train --config {summary['best_config']} --data {summary['data']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tune.results import export

    with storage.synced(args.experiment) as exp_dir:
        summary = export(exp_dir, args.out)
    print(f"best {summary['metric']} = {summary['best_value']:.4f} (trial {summary['best_trial']}); "
          f"wrote {summary['best_config']}, trials.csv, summary.json")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from tune.results import status_table

    with storage.synced(args.experiment, checkpoints=False) as exp_dir:
        print(status_table(exp_dir))
    return 0


HANDLERS = {"sweep": cmd_sweep, "resume": cmd_resume, "export": cmd_export, "status": cmd_status,
            "report": report.cmd_report, "finalize": finalize.cmd_finalize}
