"""The MaskFormer network: backbone -> pixel decoder -> transformer predictor -> logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskformer.config import ConfigError, ModelConfig
from maskformer.contracts import AuxOutput, MaskFormerOutput
from maskformer.model.backbone import RES_NAMES, build_backbone
from maskformer.model.pixel_decoder import build_pixel_decoder, c2_xavier_fill
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
        masked_attention: bool = False,
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
        # masked attention starts from learned query features (MaskFormer starts from zeros)
        self.query_feat = nn.Embedding(num_queries, hidden_dim) if masked_attention else None
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
        if self.query_feat is not None:
            return self._forward_masked(x, mask_features, aux)
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

    def _forward_masked(self, x: Tensor, mask_features: Tensor, aux: bool) -> MaskFormerOutput:
        """Mask2Former-style decoding: predict before the first layer and after each, each layer
        attending only inside the previous prediction's masks."""
        src = self.input_proj(x)
        b, _, h, w = src.shape
        memory = src.flatten(2).transpose(1, 2)  # (B, HW, D)
        pos = self.pe_layer(x).flatten(2).transpose(1, 2)
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        tgt = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
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


class MaskFormer(nn.Module):
    """Per-segment mask classification (Cheng et al. 2021). Input must be normalised and padded."""

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        predictor: TransformerPredictor,
        transformer_in_feature: str = "res5",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        self.transformer_in_feature = transformer_in_feature

    def forward(self, images: Tensor, *, aux: bool | None = None) -> MaskFormerOutput:
        """Predict class and mask logits; masks are at stride 4.

        Args:
            images: (B, 3, H, W) normalised and padded; any H, W.
            aux: return ``aux_outputs`` (needs deep supervision). Default: only in training mode,
                since inference never reads them and the extra masks cost ~8% of the FLOPs.

        Returns:
            ``pred_logits`` (B, Q, K+1), index K is "no object"; ``pred_masks`` (B, Q, ceil(H/4),
            ceil(W/4)) mask logits (apply sigmoid); ``aux_outputs``: the same for the first
            dec_layers - 1 decoder layers (with ``masked_attention`` also the prediction made
            before the first layer: dec_layers entries), or an empty list.
        """
        features = self.backbone(images)
        mask_features, encoder_features = self.pixel_decoder(features)
        if self.transformer_in_feature == "transformer_encoder":
            x = encoder_features
        elif self.transformer_in_feature == "pixel_embedding":
            x = mask_features
        else:
            x = features[self.transformer_in_feature]
        return self.predictor(x, mask_features, aux=self.training if aux is None else aux)


def build_model(cfg: ModelConfig) -> MaskFormer:
    """The network described by ``cfg`` (random init apart from ``cfg.pretrained`` backbones)."""
    if cfg.transformer_in_feature == "transformer_encoder" and cfg.enc_layers <= 0:
        raise ConfigError("transformer_in_feature='transformer_encoder' needs enc_layers > 0")
    if cfg.transformer_in_feature not in (*RES_NAMES, "transformer_encoder", "pixel_embedding"):
        raise ConfigError(
            f"transformer_in_feature must be a backbone feature (res2..res5, official default "
            f"res5), 'transformer_encoder' or 'pixel_embedding', got "
            f"{cfg.transformer_in_feature!r}"
        )
    backbone = build_backbone(cfg)
    pixel_decoder = build_pixel_decoder(
        in_channels=backbone.out_channels,
        conv_dim=cfg.conv_dim,
        mask_dim=cfg.mask_dim,
        norm=cfg.norm,
        enc_layers=cfg.enc_layers,
        num_heads=cfg.num_heads,
        dim_feedforward=cfg.dim_feedforward,
        dropout=cfg.dropout,
        pre_norm=cfg.pre_norm,
    )
    if cfg.transformer_in_feature == "transformer_encoder":
        in_channels = cfg.conv_dim
    elif cfg.transformer_in_feature == "pixel_embedding":  # the mask features themselves
        in_channels = cfg.mask_dim
    else:
        in_channels = backbone.out_channels[cfg.transformer_in_feature]
    predictor = TransformerPredictor(
        in_channels=in_channels,
        num_classes=cfg.num_classes,
        num_queries=cfg.num_queries,
        hidden_dim=cfg.hidden_dim,
        num_heads=cfg.num_heads,
        dim_feedforward=cfg.dim_feedforward,
        dec_layers=cfg.dec_layers,
        dropout=cfg.dropout,
        pre_norm=cfg.pre_norm,
        mask_dim=cfg.mask_dim,
        enforce_input_proj=cfg.enforce_input_proj,
        deep_supervision=cfg.deep_supervision,
        masked_attention=cfg.masked_attention,
    )
    return MaskFormer(
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        predictor=predictor,
        transformer_in_feature=cfg.transformer_in_feature,
    )
