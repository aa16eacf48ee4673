"""SetCriterion and loss functions: hand-made cases, independent formulas, HF MaskFormerLoss.

How Hugging Face's ``MaskFormerLoss`` (transformers 5.x) relates to the official code (and ours):
- Same: matcher costs (focal/dice/-p(class), nearest-downsampled GT), CE weighted mean with
  no-object weight 0.1 over all B*Q queries, bilinear (align_corners=False) upsampling of the
  matched logits to the padded target size, focal mean-over-pixels and +1-smoothed dice, both
  summed over pairs / num_masks, and each aux output matched on its own with the same num_masks.
  The tests below assert these agree to 1e-5.
- Different: key names (``loss_cross_entropy`` vs ``loss_ce``); HF replaces NaN/inf costs by the
  float max instead of raising; HF all-reduces num_masks through ``accelerate`` (only when an
  accelerate state exists), not ``torch.distributed``; HF's matcher needs float masks (we accept
  bool); and HF's *model* builds the aux predictions differently from the official decoder: with
  ``use_auxiliary_loss`` its DETR decoder feeds each layer the LayerNorm-ed output of the previous
  one (officially the norm is applied only to the copy used for the heads), and
  ``get_logits`` reads the aux states from ``transformer_decoder_hidden_states``. That is a model
  difference, so here both losses get the same aux logits.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers.models.maskformer.modeling_maskformer import (
    MaskFormerHungarianMatcher,
    MaskFormerLoss,
)

from maskformer.config import SolverConfig
from maskformer.losses import (
    HungarianMatcher,
    SetCriterion,
    build_criterion,
    default_loss_weights,
    dice_loss,
    point_sample,
    sigmoid_focal_loss,
    weighted_total,
)
from maskformer.losses import criterion as criterion_module
from maskformer.losses.functional import mask_losses, resize_bilinear

K = 5  # real classes; column K is "no object"


def _batch(gen, counts, queries=8, low=8, size=32, aux=2, requires_grad=False):
    outputs = {
        "pred_logits": torch.randn(len(counts), queries, K + 1, generator=gen) * 2,
        "pred_masks": torch.randn(len(counts), queries, low, low, generator=gen) * 3,
        "aux_outputs": [
            {
                "pred_logits": torch.randn(len(counts), queries, K + 1, generator=gen) * 2,
                "pred_masks": torch.randn(len(counts), queries, low, low, generator=gen) * 3,
            }
            for _ in range(aux)
        ],
    }
    if requires_grad:
        for d in [outputs, *outputs["aux_outputs"]]:
            d["pred_logits"].requires_grad_(True)
            d["pred_masks"].requires_grad_(True)
    targets = [
        {
            "labels": torch.randint(0, K, (n,), generator=gen),
            "masks": torch.rand(n, size, size, generator=gen) > 0.6,
        }
        for n in counts
    ]
    return outputs, targets


def _bilinear_matrix(out_size: int, in_size: int) -> torch.Tensor:
    """(out, in) weights of 1-D linear interpolation, align_corners=False (half-pixel centres)."""
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        src = max((o + 0.5) * in_size / out_size - 0.5, 0.0)
        i0 = min(math.floor(src), in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        weights[o, i0] += 1 - frac
        weights[o, i1] += frac
    return weights


def _reference_losses(outputs, targets, indices, no_object=0.1, alpha=0.25, gamma=2.0):
    """The official final-layer losses written out directly, in float64, given the matching."""
    logits = outputs["pred_logits"].detach().double()
    batch, queries = logits.shape[:2]
    num_masks = max(sum(len(t["labels"]) for t in targets), 1)
    # CE: sum of w_y * nll over all queries / sum of w_y
    ce_num, ce_den = 0.0, 0.0
    for b in range(batch):
        assigned = dict(zip(indices[b][0].tolist(), indices[b][1].tolist()))
        for q in range(queries):
            cls = int(targets[b]["labels"][assigned[q]]) if q in assigned else K
            w = no_object if cls == K else 1.0
            ce_num += w * -float(torch.log_softmax(logits[b, q], -1)[cls])
            ce_den += w
    # masks: upsample each matched logit map, then pixel-wise focal and dice
    focal_sum, dice_sum = 0.0, 0.0
    for b in range(batch):
        for q, n in zip(indices[b][0].tolist(), indices[b][1].tolist()):
            tgt = targets[b]["masks"][n].double()
            low = outputs["pred_masks"][b, q].detach().double()
            rows = _bilinear_matrix(tgt.shape[0], low.shape[0])
            cols = _bilinear_matrix(tgt.shape[1], low.shape[1])
            x = rows @ low @ cols.T  # (H, W)
            p = torch.sigmoid(x)
            bce = -(tgt * torch.log(p) + (1 - tgt) * torch.log(1 - p))
            p_t = p * tgt + (1 - p) * (1 - tgt)
            alpha_t = alpha * tgt + (1 - alpha) * (1 - tgt)
            focal_sum += float((alpha_t * (1 - p_t) ** gamma * bce).mean())
            dice_sum += 1 - float((2 * (p * tgt).sum() + 1) / (p.sum() + tgt.sum() + 1))
    return {
        "loss_ce": ce_num / ce_den,
        "loss_mask": focal_sum / num_masks,
        "loss_dice": dice_sum / num_masks,
    }


def test_focal_and_dice_on_a_hand_made_case():
    logits = torch.zeros(1, 2)  # p = 0.5 everywhere
    target = torch.tensor([[1.0, 0.0]])
    # pixel 1: 0.25 * 0.5^2 * log 2; pixel 0: 0.75 * 0.5^2 * log 2; mean = 0.125 log 2
    assert float(sigmoid_focal_loss(logits, target, 1)) == pytest.approx(0.125 * math.log(2))
    # dice: 1 - (2*0.5 + 1) / (1 + 1 + 1) = 1/3
    assert float(dice_loss(logits, target, 1)) == pytest.approx(1 / 3)
    assert float(dice_loss(logits.repeat(4, 1), target.repeat(4, 1), 2)) == pytest.approx(2 / 3)


def _naive_focal_and_dice(logits, target, alpha, gamma):
    """The textbook formulas, one elementwise step each (what the fused ones must equal)."""
    p = logits.sigmoid()
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    focal = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        focal = (alpha * target + (1 - alpha) * (1 - target)) * focal
    dice = 1 - (2 * (p * target).sum(-1) + 1) / (p.sum(-1) + target.sum(-1) + 1)
    return focal.mean(1).sum(), dice.sum()


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.5), (-1.0, 3.0), (0.25, 0.0)])
def test_mask_losses_equal_the_textbook_formulas_and_gradients(alpha, gamma):
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(5, 300, generator=gen, dtype=torch.float64) * 4).requires_grad_(True)
    # fractional targets too: the point-sampled loss interpolates the binary masks
    target = torch.rand(5, 300, generator=gen, dtype=torch.float64)
    target[:3] = (target[:3] > 0.7).double()
    focal, dice = mask_losses(logits, target, 2.5, alpha=alpha, gamma=gamma)
    ref_focal, ref_dice = _naive_focal_and_dice(logits, target, alpha, gamma)
    torch.testing.assert_close(focal, ref_focal / 2.5)
    torch.testing.assert_close(dice, ref_dice / 2.5)
    torch.testing.assert_close(focal, sigmoid_focal_loss(logits, target, 2.5, alpha, gamma))
    torch.testing.assert_close(dice, dice_loss(logits, target, 2.5))
    grad = torch.autograd.grad(3 * focal + 2 * dice, logits)[0]
    ref_grad = torch.autograd.grad(3 * ref_focal / 2.5 + 2 * ref_dice / 2.5, logits)[0]
    torch.testing.assert_close(grad, ref_grad)


@pytest.mark.parametrize(
    "in_hw,out_hw",
    [((32, 32), (128, 128)), ((7, 9), (37, 20)), ((40, 13), (13, 40)), ((5, 6), (5, 6))],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resize_bilinear_equals_interpolate_forward_and_backward(in_hw, out_hw, dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, *in_hw, generator=gen, dtype=dtype).requires_grad_(True)
    upstream = torch.randn(4, 1, *out_hw, generator=gen, dtype=dtype)
    ours = resize_bilinear(x, out_hw)
    ref = F.interpolate(x, size=out_hw, mode="bilinear", align_corners=False)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(ours, ref, **tol)
    grad = torch.autograd.grad(ours, x, upstream)[0]
    ref_grad = torch.autograd.grad(ref, x, upstream)[0]
    torch.testing.assert_close(grad, ref_grad, **tol)


def test_criterion_matches_independent_reference():
    gen = torch.Generator().manual_seed(0)
    outputs, targets = _batch(gen, [3, 1, 4])
    criterion = SetCriterion(K, HungarianMatcher())
    losses = criterion(outputs, targets)
    assert set(losses) == {f"loss_{k}{s}" for k in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    ref = _reference_losses(outputs, targets, criterion.matcher(outputs, targets))
    for key, value in ref.items():
        assert float(losses[key]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # each aux output is matched on its own and gives its own numbers
    aux0 = outputs["aux_outputs"][0]
    ref_aux = _reference_losses(aux0, targets, criterion.matcher(aux0, targets))
    for key, value in ref_aux.items():
        assert float(losses[f"{key}_0"]) == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_empty_targets_give_finite_losses_and_no_object_ce():
    gen = torch.Generator().manual_seed(1)
    outputs, targets = _batch(gen, [2, 0], requires_grad=True)
    criterion = SetCriterion(K, HungarianMatcher())
    losses = criterion(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    ref = _reference_losses(outputs, targets, criterion.matcher(outputs, targets))
    assert losses["loss_ce"].item() == pytest.approx(ref["loss_ce"], rel=1e-5)
    # the empty image alone: every query is "no object", so CE is the plain mean NLL of class K
    single = {"pred_logits": outputs["pred_logits"][1:], "pred_masks": outputs["pred_masks"][1:]}
    loss_empty = criterion(single, targets[1:])
    expected = -torch.log_softmax(single["pred_logits"].detach().double(), -1)[..., K].mean()
    assert loss_empty["loss_ce"].item() == pytest.approx(float(expected), rel=1e-5)
    assert loss_empty["loss_mask"].item() == 0.0 and loss_empty["loss_dice"].item() == 0.0
    weighted_total(loss_empty, default_loss_weights(SolverConfig(), 1)).backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()


def test_matches_huggingface_maskformer_loss():
    gen = torch.Generator().manual_seed(2)
    outputs, targets = _batch(
        gen, [3, 0, 5, 2], queries=10, low=12, size=48, aux=3, requires_grad=True
    )
    ours = SetCriterion(
        K, HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0), no_object_weight=0.1
    )(outputs, targets)
    hf_criterion = MaskFormerLoss(
        K,
        MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0),
        weight_dict={},
        eos_coef=0.1,
    )
    hf = hf_criterion(
        outputs["pred_masks"],
        outputs["pred_logits"],
        [t["masks"].float() for t in targets],
        [t["labels"] for t in targets],
        [
            {"masks_queries_logits": a["pred_masks"], "class_queries_logits": a["pred_logits"]}
            for a in outputs["aux_outputs"]
        ],
    )
    assert len(hf) == len(ours) == 12
    max_err = 0.0
    for hf_key, value in hf.items():
        key = hf_key.replace("loss_cross_entropy", "loss_ce")
        max_err = max(max_err, abs(ours[key].item() - value.item()))
    assert max_err < 1e-5, max_err
    # and the gradients of the official weighted total agree too
    weights = default_loss_weights(SolverConfig(), 4)
    hf_weights = {k: weights[k.replace("loss_cross_entropy", "loss_ce")] for k in hf}
    params = [
        outputs["pred_logits"],
        outputs["pred_masks"],
        outputs["aux_outputs"][2]["pred_masks"],
    ]
    grads_ours = torch.autograd.grad(weighted_total(ours, weights), params)
    grads_hf = torch.autograd.grad(sum(hf[k] * w for k, w in hf_weights.items()), params)
    for g_ours, g_hf in zip(grads_ours, grads_hf):
        torch.testing.assert_close(g_ours, g_hf, atol=1e-6, rtol=1e-5)


def test_gradients_flow_to_every_layer():
    gen = torch.Generator().manual_seed(3)
    outputs, targets = _batch(gen, [2, 3], requires_grad=True)
    losses = SetCriterion(K, HungarianMatcher())(outputs, targets)
    weighted_total(losses, default_loss_weights(SolverConfig(), 3)).backward()
    for d in [outputs, *outputs["aux_outputs"]]:
        assert d["pred_logits"].grad.abs().sum() > 0
        assert d["pred_masks"].grad.abs().sum() > 0
        assert torch.isfinite(d["pred_masks"].grad).all()


def test_num_masks_normalisation(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    outputs, targets = _batch(gen, [2, 3], aux=0)
    criterion = SetCriterion(K, HungarianMatcher())
    base = criterion(outputs, targets)
    # duplicating the batch doubles both the summed pair losses and num_masks: nothing changes
    doubled = {k: torch.cat([v, v]) for k, v in outputs.items() if k != "aux_outputs"}
    twice = criterion(doubled, targets + targets)
    for key in base:
        assert float(twice[key]) == pytest.approx(float(base[key]), rel=1e-5)
    assert SetCriterion.num_masks(targets[:0] + [targets[0]], torch.device("cpu")) == 2.0
    assert SetCriterion.num_masks([{"labels": torch.zeros(0)}], torch.device("cpu")) == 1.0
    # distributed: 5 local masks + 11 on the other rank, averaged over 2 processes = 8
    fake = SimpleNamespace(
        is_available=lambda: True,
        is_initialized=lambda: True,
        get_world_size=lambda: 2,
        all_reduce=lambda t: t.add_(11.0),
    )
    monkeypatch.setattr(criterion_module, "dist", fake)
    assert SetCriterion.num_masks(targets, torch.device("cpu")) == 8.0
    scaled = criterion(outputs, targets)
    assert float(scaled["loss_mask"]) == pytest.approx(float(base["loss_mask"]) * 5 / 8, rel=1e-5)
    assert float(scaled["loss_ce"]) == pytest.approx(float(base["loss_ce"]), rel=1e-6)


def test_point_sample_agrees_with_bilinear_upsampling_at_pixel_centres():
    low = torch.randn(2, 1, 6, 6)
    up = torch.nn.functional.interpolate(low, size=(24, 24), mode="bilinear", align_corners=False)
    ys, xs = torch.meshgrid(torch.arange(4, 20), torch.arange(4, 20), indexing="ij")  # interior
    coords = torch.stack([(xs.flatten() + 0.5) / 24, (ys.flatten() + 0.5) / 24], -1)  # (P, 2) x, y
    sampled = point_sample(low, coords[None].expand(2, -1, -1))[:, 0]  # (2, P)
    torch.testing.assert_close(sampled, up[:, 0, ys.flatten(), xs.flatten()], atol=1e-5, rtol=1e-5)


def test_point_sampled_loss_approximates_exact_loss_on_smooth_masks():
    # smooth logits (a low-frequency field) and disc-shaped targets
    size, low = 64, 16
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    masks = torch.stack([(xx - c) ** 2 + yy**2 < 0.3 for c in (-0.3, 0.0, 0.4)])  # (3, 64, 64)
    ly, lx = torch.meshgrid(torch.linspace(-1, 1, low), torch.linspace(-1, 1, low), indexing="ij")
    pred = torch.stack([2.5 - 6 * ((lx - c) ** 2 + ly**2) for c in (-0.25, 0.1, 0.5, 0.9)])
    outputs = {
        "pred_logits": torch.zeros(1, 4, K + 1),
        "pred_masks": pred[None].clone(),
        "aux_outputs": [],
    }
    targets = [{"labels": torch.tensor([0, 1, 2]), "masks": masks}]
    exact = SetCriterion(K, HungarianMatcher())(outputs, targets)
    uniform = SetCriterion(
        K, HungarianMatcher(), point_sampled=True, num_points=12544, importance_sample_ratio=0.0
    )(outputs, targets)
    # uniform points estimate the pixel mean; labels sampled bilinearly from the binary GT are
    # soft at the boundaries, which lowers the focal term by a few per cent (7.9 % here)
    for key in ("loss_mask", "loss_dice"):
        assert float(uniform[key]) == pytest.approx(float(exact[key]), rel=0.15), key
    assert float(uniform["loss_ce"]) == float(exact["loss_ce"])
    # the default (Mask2Former) mix favours uncertain points: finite, same order, differentiable
    outputs["pred_masks"].requires_grad_(True)
    importance = build_criterion(
        SimpleNamespace(
            model=SimpleNamespace(num_classes=K),
            solver=SolverConfig(point_sampled_loss=True, num_points=2000),
        )
    )(outputs, targets)
    assert importance["loss_mask"] > 0 and torch.isfinite(importance["loss_dice"])
    assert 0.2 < importance["loss_dice"].item() / float(exact["loss_dice"]) < 5
    importance["loss_mask"].backward()
    assert outputs["pred_masks"].grad.abs().sum() > 0


def test_default_weights_and_weighted_total(tiny_cfg):
    weights = default_loss_weights(SolverConfig(), 6)
    assert len(weights) == 18
    assert weights["loss_mask"] == weights["loss_mask_4"] == 20.0
    assert weights["loss_ce_0"] == weights["loss_dice_4"] == 1.0 and "loss_ce_5" not in weights
    losses = {
        "loss_ce": torch.tensor(2.0),
        "loss_mask": torch.tensor(0.5),
        "loss_dice_0": torch.tensor(3.0),
        "loss_extra": torch.tensor(100.0),
    }  # keys without a weight are dropped
    assert float(weighted_total(losses, weights)) == pytest.approx(2.0 + 10.0 + 3.0)
    with pytest.raises(ValueError, match="none of the loss keys"):
        weighted_total({"loss_x": torch.tensor(1.0)}, weights)
    criterion = build_criterion(tiny_cfg)
    assert criterion.num_classes == tiny_cfg.model.num_classes
    assert float(criterion.empty_weight[-1]) == pytest.approx(0.1)
    assert criterion.matcher.cost_mask == 20.0 and not criterion.point_sampled


def _saved_bytes(criterion: SetCriterion, outputs, targets) -> int:
    """Bytes autograd keeps for backward while computing the losses (a proxy for peak memory)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        criterion(outputs, targets)
    return total


def test_point_sampled_loss_keeps_less_for_backward():
    gen = torch.Generator().manual_seed(5)
    outputs, targets = _batch(gen, [4, 4], queries=8, low=32, size=128, aux=0, requires_grad=True)
    exact = _saved_bytes(SetCriterion(K, HungarianMatcher()), outputs, targets)
    points = _saved_bytes(
        SetCriterion(K, HungarianMatcher(), point_sampled=True, num_points=1024), outputs, targets
    )
    assert points * 4 < exact, (points, exact)
