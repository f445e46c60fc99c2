"""Training configuration: defaults in code, YAML and flags override them, unknown keys fail."""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mmtune.data.io import atomic_file


class ConfigError(ValueError):
    """A configuration that cannot be built; the message names the source, key and fix."""


MONITOR_CHOICES = ("val/f1", "val/f1_best", "val/ap", "val/auroc", "val/loss", "val/acc")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run. Defaults fix what the old script got wrong."""

    # --- data ---
    val_fraction: float = 0.2  # share of train.npz held out when the set has no val.npz; 0: no holdout (recipe)
    split_seed: int = 0  # seed of that split and of the CV folds (recorded with the run)
    cv: int = 0  # K >= 2: K-fold cross-validation over train (+ val.npz); 0: one holdout split
    # --- model ---
    d_model: int = 256  # token width; the old 64 underfit
    num_layers: int = 4  # encoder layers (old: 2)
    nhead: int = 8  # attention heads; must divide d_model
    ff_mult: int = 4  # feed-forward width = ff_mult * d_model
    dropout: float = 0.1  # dropout inside the encoder and heads
    modality_dropout: float = 0.0  # per-sample chance to drop a whole modality in training (old 0.1 hurt)
    # --- loss ---
    use_focal: bool = True  # focal loss instead of BCE
    focal_gamma: float = 2.0  # focusing strength; 0 is BCE
    focal_alpha: float = -1.0  # weight of the positive class in focal loss; < 0 disables it
    class_weighted: bool = False  # weight classes by inverse train frequency (with weighted_sampler it over-corrects)
    weighted_sampler: bool = True  # draw class-balanced batches
    aux_weight: float = 0.5  # weight of the unimodal auxiliary losses (old 1.0 competed with the main task)
    # --- optimisation ---
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.01  # AdamW decay, applied to matrices only
    batch_size: int = 32  # samples per step
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    scheduler: str = "cosine_restarts"  # "cosine_restarts" (warm restarts) or "cosine_warmup"
    t0: int = 10  # epochs of the first cosine cycle (warm restarts)
    t_mult: int = 2  # cycle growth factor (warm restarts)
    eta_min: float = 1e-6  # floor of the learning rate
    warmup_epochs: int = 1  # linear warm-up epochs (cosine_warmup)
    # --- loop ---
    epochs: int = 50  # maximum epochs
    train_steps: int = 0  # batches per epoch; 0: the epoch is sized in samples (epoch_samples)
    # With train_steps 0, an epoch trains on this many samples, at least one pass over the train split. A sample
    # count, not a step count, so that every batch size of a sweep gets the same budget; 0: exactly one pass.
    epoch_samples: int = 0
    patience: int = 10  # epochs without improvement before stopping; 0 disables early stopping
    monitor: str = "val/f1"  # metric that picks the best epoch and drives early stopping
    seed: int = 0  # seeds init, sampler, dropout
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"
    # --- pretraining ---
    mask_prob: float = 0.15  # share of valid steps hidden in masked-step pretraining

    def __post_init__(self) -> None:
        for problem in _problems(self):
            raise ConfigError(problem)

    @property
    def monitor_mode(self) -> str:
        """'min' for losses, 'max' for everything else."""
        return "min" if self.monitor.endswith("loss") else "max"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, ready for YAML."""
        return dataclasses.asdict(self)


