"""The model and the losses: shapes, masks, modality dropout, focal == BCE at gamma 0."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from mmtune.model.losses import FocalLoss, build_loss, class_weights
from mmtune.model.transformer import MaskedReconstructor, MultimodalClassifier, drop_modalities

MODS = {"traj": (12, 4), "pose": (6, 7)}


def batch(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(b, t, f, generator=g) for m, (t, f) in MODS.items()}
    valid = {m: torch.rand(b, t, generator=g) > 0.2 for m, (t, f) in MODS.items()}
    return x, valid


def test_forward_backward_shapes_and_finite():
    torch.manual_seed(0)
    model = MultimodalClassifier(MODS, d_model=32, nhead=4, num_layers=2, ff_mult=2, dropout=0.1)
    x, valid = batch()
    out = model(x, valid)
    assert out.logits.shape == (5,)
    assert {m: v.shape for m, v in out.aux_logits.items()} == {"traj": (5,), "pose": (5,)}
    loss = out.logits.sum() + sum(v.sum() for v in out.aux_logits.values())
    loss.backward()
    # The mask token only stands in for hidden steps in pretraining.
    grads = {n: p.grad for n, p in model.named_parameters() if n != "encoder.mask_token"}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert model.encoder.mask_token.grad is None


def test_padding_mask_is_honoured():
    torch.manual_seed(0)
    model = MultimodalClassifier(MODS, d_model=32, nhead=4, num_layers=2, ff_mult=2, dropout=0.0).eval()
    x, valid = batch()
    x2 = {m: v.clone() for m, v in x.items()}
    x2["traj"][~valid["traj"]] = 1e3  # garbage on padded steps must not change anything
    with torch.no_grad():
        a, b = model(x, valid), model(x2, valid)
    torch.testing.assert_close(a.logits, b.logits)
    x2["traj"][valid["traj"]] += 1.0  # but valid steps do
    with torch.no_grad():
        assert not torch.allclose(a.logits, model(x2, valid).logits)


def test_sample_with_no_valid_step_in_a_modality_is_finite():
    model = MultimodalClassifier(MODS, d_model=16, nhead=2, num_layers=1).eval()
    x, valid = batch()
    valid["pose"][0] = False
    out = model(x, valid)
    assert torch.isfinite(out.logits).all() and not out.aux_valid["pose"][0]


def test_modality_dropout_never_drops_all():
    torch.manual_seed(0)
    valid = {m: torch.ones(2000, t, dtype=torch.bool) for m, (t, _) in MODS.items()}
    out = drop_modalities(valid, 0.9)
    kept = torch.stack([v.any(1) for v in out.values()], 1)
    assert kept.any(1).all()  # at least one modality per sample
    assert (~kept).any()  # and some are dropped
    share = (~kept).float().mean().item()
    assert 0.3 < share < 0.7  # with p=0.9 and rescue, about half of all modality slots go


def garbage_in(x, m):
    """X with modality M's features replaced by large noise on every step."""
    x2 = {k: v.clone() for k, v in x.items()}
    x2[m] = torch.randn(x2[m].shape, generator=torch.Generator().manual_seed(1)) * 50 + 7
    return x2


