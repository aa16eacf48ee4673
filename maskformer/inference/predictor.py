"""Stateless Predictor: image in, ``Prediction`` (class logits + the network's mask logits) out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from maskformer.config import Config, DatasetMeta
from maskformer.errors import CheckpointError, UserError
from maskformer.image_io import ImageSource, load_image
from maskformer.inference.prediction import Prediction

_DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class Predictor:
    """Runs a MaskFormer on images. Holds only the model and its config: safe to share across threads.

    Args:
        checkpoint: a native checkpoint path, a ``(model, cfg, meta)`` tuple, or a model carrying
            ``.cfg`` and ``.meta`` (what ``maskformer.checkpoint.load_model`` returns).
        device: "cpu", "cuda", ...; default CUDA when available.
        dtype: None / float32, or bfloat16 / float16 (also "bf16", "fp16") for autocast.
        channels_last: Put the weights in NHWC layout (a passed-in model is moved, as by
            ``device``): the R50 forward 11-13 % faster in fp32, 19-25 % in bf16 on CPU (512 px),
            but oneDNN's NHWC kernels round differently with the thread count, so outputs are
            no longer bit-identical across machines and processes; off by default.
    """

    def __init__(
        self,
        checkpoint: str | Path | tuple | nn.Module,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        channels_last: bool = False,
    ) -> None:
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError as e:
            raise UserError(f"unknown device {device!r} ({e})") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise UserError(
                f"device {device!r} asked for, but CUDA is not available here; use --device cpu"
            )
        self.dtype = _parse_dtype(dtype)
        model, self.cfg, self.meta = _resolve(checkpoint, self.device)
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.meta.num_classes != self.cfg.model.num_classes:
            raise CheckpointError(
                f"the metadata names {self.meta.num_classes} classes but the "
                f"model predicts {self.cfg.model.num_classes}"
            )

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: Any) -> Predictor:
        """A Predictor on a checkpoint file; ``kwargs`` as for the constructor."""
        return cls(path, **kwargs)

    @property
    def semantic_before_inference(self) -> bool:
        """Official rule: mask logits are resized before semantic inference iff panoptic is on."""
        return self.cfg.test.panoptic_on

    def preprocess(self, image: ImageSource) -> tuple[np.ndarray, Tensor]:
        """Read, resize (shortest edge, as detectron2) and normalise one image.

        Returns:
            The original (H0, W0, 3) uint8 image and the (3, Hi, Wi) float32 network input.
        """
        rgb = load_image(image)
        h0, w0 = rgb.shape[:2]
        hi, wi = resize_shortest_edge_shape(
            h0, w0, self.cfg.input.min_size_test, self.cfg.input.max_size_test
        )
        resized = rgb
        if (hi, wi) != (h0, w0):  # detectron2 resizes uint8 images with PIL, bilinear
            resized = np.asarray(Image.fromarray(rgb).resize((wi, hi), Image.BILINEAR))
        x = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float()  # (3, Hi, Wi)
        mean = torch.tensor(self.cfg.input.pixel_mean).view(3, 1, 1)
        std = torch.tensor(self.cfg.input.pixel_std).view(3, 1, 1)
        return rgb, (x - mean) / std

    def predict(self, image: ImageSource) -> Prediction:
        """One image (path, bytes, PIL image or array) -> Prediction at its original size."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageSource]) -> list[Prediction]:
        """Several images in one forward pass, padded (bottom/right, zeros) to the batch maximum."""
        if len(images) == 0:
            return []
        prepared = [self.preprocess(im) for im in images]
        batch = pad_batch([x for _, x in prepared], self.cfg.model.size_divisibility)
        with torch.no_grad():
            out = self._forward(batch.to(self.device))
        padded_hw = tuple(batch.shape[-2:])
        return [
            self._prediction(
                rgb, tuple(x.shape[-2:]), padded_hw, out["pred_logits"][i], out["pred_masks"][i]
            )
            for i, (rgb, x) in enumerate(prepared)
        ]

    def _forward(self, batch: Tensor) -> dict[str, Any]:
        if self.dtype == torch.float32:
            return self.model(batch)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.model(batch)

    def _prediction(
        self,
        rgb: np.ndarray,
        image_hw: tuple[int, int],
        padded_hw: tuple[int, int],
        class_logits: Tensor,
        pred_masks: Tensor,
    ) -> Prediction:
        return Prediction(
            class_logits=class_logits.float().cpu(),
            mask_logits=pred_masks.float().cpu().contiguous(),  # (Q, Hp/4, Wp/4)
            image=rgb,
            meta=self.meta,
            test=self.cfg.test,
            padded_hw=tuple(padded_hw),
            image_hw=tuple(image_hw),
            semantic_at_input=not self.semantic_before_inference,
        )


def resize_shortest_edge_shape(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ``ResizeShortestEdge.get_output_shape``: short side to ``short``, long <= max."""
    scale = short / min(h, w)
    newh, neww = (short, scale * w) if h < w else (scale * h, short)
    if max(newh, neww) > max_size:
        scale = max_size / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def pad_batch(images: Sequence[Tensor], size_divisibility: int) -> Tensor:
    """detectron2 ``ImageList.from_tensors``: zero-pad bottom/right to the batch max H, W, rounded
    up to a multiple of ``size_divisibility`` (0: no rounding). (3, Hi, Wi) each -> (B, 3, Hp, Wp)."""
    hp = max(x.shape[-2] for x in images)
    wp = max(x.shape[-1] for x in images)
    if size_divisibility > 0:
        hp = -(-hp // size_divisibility) * size_divisibility
        wp = -(-wp // size_divisibility) * size_divisibility
    return torch.stack([F.pad(x, (0, wp - x.shape[-1], 0, hp - x.shape[-2])) for x in images])


def _parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise UserError(f"unsupported dtype {dtype}; use float32, bfloat16 or float16")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise UserError(f"unsupported dtype {dtype!r}; use one of {', '.join(_DTYPES)}")
    return _DTYPES[key]


def _resolve(checkpoint: Any, device: torch.device) -> tuple[nn.Module, Config, DatasetMeta]:
    if isinstance(checkpoint, (str, Path)):
        from maskformer.checkpoint import load_model

        model = load_model(checkpoint, device=device)
        return model, model.cfg, model.meta
    if isinstance(checkpoint, tuple) and len(checkpoint) == 3:
        return checkpoint
    if (
        isinstance(checkpoint, nn.Module)
        and hasattr(checkpoint, "cfg")
        and hasattr(checkpoint, "meta")
    ):
        return checkpoint, checkpoint.cfg, checkpoint.meta
    raise CheckpointError(
        f"Predictor needs a checkpoint path, a (model, cfg, meta) tuple or a model "
        f"with .cfg and .meta, got {type(checkpoint).__name__}"
    )
