"""HungarianMatcher: one-to-one assignment of queries to ground-truth masks, per image."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from maskformer.contracts import AuxOutput, MaskFormerOutput, Target
from maskformer.losses.functional import (
    pairwise_class_cost,
    pairwise_dice_cost,
    pairwise_focal_cost,
)

MatchIndices = list[tuple[Tensor, Tensor]]


class HungarianMatcher(nn.Module):
    """Matches the Q predictions of each image to its N targets by minimum total cost.

    Cost = cost_mask * focal + cost_class * (-p(class)) + cost_dice * dice, with the focal and dice
    terms computed at the prediction resolution (stride 4) against nearest-downsampled GT masks.
    Only the (Q, N) matrix goes to ``scipy.optimize.linear_sum_assignment``.
    """

    def __init__(
        self,
        *,
        cost_class: float = 1.0,
        cost_mask: float = 20.0,
        cost_dice: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ):
        super().__init__()
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_mask and cost_dice are all 0")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def forward(self, outputs: MaskFormerOutput | AuxOutput, targets: list[Target]) -> MatchIndices:
        """Match every image of the batch.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1) and ``pred_masks`` (B, Q, h, w) logits.
            targets: B dicts with ``labels`` (N,) int64 and ``masks`` (N, H, W) bool/float.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors of length min(Q, N);
            prediction ``pred_idx[i]`` is assigned to target ``tgt_idx[i]``.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        if len(targets) != pred_logits.shape[0]:
            raise ValueError(
                f"HungarianMatcher: {pred_logits.shape[0]} images in the batch "
                f"but {len(targets)} targets"
            )
        return [
            self.match_image(pred_logits[b], pred_masks[b], targets[b], image_index=b)
            for b in range(len(targets))
        ]

    def cost_matrix(self, class_logits: Tensor, mask_logits: Tensor, target: Target) -> Tensor:
        """The (Q, N) matching cost of one image (float32, on the predictions' device).

        Args:
            class_logits: (Q, K+1) logits.
            mask_logits: (Q, h, w) logits.
            target: ``labels`` (N,), ``masks`` (N, H, W).
        """
        labels = target["labels"].to(class_logits.device)
        masks = target["masks"].to(device=mask_logits.device, dtype=torch.float32)
        _check_labels(labels, class_logits.shape[-1] - 1)
        # GT masks go down to the prediction size (nearest), not the predictions up: saves memory.
        masks = F.interpolate(masks[:, None], size=mask_logits.shape[-2:], mode="nearest")
        target_flat = masks[:, 0].flatten(1)  # (N, h*w)
        logits_flat = mask_logits.float().flatten(1)  # (Q, h*w)
        cost_class = pairwise_class_cost(class_logits.float(), labels)  # (Q, N)
        cost_focal = pairwise_focal_cost(
            logits_flat, target_flat, alpha=self.focal_alpha, gamma=self.focal_gamma
        )  # (Q, N)
        cost_dice = pairwise_dice_cost(logits_flat, target_flat)  # (Q, N)
        return (
            self.cost_mask * cost_focal + self.cost_class * cost_class + self.cost_dice * cost_dice
        )

    def match_image(
        self, class_logits: Tensor, mask_logits: Tensor, target: Target, image_index: int = 0
    ) -> tuple[Tensor, Tensor]:
        """Assignment for one image; see ``forward``. N = 0 gives two empty tensors."""
        num_targets = target["labels"].shape[0]
        if target["masks"].shape[0] != num_targets:
            raise ValueError(
                f"HungarianMatcher: image {image_index} has {num_targets} labels "
                f"but {target['masks'].shape[0]} masks"
            )
        if num_targets == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return empty, empty.clone()
        cost = self.cost_matrix(class_logits, mask_logits, target).cpu()  # (Q, N)
        if not torch.isfinite(cost).all():
            raise FloatingPointError(
                f"HungarianMatcher: the cost matrix of image {image_index} has NaN/inf entries "
                f"(class logits finite: {bool(torch.isfinite(class_logits).all())}, mask logits "
                f"finite: {bool(torch.isfinite(mask_logits).all())}); "
                "training has probably diverged"
            )
        pred_idx, tgt_idx = linear_sum_assignment(cost.numpy())
        return torch.as_tensor(pred_idx, dtype=torch.int64), torch.as_tensor(
            tgt_idx, dtype=torch.int64
        )

    def extra_repr(self) -> str:
        return (
            f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, cost_dice={self.cost_dice}"
        )


def _check_labels(labels: Tensor, num_classes: int) -> None:
    """Labels must be real classes 0..K-1 (K is "no object" and never a target)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"target labels must lie in 0..{num_classes - 1} (K={num_classes}), "
            f"got min {int(labels.min())}, max {int(labels.max())}"
        )
