"""The one training loop: train, pretrain and every sweep trial run through `fit`. It knows nothing of Ray."""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from mmtune.data.batches import Batches
from mmtune.data.validation import TrainData, Validation
from mmtune.model.checkpoint import FORMAT, CheckpointError, fold_models, load_checkpoint, with_folds
from mmtune.model.config import TrainConfig, steps_per_epoch
from mmtune.model.cv import fold_mean
from mmtune.model.metrics import classification_metrics, is_better, metric_name
from mmtune.model.objectives import Classification, MaskedPretraining, pretrained_encoder
from mmtune.model.status import TrialStatus
from mmtune.model.transformer import configure_optimizer

log = logging.getLogger(__name__)

# Called after every epoch with the epoch's record and the trainer; returning True stops training.
Callback = Callable[[dict[str, Any], "Trainer"], "bool | None"]


class Objective(Protocol):
    kind: str
    monitor: str

    def build(self, modalities: dict[str, tuple[int, int]]) -> nn.Module: ...
    def loss(self, model: nn.Module, x: dict, valid: dict, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def evaluate(self, model: nn.Module, data: Batches, amp: bool) -> dict[str, float]: ...


@dataclass
class FitResult:
    """How a run ended and its best epoch."""

    status: TrialStatus  # COMPLETED, EARLY_STOPPED, NAN (loss diverged) or STOPPED (by a callback)
    epochs_run: int
    best_epoch: int | None
    best_value: float | None
    best_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    """CUDA when asked for or available ('auto'), else CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but CUDA is not available; use device: auto")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: cosine warm restarts (cycles counted in epochs) or warm-up then cosine."""
    if cfg.scheduler == "cosine_restarts":
        return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=cfg.t0 * steps, T_mult=cfg.t_mult, eta_min=cfg.eta_min)
    warm, total, floor = cfg.warmup_epochs * steps, cfg.epochs * steps, cfg.eta_min / cfg.lr

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of MODEL's weights (the best epoch's, kept while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class Fold:
    """One model of a run on one fold view (a holdout is the only fold): weights, optimizer, schedule, batches."""

    def __init__(self, cfg: TrainConfig, view: Any, objective: Objective, device: torch.device):
        self.cfg, self.objective, self.stats, self.device = cfg, objective, view.stats, device
        self.amp = device.type == "cuda"  # bf16 autocast; CPU autocast is slower for these sizes
        torch.manual_seed(cfg.seed)  # every fold starts from cfg.seed: the fold sd measures the data, not the init
        self.model = objective.build(view.modalities).to(device)
        self.opt = configure_optimizer(self.model, cfg.lr, cfg.weight_decay)
        self.train = view.batches("train", device)
        self.val = view.batches("val", device) if "val" in view.splits else None  # None: val_fraction=0
        self.steps = steps_per_epoch(cfg, len(self.train))
        self.sched = build_scheduler(cfg, self.opt, self.steps)
        self.gen = torch.Generator().manual_seed(cfg.seed)  # batch draws
        self.best_state: dict[str, torch.Tensor] | None = None

    def train_epoch(self) -> tuple[float, dict[str, float]]:
        """One epoch of optimizer steps; the mean loss (NaN/Inf when it diverged) and batch metrics."""
        self.model.train()
        idx = self.train.train_indices(self.steps, self.cfg.batch_size, self.cfg.weighted_sampler, self.gen)
        total = torch.zeros((), device=self.device)
        logits, labels = [], []
        for rows in idx:
            x, valid, y = self.train.gather(rows)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                loss, out = self.objective.loss(self.model, x, valid, y)
            if out is not None:
                logits.append(out.detach().float())
                labels.append(y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            total += loss.detach()  # no per-step host sync; checked once per epoch
        mean = float(total) / self.steps
        if not logits or not math.isfinite(mean):
            return mean, {}
        # Train metrics come from the epoch's own batches (drawn as the sampler draws them), not a second pass.
        prob = torch.sigmoid(torch.cat(logits)).cpu().numpy()
        metrics = classification_metrics(torch.cat(labels).cpu().numpy(), prob, mean)
        return mean, metrics

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch and evaluate: the fold's record (status NAN when the loss diverged, else RUNNING)."""
        record: dict[str, Any] = {"lr": self.opt.param_groups[0]["lr"]}
        train_loss, train_metrics = self.train_epoch()
        record[metric_name("train", "loss")] = train_loss
        if not math.isfinite(train_loss):
            return {**record, "status": TrialStatus.NAN.value}
        record.update({metric_name("train", k): v for k, v in train_metrics.items()})
        if self.val is not None:
            record.update({metric_name("val", k): v for k, v in evaluate(self.model, self.objective, self.val).items()})
        return {**record, "status": TrialStatus.RUNNING.value}

    def state(self, weights: str) -> dict[str, Any]:
        """This fold's part of a checkpoint: WEIGHTS 'current' or 'best', optimizer, schedule, sampler RNG, stats."""
        model = self.model.state_dict() if weights == "current" or self.best_state is None else self.best_state
        return {"model": {k: v.detach().cpu() for k, v in model.items()}, "stats": self.stats,
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "sampler_rng": self.gen.get_state()}

    def load(self, state: dict[str, Any]) -> None:
        """Continue from this fold's part of a 'current' checkpoint."""
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["sampler_rng"])
        self.best_state = None  # the best weights are not in a resume checkpoint: they live in the run's best.pt


