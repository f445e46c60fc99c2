"""Resources: what one trial needs (a GPU memory estimate), how many run at once, and what a cluster must offer.

Plain values in, plain values out: the node list comes from `ray_runtime.cluster_nodes()`, or from a test.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from mmtune.data.validation import Validation
from mmtune.model.config import TrainConfig
from mmtune.tune.errors import SweepError
from mmtune.tune.space import SearchSpace

ASSUMED_GPU_GB = 16.0  # when the driver cannot see a GPU to measure (e.g. logical GPUs, a remote cluster)
Node = dict[str, float]  # a node's resources as Ray reports them: CPU, GPU, object_store_memory, ...


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
    max_failures: int = 0  # retries per trial from its last checkpoint, whatever failed (trial, worker, node)
    per_node: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    validation: str = ""  # how trials are validated (holdout or K-fold CV) and why
    early_stopping: str = ""  # where ASHA may stop trials (`SearchSpace.early_stopping`); "": not said

    def describe(self) -> str:
        """The plan as a few lines for the user."""
        lines = [f"cluster: {self.nodes} node(s), {self.cpus:g} CPUs, {self.gpus:g} GPUs",
                 f"per trial: {self.cpus_per_trial:g} CPU, {self.gpus_per_trial:g} GPU"
                 + (f" ({self.trials_per_gpu} trial(s) per GPU)" if self.gpus_per_trial else ""),
                 f"concurrent trials: {self.concurrent}",
                 *([f"validation: {self.validation}"] if self.validation else []),
                 *([f"early stopping: {self.early_stopping}"] if self.early_stopping else []),
                 f"failures: each trial is retried up to {self.max_failures} time(s) from its last checkpoint; an "
                 "error, a killed worker and a lost node each count as one"]
        return "\n".join(lines + [f"  {n}" for n in self.per_node] + [f"  - {n}" for n in self.notes])


def check_flags(cpus_per_trial: float, gpus_per_trial: str, max_concurrent: int | None, max_failures: int) -> None:
    """Refuse resource flags that cannot work, naming the flag."""
    if cpus_per_trial <= 0:
        raise SweepError(f"--cpus-per-trial {cpus_per_trial}: must be > 0")
    if gpus_per_trial != "auto":
        try:
            g = float(gpus_per_trial)
        except ValueError:
            raise SweepError(f"--gpus-per-trial {gpus_per_trial!r}: give a number (e.g. 0.25, 1) or 'auto'") from None
        if g < 0 or (g > 1 and not g.is_integer()):
            raise SweepError(f"--gpus-per-trial {g:g}: use a fraction in (0, 1] to share a GPU, or a whole number")
    if max_concurrent is not None and max_concurrent < 1:
        raise SweepError(f"--max-concurrent {max_concurrent}: must be >= 1")
    if max_failures < 0:
        raise SweepError(f"--max-failures {max_failures}: must be >= 0")


def check_cluster(nodes: list[Node], storage: str, allow_local_storage: bool, data_path: str,
                  data_nbytes: int) -> None:
    """Refuse what would fail later on this cluster: unshared storage, data too big for the object store."""
    if len(nodes) > 1 and not storage_path_shared(storage) and not allow_local_storage:
        raise SweepError(
            f"--storage {storage}: the cluster has {len(nodes)} nodes, and trials on other nodes cannot write "
            "to a plain local path. Use a shared filesystem every node mounts at the same path, given as a "
            "file:///mnt/shared/... URI, or object storage (s3://bucket/path, gs://...), or pass "
            "--allow-local-storage if this path is such a mount")
    store = min((n.get("object_store_memory", 0) for n in nodes), default=0)
    if store and data_nbytes > 0.8 * store:
        raise SweepError(
            f"--data {data_path}: the data set needs {data_nbytes / 2**30:.2f} GiB in Ray's object store, "
            f"but the smallest node has {store / 2**30:.2f} GiB. Start Ray with a larger "
            "--object-store-memory, or reduce the data set")


def storage_path_shared(location: str) -> bool:
    """Whether every node can reach LOCATION: a remote URI, or a file:// URI (by convention a shared mount)."""
    return "://" in location


def estimate_trial_gb(cfg: TrainConfig, modalities: dict[str, tuple[int, int]]) -> float:
    """Rough GPU memory of one trial: weights, grads and AdamW moments, bf16 activations, CUDA context.

    A CV trial holds K models with their optimizers; its folds train one after another, so activations count once.
    """
    d, layers, tokens = cfg.d_model, cfg.num_layers, 1 + sum(t for t, _ in modalities.values())
    params = layers * (4 + 2 * cfg.ff_mult) * d * d + sum(f * d for _, f in modalities.values())
    activations = cfg.batch_size * layers * (tokens * d * (10 + 2 * cfg.ff_mult) + cfg.nhead * tokens ** 2 * 2) * 2
    return (params * 16 * Validation.of(cfg).k + activations * 2 + 0.5e9) / 1e9


