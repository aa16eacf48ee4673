"""What runs the network inside a ``Predictor``: PyTorch, or onnxruntime on an exported model.

A backend maps a padded, normalised batch (B, 3, Hp, Wp) float32 to the class logits (B, Q, K+1) and
the mask logits (B, Q, Hp/4, Wp/4). Pre- and post-processing stay in the Predictor, identical for
every backend. onnxruntime is imported only when its backend is built (an optional dependency).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from maskformer.errors import UserError

BACKENDS = ("torch", "onnxruntime")


class Backend(Protocol):
    """The network as a function; ``fixed_size`` is the (H, W) a static-shape model needs."""

    name: str
    fixed_size: tuple[int, int] | None

    def __call__(self, batch: Tensor) -> tuple[Tensor, Tensor]: ...


class TorchBackend:
    """An ``nn.Module`` on a device, optionally under autocast (``dtype`` other than float32)."""

    name = "torch"
    fixed_size = None

    def __init__(self, *, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.device, self.dtype = model, device, dtype

    def __call__(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            if self.dtype == torch.float32:
                out = self.model(batch.to(self.device))
            else:
                with torch.autocast(self.device.type, dtype=self.dtype):
                    out = self.model(batch.to(self.device))
        return out["pred_logits"], out["pred_masks"]


class OnnxRuntimeBackend:
    """An ``onnxruntime.InferenceSession`` on an exported model (``maskformer.deploy.export``)."""

    name = "onnxruntime"

    def __init__(self, *, session) -> None:  # session: onnxruntime.InferenceSession
        self.session = session
        (inp,) = session.get_inputs()
        self.input_name = inp.name
        h, w = inp.shape[2], inp.shape[3]
        self.fixed_size = (h, w) if isinstance(h, int) and isinstance(w, int) else None

    def __call__(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        if self.fixed_size is not None and tuple(batch.shape[-2:]) != self.fixed_size:
            raise UserError(
                f"this ONNX model was exported for {self.fixed_size[0]}x{self.fixed_size[1]} "
                f"inputs, got {batch.shape[-2]}x{batch.shape[-1]}; export it with --dynamic"
            )
        x = np.ascontiguousarray(batch.detach().cpu().float().numpy())
        logits, masks = self.session.run(None, {self.input_name: x})
        return torch.from_numpy(logits), torch.from_numpy(masks)


def check_backend(name: str) -> str:
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}")
    return name
