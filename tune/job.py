"""A sweep's inputs: the options (the CLI's flags), and the Job they make once every input is checked.

Nothing here starts Ray or writes a file: bad input is refused before anything runs.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mmtune.data.validation import TrainData, Validation, resolve
from mmtune.tune import storage
from mmtune.tune.budget import DurationError, TimeBudget, parse_duration, split
from mmtune.tune.errors import SweepError
from mmtune.tune.experiment import META, read_meta, recorded_validation
from mmtune.tune.resources import check_flags
from mmtune.tune.space import SearchSpace, load_space, parse_space, space_file
from mmtune.tune.tracking import check_tracking

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class SweepOptions:
    """What a sweep is asked to do (the CLI's flags); None means 'from the search-space file'."""

    data: str
    space: str | SearchSpace  # a YAML file, or a space built in Python
    name: str | None = None
    storage: str = "results"
    address: str | None = None  # a Ray cluster to join; None: an embedded local Ray
    num_cpus: int | None = None  # of the embedded Ray (default: all)
    num_gpus: int | None = None  # of the embedded Ray (default: detected; logical GPUs for testing placement)
    cpus_per_trial: float = 1.0
    gpus_per_trial: str = "auto"  # "auto" or a number of GPUs (a fraction packs trials on one GPU)
    max_concurrent: int | None = None
    max_failures: int = 2
    allow_local_storage: bool = False  # a plain path on a multi-node cluster (the user says it is shared)
    num_samples: int | None = None
    epochs: int | None = None
    seed: int | None = None
    cv: str | None = None  # "auto", "0" (holdout) or a fold count K >= 2 (overrides the space's `cv`)
    split_seeds: tuple[int, ...] = ()  # more split_seeds trials set (finalize varies them): each gets its split
    overwrite: bool = False
    resume: bool = False  # continue the unfinished experiment NAME under STORAGE (its recorded inputs win)
    verbose: bool = False  # Ray's own output on the console too (it always goes to <exp>/ray.log)
    # Recorded so that a resume finalizes as the start asked; `mmtune sweep`/`resume` run it, sweep() does not.
    finalize_top_k: int = 3  # configs re-evaluated over seeds at the end (0: none)
    finalize_seeds: int = 3  # seeds per re-evaluated config
    finalize_race: bool = True  # seeds after the first only for configs that can still win (tune/racing.py)
    time_budget: str | float | None = None  # '90m', '2h', seconds: bounds search + finalize (the space's time_budget)
    # Tracking, off by default (each costs time per epoch); recorded, so a resume and finalize keep it.
    mlflow: str | None = None  # an MLflow tracking URI: every trial becomes a run of the experiment's name
    tensorboard: bool = False  # TensorBoard event files (scalars per epoch, HParams) in every trial folder

    @classmethod
    def for_experiment(cls, location: str | Path, **kw: Any) -> "SweepOptions":
        """Options that resume the experiment at LOCATION (a folder or URI)."""
        parent, _, name = str(location).rstrip("/").rpartition("/")
        return cls(data="", space="", name=name, storage=parent or ".", resume=True, **kw)


@dataclass
class Job:
    """A sweep with every input checked, before Ray starts."""

    opts: SweepOptions
    space: SearchSpace  # its `cv` resolved: `validation.folds`
    validation: Validation  # how every trial is validated, decided once here (`cv: auto` resolved) and recorded
    data: TrainData
    loc: storage.Location
    space_file: str
    variants: dict[int, TrainData] = field(default_factory=dict)  # split_seed -> data, for the trials

    def __post_init__(self) -> None:
        self.variants = self.variants or {self.validation.split_seed: self.data}

    @property
    def name(self) -> str:
        return self.loc.name


def prepare(opts: SweepOptions) -> Job:
    """Check the space, data, flags, experiment folder and tracking; nothing starts, nothing is written (but the
    tracking store that --mlflow names, when MLflow creates it on first contact)."""
    space_file, space = _space(opts.space)
    space = space.with_overrides(num_samples=opts.num_samples, epochs=opts.epochs, seed=opts.seed,
                                 cv=cv_option(opts.cv), time_budget=budget_option(opts.time_budget))
    name = opts.name or f"{Path(space_file).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    loc = experiment_location(opts.storage, name)
    check_flags(opts.cpus_per_trial, opts.gpus_per_trial, opts.max_concurrent, opts.max_failures)
    if loc.remote:
        storage.check_writable(loc.ray_storage)
    if storage.exists(loc) and not opts.overwrite:
        meta = json_meta(loc)
        state = "finished" if meta.get("finished") else "unfinished"
        raise SweepError(f"{loc}: an {state} experiment of that name exists; continue it with "
                         f"`mmtune resume {loc}`, replace it with --overwrite, or pick another --name")
    validation = resolve(opts.data, space.cv, space.split_seed, space.validation.val_fraction)
    space = replace(space, cv=validation.folds)
    variants = load_variants(opts.data, validation, space, opts.split_seeds)
    check_tracking(opts.mlflow, opts.tensorboard)  # last: it may reach a tracking server
    return Job(replace(opts, name=name), space, validation, variants[validation.split_seed], loc, space_file,
               variants)


def cv_option(value: str | None) -> int | str | None:
    """The --cv flag: None (the space decides), 'auto', or a fold count (0 = holdout)."""
    if value is None or value == "auto":
        return value
    try:
        k = int(value)
    except ValueError:
        k = -1
    if k < 0 or k == 1:
        raise SweepError(f"--cv {value}: give 0 (one holdout split), a fold count K >= 2, or 'auto'")
    return k


def budget_option(value: str | float | None) -> float | None:
    """The --time-budget flag in seconds (None: the space decides)."""
    try:
        return None if value is None else parse_duration(value, "--time-budget")
    except DurationError as e:
        raise SweepError(str(e)) from None


def time_budget(space: SearchSpace, finalize_top_k: int, finalize_seeds: int) -> TimeBudget | None:
    """SPACE's time budget split between its search and the finalize asked for (None: unbounded)."""
    if space.time_budget is None:
        return None
    return split(space.time_budget, space.num_samples, space.rungs, space.reduction_factor, space.epochs,
                 finalize_runs(space, finalize_top_k, finalize_seeds))


def finalize_runs(space: SearchSpace, top_k: int, seeds: int) -> int:
    """Full-budget runs finalize trains at most: the top TOP_K configs and the defaults, SEEDS each (0: skipped)."""
    return (top_k + space.defaults_contender) * seeds if top_k else 0


def _space(space: str | SearchSpace) -> tuple[str, SearchSpace]:
    if isinstance(space, SearchSpace):
        return space.source, space
    return str(space_file(space).resolve()), load_space(space)


def json_meta(loc: storage.Location) -> dict[str, Any]:
    """The metadata of the experiment at LOC, read where it is stored ({} when absent)."""
    return json.loads(storage.read_text(str(loc), META) or "{}")


def load_variants(path: str | Path, validation: Validation, space: SearchSpace,
                  extra: tuple[int, ...] = ()) -> dict[int, TrainData]:
    """The data split with every split_seed a trial can set: the validation's, a searched split_seed's values, EXTRA.

    A trial worker gets the split its own config names (finalize varies split_seed per run). Where the split does
    not depend on the seed, every seed shares one object (and one copy in Ray's store).
    """
    searched = next((p.values() or [] for p in space.params if p.name == "split_seed"), [])
    seeds = dict.fromkeys([validation.split_seed, *map(int, searched), *map(int, extra)])
    if validation.fixed_across_seeds(path):
        data = validation.load(path)
        return {s: data for s in seeds}
    return {s: replace(validation, split_seed=s).load(path) for s in seeds}


def experiment_location(storage_path: str, name: str) -> storage.Location:
    """Where experiment NAME lives under --storage (a folder or URI); names cannot climb out of it."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise SweepError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (no '/' or '..')")
    return storage.locate(storage_path, name)


def recorded_job(location: str | Path) -> tuple[Job, dict[str, Any]]:
    """The Job of the experiment at LOCATION as it was recorded (space as read, data path), and its metadata."""
    loc = storage.locate(str(location))
    if loc.remote and storage.exists(loc, META):
        storage.pull(loc)  # resume reads Ray's state, the records and the checkpoints it repairs
    meta = read_meta(loc.local)
    if not meta:
        raise SweepError(f"{loc}: not an mmtune experiment (no {META}); pass results/<experiment>")
    recorded = meta["options"]
    opts = SweepOptions(**{**recorded, "overwrite": False, "split_seeds": tuple(recorded.get("split_seeds", ()))})
    space = parse_space(meta["space"], f"{meta['space_file']} (as recorded in {loc}/{META})")
    validation = recorded_validation(meta, space)
    variants = load_variants(meta["data"], validation, space, opts.split_seeds)
    return Job(opts, space, validation, variants[validation.split_seed], loc, meta["space_file"], variants), meta

