"""SetCriterion: unweighted MaskFormer losses (CE, focal, dice) for every decoder output."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from maskformer.config import Config
from maskformer.contracts import AuxOutput, MaskFormerOutput, Target
from maskformer.losses.functional import mask_losses, resize_bilinear
from maskformer.losses.matcher import HungarianMatcher, MatchIndices
from maskformer.losses.point_sampling import point_sample, uncertain_point_coords


class SetCriterion(nn.Module):
    """Matches predictions to targets, then supervises classes (CE) and masks (focal + dice).

    Returns *unweighted* losses; the training loop weights them (``weighted_total``).
    Mask losses run at the padded target resolution (predictions upsampled bilinearly); padded and
    ignored pixels are simply background for every mask, as in the official code.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        *,
        no_object_weight: float = 0.1,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        point_sampled: bool = False,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ):
        """
        Args:
            num_classes: K real classes; logit column K is "no object".
            matcher: the assignment, run separately on the final and on each aux output.
            no_object_weight: CE weight of class K (all other classes weigh 1).
            focal_alpha, focal_gamma: focal loss parameters.
            point_sampled: opt-in Mask2Former-style loss on ``num_points`` points per mask
                (``importance_sample_ratio`` of them the most uncertain of
                ``num_points * oversample_ratio`` random candidates, the rest uniform) instead of
                every pixel of the padded image. Off by default (the official MaskFormer loss).
        """
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.point_sampled = point_sampled
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[num_classes] = no_object_weight
        self.register_buffer("empty_weight", empty_weight)

    def forward(self, outputs: MaskFormerOutput, targets: list[Target]) -> dict[str, Tensor]:
        """Compute the losses.

        Args:
            outputs: ``pred_logits`` (B, Q, K+1), ``pred_masks`` (B, Q, h, w) and ``aux_outputs``
                (L-1 dicts of the same two keys, possibly empty or missing).
            targets: B dicts with ``labels`` (N,) int64 and ``masks`` (N, H, W) bool/float at the
                padded input size (smaller ones are zero-padded bottom/right to the largest).

        Returns:
            ``loss_ce``, ``loss_mask``, ``loss_dice`` and ``loss_ce_i``, ``loss_mask_i``,
            ``loss_dice_i`` for each aux output i = 0..L-2; scalar tensors, unweighted.
        """
        num_masks = self.num_masks(targets, outputs["pred_logits"].device)
        # float once here (the mask losses run in float32), not once per decoder layer
        target_masks = [m.float() for m in _padded_target_masks(targets)]
        losses = self.layer_losses(outputs, targets, target_masks, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            aux_losses = self.layer_losses(aux, targets, target_masks, num_masks)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def layer_losses(
        self,
        outputs: MaskFormerOutput | AuxOutput,
        targets: list[Target],
        target_masks: list[Tensor],
        num_masks: float,
    ) -> dict[str, Tensor]:
        """Match one decoder layer's output and compute its three losses."""
        indices = self.matcher(outputs, targets)
        return {
            "loss_ce": self.loss_labels(outputs["pred_logits"], targets, indices),
            **self.loss_masks(outputs["pred_masks"], target_masks, indices, num_masks),
        }

    def loss_labels(
        self, pred_logits: Tensor, targets: list[Target], indices: MatchIndices
    ) -> Tensor:
        """Weighted-mean CE over all B*Q queries; unmatched queries are "no object" (class K)."""
        batch_size, num_queries = pred_logits.shape[:2]
        target_classes = torch.full(
            (batch_size, num_queries),
            self.num_classes,
            dtype=torch.int64,
            device=pred_logits.device,
        )  # (B, Q)
        batch_idx, pred_idx = _prediction_index(indices)
        matched_labels = [t["labels"][j] for t, (_, j) in zip(targets, indices)]
        target_classes[batch_idx, pred_idx] = torch.cat(matched_labels).to(pred_logits.device)
        logits = pred_logits.float().transpose(1, 2)  # (B, K+1, Q)
        return F.cross_entropy(logits, target_classes, weight=self.empty_weight)

    def loss_masks(
        self,
        pred_masks: Tensor,
        target_masks: list[Tensor],
        indices: MatchIndices,
        num_masks: float,
    ) -> dict[str, Tensor]:
        """Focal and dice losses of the M matched pairs, each summed over pairs / num_masks."""
        batch_idx, pred_idx = _prediction_index(indices)
        src = pred_masks[batch_idx.to(pred_masks.device), pred_idx.to(pred_masks.device)]  # (M,h,w)
        src = src.float()[:, None]  # (M, 1, h, w)
        tgt = torch.cat([m[j] for m, (_, j) in zip(target_masks, indices)])  # (M, H, W)
        tgt = tgt.to(device=src.device, dtype=src.dtype)[:, None]  # (M, 1, H, W)
        if self.point_sampled:
            coords = uncertain_point_coords(
                src, self.num_points, self.oversample_ratio, self.importance_sample_ratio
            )  # (M, P, 2)
            tgt_flat = point_sample(tgt, coords)[:, 0]  # (M, P)
            src_flat = point_sample(src, coords)[:, 0]  # (M, P)
        else:
            src = resize_bilinear(src, tgt.shape[-2:])  # F.interpolate bilinear, faster backward
            src_flat, tgt_flat = src.flatten(1), tgt.flatten(1)  # (M, H*W)
        focal, dice = mask_losses(
            src_flat, tgt_flat, num_masks, alpha=self.focal_alpha, gamma=self.focal_gamma
        )
        return {"loss_mask": focal, "loss_dice": dice}

    @staticmethod
    def num_masks(targets: list[Target], device: torch.device) -> float:
        """Total GT masks in the batch, averaged over processes when distributed, at least 1."""
        total = torch.as_tensor(
            float(sum(len(t["labels"]) for t in targets)), dtype=torch.float, device=device
        )
        world_size = 1
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
            world_size = dist.get_world_size()
        return torch.clamp(total / world_size, min=1).item()


def _prediction_index(indices: MatchIndices) -> tuple[Tensor, Tensor]:
    """Flatten per-image matches into (batch index, query index), each (M,)."""
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
    pred_idx = torch.cat([src for src, _ in indices])
    return batch_idx, pred_idx


def _padded_target_masks(targets: list[Target]) -> list[Tensor]:
    """Each image's (N, H, W) masks zero-padded bottom/right to the largest H, W in the batch."""
    height = max(t["masks"].shape[-2] for t in targets)
    width = max(t["masks"].shape[-1] for t in targets)
    out = []
    for t in targets:
        masks = t["masks"]
        pad_h, pad_w = height - masks.shape[-2], width - masks.shape[-1]
        if pad_h or pad_w:
            padded = masks.new_zeros((masks.shape[0], height, width))  # (N, H, W)
            padded[:, : masks.shape[-2], : masks.shape[-1]] = masks
            masks = padded
        out.append(masks)
    return out


def build_criterion(cfg: Config) -> SetCriterion:
    """The official matcher and criterion from ``cfg.model.num_classes`` and ``cfg.solver``.

    The matching costs follow the loss weights. MaskFormer has no class loss weight (its CE weighs 1
    and so does its class cost), so at the default ``class_weight=1`` this is the official matcher;
    a preset that raises ``class_weight`` raises the class cost with it, as Mask2Former does.
    """
    solver = cfg.solver
    matcher = HungarianMatcher(
        cost_class=solver.class_weight, cost_mask=solver.mask_weight, cost_dice=solver.dice_weight
    )
    return SetCriterion(
        cfg.model.num_classes,
        matcher,
        no_object_weight=solver.no_object_weight,
        point_sampled=solver.point_sampled_loss,
        num_points=solver.num_points,
        oversample_ratio=solver.oversample_ratio,
        importance_sample_ratio=solver.importance_sample_ratio,
    )
