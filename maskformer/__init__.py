"""MaskFormer Studio engine: the paper's model in plain PyTorch + timm.

Public API (stable paths): ``Config``, ``get_preset``, ``build_model``, ``load_model``, ``save_checkpoint``,
``Predictor``, ``Prediction``.
"""

from maskformer.config import Config, DatasetMeta, get_preset

__all__ = [
    "Config",
    "DatasetMeta",
    "Prediction",
    "Predictor",
    "build_model",
    "get_preset",
    "load_model",
    "save_checkpoint",
]

_LAZY = {
    "build_model": "maskformer.model",
    "load_model": "maskformer.checkpoint",
    "save_checkpoint": "maskformer.checkpoint",
    "Predictor": "maskformer.inference",
    "Prediction": "maskformer.inference",
}


def __getattr__(name):
    # Lazy so that `import maskformer` (config only) stays cheap for the CLI and the app's start-up.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'maskformer' has no attribute {name!r}")
