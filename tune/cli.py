"""The `mmtune` command line. Exit codes: 0 success, 2 bad input, 130 interrupted (Ctrl-C), 1 anything else."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from mmtune.data.demo import make_demo
from mmtune.data.npz import DataError, load_dataset, summarize
from mmtune.data.pack import pack
from mmtune.data.validation import TrainData, Validation
from mmtune.model.checkpoint import CheckpointError, load_checkpoint
from mmtune.model.config import FIELD_TYPES, ConfigError, TrainConfig, load_config
from mmtune.model.status import TrialStatus
from mmtune.tune import commands, process

# Errors that mean "the input is wrong": a message, exit code 2, no traceback.
BAD_INPUT: tuple[type[Exception], ...] = (ConfigError, DataError, CheckpointError, FileNotFoundError)
FLAG_ALIASES = {"batch_size": ["--batch"]}  # the old script's spelling keeps its meaning


class UsageError(ValueError):
    """A command-line problem the user can fix; the message names the flag."""


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (default None: only given flags override the YAML)."""
    g = p.add_argument_group("training config (each overrides --config)")
    comments = _field_comments()
    for f in fields(TrainConfig):
        flags = [f"--{f.name.replace('_', '-')}", *FLAG_ALIASES.get(f.name, [])]
        kind = FIELD_TYPES[f.name]
        help_ = f"{comments.get(f.name, '')} (default {f.default})"
        if kind is bool:
            g.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            g.add_argument(*flags, dest=f.name, type=kind, default=None, metavar=kind.__name__.upper(), help=help_)


def _field_comments() -> dict[str, str]:
    """The comment beside each TrainConfig field, for --help."""
    import inspect

    out = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        name, _, rest = line.strip().partition(":")
        if name in FIELD_TYPES and "#" in rest:
            out[name] = rest.split("#", 1)[1].strip().replace("%", "%%")
    return out


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line."""
    return {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}


def _progress(total_epochs: int) -> Callable:
    def show(record: dict[str, Any], trainer: Any) -> None:
        if record["status"] == TrialStatus.NAN:
            print(f"epoch {record['epoch']:>3}/{total_epochs}  train/loss {record['train/loss']}  -> stopping "
                  f"({record['status']})", flush=True)
            return
        keys = [k for k in ("train/loss", "val/loss", "val/f1", "val/ap", "val/auroc") if k in record]
        vals = "  ".join(f"{k} {record[k]:.4f}" for k in keys)
        mark = " *" if record["improved"] else ""
        print(f"epoch {record['epoch']:>3}/{total_epochs}  {vals}  lr {record['lr']:.2e}  "
              f"{record['seconds']:.1f}s{mark}", flush=True)
    return show


def describe_data(data: TrainData) -> str:
    """What a run trains on, for its first line: the splits' sizes, or the CV pool."""
    if data.k > 1:
        return f"{data.k}-fold CV over {data.info['pool']}, {data.info['n_pool']} samples; test.npz is not used"
    view = data.fold(0)
    return ", ".join(f"{k} {len(v)}" for k, v in view.splits.items())


