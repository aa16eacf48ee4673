"""Mask2Former's masked attention as a predictor of its own (opt-in: ``model.masked_attention``).

Not part of MaskFormer: the shipped demo model uses it. Learned query features, a prediction made
before the first decoder layer, and each layer's cross-attention limited to the foreground
(sigmoid > 0.5) of the previous prediction's masks. Same parameters as ``TransformerPredictor``
plus ``query_feat``, so checkpoints keep their keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskformer.contracts import MaskFormerOutput
from maskformer.model.predictor import TransformerPredictor


class MaskedAttentionPredictor(TransformerPredictor):
    """Decodes as Mask2Former: predict before the first layer and after each, each layer attending
    only inside the previous prediction's masks."""

    def __init__(self, *, num_queries: int, hidden_dim: int, **kwargs) -> None:
        super().__init__(num_queries=num_queries, hidden_dim=hidden_dim, **kwargs)
        # learned query features (MaskFormer's decoder starts from zeros)
        self.query_feat = nn.Embedding(num_queries, hidden_dim)

    def forward(self, x: Tensor, mask_features: Tensor, aux: bool = True) -> MaskFormerOutput:
        """Args: x (B, C, h, w) predictor input; mask_features (B, mask_dim, H/4, W/4);
        aux: also return the earlier predictions (only with deep supervision): dec_layers entries,
        the one made before the first layer included."""
        src = self.input_proj(x)
        b, _, h, w = src.shape
        memory = src.flatten(2).transpose(1, 2)  # (B, hw, D)
        pos = self.pe_layer(x).flatten(2).transpose(1, 2)  # (B, hw, D)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)  # (B, Q, D)
        tgt = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)  # (B, Q, D)
        preds = [self._predict(tgt, mask_features)]
        for layer in self.transformer.decoder.layers:
            attn_mask = self._attention_mask(preds[-1][1], (h, w))
            tgt = layer(tgt, memory, pos, query_pos, memory_mask=attn_mask)
            preds.append(self._predict(tgt, mask_features))
        keep_aux = self.deep_supervision and aux
        return {
            "pred_logits": preds[-1][0],
            "pred_masks": preds[-1][1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in preds[:-1]]
            if keep_aux
            else [],
        }

    def _predict(self, tgt: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """Class and mask logits of decoder states (B, Q, D), through the shared final norm."""
        hs = self.transformer.decoder.norm(tgt)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(hs), mask_features)
        return self.class_embed(hs), masks

    def _attention_mask(self, mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
        """(B * heads, Q, h * w) True outside each query's predicted mask (sigmoid < 0.5); a query
        whose mask is empty attends everywhere (as Mask2Former)."""
        with torch.no_grad():
            if mask_logits.shape[-2:] != size:
                mask_logits = F.interpolate(mask_logits, size=size, mode="bilinear")
            blocked = mask_logits.flatten(2) < 0  # sigmoid(x) < 0.5
            blocked = blocked & ~blocked.all(-1, keepdim=True)  # not in place: exports to ONNX
            return blocked.repeat_interleave(self.num_heads, dim=0)
