"""A MaskFormer network -> ONNX (opset 17): class and mask logits, with its config and classes.

The graph is traced with PyTorch's TorchScript-based exporter (``dynamo=False``): it needs no package
beyond ``onnx``, and with the input's height and width marked dynamic the traced shape arithmetic
(padding to Swin windows, position encodings, the FPN's upsampling) stays symbolic, so one file
serves every input size. The model code keeps that true: non-negative ceil divisions and no in-place
boolean ops (``tests/test_onnx.py`` checks parity at sizes other than the traced one).

Graph: ``image`` (B, 3, H, W) float32, normalised with ``input.pixel_mean/std`` and zero-padded
(bottom/right) to a multiple of ``model.size_divisibility`` -> ``class_logits`` (B, Q, K+1; index K
is "no object") and ``mask_logits`` (B, Q, H/4, W/4). Metadata (``metadata_props``): ``format``,
``format_version``, ``config`` and ``meta`` (the JSON a native checkpoint stores), ``class_names``
(a JSON list) and ``extra``.
"""

from __future__ import annotations

import io
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from maskformer.config import Config, DatasetMeta, config_to_dict
from maskformer.errors import UserError

ONNX_FORMAT = "maskformer-studio-onnx"
ONNX_FORMAT_VERSION = 1
OPSET = 17
INPUT, OUTPUTS = "image", ("class_logits", "mask_logits")
_TRACE_CELLS = (4, 5)  # traced input of a dynamic export: (4, 5) x size_divisibility pixels


class _Network(nn.Module):
    """The model as a function of one tensor returning a tuple (what the exporter traces)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(image)
        return out["pred_logits"], out["pred_masks"]


def onnx_bytes(
    model: nn.Module,
    *,
    cfg: Config,
    meta: DatasetMeta,
    height: int | None = None,
    width: int | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """The serialised ONNX model; dynamic batch, height and width unless both sizes are given.

    Raises:
        UserError: a fixed size that is not a positive multiple of ``size_divisibility``, or the
            optional ``onnx`` package missing.
    """
    onnx = import_optional("onnx")
    div = max(cfg.model.size_divisibility, 1)
    if (height is None) != (width is None):
        raise UserError("give both --height and --width for a fixed-size export, or neither")
    dynamic = height is None
    if not dynamic and (height <= 0 or width <= 0 or height % div or width % div):
        raise UserError(
            f"--height and --width must be positive multiples of {div} (the model pads its input "
            f"to that), got {height}x{width}"
        )
    h, w = (_TRACE_CELLS[0] * div, _TRACE_CELLS[1] * div) if dynamic else (height, width)
    net = _Network(model).eval()
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter announces its deprecation and warns about every shape it
            # traces as a constant; the parity tests are what says the graph is right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net,
                (torch.zeros(1, 3, h, w, device=device),),
                buf,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT],
                output_names=list(OUTPUTS),
                dynamic_axes=_dynamic_axes() if dynamic else {INPUT: {0: "batch"}},
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in onnx_metadata(cfg, meta, extra).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = (
        f"MaskFormer ({cfg.model.backbone}, K={cfg.model.num_classes}, "
        f"Q={cfg.model.num_queries}): image -> class_logits, mask_logits"
    )
    return proto.SerializeToString()


def _dynamic_axes() -> dict[str, dict[int, str]]:
    return {
        INPUT: {0: "batch", 2: "height", 3: "width"},
        OUTPUTS[0]: {0: "batch"},
        OUTPUTS[1]: {0: "batch", 2: "mask_height", 3: "mask_width"},
    }


def onnx_metadata(
    cfg: Config, meta: DatasetMeta, extra: dict[str, Any] | None = None
) -> dict[str, str]:
    """The ``metadata_props`` an exported model carries (all values strings)."""
    return {
        "format": ONNX_FORMAT,
        "format_version": str(ONNX_FORMAT_VERSION),
        "config": json.dumps(config_to_dict(cfg)),
        "meta": json.dumps(meta.to_dict()),
        "class_names": json.dumps(list(meta.class_names)),
        "extra": json.dumps(extra or {}),
    }


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    cfg: Config,
    meta: DatasetMeta,
    height: int | None = None,
    width: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``onnx_bytes(...)`` to ``out`` atomically (a temp file in its folder, then rename)."""
    data = onnx_bytes(model, cfg=cfg, meta=meta, height=height, width=width, extra=extra)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def import_optional(name: str) -> Any:
    """Import an optional package, or say in one line how to install it."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(
            f"ONNX export and the onnxruntime backend need the optional package {name!r}: "
            "python -m pip install -r requirements-onnx.txt"
        ) from None
