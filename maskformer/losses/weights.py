"""Loss weights per key and the weighted total the training loop back-propagates."""

from __future__ import annotations

import torch
from torch import Tensor

from maskformer.config import SolverConfig


def default_loss_weights(solver_cfg: SolverConfig, num_layers: int) -> dict[str, float]:
    """The official weight dict: CE / mask / dice weights for the final and every aux layer.

    Args:
        solver_cfg: supplies ``class_weight`` (1), ``mask_weight`` (20) and ``dice_weight`` (1).
        num_layers: predictions L (the decoder layers, plus one with masked attention); aux keys
            get suffixes ``_0`` .. ``_{L-2}``.

    Returns:
        ``{"loss_ce": 1.0, "loss_mask": 20.0, "loss_dice": 1.0, "loss_ce_0": 1.0, ...}``.
    """
    base = {
        "loss_ce": solver_cfg.class_weight,
        "loss_mask": solver_cfg.mask_weight,
        "loss_dice": solver_cfg.dice_weight,
    }
    weights = dict(base)
    for i in range(num_layers - 1):
        weights.update({f"{k}_{i}": w for k, w in base.items()})
    return weights


def weighted_total(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """Sum of ``weights[k] * losses[k]``; keys without a weight are dropped (as officially).

    Raises:
        ValueError: when no loss key has a weight (almost surely a naming mismatch).
    """
    terms = [losses[k] * weights[k] for k in losses if k in weights]
    if not terms:
        raise ValueError(
            f"weighted_total: none of the loss keys {sorted(losses)} "
            f"has a weight in {sorted(weights)}"
        )
    return torch.stack(terms).sum()
