"""A sweep's inputs: the options (the CLI's flags), and the Job they make once every input is checked.

Nothing here starts Ray or writes a file: bad input is refused before anything runs.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from data.npz import Dataset, load_dataset
from model.config import TrainConfig
from tune import storage
from tune.errors import SweepError
from tune.experiment import META, read_meta
from tune.resources import check_flags
from tune.space import SearchSpace, load_space, parse_space

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
    overwrite: bool = False
    resume: bool = False  # continue the unfinished experiment NAME under STORAGE (its recorded inputs win)
    verbose: bool = False  # Ray's own output on the console too (it always goes to <exp>/ray.log)

    @classmethod
    def for_experiment(cls, location: str | Path, **kw: Any) -> "SweepOptions":
        """Options that resume the experiment at LOCATION (a folder or URI)."""
        parent, _, name = str(location).rstrip("/").rpartition("/")
        return cls(data="", space="", name=name, storage=parent or ".", resume=True, **kw)


@dataclass
class Job:
    """A sweep with every input checked, before Ray starts."""

    opts: SweepOptions
    space: SearchSpace
    data: Dataset
    loc: storage.Location
    space_file: str

    @property
    def name(self) -> str:
        return self.loc.name


def prepare(opts: SweepOptions) -> Job:
    """Check the space, data, flags and experiment folder; nothing starts, nothing is written."""
    space_file, space = _space(opts.space)
    space = space.with_overrides(num_samples=opts.num_samples, epochs=opts.epochs, seed=opts.seed)
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
    return Job(replace(opts, name=name), space, load_data(opts.data, space), loc, space_file)


def _space(space: str | SearchSpace) -> tuple[str, SearchSpace]:
    if isinstance(space, SearchSpace):
        return space.source, space
    return str(Path(space).resolve()), load_space(space)


def json_meta(loc: storage.Location) -> dict[str, Any]:
    """The metadata of the experiment at LOC, read where it is stored ({} when absent)."""
    return json.loads(storage.read_text(str(loc), META) or "{}")


def load_data(path: str | Path, space: SearchSpace) -> Dataset:
    """The data set, loaded and validated once in the driver, split as every trial's config says."""
    base = TrainConfig()
    return load_dataset(Path(path).resolve(), space.fixed.get("val_fraction", base.val_fraction),
                        space.fixed.get("split_seed", base.split_seed))


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
    opts = SweepOptions(**{**meta["options"], "overwrite": False})
    space = parse_space(meta["space"], f"{meta['space_file']} (as recorded in {loc}/{META})")
    return Job(opts, space, load_data(meta["data"], space), loc, meta["space_file"]), meta
