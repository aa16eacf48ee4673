"""Sine positional encoding of a feature map (DETR's ``PositionEmbeddingSine``, no padding mask)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class PositionEmbeddingSine(nn.Module):
    """2-D sine/cosine encoding; the first half of the channels encodes y, the second half x.

    No padding mask is used (as in the official MaskFormer), so positions are normalised by the
    padded feature size.
    """

    def __init__(
        self,
        *,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """Encode the positions of ``x``'s grid.

        Args:
            x: (B, C, H, W) features; only the shape, device and dtype are used.

        Returns:
            (B, 2 * num_pos_feats, H, W) encoding in ``x``'s dtype.
        """
        b, _, h, w = x.shape
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        y_embed = torch.arange(1, h + 1, device=x.device, dtype=dtype)  # (H,)
        x_embed = torch.arange(1, w + 1, device=x.device, dtype=dtype)  # (W,)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (h + eps) * self.scale
            x_embed = x_embed / (w + eps) * self.scale
        k = torch.arange(self.num_pos_feats, device=x.device, dtype=dtype)
        dim_t = self.temperature ** (
            2 * torch.div(k, 2, rounding_mode="floor") / self.num_pos_feats
        )
        pos_y = _interleave_sin_cos(y_embed[:, None] / dim_t)  # (H, F)
        pos_x = _interleave_sin_cos(x_embed[:, None] / dim_t)  # (W, F)
        pos = torch.cat(
            [
                pos_y[:, None, :].expand(h, w, -1),
                pos_x[None, :, :].expand(h, w, -1),
            ],
            dim=-1,
        )  # (H, W, 2F)
        pos = pos.permute(2, 0, 1).unsqueeze(0).expand(b, -1, -1, -1)  # (B, 2F, H, W)
        return pos.to(x.dtype)


def _interleave_sin_cos(t: Tensor) -> Tensor:
    """(N, F) angles -> (N, F) with sin on even and cos on odd channels."""
    return torch.stack([t[:, 0::2].sin(), t[:, 1::2].cos()], dim=-1).flatten(1)
