"""The sweep commands of the CLI: sweep, resume, export, status, finalize, compare. Ray is imported when they run."""
from __future__ import annotations

import argparse
import json
import sys

from mmtune.tune import dashboard, finalize, leaderboard, pipeline, report, storage
from mmtune.tune.errors import ResultsError, SweepError
from mmtune.tune.job import SweepOptions, budget_option, experiment_location
from mmtune.tune.results import export, status_table

BAD_INPUT = (SweepError, ResultsError)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the sweep sub-commands to the `mmtune` parser."""
    s = sub.add_parser("sweep", help="hyperparameter search (Ray Tune + Optuna TPE + ASHA)")
    s.add_argument("--data", required=True, help="data set folder")
    s.add_argument("--space", default="default",
                   help="search-space YAML, or the name of a shipped space: default (the default), smoke, seed-baseline")
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
                   help="at the end, retrain the top K configs and the defaults over seeds and pick "
                   "best_config.yaml by the lower confidence bound, the defaults kept unless beaten beyond the "
                   "noise (default 3; 0 skips it: best_config.yaml is then the best trial's)")
    s.add_argument("--finalize-seeds", type=int, default=3, metavar="S",
                   help="seeds per finalized config; each varies the initialization and the split (default 3)")
    s.add_argument("--time-budget", metavar="DURATION", help="bound the whole flow (search + finalize), e.g. 90m, "
                   "1.5h or 1h30m; finalize's share is reserved and shown in the plan (default: the space's "
                   "time_budget, else no limit)")
    s.add_argument("--no-finalize-race", dest="finalize_race", action="store_false",
                   help="train every finalize seed of every config (default: a seed after the first only for the "
                   "configs that can still win, see README 'Finalize')")
    s.add_argument("--mlflow", metavar="URI", help="log every trial (params, per-epoch metrics, status) to this MLflow "
                   "tracking store, e.g. sqlite:///mlflow.db or http://127.0.0.1:5000 (off by default: it costs time)")
    s.add_argument("--tensorboard", action="store_true",
                   help="write TensorBoard logs with HParams into each trial folder (off by default: it costs time)")
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

    f = sub.add_parser("finalize", help="retrain the sweep's top-k configs with several seeds; pick by the "
                       "lower confidence bound (`mmtune sweep` does this at its end by default)")
    f.add_argument("experiment", help="results/<experiment> (a sweep with at least one usable trial)")
    f.add_argument("--top-k", type=int, default=3, help="configs to retrain, best first (default 3); the defaults "
                   "are retrained too unless the space sets defaults_contender: false")
    f.add_argument("--seeds", type=int, default=3, help="training seeds per config (default 3)")
    f.add_argument("--time-budget", metavar="DURATION", help="stop finalize's runs after this long, e.g. 30m or "
                   "1h (runs it cuts are left out of the seeds); default: no limit")
    f.add_argument("--no-race", dest="race", action="store_false",
                   help="train every seed of every config (default: a seed after the first only for the configs "
                   "that can still win)")
    f.add_argument("--address", help="Ray cluster to join ('auto', host:port); default: embedded local Ray")
    f.add_argument("--num-cpus", type=int, help="CPUs of the embedded local Ray (default: all)")

    c = sub.add_parser("compare", help="retrain the plain defaults and best_config.yaml over the same seeds and print "
                       "their paired test F1: does the sweep beat no sweep on this data?")
    c.add_argument("experiment", help="results/<experiment> (with best_config.yaml)")
    c.add_argument("--data", help="data folder with test.npz (default: the one the sweep ran on)")
    c.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1 per config (default 3, at least 2)")
    c.add_argument("--baseline-config", metavar="FILE", help="the config you would have trained without a sweep "
                   "(default: what `mmtune train` trains with no config)")
    c.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes to stderr)")

    report.add_parser(sub)
    dashboard.add_parser(sub)


def _verbose_flag(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: absent here, `mmtune --verbose sweep ...` (the top-level flag) keeps its value.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show Ray's own output on the console too (it is always in <experiment>/ray.log)")


def cmd_sweep(args: argparse.Namespace) -> int:
    pipeline.check_options(args.resume, args.overwrite, args.name)
    if args.resume:
        experiment_location(args.storage, args.name)  # a bad name fails here, with the flag named
    opts = SweepOptions(
        data=args.data, space=args.space, name=args.name, storage=args.storage, address=args.address,
        num_cpus=args.num_cpus, num_gpus=args.num_gpus, cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        num_samples=args.num_samples, epochs=args.epochs, seed=args.seed, cv=args.cv, overwrite=args.overwrite,
        resume=args.resume, allow_local_storage=args.allow_local_storage, verbose=args.verbose,
        finalize_top_k=args.finalize_top_k, finalize_seeds=args.finalize_seeds,
        finalize_race=args.finalize_race, time_budget=args.time_budget, mlflow=args.mlflow,
        tensorboard=args.tensorboard)
    pipeline.run(opts, sys.stdout)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    opts = SweepOptions.for_experiment(args.experiment, address=args.address, num_cpus=args.num_cpus,
                                       verbose=args.verbose)
    print(f"resuming {args.experiment}")
    pipeline.run(opts, sys.stdout)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    with storage.synced(args.experiment) as exp_dir:
        summary = export(exp_dir, args.out)
    kept = " (the finalized winner's, left as it is)" if summary["best_config_from"] == "finalize" else ""
    print(f"best {summary['metric']} = {summary['best_value']:.4f} (trial {summary['best_trial']}); "
          f"wrote {summary['best_trial_config']}, trials.csv, summary.json; best config: {summary['best_config']}"
          f"{kept}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with storage.synced(args.experiment, checkpoints=False) as exp_dir:
        print(status_table(exp_dir))
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    """Finalize ARGS.experiment and print the leaderboard and where the files are."""
    with pipeline.interrupted_finalize(args.experiment, args.top_k, args.seeds, args.race):
        summary = finalize.finalize(args.experiment, args.top_k, args.seeds, args.address, args.num_cpus,
                                    race=args.race, time_budget=budget_option(args.time_budget))
    print("\n".join(leaderboard.result_lines(summary)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Compare ARGS.experiment's best config with the defaults; print the paired table (or the JSON)."""
    from mmtune.tune.compare import compare, table_lines  # late: torch

    with storage.synced(args.experiment, checkpoints=False) as exp_dir:
        summary = compare(exp_dir, args.data, args.seeds, sys.stderr if args.json else sys.stdout,
                          baseline_config=args.baseline_config)
    print(json.dumps(summary, indent=2) if args.json else "\n".join(["", *table_lines(summary)]))
    return 0


HANDLERS = {"sweep": cmd_sweep, "resume": cmd_resume, "export": cmd_export, "status": cmd_status,
            "report": report.cmd_report, "finalize": cmd_finalize, "dashboard": dashboard.cmd_dashboard,
            "compare": cmd_compare}