def _problems(c: TrainConfig) -> list[str]:
    """Every impossible setting, each with its fix."""
    checks = [
        (c.d_model > 0 and c.d_model % 2 == 0, f"d_model={c.d_model}: must be a positive even number"),
        (c.nhead > 0 and c.d_model % c.nhead == 0,
         f"nhead={c.nhead} does not divide d_model={c.d_model}: choose nhead among the divisors of d_model"),
        (c.num_layers >= 1, f"num_layers={c.num_layers}: must be >= 1"),
        (c.ff_mult >= 1, f"ff_mult={c.ff_mult}: must be >= 1"),
        (0 <= c.dropout < 1, f"dropout={c.dropout}: must be in [0, 1)"),
        (0 <= c.modality_dropout < 1, f"modality_dropout={c.modality_dropout}: must be in [0, 1)"),
        (c.focal_gamma >= 0, f"focal_gamma={c.focal_gamma}: must be >= 0"),
        (c.focal_alpha < 1, f"focal_alpha={c.focal_alpha}: must be < 1 (negative disables it)"),
        (c.aux_weight >= 0, f"aux_weight={c.aux_weight}: must be >= 0"),
        (c.lr > 0, f"lr={c.lr}: must be > 0"),
        (c.weight_decay >= 0, f"weight_decay={c.weight_decay}: must be >= 0"),
        (c.batch_size >= 1, f"batch_size={c.batch_size}: must be >= 1"),
        (c.grad_clip >= 0, f"grad_clip={c.grad_clip}: must be >= 0 (0 disables clipping)"),
        (c.scheduler in ("cosine_restarts", "cosine_warmup"),
         f"scheduler={c.scheduler!r}: use 'cosine_restarts' or 'cosine_warmup'"),
        (c.t0 >= 1 and c.t_mult >= 1, f"t0={c.t0}, t_mult={c.t_mult}: both must be >= 1"),
        (0 <= c.eta_min < c.lr, f"eta_min={c.eta_min}: must be in [0, lr)"),
        (c.warmup_epochs >= 0, f"warmup_epochs={c.warmup_epochs}: must be >= 0"),
        (c.epochs >= 1, f"epochs={c.epochs}: must be >= 1"),
        (c.train_steps >= 0, f"train_steps={c.train_steps}: must be >= 0 (0 = one pass over the data)"),
        (c.epoch_samples >= 0, f"epoch_samples={c.epoch_samples}: must be >= 0 (0 = one pass over the data)"),
        (c.patience >= 0, f"patience={c.patience}: must be >= 0 (0 disables early stopping)"),
        (c.monitor in MONITOR_CHOICES, f"monitor={c.monitor!r}: use one of {', '.join(MONITOR_CHOICES)}"),
        (c.device in ("auto", "cpu", "cuda"), f"device={c.device!r}: use 'auto', 'cpu' or 'cuda'"),
        (0 < c.mask_prob < 1, f"mask_prob={c.mask_prob}: must be in (0, 1)"),
        (0 <= c.val_fraction < 1, f"val_fraction={c.val_fraction}: must be in [0, 1) (0 = train on all data)"),
        (c.cv == 0 or c.cv >= 2, f"cv={c.cv}: use 0 (one holdout split) or a fold count K >= 2"),
        (c.val_fraction > 0 or c.cv == 0, f"cv={c.cv} with val_fraction=0: folds replace the holdout; set cv: 0 "
         "to train on all data, or val_fraction > 0 for cross-validation"),
        # Without an evaluation split nothing can pick an epoch: the recipe's `epochs` is the whole schedule.
        (c.val_fraction > 0 or c.patience == 0, f"patience={c.patience} with val_fraction=0: there is no "
         "validation split to stop on; set patience: 0 (train exactly `epochs` epochs)"),
    ]
    return [msg for ok, msg in checks if not ok]


def samples_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Training samples per epoch with train_steps 0: epoch_samples, at least one pass over N_TRAIN."""
    return max(n_train, cfg.epoch_samples)


def steps_per_epoch(cfg: TrainConfig, n_train: int) -> int:
    """Batches per epoch: train_steps, or the epoch's samples in batches of batch_size."""
    return cfg.train_steps or math.ceil(samples_per_epoch(cfg, n_train) / cfg.batch_size)


FIELD_TYPES: dict[str, type] = {f.name: typing.get_type_hints(TrainConfig)[f.name] for f in fields(TrainConfig)}


def coerce(key: str, value: Any, source: str = "config") -> Any:
    """Check VALUE against the type of field KEY; ints are accepted for floats."""
    if key not in FIELD_TYPES:
        raise ConfigError(f"{source}: unknown key {key!r}; known keys: {', '.join(FIELD_TYPES)}")
    kind = FIELD_TYPES[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)  # YAML's 1e3 is a float
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: key {key!r} must be {kind.__name__}, got {value!r}")
    return value


def build_config(overrides: dict[str, Any] | None = None, source: str = "config",
                 base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from BASE (defaults) with checked OVERRIDES."""
    values = (base or TrainConfig()).to_dict()
    for key, value in (overrides or {}).items():
        values[key] = coerce(key, value, source)
    try:
        return TrainConfig(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from PATH; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file at PATH, then OVERRIDES (e.g. command-line flags)."""
    cfg = build_config(read_yaml(path), source=str(path)) if path else TrainConfig()
    return build_config(overrides, source="command line", base=cfg) if overrides else cfg


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write CFG as YAML that load_config reads back unchanged."""
    with atomic_file(path) as f:
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
