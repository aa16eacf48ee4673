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
from maskformer.inference.backends import Backend, TorchBackend, check_backend
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
    """Runs a MaskFormer on images. Holds only the network and its config: safe to share across
    threads.

    Build one with ``Predictor.from_checkpoint(path)`` (any checkpoint: native, Hugging Face,
    official, or an exported .onnx file), or from a model in memory with
    ``Predictor(model, cfg=cfg, meta=meta)``.

    Args:
        model: the network (``build_model(cfg.model)`` with its weights); moved to ``device``.
        cfg: the config the model was built from (input sizes, test thresholds, padding); required.
        meta: the class metadata (K entries); required. (Both default to None only so that a
            wrong first argument, such as a path, gets a message saying what to call instead.)
        device: "cpu", "cuda", ...; default CUDA when available.
        dtype: None / float32, or bfloat16 / float16 (also "bf16", "fp16") for autocast.
        channels_last: Put the weights in NHWC layout (a passed-in model is moved, as by
            ``device``): the R50 forward 11-13 % faster in fp32, 19-25 % in bf16 on CPU (512 px),
            but oneDNN's NHWC kernels round differently with the thread count, so outputs are
            no longer bit-identical across machines and processes; off by default.
        backend: "torch", or "onnxruntime": the model is exported to ONNX (in memory, dynamic
            input size) and run by onnxruntime, with the same pre- and post-processing.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        cfg: Config | None = None,
        meta: DatasetMeta | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        channels_last: bool = False,
        backend: str = "torch",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(_wrong_model_message(model))
        if not isinstance(cfg, Config) or not isinstance(meta, DatasetMeta):
            raise TypeError(
                "Predictor(model, cfg=..., meta=...) needs a maskformer.config.Config and a "
                f"DatasetMeta, got cfg={type(cfg).__name__}, meta={type(meta).__name__}"
            )
        self.cfg, self.meta = cfg, meta
        _check_classes(cfg, meta)
        self.device = _parse_device(device)
        self.dtype = _parse_dtype(dtype)
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if check_backend(backend) == "onnxruntime":
            from maskformer.deploy import onnx_backend_for_model

            _check_onnx_options(self.device, self.dtype, channels_last)
            self.backend: Backend = onnx_backend_for_model(self.model, cfg=cfg, meta=meta)
        else:
            self.backend = TorchBackend(model=self.model, device=self.device, dtype=self.dtype)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        channels_last: bool = False,
        backend: str | None = None,
    ) -> Predictor:
        """A Predictor on a checkpoint: a native .safetensors file, a Hugging Face folder or hub
        id, an official .pkl/.pth (converted once and cached, see ``maskformer.sources``), or an
        exported .onnx file (run by onnxruntime; ``backend`` defaults to it for such a file).
        Other arguments as for the constructor."""
        if Path(str(path)).suffix.lower() == ".onnx":
            from maskformer.deploy import onnx_predictor_parts

            if backend not in (None, "onnxruntime"):
                raise UserError(f"{path} is an ONNX model: it runs with backend onnxruntime")
            device, dtype = _parse_device(device), _parse_dtype(dtype)
            _check_onnx_options(device, dtype, channels_last)
            backend_obj, cfg, meta = onnx_predictor_parts(path)
            return cls._with_backend(backend_obj, cfg=cfg, meta=meta, device=device)
        from maskformer.checkpoint import load_model
        from maskformer.sources import resolve_checkpoint

        native = resolve_checkpoint(path).path
        loaded = load_model(native, device=_parse_device(device))
        return cls(
            loaded.model,
            cfg=loaded.cfg,
            meta=loaded.meta,
            device=device,
            dtype=dtype,
            channels_last=channels_last,
            backend=backend or "torch",
        )

    @classmethod
    def _with_backend(
        cls, backend: Backend, *, cfg: Config, meta: DatasetMeta, device: torch.device
    ) -> Predictor:
        """A Predictor whose network is only ``backend`` (no PyTorch model: ``model`` is None)."""
        _check_classes(cfg, meta)
        self = cls.__new__(cls)
        self.cfg, self.meta, self.device, self.dtype = cfg, meta, device, torch.float32
        self.model, self.backend = None, backend
        return self

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
        """Several images in one forward pass, padded (bottom/right, zeros) to the batch maximum
        (or to the fixed input size of a static-shape ONNX model)."""
        if len(images) == 0:
            return []
        prepared = [self.preprocess(im) for im in images]
        batch = pad_batch([x for _, x in prepared], self.cfg.model.size_divisibility)
        if self.backend.fixed_size is not None:
            batch = _pad_to(batch, self.backend.fixed_size)
        class_logits, pred_masks = self.backend(batch)
        padded_hw = tuple(batch.shape[-2:])
        return [
            self._prediction(rgb, tuple(x.shape[-2:]), padded_hw, class_logits[i], pred_masks[i])
            for i, (rgb, x) in enumerate(prepared)
        ]

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


def _parse_device(device: str | torch.device | None) -> torch.device:
    try:
        out = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r} ({e})") from None
    if out.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {device!r} asked for, but CUDA is not available here; use --device cpu"
        )
    return out


def _check_classes(cfg: Config, meta: DatasetMeta) -> None:
    if meta.num_classes != cfg.model.num_classes:
        raise CheckpointError(
            f"the metadata names {meta.num_classes} classes but the "
            f"model predicts {cfg.model.num_classes}"
        )


def _check_onnx_options(device: torch.device, dtype: torch.dtype, channels_last: bool) -> None:
    if dtype != torch.float32 or channels_last:
        raise UserError("the onnxruntime backend runs float32 NCHW: drop --dtype/--channels-last")
    if device.type != "cpu":
        raise UserError(f"the onnxruntime backend runs on the CPU here, not on {device}")


def _pad_to(batch: Tensor, size: tuple[int, int]) -> Tensor:
    """Zero-pad (B, 3, Hp, Wp) bottom/right to (B, 3, H, W) for a static-shape network."""
    h, w = size
    if batch.shape[-2] > h or batch.shape[-1] > w:
        raise UserError(
            f"the image is {batch.shape[-2]}x{batch.shape[-1]} after resizing, larger than the "
            f"{h}x{w} this ONNX model was exported for; export it with --dynamic"
        )
    return F.pad(batch, (0, w - batch.shape[-1], 0, h - batch.shape[-2]))


def _wrong_model_message(model: Any) -> str:
    if isinstance(model, (str, Path)):
        return (
            f"Predictor(model, cfg=..., meta=...) takes a built nn.Module, got the path {model!r}; "
            "for a checkpoint use Predictor.from_checkpoint(path)"
        )
    if isinstance(model, tuple):
        return (
            "Predictor(model, cfg=..., meta=...) takes a built nn.Module, got a tuple; "
            "unpack it: Predictor(model, cfg=cfg, meta=meta)"
        )
    return (
        f"Predictor(model, cfg=..., meta=...) takes a built nn.Module, got "
        f"{type(model).__name__}; for a checkpoint use Predictor.from_checkpoint(path)"
    )
