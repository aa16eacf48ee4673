"""MaskFormer's transformer predictor: Q learned queries decoded against one feature map into
class and mask logits per decoder layer (DETR-style, queries start from zeros)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskformer.contracts import AuxOutput, MaskFormerOutput
from maskformer.model.pixel_decoder import c2_xavier_fill
from maskformer.model.position_encoding import PositionEmbeddingSine
from maskformer.model.transformer_decoder import Transformer


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (keys ``layers.{i}``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class TransformerPredictor(nn.Module):
    """Q learned queries decoded against one feature map; class and mask logits per layer."""

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        num_queries: int,
        hidden_dim: int,
        num_heads: int,
        dim_feedforward: int,
        dec_layers: int,
        dropout: float,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_proj: bool,
        deep_supervision: bool,
    ) -> None:
        super().__init__()
        self.deep_supervision = deep_supervision
        self.num_heads = num_heads
        self.pe_layer = PositionEmbeddingSine(num_pos_feats=hidden_dim // 2, normalize=True)
        self.transformer = Transformer(
            d_model=hidden_dim,
            num_heads=num_heads,
            dec_layers=dec_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            pre_norm=pre_norm,
        )
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        if in_channels != hidden_dim or enforce_input_proj:
            self.input_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
            c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Identity()
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def forward(self, x: Tensor, mask_features: Tensor, aux: bool = True) -> MaskFormerOutput:
        """Args: x (B, C, h, w) predictor input; mask_features (B, mask_dim, H/4, W/4);
        aux: also return the earlier layers' predictions (only with deep supervision)."""
        pos = self.pe_layer(x)  # (B, D, h, w), computed on the pre-projection map
        hs = self.transformer(
            self.input_proj(x),
            pos,
            self.query_embed.weight,
            return_intermediate=self.deep_supervision and aux,
        )  # (L or 1, B, Q, D), every layer's output through the shared final norm
        class_logits = self.class_embed(hs)  # (L, B, Q, K+1)
        mask_embed = self.mask_embed(hs)  # (L, B, Q, mask_dim)
        mask_logits = torch.einsum("lbqc,bchw->lbqhw", mask_embed, mask_features)  # (L,B,Q,H/4,W/4)
        aux_outputs: list[AuxOutput] = [
            {"pred_logits": class_logits[i], "pred_masks": mask_logits[i]}
            for i in range(hs.shape[0] - 1)
        ]
        return {
            "pred_logits": class_logits[-1],
            "pred_masks": mask_logits[-1],
            "aux_outputs": aux_outputs,
        }
