"""Training: the loop (``train``), the official optimiser and schedules, DDP helpers, resume state.

``train(cfg, TrainOptions(train=..., out=...))`` is what ``python -m maskformer train`` runs.
Imported lazily so that ``maskformer.training.optim`` does not pull in the whole loop.
"""

__all__ = ["NonFiniteLossError", "TrainOptions", "build_optimizer", "lr_at", "train"]

_LAZY = {
    "TrainOptions": "maskformer.training.loop",
    "train": "maskformer.training.loop",
    "build_optimizer": "maskformer.training.optim",
    "lr_at": "maskformer.training.optim",
    "NonFiniteLossError": "maskformer.training.trainer",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'maskformer.training' has no attribute {name!r}")
