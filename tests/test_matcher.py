"""HungarianMatcher: brute-force optimality, batching, empty targets, NaN guard, HF agreement."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers.models.maskformer.modeling_maskformer import MaskFormerHungarianMatcher

from maskformer.losses import HungarianMatcher

STRIDE = 4  # predictions are at 1/4 of the padded input, like the model's pred_masks


def _case(
    gen: torch.Generator,
    batch: int,
    queries: int,
    num_classes: int,
    counts: list[int],
    size: int = 32,
) -> tuple[dict, list[dict]]:
    """Random logits at size/4 and random binary targets at the full size."""
    low = size // STRIDE
    outputs = {
        "pred_logits": torch.randn(batch, queries, num_classes + 1, generator=gen) * 2,
        "pred_masks": torch.randn(batch, queries, low, low, generator=gen) * 3,
    }
    targets = []
    for n in counts:
        # blocky masks (4x4 cells) so nearest downsampling keeps real structure
        cells = torch.rand(n, low, low, generator=gen) > 0.5
        masks = cells.repeat_interleave(STRIDE, 1).repeat_interleave(STRIDE, 2)
        masks ^= (
            torch.rand(n, size, size, generator=gen) > 0.9
        )  # off-grid noise, dropped by nearest
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        targets.append({"labels": labels, "masks": masks})
    return outputs, targets


def _reference_cost(
    class_logits, mask_logits, target, w_class=1.0, w_mask=20.0, w_dice=1.0, alpha=0.25, gamma=2.0
) -> torch.Tensor:
    """The official matching cost written out pair by pair, in float64.

    Nearest downsampling by an integer factor picks pixel (4i, 4j) (PyTorch's floor convention).
    """
    probs = torch.softmax(class_logits.double(), -1)
    tgt = target["masks"][:, ::STRIDE, ::STRIDE].double().flatten(1)  # (N, h*w)
    x = mask_logits.double().flatten(1)  # (Q, h*w)
    num_q, num_t = x.shape[0], tgt.shape[0]
    cost = torch.zeros(num_q, num_t, dtype=torch.float64)
    for q in range(num_q):
        p = torch.sigmoid(x[q])
        for n in range(num_t):
            t = tgt[n]
            pos = alpha * (1 - p) ** gamma * -torch.log(p)  # focal term if the pixel were 1
            neg = (1 - alpha) * p**gamma * -torch.log(1 - p)  # ... if it were 0
            focal = (t * pos + (1 - t) * neg).mean()
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            c_class = -probs[q, target["labels"][n]]
            cost[q, n] = w_mask * focal + w_class * c_class + w_dice * dice
    return cost


def _brute_force_min(cost: torch.Tensor) -> float:
    """Minimum total cost over every injective assignment of the smaller side into the larger."""
    num_q, num_t = cost.shape
    if min(num_q, num_t) == 0:
        return 0.0
    best = math.inf
    if num_t <= num_q:
        for queries in itertools.permutations(range(num_q), num_t):
            best = min(best, sum(float(cost[q, n]) for n, q in enumerate(queries)))
    else:
        for tgts in itertools.permutations(range(num_t), num_q):
            best = min(best, sum(float(cost[q, n]) for q, n in enumerate(tgts)))
    return best


def test_matcher_is_optimal_against_brute_force():
    gen = torch.Generator().manual_seed(1)
    matcher = HungarianMatcher()
    checked = 0
    for queries in range(1, 6):
        for n in range(5):
            outputs, targets = _case(gen, 1, queries, 3, [n])
            ref_cost = _reference_cost(
                outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]
            )
            ours = matcher.cost_matrix(
                outputs["pred_logits"][0], outputs["pred_masks"][0], targets[0]
            )
            torch.testing.assert_close(ours.double(), ref_cost, atol=1e-4, rtol=1e-5)
            ((pred_idx, tgt_idx),) = matcher(outputs, targets)
            assert pred_idx.dtype == tgt_idx.dtype == torch.int64
            assert len(pred_idx) == len(tgt_idx) == min(queries, n)
            assert len(set(pred_idx.tolist())) == len(pred_idx)  # one-to-one
            assert len(set(tgt_idx.tolist())) == len(tgt_idx)
            total = float(ref_cost[pred_idx, tgt_idx].sum())
            assert total == pytest.approx(_brute_force_min(ref_cost), abs=1e-6)
            checked += 1
    assert checked == 25


def test_batched_equals_per_image_and_handles_empty_image():
    gen = torch.Generator().manual_seed(2)
    outputs, targets = _case(gen, 3, 6, 4, [3, 0, 4])
    matcher = HungarianMatcher()
    batched = matcher(outputs, targets)
    for b in range(3):
        single = matcher(
            {
                "pred_logits": outputs["pred_logits"][b : b + 1],
                "pred_masks": outputs["pred_masks"][b : b + 1],
            },
            targets[b : b + 1],
        )[0]
        assert torch.equal(batched[b][0], single[0]) and torch.equal(batched[b][1], single[1])
    assert batched[1][0].numel() == 0 and batched[1][1].numel() == 0
    assert batched[1][0].dtype == torch.int64


def test_matcher_rejects_non_finite_costs_and_bad_labels():
    gen = torch.Generator().manual_seed(3)
    outputs, targets = _case(gen, 1, 4, 3, [2])
    outputs["pred_masks"][0, 1, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        HungarianMatcher()(outputs, targets)
    outputs, targets = _case(gen, 1, 4, 3, [2])
    targets[0]["labels"][0] = 3  # K itself is "no object", never a target
    with pytest.raises(ValueError, match="0..2"):
        HungarianMatcher()(outputs, targets)


def test_matcher_matches_huggingface():
    """HF's matcher follows the official one (bar its NaN handling): identical assignments."""
    gen = torch.Generator().manual_seed(4)
    outputs, targets = _case(gen, 4, 10, 6, [4, 0, 7, 10], size=48)
    ours = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)(outputs, targets)
    hf = MaskFormerHungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)(
        outputs["pred_masks"],
        outputs["pred_logits"],
        [t["masks"].float() for t in targets],  # HF interpolates the masks, so they must be float
        [t["labels"] for t in targets],
    )
    for (p_ours, t_ours), (p_hf, t_hf) in zip(ours, hf):
        assert torch.equal(p_ours, p_hf) and torch.equal(t_ours, t_hf)
