"""Mask losses and pairwise matching costs: sigmoid focal, dice, class cost (official formulas)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def sigmoid_focal_loss(
    mask_logits: Tensor,
    target_masks: Tensor,
    num_masks: float | Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Focal loss of M matched mask pairs: mean over pixels, summed over pairs, / num_masks.

    Args:
        mask_logits: (M, P) logits of the matched predictions (P pixels or sampled points).
        target_masks: (M, P) float targets in [0, 1].
        num_masks: the normaliser (total GT masks in the batch, averaged over processes).
        alpha: weight of the positive pixels; a negative value disables the alpha term.
        gamma: exponent of the modulating factor (1 - p_t).

    Returns:
        Scalar loss.
    """
    probs = mask_logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(mask_logits, target_masks, reduction="none")
    p_t = probs * target_masks + (1 - probs) * (1 - target_masks)
    loss = bce * (1 - p_t) ** gamma  # (M, P)
    if alpha >= 0:
        loss = (alpha * target_masks + (1 - alpha) * (1 - target_masks)) * loss
    return loss.mean(1).sum() / num_masks


def dice_loss(mask_logits: Tensor, target_masks: Tensor, num_masks: float | Tensor) -> Tensor:
    """Dice loss with +1 smoothing, summed over M matched pairs, / num_masks.

    Args:
        mask_logits: (M, P) logits.
        target_masks: (M, P) float targets in [0, 1].
        num_masks: the normaliser.

    Returns:
        Scalar loss.
    """
    probs = mask_logits.sigmoid()
    numerator = 2 * (probs * target_masks).sum(-1)  # (M,)
    denominator = probs.sum(-1) + target_masks.sum(-1)  # (M,)
    loss = 1 - (numerator + 1) / (denominator + 1)
    return loss.sum() / num_masks


def pairwise_focal_cost(
    mask_logits: Tensor, target_masks: Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Focal loss of every (prediction, target) pair, averaged over pixels, as matrix products.

    Args:
        mask_logits: (Q, P) logits.
        target_masks: (N, P) float targets in {0, 1}.

    Returns:
        (Q, N) cost matrix.
    """
    num_pixels = mask_logits.shape[1]
    probs = mask_logits.sigmoid()
    # BCE(x, 1) = softplus(-x) and BCE(x, 0) = softplus(x), numerically stable.
    focal_pos = (1 - probs) ** gamma * F.softplus(-mask_logits)  # (Q, P)
    focal_neg = probs**gamma * F.softplus(mask_logits)  # (Q, P)
    if alpha >= 0:
        focal_pos = focal_pos * alpha
        focal_neg = focal_neg * (1 - alpha)
    cost = focal_pos @ target_masks.T + focal_neg @ (1 - target_masks).T  # (Q, N)
    return cost / num_pixels


def pairwise_dice_cost(mask_logits: Tensor, target_masks: Tensor) -> Tensor:
    """Dice loss (+1 smoothing) of every (prediction, target) pair.

    Args:
        mask_logits: (Q, P) logits.
        target_masks: (N, P) float targets.

    Returns:
        (Q, N) cost matrix.
    """
    probs = mask_logits.sigmoid()
    numerator = 2 * probs @ target_masks.T  # (Q, N)
    denominator = probs.sum(-1)[:, None] + target_masks.sum(-1)[None, :]  # (Q, N)
    return 1 - (numerator + 1) / (denominator + 1)


def pairwise_class_cost(class_logits: Tensor, labels: Tensor) -> Tensor:
    """Minus the softmax probability of each target's class (the official stand-in for the NLL).

    Args:
        class_logits: (Q, K+1) logits; column K is "no object".
        labels: (N,) int64 class ids in 0..K-1.

    Returns:
        (Q, N) cost matrix.
    """
    return -class_logits.softmax(-1)[:, labels]
