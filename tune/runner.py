"""Run a sweep: check inputs before Ray starts, plan resources, build the Tuner, resume it."""
from __future__ import annotations

import json
import logging
import math
import os
import pickletools
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from ray import tune
from ray._private import ray_constants
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from data.npz import Dataset, load_dataset
from model.config import TrainConfig
from model.io import atomic_file
from tune import records, storage
from tune.errors import SweepError
from tune.space import SearchSpace, load_space, parse_space
from tune.trainable import STATUS, train_trial

log = logging.getLogger(__name__)

META = "mmtune.json"  # what resume needs: the space as read, data path, resources
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
ASSUMED_GPU_GB = 16.0  # when the driver cannot see a GPU to measure (e.g. logical GPUs, a remote cluster)
# Tune saves its experiment state every max(10 s, 19 x save time) by default; a short period keeps a
# driver crash from forgetting recent trial events (the durable records cover the rest).
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
# Only result.json is read back (results, report); the CSV and TensorBoard loggers Tune adds by default
# would write every result twice more.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
# Snapshots forced by checkpoint retention are intended here; Ray's warning about them is noise.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass
class SweepOptions:
    """What `mmtune sweep` was asked to do; None means 'from the search-space file'."""

    data: str
    space: str
    name: str | None = None
    storage: str = "results"
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: str = "auto"  # "auto" or a number of GPUs (a fraction packs trials on one GPU)
    max_concurrent: int | None = None
    max_failures: int = 2
    allow_local_storage: bool = False  # a plain path on a multi-node cluster (the user says it is shared)
    num_samples: int | None = None
    epochs: int | None = None
    seed: int | None = None
    overwrite: bool = False


@dataclass
class Plan:
    """Resources per trial and how many trials run at once, with the reasons."""

    nodes: int
    cpus: float
    gpus: float
    cpus_per_trial: float
    gpus_per_trial: float
    concurrent: int
    trials_per_gpu: int = 0
    est_trial_gb: float = 0.0
    gpu_gb: float = 0.0
    per_node: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The plan as a few lines for the user."""
        lines = [f"cluster: {self.nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs",
                 f"per trial: {self.cpus_per_trial:g} CPU, {self.gpus_per_trial:g} GPU"
                 + (f" ({self.trials_per_gpu} trial(s) per GPU)" if self.gpus_per_trial else ""),
                 f"concurrent trials: {self.concurrent}"]
        return "\n".join(lines + [f"  {n}" for n in self.per_node] + [f"  - {n}" for n in self.notes])


@dataclass
class Prepared:
    """Everything checked before Ray starts."""

    opts: SweepOptions
    space: SearchSpace
    data: Dataset
    exp_dir: Path
    name: str
    callbacks: tuple = ()  # extra loop callbacks for every trial (fault injection in tests and benches)
    remote: str | None = None  # the experiment's URI when --storage is remote (exp_dir is then its local mirror)

    @property
    def loc(self) -> storage.Location:
        return storage.Location(self.exp_dir, self.remote)


def prepare(opts: SweepOptions) -> Prepared:
    """Check the space, data, flags and experiment folder; nothing starts, nothing is written."""
    space = load_space(opts.space).with_overrides(num_samples=opts.num_samples, epochs=opts.epochs, seed=opts.seed)
    name = opts.name or f"{Path(opts.space).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    loc = experiment_dir(opts.storage, name)
    _check_flags(opts)
    if loc.remote:
        storage.check_writable(loc.ray_storage)
    if storage.exists(loc) and not opts.overwrite:
        meta = json.loads(storage.read_text(str(loc), META) or "{}")
        state = "finished" if meta.get("finished") else "unfinished"
        raise SweepError(f"{loc}: an {state} experiment of that name exists; continue it with "
                         f"`mmtune resume {loc}`, replace it with --overwrite, or pick another --name")
    return Prepared(opts, space, load_data(opts.data, space), loc.local, name, remote=loc.remote)


def load_data(path: str | Path, space: SearchSpace) -> Dataset:
    """The data set, loaded and validated once in the driver, split as every trial's config says."""
    base = TrainConfig()
    return load_dataset(Path(path).resolve(), space.fixed.get("val_fraction", base.val_fraction),
                        space.fixed.get("split_seed", base.split_seed))


