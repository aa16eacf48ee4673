"""The MaskFormer network (plain PyTorch + timm); ``build_model(cfg.model)`` is the entry point."""

from maskformer.model.maskformer import MaskFormer, TransformerPredictor, build_model

__all__ = ["MaskFormer", "TransformerPredictor", "build_model"]
