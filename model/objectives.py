"""What the loop optimizes: classification (train, sweep) or masked-step reconstruction (pretrain)."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mmtune.data.batches import Batches
from mmtune.model.checkpoint import CheckpointError
from mmtune.model.config import TrainConfig
from mmtune.model.losses import FocalLoss, build_loss, class_weights
from mmtune.model.metrics import classification_metrics
from mmtune.model.transformer import MaskedReconstructor, MultimodalClassifier

EVAL_BATCH = 512  # evaluation holds no activations for backward, so large batches are cheap


class Classification:
    """Main head + aux_weight x mean of the unimodal auxiliary losses."""

    kind = "classify"

    def __init__(self, cfg: TrainConfig, train_y: np.ndarray):
        self.cfg = cfg
        weights = class_weights(train_y) if cfg.class_weighted else None
        self.criterion = build_loss(cfg.use_focal, cfg.focal_gamma, cfg.focal_alpha, weights)
        # Validation loss is plain BCE so that it compares across configs with other losses.
        self.plain = FocalLoss(0.0, -1.0, None)

    @property
    def monitor(self) -> str:
        return self.cfg.monitor

    def build(self, modalities: dict[str, tuple[int, int]]) -> nn.Module:
        c = self.cfg
        return MultimodalClassifier(modalities, c.d_model, c.nhead, c.num_layers, c.ff_mult, c.dropout,
                                    c.modality_dropout)

    def loss(self, model: nn.Module, x: dict, valid: dict, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training loss and the main logits."""
        out = model(x, valid)
        loss = self.criterion(out.logits, y)
        if self.cfg.aux_weight > 0:
            aux = []
            for m, logits in out.aux_logits.items():
                ok = out.aux_valid[m].float()  # a modality with no valid step says nothing
                aux.append((self.criterion.per_sample(logits, y) * ok).sum() / ok.sum().clamp(min=1.0))
            loss = loss + self.cfg.aux_weight * torch.stack(aux).mean()
        return loss, out.logits

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Batches, amp: bool) -> dict[str, float]:
        probs, losses = [], []
        for x, valid, y in data.in_order(EVAL_BATCH):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                logits = model(x, valid).logits.float()
            losses.append(self.plain.per_sample(logits, y))
            probs.append(torch.sigmoid(logits))
        prob = torch.cat(probs).cpu().numpy()
        return classification_metrics(data.y.numpy(), prob, float(torch.cat(losses).mean()))


class MaskedPretraining:
    """Hide a share of valid steps and reconstruct their (standardized) features."""

    kind = "pretrain"
    monitor = "val/loss"

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def build(self, modalities: dict[str, tuple[int, int]]) -> nn.Module:
        c = self.cfg
        return MaskedReconstructor(modalities, c.d_model, c.nhead, c.num_layers, c.ff_mult, c.dropout)

    def _hide(self, valid: dict, gen: torch.Generator | None) -> dict:
        hide = {}
        for m, v in valid.items():
            r = torch.rand(v.shape, generator=gen, device="cpu").to(v.device)
            hide[m] = v & (r < self.cfg.mask_prob)
        return hide

    def _mse(self, model: nn.Module, x: dict, valid: dict, gen: torch.Generator | None) -> torch.Tensor:
        hide = self._hide(valid, gen)
        recon = model(x, valid, hide)
        err = [((recon[m].float() - x[m].float()) ** 2).mean(-1)[hide[m]] for m in x]
        err = torch.cat(err)
        return err.mean() if err.numel() else recon[next(iter(recon))].sum() * 0.0

    def loss(self, model: nn.Module, x: dict, valid: dict, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        """Reconstruction error on freshly hidden steps; no logits."""
        return self._mse(model, x, valid, None), None

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Batches, amp: bool) -> dict[str, float]:
        gen = torch.Generator().manual_seed(0)  # the same hidden steps every epoch: comparable losses
        total, n = 0.0, 0
        for x, valid, y in data.in_order(EVAL_BATCH):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                total += float(self._mse(model, x, valid, gen)) * len(y)
            n += len(y)
        return {"loss": total / max(n, 1)}


def pretrained_encoder(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load the encoder weights of a pretraining checkpoint into MODEL; return the names loaded."""
    own = model.state_dict()
    wanted = [k for k in own if k.startswith("encoder.")]
    missing = [k for k in wanted if k not in state]
    if missing:
        raise CheckpointError(f"{source}: lacks encoder parameter {missing[0]!r} ({len(missing)} missing); "
                              "pretrain with the same modalities")
    for k in wanted:
        if state[k].shape != own[k].shape:
            raise CheckpointError(f"{source}: parameter {k!r} has shape {tuple(state[k].shape)}, the model "
                                  f"needs {tuple(own[k].shape)}; use the same d_model/num_layers/ff_mult")
    model.load_state_dict({k: state[k] for k in wanted}, strict=False)
    return wanted

