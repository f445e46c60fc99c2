"""Multimodal transformer: one token stream per modality, a CLS token, auxiliary unimodal heads."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

Batch = dict[str, dict[str, torch.Tensor]]  # {"x": {name: (B, T, F)}, "mask": {name: (B, T)}}


def sinusoid(length: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal positions, (length, dim); fixed so pretrained encoders fit any length."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return pe


class Encoded(NamedTuple):
    cls: torch.Tensor  # (B, D)
    tokens: dict[str, torch.Tensor]  # name -> (B, T_m, D)
    valid: dict[str, torch.Tensor]  # name -> (B, T_m) bool, after modality dropout


class Encoder(nn.Module):
    """Projects each modality to tokens and runs a pre-norm transformer over all of them plus CLS."""

    def __init__(self, modalities: dict[str, tuple[int, int]], d_model: int, nhead: int, num_layers: int,
                 ff_mult: int, dropout: float):
        super().__init__()
        self.names = sorted(modalities)
        self.proj = nn.ModuleDict({m: nn.Linear(modalities[m][1], d_model) for m in self.names})
        self.modality_emb = nn.Parameter(torch.randn(len(self.names), d_model) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(d_model))  # stands in for hidden steps in pretraining
        self.register_buffer("pos", sinusoid(max(t for t, _ in modalities.values()), d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(d_model, nhead, ff_mult * d_model, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        # Nested tensors would change numerics between train and eval; determinism matters more here.
        self.encoder = nn.TransformerEncoder(layer, num_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)

    def forward(self, x: dict[str, torch.Tensor], valid: dict[str, torch.Tensor],
                hide: dict[str, torch.Tensor] | None = None) -> Encoded:
        """Encode; HIDE marks steps whose input is replaced by the mask token (pretraining)."""
        parts, keep = [self.cls.expand(next(iter(x.values())).shape[0], -1, -1)], []
        for i, m in enumerate(self.names):
            tok = self.proj[m](x[m])  # (B, T_m, D)
            if hide is not None:
                tok = torch.where(hide[m][..., None], self.mask_token.to(tok.dtype), tok)
            parts.append(tok + self.pos[: tok.shape[1]] + self.modality_emb[i])
            keep.append(valid[m])
        seq = torch.cat(parts, dim=1)  # (B, 1 + sum T_m, D)
        pad = ~torch.cat([torch.ones_like(keep[0][:, :1]), *keep], dim=1)  # CLS is never padding
        h = self.encoder(seq, src_key_padding_mask=pad)
        tokens, start = {}, 1
        for m in self.names:
            t = x[m].shape[1]
            tokens[m], start = h[:, start:start + t], start + t
        return Encoded(h[:, 0], tokens, valid)


class Output(NamedTuple):
    logits: torch.Tensor  # (B,)
    aux_logits: dict[str, torch.Tensor]  # name -> (B,)
    aux_valid: dict[str, torch.Tensor]  # name -> (B,) bool: the modality had a valid token


class MultimodalClassifier(nn.Module):
    """Encoder + classification head on CLS + one auxiliary head per modality."""

    def __init__(self, modalities: dict[str, tuple[int, int]], d_model: int = 256, nhead: int = 8,
                 num_layers: int = 4, ff_mult: int = 4, dropout: float = 0.1, modality_dropout: float = 0.0):
        super().__init__()
        self.encoder = Encoder(modalities, d_model, nhead, num_layers, ff_mult, dropout)
        self.modality_dropout = modality_dropout
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, 1))
        self.aux_heads = nn.ModuleDict({m: nn.Linear(d_model, 1) for m in self.encoder.names})

    def forward(self, x: dict[str, torch.Tensor], valid: dict[str, torch.Tensor]) -> Output:
        """Logits of the main head and of each auxiliary head."""
        if self.training and self.modality_dropout > 0 and len(valid) > 1:
            valid = drop_modalities(valid, self.modality_dropout)
        enc = self.encoder(x, valid)
        aux, aux_valid = {}, {}
        for m, h in enc.tokens.items():
            v = enc.valid[m][..., None].to(h.dtype)  # (B, T, 1)
            pooled = (h * v).sum(1) / v.sum(1).clamp(min=1.0)  # mean over valid tokens, (B, D)
            aux[m], aux_valid[m] = self.aux_heads[m](pooled).squeeze(-1), enc.valid[m].any(1)
        return Output(self.head(enc.cls).squeeze(-1), aux, aux_valid)


def drop_modalities(valid: dict[str, torch.Tensor], p: float) -> dict[str, torch.Tensor]:
    """Drop whole modalities per sample with probability P, never all of them at once."""
    names = list(valid)
    b = valid[names[0]].shape[0]
    device = valid[names[0]].device
    drop = torch.rand(b, len(names), device=device) < p  # (B, M)
    # Where every modality would go, keep one chosen at random.
    rescue = drop.all(1)
    keep_one = torch.randint(len(names), (b,), device=device)
    drop[rescue, keep_one[rescue]] = False
    return {m: valid[m] & ~drop[:, i, None] for i, m in enumerate(names)}


class MaskedReconstructor(nn.Module):
    """Encoder + per-modality heads that reconstruct the features of hidden steps."""

    def __init__(self, modalities: dict[str, tuple[int, int]], d_model: int = 256, nhead: int = 8,
                 num_layers: int = 4, ff_mult: int = 4, dropout: float = 0.1):
        super().__init__()
        self.encoder = Encoder(modalities, d_model, nhead, num_layers, ff_mult, dropout)
        self.recon = nn.ModuleDict({m: nn.Linear(d_model, f) for m, (_, f) in modalities.items()})

    def forward(self, x: dict[str, torch.Tensor], valid: dict[str, torch.Tensor],
                hide: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Reconstructed features per modality, (B, T_m, F_m)."""
        enc = self.encoder(x, valid, hide)
        return {m: self.recon[m](h) for m, h in enc.tokens.items()}


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (biases and norms are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)