class Trainer:
    """The folds of one run (K under CV, one for a holdout) and the run's best-epoch and patience bookkeeping.

    The folds train in lockstep, epoch by epoch; K folds are judged on their fold-mean record, one on its own.
    """

    def __init__(self, cfg: TrainConfig, data: TrainData, kind: str = "classify"):
        if data.k != Validation.of(cfg).k:
            raise ValueError(f"cv={cfg.cv} but the data has {data.k} fold(s); load it with Validation.of(cfg).load")
        self.cfg, self.data = cfg, data
        self.device = pick_device(cfg.device)
        views = [data.fold(i) for i in range(data.k)]
        self.folds = [Fold(cfg, v, make_objective(cfg, v, kind), self.device) for v in views]
        self.objective = self.folds[0].objective
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, Any] = {}
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []

    @property
    def num_params(self) -> int:
        """Parameters of one model (a CV run holds K of them)."""
        return sum(p.numel() for p in self.folds[0].model.parameters())

    @property
    def models(self) -> list[nn.Module]:
        return [f.model for f in self.folds]

    def run_epoch(self) -> dict[str, Any]:
        """Train every fold one epoch, evaluate, update best and early-stopping state; return the epoch record."""
        t0 = time.perf_counter()
        self.epoch += 1
        records = [f.run_epoch() for f in self.folds]
        record = records[0] if len(records) == 1 else fold_mean(records, self.objective.monitor)
        record = {"epoch": self.epoch, **record}
        if record["status"] == TrialStatus.NAN.value:  # one diverged fold makes the whole estimate unusable
            return {**record, "improved": False, "seconds": time.perf_counter() - t0}
        # Without an evaluation split (val_fraction=0, a recipe) the latest epoch is the model.
        evaluated = all(f.val is not None for f in self.folds)
        improved = not evaluated or is_better(record, self.best_metrics, self.objective.monitor)
        if improved:
            self.best, self.best_epoch, self.bad_epochs = record.get(self.objective.monitor), self.epoch, 0
            self.best_metrics = dict(record)
            for f in self.folds:
                f.best_state = snapshot(f.model)
        else:
            self.bad_epochs += 1
        return {**record, "improved": improved, "seconds": time.perf_counter() - t0}

    @property
    def should_stop_early(self) -> bool:
        return self.cfg.patience > 0 and self.bad_epochs >= self.cfg.patience

    def outcome(self, record: dict[str, Any]) -> TrialStatus:
        """Where training stands after RECORD's epoch: NAN, EARLY_STOPPED, COMPLETED (budget spent) or RUNNING."""
        if record["status"] == TrialStatus.NAN:
            return TrialStatus.NAN
        if self.should_stop_early:
            return TrialStatus.EARLY_STOPPED
        return TrialStatus.COMPLETED if self.epoch >= self.cfg.epochs else TrialStatus.RUNNING

    def state_dict(self, weights: str = "current") -> dict[str, Any]:
        """A checkpoint (weights_only-safe): WEIGHTS 'current' for resuming, 'best' for using."""
        common = {
            "format": FORMAT, "kind": self.objective.kind, "weights": weights,
            "config": self.cfg.to_dict(), "modalities": {m: list(s) for m, s in self.data.modalities.items()},
            "data_info": self.data.info, "epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch,
            "best_metrics": dict(self.best_metrics), "bad_epochs": self.bad_epochs,
            "history": [dict(r) for r in self.history],
            # One global RNG (dropout) serves all folds in turn: saved once, restored last.
            "torch_rng": torch.get_rng_state(),
        }
        return with_folds(common, [f.state(weights) for f in self.folds])

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Continue from a 'current' checkpoint: same weights, optimizer, schedule, RNG and epoch in every fold."""
        if state.get("kind") != self.objective.kind:
            raise CheckpointError(f"{source}: a {state.get('kind')} checkpoint cannot resume {self.objective.kind}")
        folds = fold_models(state)
        if len(folds) != len(self.folds):
            raise CheckpointError(f"{source}: holds {len(folds)} fold state(s), this run (cv={self.cfg.cv}) trains "
                                  f"{len(self.folds)}; resume with the config it was written with")
        for f, fold_state in zip(self.folds, folds):
            f.load(fold_state)
        self.epoch, self.best, self.best_epoch = state["epoch"], state["best"], state["best_epoch"]
        self.best_metrics, self.bad_epochs = dict(state["best_metrics"]), state["bad_epochs"]
        self.history = list(state["history"])
        torch.set_rng_state(state["torch_rng"])


def make_objective(cfg: TrainConfig, data: Any, kind: str = "classify") -> Objective:
    """The objective of KIND ('classify' or 'pretrain') on a fold view DATA."""
    if kind == "pretrain":
        return MaskedPretraining(cfg)
    return Classification(cfg, data.splits["train"].y)


def fit(cfg: TrainConfig, data: TrainData, callbacks: list[Callback] = (), kind: str = "classify",
        resume: dict[str, Any] | None = None, pretrained: str | None = None) -> tuple[FitResult, Trainer]:
    """Train CFG on DATA (`Validation.of(cfg).load`) until epochs, early stopping, divergence or a callback says stop."""
    trainer = Trainer(cfg, data, kind)
    if pretrained:
        encoder = load_checkpoint(pretrained)["model"]
        for model in trainer.models:  # every fold starts from it
            loaded = pretrained_encoder(model, encoder, pretrained)
        log.info("loaded %d encoder tensors from %s", len(loaded), pretrained)
    if resume is not None:
        trainer.load_state_dict(resume)
        log.info("resumed at epoch %d", trainer.epoch)
    status = TrialStatus.COMPLETED
    while trainer.epoch < cfg.epochs:
        record = trainer.run_epoch()
        trainer.history.append(record)
        stop = any([bool(cb(record, trainer)) for cb in callbacks])
        outcome = trainer.outcome(record)
        if outcome is TrialStatus.NAN:
            status = TrialStatus.NAN
            log.warning("epoch %d: training loss is %s; stopping this run", trainer.epoch, record["train/loss"])
            break
        if stop:
            status = TrialStatus.STOPPED
            break
        if outcome is TrialStatus.EARLY_STOPPED:
            status = TrialStatus.EARLY_STOPPED
            log.info("early stop at epoch %d: no improvement of %s in %d epochs", trainer.epoch,
                     trainer.objective.monitor, cfg.patience)
            break
    result = FitResult(status, trainer.epoch, trainer.best_epoch, trainer.best, trainer.best_metrics,
                       trainer.history)
    return result, trainer


def evaluate(model: nn.Module, objective: Objective, data: Batches) -> dict[str, float]:
    """Metrics of MODEL on DATA (evaluation mode)."""
    model.eval()
    return objective.evaluate(model, data, amp=data.device.type == "cuda")

