"""The MaskFormer network: backbone -> pixel decoder -> transformer predictor -> logits."""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from maskformer.config import ConfigError, ModelConfig
from maskformer.contracts import MaskFormerOutput
from maskformer.model.backbone import RES_NAMES, build_backbone
from maskformer.model.extension import ExtendedMaskFormer
from maskformer.model.masked_attention import MaskedAttentionPredictor
from maskformer.model.pixel_decoder import build_pixel_decoder
from maskformer.model.predictor import TransformerPredictor

__all__ = ["MaskFormer", "MaskedAttentionPredictor", "TransformerPredictor", "build_model"]


class MaskFormer(nn.Module):
    """Per-segment mask classification (Cheng et al. 2021). Input must be normalised and padded.

    ``backbone`` None: the heads only, run on given features through ``decode`` (the expert of an
    extended model, ``maskformer.model.extension``).
    """

    def __init__(
        self,
        *,
        backbone: nn.Module | None,
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
        return self.decode(self.backbone(images), aux=self.training if aux is None else aux)

    def decode(self, features: dict[str, Tensor], *, aux: bool) -> MaskFormerOutput:
        """Pixel decoder then transformer predictor on backbone ``features`` (res2..res5)."""
        mask_features, encoder_features = self.pixel_decoder(features)
        if self.transformer_in_feature == "transformer_encoder":
            x = encoder_features
        elif self.transformer_in_feature == "pixel_embedding":
            x = mask_features
        else:
            x = features[self.transformer_in_feature]
        return self.predictor(x, mask_features, aux=aux)


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network described by ``cfg`` (random init apart from ``cfg.pretrained`` backbones).

    ``cfg.base_classes > 0`` describes a fine-tune's extension (``maskformer.model.extension``):
    a MaskFormer of the first ``base_classes`` classes and an expert head for the rest.
    """
    if cfg.base_classes > 0:
        return build_extension(cfg)
    backbone = build_backbone(cfg)
    pixel_decoder, predictor = build_head(cfg, backbone.out_channels)
    return MaskFormer(
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        predictor=predictor,
        transformer_in_feature=cfg.transformer_in_feature,
    )


def _check_in_feature(cfg: ModelConfig) -> None:
    if cfg.transformer_in_feature == "transformer_encoder" and cfg.enc_layers <= 0:
        raise ConfigError("transformer_in_feature='transformer_encoder' needs enc_layers > 0")
    if cfg.transformer_in_feature not in (*RES_NAMES, "transformer_encoder", "pixel_embedding"):
        raise ConfigError(
            f"transformer_in_feature must be a backbone feature (res2..res5, official default "
            f"res5), 'transformer_encoder' or 'pixel_embedding', got "
            f"{cfg.transformer_in_feature!r}"
        )


def build_head(cfg: ModelConfig, in_channels: dict[str, int]) -> tuple[nn.Module, nn.Module]:
    """The pixel decoder and transformer predictor for backbone features of ``in_channels``."""
    _check_in_feature(cfg)
    pixel_decoder = build_pixel_decoder(
        in_channels=in_channels,
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
        in_dim = cfg.conv_dim
    elif cfg.transformer_in_feature == "pixel_embedding":  # the mask features themselves
        in_dim = cfg.mask_dim
    else:
        in_dim = in_channels[cfg.transformer_in_feature]
    predictor_cls = MaskedAttentionPredictor if cfg.masked_attention else TransformerPredictor
    predictor = predictor_cls(
        in_channels=in_dim,
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
    )
    return pixel_decoder, predictor


def build_extension(cfg: ModelConfig) -> ExtendedMaskFormer:
    """An extended model of ``cfg.num_classes`` classes over a base of ``cfg.base_classes``: the
    base MaskFormer and an expert (a MaskFormer without a backbone of its own) on its features."""
    if not 0 < cfg.base_classes < cfg.num_classes:
        raise ConfigError(
            f"model.base_classes must be between 1 and num_classes - 1 ({cfg.num_classes - 1}), "
            f"got {cfg.base_classes}"
        )
    base = build_model(replace(cfg, num_classes=cfg.base_classes, base_classes=0))
    pixel_decoder, predictor = build_head(replace(cfg, base_classes=0), base.backbone.out_channels)
    expert = MaskFormer(
        backbone=None,
        pixel_decoder=pixel_decoder,
        predictor=predictor,
        transformer_in_feature=cfg.transformer_in_feature,
    )
    return ExtendedMaskFormer(
        base,
        expert,
        base_classes=cfg.base_classes,
        threshold=cfg.expert_threshold,
        overlap=cfg.expert_overlap,
        margin=cfg.expert_margin,
        duplicate=cfg.expert_duplicate,
    )