def forward(model, x, valid, seed=0):
    """One forward pass with the global RNG (which draws the modality dropout) at SEED."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(x, valid)


def test_modality_dropout_drops_whole_modalities_in_training():
    torch.manual_seed(0)
    model = MultimodalClassifier(MODS, d_model=16, nhead=2, num_layers=1, dropout=0.0, modality_dropout=0.5)
    x, _ = batch(b=64)
    valid = {m: torch.ones(64, t, dtype=torch.bool) for m, (t, _) in MODS.items()}  # nothing padded
    model.train()
    out = forward(model, x, valid)
    kept = torch.stack([out.aux_valid[m] for m in sorted(MODS)], 1)  # (B, M): the modality had a token left
    assert kept.any(1).all(), "a sample lost every modality"
    assert (~kept).any(0).all(), "each modality is dropped for some samples"
    assert kept.all(1).any(), "and some samples keep both"
    for i, m in enumerate(sorted(MODS)):
        dropped = ~kept[:, i]
        # A dropped modality is gone: garbage in it changes nothing for those samples (same dropout draw),
        # while every sample that kept it sees the garbage.
        other = forward(model, garbage_in(x, m), valid)
        torch.testing.assert_close(other.logits[dropped], out.logits[dropped])
        assert torch.equal(other.aux_valid[m], out.aux_valid[m])
        assert not torch.isclose(other.logits[~dropped], out.logits[~dropped]).any()
    # Another draw drops other modalities of other samples.
    assert not torch.equal(torch.stack([forward(model, x, valid, seed=1).aux_valid[m] for m in sorted(MODS)], 1),
                           kept)


def test_modality_dropout_of_one_keeps_exactly_one_modality():
    model = MultimodalClassifier(MODS, d_model=16, nhead=2, num_layers=1, dropout=0.0, modality_dropout=1.0)
    x, _ = batch(b=64)
    valid = {m: torch.ones(64, t, dtype=torch.bool) for m, (t, _) in MODS.items()}
    out = forward(model.train(), x, valid)
    kept = torch.stack([out.aux_valid[m] for m in sorted(MODS)], 1)
    assert (kept.sum(1) == 1).all()  # every modality would go; one is rescued per sample
    assert kept.any(0).all()  # the rescued one is chosen at random, not always the same
    assert torch.isfinite(out.logits).all()


def test_modality_dropout_only_in_training():
    torch.manual_seed(0)
    model = MultimodalClassifier(MODS, d_model=16, nhead=2, num_layers=1, dropout=0.0, modality_dropout=0.5)
    x, _ = batch(b=64)
    valid = {m: torch.ones(64, t, dtype=torch.bool) for m, (t, _) in MODS.items()}
    model.eval()
    a, b = forward(model, x, valid, seed=0), forward(model, x, valid, seed=1)
    assert torch.equal(a.logits, b.logits)  # no random draw in evaluation
    assert all(a.aux_valid[m].all() for m in MODS)  # nothing dropped
    for m in MODS:  # every sample uses every modality
        assert not torch.isclose(forward(model, garbage_in(x, m), valid).logits, a.logits).any()
    model.train()
    assert not all(forward(model, x, valid).aux_valid[m].all() for m in MODS)  # same model drops in training


def test_focal_with_gamma_zero_equals_bce():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(100, generator=g) * 3, (torch.rand(100, generator=g) > 0.7).float()
    bce = F.binary_cross_entropy_with_logits(logits, y)
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, y), bce)
    torch.testing.assert_close(build_loss(False, 2.0, 0.25, None)(logits, y), bce)
    assert FocalLoss(gamma=2.0)(logits, y) < bce  # focal down-weights easy examples


def test_class_weights_and_alpha():
    y = torch.tensor([0.0, 0.0, 0.0, 1.0])
    w0, w1 = class_weights(y.numpy())
    assert w1 == 3 * w0 and abs((3 * w0 + w1) / 4 - 1.0) < 1e-9
    logits = torch.zeros(4)
    per = FocalLoss(0.0, -1.0, (w0, w1)).per_sample(logits, y)
    torch.testing.assert_close(per[3] / per[0], torch.tensor(3.0))
    per_a = FocalLoss(0.0, 0.75).per_sample(logits, y)
    torch.testing.assert_close(per_a[3] / per_a[0], torch.tensor(3.0))


def test_reconstructor_shapes():
    model = MaskedReconstructor(MODS, d_model=16, nhead=2, num_layers=1)
    x, valid = batch()
    hide = {m: v & (torch.rand(v.shape) < 0.5) for m, v in valid.items()}
    out = model(x, valid, hide)
    assert {m: v.shape for m, v in out.items()} == {m: x[m].shape for m in MODS}
