"""The MaskFormer network (plain PyTorch + timm); ``build_model(cfg.model)`` is the entry point."""

from maskformer.model.backbone import Backbone
from maskformer.model.maskformer import (
    MaskedAttentionPredictor,
    MaskFormer,
    TransformerPredictor,
    build_model,
)

__all__ = [
    "Backbone",
    "MaskFormer",
    "MaskedAttentionPredictor",
    "TransformerPredictor",
    "build_model",
]