def largest_config(space: SearchSpace) -> TrainConfig:
    """The config of the space whose trial needs the most memory (upper end of every size)."""
    sizes = {"d_model", "num_layers", "nhead", "ff_mult", "batch_size", "head_dim"}
    top = {}
    for p in space.params:
        if p.name in sizes:
            top[p.name] = max(p.choices) if p.kind == "categorical" else int(p.high)
    return space.train_config(top)


def plan_resources(space: SearchSpace, modalities: dict[str, tuple[int, int]], nodes: list[Node],
                   cpus_per_trial: float = 1.0, gpus_per_trial: str = "auto",
                   max_concurrent: int | None = None, max_failures: int = 0) -> Plan:
    """Per-trial resources and concurrency of SPACE's trials on NODES (the resources of each node)."""
    cpus = sum(n.get("CPU", 0) for n in nodes)
    gpus = sum(n.get("GPU", 0) for n in nodes)
    plan = Plan(len(nodes), cpus, gpus, cpus_per_trial, 0.0, 0, max_failures=max_failures)
    if gpus_per_trial == "auto":
        _auto_gpus(plan, space, modalities)
    else:
        plan.gpus_per_trial = float(gpus_per_trial)
        plan.trials_per_gpu = int(1 // plan.gpus_per_trial) if 0 < plan.gpus_per_trial <= 1 else 1
    if plan.gpus_per_trial and plan.gpus_per_trial > max((n.get("GPU", 0) for n in nodes), default=0):
        raise SweepError(f"--gpus-per-trial {plan.gpus_per_trial:g}: no node has that many GPUs "
                         f"(cluster: {gpus:g} GPUs); use 'auto' or a smaller number")
    if cpus_per_trial > max((n.get("CPU", 0) for n in nodes), default=0):
        raise SweepError(f"--cpus-per-trial {cpus_per_trial:g}: no node has that many CPUs")
    slots = 0
    for i, n in enumerate(nodes):
        per_node = math.floor(n.get("CPU", 0) / cpus_per_trial + 1e-9)
        if plan.gpus_per_trial:
            per_node = min(per_node, math.floor(n.get("GPU", 0) / plan.gpus_per_trial + 1e-9))
        slots += per_node
        plan.per_node.append(f"node {i + 1}: {n.get('CPU', 0):g} CPU, {n.get('GPU', 0):g} GPU -> room for "
                             f"{per_node} trial(s)")
    plan.concurrent = max(1, min(slots, space.num_samples, max_concurrent or slots))
    if max_concurrent and max_concurrent < slots:
        plan.notes.append(f"--max-concurrent {max_concurrent} caps the {slots} trials that would fit")
    return plan


def _auto_gpus(plan: Plan, space: SearchSpace, modalities: dict[str, tuple[int, int]]) -> None:
    if plan.gpus == 0:
        plan.notes.append("no GPU in the cluster: trials run on CPU")
        return
    plan.est_trial_gb = estimate_trial_gb(largest_config(space), modalities)
    plan.gpu_gb = _visible_gpu_gb()
    if plan.gpu_gb is None:
        plan.gpu_gb = float(os.environ.get("MMTUNE_GPU_GB", ASSUMED_GPU_GB))
        plan.notes.append(f"GPU memory not visible from the driver: assuming {plan.gpu_gb:g} GB per GPU "
                          "(set MMTUNE_GPU_GB to change)")
    fit_count = int(0.8 * plan.gpu_gb // plan.est_trial_gb)
    plan.trials_per_gpu = max(1, min(8, fit_count))
    plan.gpus_per_trial = 1.0 / plan.trials_per_gpu
    why = "small model: several trials share a GPU" if plan.trials_per_gpu > 1 else "large model: one trial per GPU"
    plan.notes.append(f"largest trial needs ~{plan.est_trial_gb:.2f} GB of {plan.gpu_gb:g} GB: {why}")


def _visible_gpu_gb() -> float | None:
    """Memory of the driver's first GPU in GB, or None when it sees none."""
    import torch  # late: only a cluster with GPUs gets here

    return torch.cuda.get_device_properties(0).total_memory / 1e9 if torch.cuda.is_available() else None
