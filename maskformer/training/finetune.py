"""Fine-tuning aids, all off by default: frozen parameter groups and distillation from the
``--init`` model on the classes it already knew (learning without forgetting).

``solver.freeze`` names parameter prefixes to keep fixed (``"backbone"``, ``"backbone,pixel_decoder"``):
they get no gradient and their norm layers keep their running statistics (eval mode).

``solver.distill_weight > 0`` runs the ``--init`` model (the teacher, frozen, in eval mode) on
every training batch and adds two losses that keep the student's answers on the teacher's own
classes: the KL divergence of each query's class distribution (the teacher's K_old classes and
"no object"; probability the student gives a new class counts as divergence) and the binary cross
entropy of each object query's mask against the teacher's soft mask. A query whose teacher mask
lies mostly on ground truth of a new class (the thing the teacher could not know) is left out, so
the new class is learnt from the labels alone. A student with more queries than the teacher
(``model.num_queries`` raised for the fine-tune: the extra queries start fresh) is distilled on
its first ones only; the extra queries are free to take the new classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskformer.contracts import Target

# A teacher query is left out of the distillation when more than this share of its mask lies on
# a new class's ground truth.
NEW_CLASS_OVERLAP = 0.5


def frozen_prefixes(spec: str) -> tuple[str, ...]:
    """``"backbone, pixel_decoder"`` -> ``("backbone", "pixel_decoder")``."""
    return tuple(p.strip() for p in spec.split(",") if p.strip())


def _is_frozen(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(model: nn.Module, prefixes: tuple[str, ...]) -> int:
    """Turn off the gradients of every parameter under ``prefixes``; returns how many tensors.

    Raises:
        ValueError: a prefix names no parameter (a typo would silently train everything).
    """
    names = [n for n, _ in model.named_parameters()]
    for p in prefixes:
        if not any(_is_frozen(n, (p,)) for n in names):
            raise ValueError(
                f"solver.freeze: no parameter of the model is under {p!r} "
                f"(top-level modules: {', '.join(sorted({n.split('.')[0] for n in names}))})"
            )
    count = 0
    for name, param in model.named_parameters():
        if _is_frozen(name, prefixes):
            param.requires_grad_(False)
            count += 1
    return count


def keep_frozen_in_eval(model: nn.Module, prefixes: tuple[str, ...]) -> None:
    """Put the modules under ``prefixes`` in eval mode (call after every ``model.train()``): their
    batch norms use, and keep, the running statistics they were loaded with."""
    if not prefixes:
        return
    for name, module in model.named_modules():
        if name and _is_frozen(name, prefixes):
            module.eval()


def new_class_fraction(teacher_masks: Tensor, targets: list[Target], old_classes: int) -> Tensor:
    """Share of each teacher query's predicted mask that lies on ground truth of a new class.

    Args:
        teacher_masks: (B, Q, h, w) mask logits.
        targets: B targets; labels >= ``old_classes`` are new.

    Returns:
        (B, Q) in [0, 1] (0 for an empty mask).
    """
    b, _, h, w = teacher_masks.shape
    new_gt = torch.zeros(b, 1, h, w, device=teacher_masks.device)
    for i, t in enumerate(targets):
        new = t["labels"] >= old_classes
        if new.any():
            union = t["masks"][new].float().amax(0)[None, None]  # (1, 1, H, W)
            union = F.pad(union, _pad_to(union, teacher_masks, 4))
            new_gt[i] = F.adaptive_avg_pool2d(union, (h, w))[0]
    fg = (teacher_masks > 0).float()  # (B, Q, h, w)
    area = fg.sum((2, 3))
    return (fg * new_gt).sum((2, 3)) / area.clamp(min=1.0)


def _pad_to(mask: Tensor, logits: Tensor, stride: int) -> tuple[int, int, int, int]:
    """Zero padding (left, right, top, bottom) bringing ``mask`` to ``stride`` x the logits' size."""
    h, w = logits.shape[-2] * stride, logits.shape[-1] * stride
    return (0, max(0, w - mask.shape[-1]), 0, max(0, h - mask.shape[-2]))


def distill_losses(
    student: dict, teacher: dict, targets: list[Target], old_classes: int
) -> dict[str, Tensor]:
    """Unweighted distillation losses over the final and every aux prediction.

    Args:
        student: model outputs with K_new + 1 class logits (new classes after the old ones).
        teacher: the ``--init`` model's outputs on the same images (K_old + 1 logits).
        targets: the batch's targets (to leave out queries on new-class ground truth).
        old_classes: K_old.

    Returns:
        ``loss_distill_ce`` and ``loss_distill_mask`` (means over the predictions).
    """
    pairs = [(student, teacher)] + list(
        zip(student.get("aux_outputs") or [], teacher.get("aux_outputs") or [])
    )
    q = teacher["pred_logits"].shape[1]  # the student may have more queries: the first q are old
    keep = (
        new_class_fraction(teacher["pred_masks"], targets, old_classes) <= NEW_CLASS_OVERLAP
    ).float()  # (B, Q)
    ce, mask = [], []
    for s, t in pairs:
        s = {"pred_logits": s["pred_logits"][:, :q], "pred_masks": s["pred_masks"][:, :q]}
        s_logp = F.log_softmax(s["pred_logits"].float(), -1)  # (B, Q, K_new + 1)
        s_old = torch.cat([s_logp[..., :old_classes], s_logp[..., -1:]], -1)  # (B, Q, K_old + 1)
        t_p = F.softmax(t["pred_logits"].float(), -1)
        kl = (t_p * (torch.log(t_p.clamp(min=1e-8)) - s_old)).sum(-1)  # (B, Q)
        ce.append((kl * keep).sum() / keep.sum().clamp(min=1.0))
        obj = keep * (t_p[..., -1] < 0.5).float()  # (B, Q) object queries of the teacher
        t_mask = torch.sigmoid(t["pred_masks"].float())
        # cross entropy minus the teacher's own entropy: 0 when the student's mask equals it
        bce = (
            F.binary_cross_entropy_with_logits(s["pred_masks"].float(), t_mask, reduction="none")
            - F.binary_cross_entropy(t_mask, t_mask, reduction="none")
        ).mean((2, 3))  # (B, Q)
        mask.append((bce * obj).sum() / obj.sum().clamp(min=1.0))
    return {
        "loss_distill_ce": torch.stack(ce).mean(),
        "loss_distill_mask": torch.stack(mask).mean(),
    }


class Teacher:
    """The ``--init`` model, frozen, answering under ``torch.no_grad`` in eval mode."""

    def __init__(self, model: nn.Module, old_classes: int):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.old_classes = old_classes

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict:
        return self.model(images)