def experiment_dir(storage_path: str, name: str) -> storage.Location:
    """Where experiment NAME lives under --storage (a folder or URI); names cannot climb out of it."""
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise SweepError(f"--name {name!r}: use letters, digits, '.', '_' and '-' only (no '/' or '..')")
    return storage.locate(storage_path, name)


def _check_flags(o: SweepOptions) -> None:
    if o.cpus_per_trial <= 0:
        raise SweepError(f"--cpus-per-trial {o.cpus_per_trial}: must be > 0")
    if o.gpus_per_trial != "auto":
        try:
            g = float(o.gpus_per_trial)
        except ValueError:
            raise SweepError(f"--gpus-per-trial {o.gpus_per_trial!r}: give a number (e.g. 0.25, 1) or 'auto'") from None
        if g < 0 or (g > 1 and not g.is_integer()):
            raise SweepError(f"--gpus-per-trial {g:g}: use a fraction in (0, 1] to share a GPU, or a whole number")
    if o.max_concurrent is not None and o.max_concurrent < 1:
        raise SweepError(f"--max-concurrent {o.max_concurrent}: must be >= 1")
    if o.max_failures < 0:
        raise SweepError(f"--max-failures {o.max_failures}: must be >= 0")


def connect(address: str | None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Join ADDRESS (or RAY_ADDRESS), or start an embedded local Ray bound to 127.0.0.1."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING)
        return
    # Embedded default: no dashboard, every server on loopback, so nobody else can submit work to it.
    # Ray turns 127.0.0.1 into the machine's routable address unless clustering is off (its own
    # mechanism on macOS/Windows); the driver has read that switch at import, children read the env.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, dashboard_host="127.0.0.1",
             _node_ip_address="127.0.0.1", logging_level=logging.WARNING, configure_logging=False)


def check_cluster(p: Prepared, nodes: list[dict[str, float]]) -> None:
    """Refuse what would fail later on this cluster: unshared storage, data too big for the object store."""
    where = p.opts.storage
    if len(nodes) > 1 and not storage_path_shared(where) and not p.opts.allow_local_storage:
        raise SweepError(
            f"--storage {where}: the cluster has {len(nodes)} nodes, and trials on other nodes cannot write "
            "to a plain local path. Use a shared filesystem every node mounts at the same path, given as a "
            "file:///mnt/shared/... URI, or object storage (s3://bucket/path, gs://...), or pass "
            "--allow-local-storage if this path is such a mount")
    store = min((n.get("object_store_memory", 0) for n in nodes), default=0)
    if store and p.data.nbytes > 0.8 * store:
        raise SweepError(
            f"--data {p.opts.data}: the data set needs {p.data.nbytes / 2**30:.2f} GiB in Ray's object store, "
            f"but the smallest node has {store / 2**30:.2f} GiB. Start Ray with a larger "
            "--object-store-memory, or reduce the data set")


def storage_path_shared(location: str) -> bool:
    """Whether every node can reach LOCATION: a remote URI, or a file:// URI (by convention a shared mount)."""
    return "://" in location


def estimate_trial_gb(cfg: TrainConfig, modalities: dict[str, tuple[int, int]]) -> float:
    """Rough GPU memory of one trial: weights, grads and AdamW moments, bf16 activations, CUDA context."""
    d, layers, tokens = cfg.d_model, cfg.num_layers, 1 + sum(t for t, _ in modalities.values())
    params = layers * (4 + 2 * cfg.ff_mult) * d * d + sum(f * d for _, f in modalities.values())
    activations = cfg.batch_size * layers * (tokens * d * (10 + 2 * cfg.ff_mult) + cfg.nhead * tokens ** 2 * 2) * 2
    return (params * 16 + activations * 2 + 0.5e9) / 1e9


def largest_config(space: SearchSpace) -> TrainConfig:
    """The config of the space whose trial needs the most memory (upper end of every size)."""
    sizes = {"d_model", "num_layers", "nhead", "ff_mult", "batch_size", "head_dim"}
    top = {}
    for p in space.params:
        if p.name in sizes:
            top[p.name] = max(p.choices) if p.kind == "categorical" else int(p.high)
    return space.train_config(top)


