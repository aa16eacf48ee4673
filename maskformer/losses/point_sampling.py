"""Point sampling for the opt-in Mask2Former-style mask loss (PointRend uncertainty sampling)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(inputs: Tensor, point_coords: Tensor) -> Tensor:
    """Bilinearly sample maps at normalised points (``grid_sample``, align_corners=False).

    Coordinates are in [0, 1] x [0, 1] of the whole map, (x, y) order, so maps of different
    resolutions (stride-4 logits, full-size targets) are sampled at the same image locations.
    Outside the map (half a pixel at the border) values blend with zero padding, as in PointRend.

    Args:
        inputs: (M, C, H, W) maps.
        point_coords: (M, P, 2) points.

    Returns:
        (M, C, P) sampled values.
    """
    grid = 2.0 * point_coords[:, :, None, :] - 1.0  # (M, P, 1, 2) in [-1, 1]
    out = F.grid_sample(inputs, grid.to(inputs.dtype), align_corners=False)  # (M, C, P, 1)
    return out[..., 0]


def logit_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of a binary logit: -|x| (highest at the decision boundary)."""
    return -logits.abs()


@torch.no_grad()
def uncertain_point_coords(
    mask_logits: Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> Tensor:
    """Pick points: oversample at random, keep the most uncertain ones, add fresh random points.

    Args:
        mask_logits: (M, 1, H, W) coarse mask logits.
        num_points: P, points per mask.
        oversample_ratio: draw ``int(P * oversample_ratio)`` candidates (>= 1).
        importance_sample_ratio: the fraction of P chosen by uncertainty; the rest is uniform.

    Returns:
        (M, P, 2) coordinates in [0, 1].
    """
    num_masks, device = mask_logits.shape[0], mask_logits.device
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    if num_sampled < num_uncertain:
        raise ValueError(
            f"oversample_ratio={oversample_ratio} gives {num_sampled} candidates, fewer than the "
            f"{num_uncertain} uncertain points requested; use oversample_ratio >= 1"
        )
    candidates = torch.rand(num_masks, num_sampled, 2, device=device)  # (M, S, 2)
    uncertainty = logit_uncertainty(point_sample(mask_logits, candidates))[:, 0]  # (M, S)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (M, P_u)
    coords = candidates.gather(1, top[:, :, None].expand(-1, -1, 2))  # (M, P_u, 2)
    if num_random > 0:
        extra = torch.rand(num_masks, num_random, 2, device=device)  # (M, P_r, 2)
        coords = torch.cat([coords, extra], dim=1)  # (M, P, 2)
    return coords
