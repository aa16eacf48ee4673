"""A fine-tuned model that cannot forget: the base MaskFormer unchanged, plus an expert head for
the classes a fine-tune added.

Fine-tuning the whole network on a handful of corrected images costs the classes it knew a few
PQ even with replay and distillation, and even on clean in-distribution labels (docs/finetune.md).
An extension keeps the base network bit for bit and adds a second pixel decoder and transformer
predictor (the expert, trained by the fine-tune with the backbone frozen) on the same backbone
features, so the backbone runs once. At inference the two query sets are merged into one ordinary
MaskFormer output, (B, Qb + Qe, K + 1) class logits and (B, Qb + Qe, h, w) mask logits, which the
usual post-processing reads unchanged:

- base query: its K_old class probabilities and "no object" as the base model gives them, 0 for
  the new classes; but when a kept expert query covers more than ``expert_overlap`` of its mask
  (logit > 0) and that query's added-class probability plus ``expert_margin`` exceeds the base
  query's own class probability, all its mass moves to "no object" (the expert found a new-class
  object there, which the base model could only call an old class);
- expert query: kept when one new class has probability > ``expert_threshold``; it then carries
  its new-class probabilities and the rest as "no object", 0 for the old classes (the base model
  answers for those). An expert query not kept is "no object", and so is a duplicate: a kept
  expert query whose mask overlaps a surer kept expert query's with IoU > ``expert_duplicate``
  (an expert trained on a few images often puts two queries on one object; they would split its
  pixels in the panoptic merge and both be dropped for keeping too little of their masks).

The logits returned are log-probabilities (softmax gives the merged probabilities back). On an
image where the expert keeps no query the base model's predictions come out exactly, so the old
classes can only lose where the expert claims an object.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maskformer.contracts import MaskFormerOutput


class ExtendedMaskFormer(nn.Module):
    """``base`` (a MaskFormer of K_old classes) plus ``expert`` (a MaskFormer of K_old + K_added
    classes without a backbone, run on the base's backbone features). Inference only."""

    def __init__(
        self,
        base: nn.Module,
        expert: nn.Module,
        *,
        base_classes: int,
        threshold: float,
        overlap: float,
        margin: float,
        duplicate: float,
    ) -> None:
        super().__init__()
        self.base = base
        self.expert = expert
        self.base_classes = base_classes
        self.threshold = threshold
        self.overlap = overlap
        self.margin = margin
        self.duplicate = duplicate

    def forward(self, images: Tensor, *, aux: bool | None = None) -> MaskFormerOutput:
        """The merged predictions (see the module docstring); never ``aux_outputs``."""
        if self.training or aux:
            raise RuntimeError(
                "an extended model (base + expert head, made by the fine-tune) is for inference; "
                "train its base model or a new expert instead"
            )
        features = self.base.backbone(images)
        base = self.base.decode(features, aux=False)
        expert = self.expert.decode(features, aux=False)
        logits = merge_logits(
            base["pred_logits"],
            base["pred_masks"],
            expert["pred_logits"],
            expert["pred_masks"],
            self.base_classes,
            self.threshold,
            self.overlap,
            self.margin,
            self.duplicate,
        )
        masks = torch.cat([base["pred_masks"], expert["pred_masks"]], 1)
        return {"pred_logits": logits, "pred_masks": masks, "aux_outputs": []}


def merge_logits(
    base_logits: Tensor,
    base_masks: Tensor,
    expert_logits: Tensor,
    expert_masks: Tensor,
    base_classes: int,
    threshold: float,
    overlap: float,
    margin: float = 0.15,
    duplicate: float = 0.5,
) -> Tensor:
    """(B, Qb + Qe, K + 1) log-probabilities of the merged query set.

    Args:
        base_logits: (B, Qb, K_old + 1); base_masks: (B, Qb, h, w) logits.
        expert_logits: (B, Qe, K + 1), classes 0..K_old-1 old, K_old..K-1 added, K no object;
            expert_masks: (B, Qe, h, w) logits.
    """
    k_old = base_classes
    dtype = expert_logits.dtype
    pb = base_logits.float().softmax(-1)  # (B, Qb, K_old + 1)
    pe = expert_logits.float().softmax(-1)  # (B, Qe, K + 1)
    added = pe[..., k_old:-1]  # (B, Qe, K_added)
    score = added.amax(-1)  # (B, Qe)
    kept = score > threshold
    fe = (expert_masks > 0).flatten(2).float()  # (B, Qe, hw)
    kept = kept & ~_duplicates(fe, score, kept, duplicate)
    added = added * kept[..., None]
    # a base query gives way to a kept expert query that covers more than `overlap` of its mask
    # and whose added-class probability plus `margin` beats the base query's own class probability
    fb = (base_masks > 0).flatten(2).float()  # (B, Qb, hw)
    inter = fb @ fe.transpose(1, 2)  # (B, Qb, Qe)
    covers = inter > overlap * fb.sum(-1, keepdim=True).clamp(min=1)
    surer = score[:, None, :] + margin > pb[..., :k_old].amax(-1)[..., None]
    yields = (covers & surer & kept[:, None, :]).any(-1)  # (B, Qb)
    pb_old = pb[..., :k_old] * (~yields)[..., None]
    none_added = pb.new_zeros(*pb.shape[:2], added.shape[-1])  # the base never has them
    base_probs = torch.cat([pb_old, none_added, 1 - pb_old.sum(-1, True)], -1)
    expert_probs = torch.cat(
        [torch.zeros_like(pe[..., :k_old]), added, 1 - added.sum(-1, True)], -1
    )
    probs = torch.cat([base_probs, expert_probs], 1)
    return probs.clamp(min=1e-30).log().to(dtype)  # log(1e-30) = -69: in range in fp16 and bf16


def _duplicates(masks: Tensor, score: Tensor, kept: Tensor, iou: float) -> Tensor:
    """(B, Q) bool: kept queries whose mask overlaps a surer kept query's (earlier on a tie) by
    more than ``iou``, the "fast NMS" of YOLACT (Bolya et al., 2019): a matrix, no loop, so the
    ONNX export keeps it. masks: (B, Q, hw) 0/1; score, kept: (B, Q)."""
    inter = masks @ masks.transpose(1, 2)  # (B, Q, Q)
    area = masks.sum(-1)
    union = area[:, :, None] + area[:, None, :] - inter
    over = inter > iou * union.clamp(min=1)  # [b, i, j]: i and j overlap
    q = score.shape[-1]
    order = torch.arange(q, device=score.device)
    surer = (score[:, :, None] > score[:, None, :]) | (
        (score[:, :, None] == score[:, None, :]) & (order[:, None] < order[None, :])
    )  # [b, i, j]: i is surer than j
    return (over & surer & kept[:, :, None] & kept[:, None, :]).any(1)