def cluster_nodes() -> list[dict[str, float]]:
    """Resources of each live node of the connected cluster."""
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def plan_resources(space: SearchSpace, data: Dataset, opts: SweepOptions,
                   nodes: list[dict[str, float]]) -> Plan:
    """Per-trial resources and concurrency for NODES (the resources of each node)."""
    cpus = sum(n.get("CPU", 0) for n in nodes)
    gpus = sum(n.get("GPU", 0) for n in nodes)
    plan = Plan(len(nodes), cpus, gpus, opts.cpus_per_trial, 0.0, 0)
    if opts.gpus_per_trial == "auto":
        _auto_gpus(plan, space, data)
    else:
        plan.gpus_per_trial = float(opts.gpus_per_trial)
        plan.trials_per_gpu = int(1 // plan.gpus_per_trial) if 0 < plan.gpus_per_trial <= 1 else 1
    if plan.gpus_per_trial and plan.gpus_per_trial > max((n.get("GPU", 0) for n in nodes), default=0):
        raise SweepError(f"--gpus-per-trial {plan.gpus_per_trial:g}: no node has that many GPUs "
                         f"(cluster: {gpus:g} GPUs); use 'auto' or a smaller number")
    if opts.cpus_per_trial > max((n.get("CPU", 0) for n in nodes), default=0):
        raise SweepError(f"--cpus-per-trial {opts.cpus_per_trial:g}: no node has that many CPUs")
    slots = 0
    for i, n in enumerate(nodes):
        per_node = math.floor(n.get("CPU", 0) / opts.cpus_per_trial + 1e-9)
        if plan.gpus_per_trial:
            per_node = min(per_node, math.floor(n.get("GPU", 0) / plan.gpus_per_trial + 1e-9))
        slots += per_node
        plan.per_node.append(f"node {i + 1}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU -> room for "
                             f"{per_node} trial(s)")
    plan.concurrent = max(1, min(slots, space.num_samples, opts.max_concurrent or slots))
    if opts.max_concurrent and opts.max_concurrent < slots:
        plan.notes.append(f"--max-concurrent {opts.max_concurrent} caps the {slots} trials that would fit")
    return plan


def _auto_gpus(plan: Plan, space: SearchSpace, data: Dataset) -> None:
    if plan.gpus == 0:
        plan.notes.append("no GPU in the cluster: trials run on CPU")
        return
    plan.est_trial_gb = estimate_trial_gb(largest_config(space), data.modalities)
    if torch.cuda.is_available():
        plan.gpu_gb = torch.cuda.get_device_properties(0).total_memory / 1e9
    else:
        plan.gpu_gb = float(os.environ.get("MMTUNE_GPU_GB", ASSUMED_GPU_GB))
        plan.notes.append(f"GPU memory not visible from the driver: assuming {plan.gpu_gb:g} GB per GPU "
                          "(set MMTUNE_GPU_GB to change)")
    fit_count = int(0.8 * plan.gpu_gb // plan.est_trial_gb)
    plan.trials_per_gpu = max(1, min(8, fit_count))
    plan.gpus_per_trial = 1.0 / plan.trials_per_gpu
    why = "small model: several trials share a GPU" if plan.trials_per_gpu > 1 else "large model: one trial per GPU"
    plan.notes.append(f"largest trial needs ~{plan.est_trial_gb:.2f} GB of {plan.gpu_gb:g} GB: {why}")


def build_tuner(p: Prepared, plan: Plan) -> tune.Tuner:
    """The Tuner: OptunaSearch (seeded multivariate TPE, constant liar) + ASHA, durable records."""
    space = p.space
    return tune.Tuner(
        make_trainable(p, plan),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, search_alg=make_searcher(space), scheduler=make_scheduler(space),
            num_samples=space.num_samples, max_concurrent_trials=plan.concurrent,
            # A fresh worker per trial costs ~2-3 s of imports and data fetch; reuse pays it once.
            reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=run_config(p, space))


def trial_dirname(trial: Any) -> str:
    """Short, stable trial folder names (Ray's default embeds every parameter)."""
    return f"trial_{trial.trial_id}"


def make_trainable(p: Prepared, plan: Plan) -> Any:
    """The trial function with the data set shared through the object store (put once, zero-copy reads)."""
    return tune.with_resources(
        tune.with_parameters(train_trial, data=p.data, space=p.space, exp_dir=str(p.loc),
                             callbacks=tuple(p.callbacks)),
        {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial})


def run_config(p: Prepared, space: SearchSpace) -> tune.RunConfig:
    """Storage, failure retries, checkpoint retention and the durable trial records."""
    return tune.RunConfig(
        name=p.name, storage_path=p.loc.ray_storage,
        failure_config=tune.FailureConfig(max_failures=p.opts.max_failures),
        # The best epoch's checkpoint by the metric; Tune also keeps the latest one for resuming. Retention
        # also forces a state snapshot per checkpoint, which keeps a killed driver from forgetting trials.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=space.metric,
                                                checkpoint_score_order=space.mode),
        callbacks=[JsonLoggerCallback(), records.TrialRecorder(p.loc, STATUS)], verbose=1)


def make_searcher(space: SearchSpace) -> OptunaSearch:
    """OptunaSearch over the space's distributions, starting points first."""
    # TPE needs some random trials first; its default of 10 would make a small sweep pure random search.
    startup = max(len(space.start) + 2, min(10, space.num_samples // 3))
    sampler = optuna.samplers.TPESampler(seed=space.seed, multivariate=True, constant_liar=True,
                                         n_startup_trials=startup)
    return OptunaSearch(space=space.distributions(), metric=space.metric, mode=space.mode,
                        points_to_evaluate=[dict(s) for s in space.start] or None, sampler=sampler)


def make_scheduler(space: SearchSpace) -> ASHAScheduler:
    """ASHA on epochs: max_t is the epoch budget."""
    return ASHAScheduler(time_attr="training_iteration", max_t=space.epochs, grace_period=space.grace_period,
                         reduction_factor=space.reduction_factor, brackets=space.brackets)


def read_meta(exp_dir: Path) -> dict[str, Any]:
    """The mmtune metadata of an experiment ({} when absent)."""
    p = exp_dir / META
    return json.loads(p.read_text()) if p.is_file() else {}


def write_meta(exp_dir: Path, meta: dict[str, Any], remote: str | None = None) -> None:
    """Atomically write the metadata (and upload it, for a REMOTE experiment)."""
    with atomic_file(exp_dir / META) as f:
        f.write(json.dumps(meta, indent=2, default=str))
    storage.push(storage.Location(exp_dir, remote), META)


def start_experiment(p: Prepared, plan: Plan) -> None:
    """A fresh experiment folder holding only the metadata that resume and export read."""
    if p.exp_dir.exists():
        shutil.rmtree(p.exp_dir)  # only reached with --overwrite (prepare refuses otherwise)
    storage.delete(p.loc)
    write_meta(p.exp_dir, {
        "name": p.name, "data": str(Path(p.opts.data).resolve()), "space_file": str(Path(p.opts.space).resolve()),
        "space": {**p.space.raw, "num_samples": p.space.num_samples, "epochs": p.space.epochs, "seed": p.space.seed},
        "options": asdict(p.opts), "plan": asdict(plan), "started": time.time(), "finished": False,
    }, p.remote)


def run(p: Prepared, plan: Plan) -> storage.Location:
    """Start the sweep and wait for it; returns where the experiment is."""
    start_experiment(p, plan)
    tuner = build_tuner(p, plan)
    _fit(tuner, p.loc)
    return p.loc


def _fit(tuner: tune.Tuner, loc: storage.Location) -> None:
    grid = tuner.fit()
    if loc.remote:
        storage.pull(loc)  # what Ray wrote there, for the export that follows
    else:
        from tune.results import prune_checkpoints  # late: results imports this module

        # Remote checkpoints are left to Ray's retention: pruning them would download every one first.
        freed = prune_checkpoints(loc.local)
        log.info("pruned checkpoints: %.1f MB freed", freed / 2**20)
    finish_experiment(loc, len(grid.errors))


def finish_experiment(loc: storage.Location, errors: int) -> None:
    """Mark the experiment finished in its metadata, with the number of errored trials."""
    meta = read_meta(loc.local)
    meta.update(finished=True, ended=time.time(), errors=errors)
    write_meta(loc.local, meta, loc.remote)


def prepare_resume(location: str | Path) -> Prepared:
    """Rebuild what a sweep needs from its folder or URI (the space as it was, the data path)."""
    loc = storage.locate(str(location))
    if loc.remote and storage.exists(loc, META):
        storage.pull(loc)  # resume reads Ray's state, the records and the checkpoints it repairs
    meta = read_meta(loc.local)
    if not meta:
        raise SweepError(f"{loc}: not an mmtune experiment (no {META}); pass results/<experiment>")
    opts = SweepOptions(**{**meta["options"], "overwrite": False})
    space = parse_space(meta["space"], f"{meta['space_file']} (as recorded in {loc}/{META})")
    return Prepared(opts, space, load_data(meta["data"], space), loc.local, meta["name"], remote=loc.remote)


def repair_checkpoints(exp_dir: Path) -> list[str]:
    """Fill each missing older checkpoint index with (hard links to) the next newer checkpoint.

    Retention deletes a trial's previous checkpoint when it writes a new one; a driver killed before
    Tune's next state save leaves that state naming the deleted one, and the trial could never be
    restored. Its newer checkpoint is the right place to continue from. Returns the folders made.
    """
    repaired = []
    for trial in exp_dir.glob("trial_*"):
        present = sorted(int(d.name.split("_")[-1]) for d in trial.glob("checkpoint_*") if d.is_dir())
        for i in range(present[-1] if present else 0):
            if i not in present:
                newer = min(j for j in present if j > i)
                shutil.copytree(trial / f"checkpoint_{newer:06d}", trial / f"checkpoint_{i:06d}",
                                copy_function=os.link)
                repaired.append(f"{trial.name}/checkpoint_{i:06d}")
    return repaired


def tune_state_saved(exp_dir: Path) -> bool:
    """Whether Tune saved what a restore needs: a complete tuner.pkl and an experiment state.

    A driver killed while writing tuner.pkl leaves it cut short; one killed after it but before the
    first experiment state leaves nothing to restore (Ray would restore a 1-sample sweep from it).
    """
    states = any(exp_dir.glob("experiment_state-*.json"))
    if not tune.Tuner.can_restore(str(exp_dir)):
        return False
    try:
        # Walks the opcodes without unpickling anything: a cut file has no STOP.
        for _ in pickletools.genops((exp_dir / "tuner.pkl").read_bytes()):
            pass
    except ValueError:
        if states:
            raise SweepError(f"{exp_dir / 'tuner.pkl'}: the file is damaged but trials were saved; "
                             "it cannot be resumed, start a new sweep (--overwrite)") from None
        return False
    return states


def _rebind_recorder(tuner: tune.Tuner, loc: storage.Location) -> None:
    """Point the restored TrialRecorder at LOC: Tuner.restore unpickles the callbacks of the first run, whose
    folder (or local mirror) may have moved since, e.g. a sweep resumed from its URI on a new head node."""
    local = getattr(tuner, "_local_tuner", None)  # private, but Ray's only handle on the restored callbacks
    callbacks = local.get_run_config().callbacks if local is not None else None
    recorders = [c for c in callbacks or [] if isinstance(c, records.TrialRecorder)]
    if not recorders:
        raise SweepError("Ray's restored Tuner has no mmtune TrialRecorder to update; this Ray version is not "
                         "supported by `mmtune resume` (see constraints.txt)")
    for r in recorders:
        r.loc = loc


def resume(p: Prepared) -> storage.Location:
    """Continue an interrupted sweep: finished trials kept, errored ones resumed, searcher state kept."""
    meta = read_meta(p.exp_dir)
    plan = Plan(**meta["plan"])
    repaired = repair_checkpoints(p.exp_dir)
    for rel in repaired:
        storage.push(p.loc, rel)
    if repaired:
        log.warning("%d checkpoint(s) that Ray's saved state still named were already deleted; they now hold "
                    "the trial's newer checkpoint", len(repaired))
    if not tune_state_saved(p.exp_dir):
        # Killed before Tune's first state save: no trial had finished, so starting over loses nothing.
        log.warning("%s: Ray saved no experiment state yet; starting the sweep over", p.exp_dir)
        for child in p.exp_dir.iterdir():
            if child.name != META:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        storage.delete(p.loc, keep=(META,))
        tuner = build_tuner(p, plan)
    else:
        tuner = tune.Tuner.restore(str(p.loc), trainable=make_trainable(p, plan), resume_errored=True)
        _rebind_recorder(tuner, p.loc)
    _fit(tuner, p.loc)
    return p.loc