def cmd_train(args: argparse.Namespace, kind: str = "classify") -> int:
    from mmtune.model.run import train_run  # late: torch

    cfg = load_config(args.config, config_overrides(args))
    run_dir = Path(args.checkpoint_dir or f"runs/{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    data = Validation.of(cfg).load(args.data)
    print(f"{kind}: {args.data} -> {run_dir}  ({describe_data(data)})")
    pretrained = getattr(args, "pretrained_ckpt", None)
    if pretrained:
        print(f"encoder weights from {pretrained}")
    summary = train_run(cfg, data, run_dir, kind, args.save_best_only, pretrained, [_progress(cfg.epochs)])
    if cfg.val_fraction == 0:
        print(f"done: {summary['status']} after {summary['epochs_run']} epochs on all training data (train.npz + "
              "val.npz, no validation split); the model is the last epoch's")
    else:
        print(f"done: {summary['status']} after {summary['epochs_run']} epochs; best {summary['monitor']} "
              f"{summary['best_value']} at epoch {summary['best_epoch']}")
    if "cv" in summary:
        est = summary["cv"]
        print(f"CV estimate ({est['folds']} folds): {est['monitor']} {est['mean']:.4f} +- {est['sd']:.4f} at epoch "
              f"{est['epoch']}; per fold {', '.join(f'{v:.4f}' for v in est['per_fold'])} (test.npz not evaluated)")
    if "test" in summary:
        print("test (best epoch): " + "  ".join(f"{k} {v:.4f}" for k, v in summary["test"].items()))
    print(f"run folder: {run_dir}")
    return 0 if summary["status"] != TrialStatus.NAN else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from mmtune.model.run import checkpoint_data, evaluate_checkpoint  # late: torch

    state = load_checkpoint(args.checkpoint)
    if state["kind"] != "classify":
        raise CheckpointError(f"{args.checkpoint}: a {state['kind']} checkpoint has no classifier to evaluate")
    data = checkpoint_data(state, args.data, str(args.checkpoint))
    if args.split not in data.splits:
        raise DataError(f"{Path(args.data) / (args.split + '.npz')}: no such split; have {sorted(data.splits)}")
    metrics = evaluate_checkpoint(state, data, (args.split,))[args.split]
    if args.json:
        print(json.dumps({"split": args.split, "checkpoint": str(args.checkpoint), **metrics}))
    else:
        print(f"{args.split} ({len(data.splits[args.split])} samples, checkpoint epoch {state['epoch']}):")
        for k, v in metrics.items():
            print(f"  {k:<10} {v:.4f}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "pack":
        counts = pack(args.src, args.out)
        print(f"packed {sum(counts.values())} samples into {args.out}: {counts}")
    elif args.data_cmd == "check":
        info = summarize(load_dataset(args.path))
        print(json.dumps(info, indent=2) if args.json else _format_summary(args.path, info))
    else:
        try:
            out = make_demo(args.out, args.n_train, args.n_val, args.n_test, args.difficulty, args.seed,
                            args.positive_rate)
        except ValueError as e:  # a flag out of range: exit 2 with the message, which names the flag's field
            raise UsageError(f"mmtune data demo: {e}") from e
        print(f"demo data set written to {out}")
    return 0


def _format_summary(path: str, info: dict) -> str:
    lines = [f"{path}: OK"]
    lines += [f"  modality {m}: {v['steps']} steps x {v['features']} features" for m, v in info["modalities"].items()]
    for name, s in info["splits"].items():
        masked = ", ".join(f"{m} {f:.1%}" for m, f in s["masked_fraction"].items())
        groups = f", {s['groups']} groups" if s["groups"] is not None else ""
        lines.append(f"  {name:<5} {s['samples']:>6} samples, {s['positives']} positive "
                     f"({s['positive_rate']:.1%}){groups}; masked steps: {masked}")
    if isinstance(info["val_split"], dict):
        lines.append(f"  val made from train.npz: {info['val_split']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The full `mmtune` parser (also used by tests to check command lines in launch configs)."""
    p = argparse.ArgumentParser(prog="mmtune", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log at INFO level; sweeps also show Ray's own output (always in <experiment>/ray.log)")
    sub = p.add_subparsers(dest="cmd", required=True)

    for name, help_ in (("train", "train a classifier"), ("pretrain", "masked-step pretraining of the encoder")):
        t = sub.add_parser(name, help=help_)
        t.add_argument("--data", required=True, help="data set folder (train.npz, val.npz, test.npz)")
        t.add_argument("--config", help="YAML file of config fields (e.g. a sweep's best_config.yaml)")
        t.add_argument("--checkpoint-dir", help="run folder (default runs/<kind>-<time>)")
        t.add_argument("--save-best-only", action="store_true", help="keep only best.pt, not last.pt")
        if name == "train":
            t.add_argument("--pretrained-ckpt", help="encoder weights from an `mmtune pretrain` best.pt")
        add_config_flags(t)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=("train", "val", "test"))
    e.add_argument("--json", action="store_true", help="print one JSON object")

    d = sub.add_parser("data", help="pack, check or generate data sets").add_subparsers(dest="data_cmd", required=True)
    pk = d.add_parser("pack", help="pack a folder of one-sample .npz files into split files")
    pk.add_argument("src")
    pk.add_argument("out")
    ck = d.add_parser("check", help="validate a data set and print a summary")
    ck.add_argument("path")
    ck.add_argument("--json", action="store_true")
    dm = d.add_parser("demo", help="write the synthetic approach-intent data set")
    dm.add_argument("out")
    dm.add_argument("--n-train", type=int, default=1200)
    dm.add_argument("--n-val", type=int, default=300)
    dm.add_argument("--n-test", type=int, default=300)
    dm.add_argument("--difficulty", type=float, default=0.5, help="0 easy .. 1 hard")
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--positive-rate", type=float, help="expected share of positive samples, e.g. 0.12 "
                    "(default: the generator's, about 26 %%)")

    commands.add_parsers(sub)  # sweep, resume, export, status, report, finalize, dashboard
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse ARGV, run the command, map errors to exit codes."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    handlers = {"train": cmd_train, "pretrain": lambda a: cmd_train(a, "pretrain"), "evaluate": cmd_evaluate,
                "data": cmd_data, **commands.HANDLERS}
    try:
        return handlers[args.cmd](args)
    except (*BAD_INPUT, UsageError, *commands.BAD_INPUT) as e:
        if args.debug:
            raise
        print(f"mmtune: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if args.debug:
            raise
        if e.errno == errno.ENOSPC:
            print(f"mmtune: error: no space left on the device while writing {e.filename or 'a result file'}; "
                  "files written before are intact. Free space or choose another --storage / --checkpoint-dir",
                  file=sys.stderr)
        else:
            print(f"mmtune: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C; a SweepInterrupted (tune.errors) says what is kept and how to go on
        print(f"mmtune: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line unless --debug
        if args.debug:
            raise
        print(f"mmtune: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def main() -> None:
    """Console entry point."""
    process.collect_less()
    process.leave(run())
