"""onnxruntime sessions on exported MaskFormer models, and the config and classes they carry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from maskformer.config import Config, ConfigError, DatasetMeta, config_from_dict
from maskformer.deploy.onnx_export import ONNX_FORMAT, import_optional, onnx_bytes
from maskformer.errors import CheckpointError
from maskformer.inference.backends import OnnxRuntimeBackend


def onnx_session(model: str | Path | bytes) -> Any:
    """An ``onnxruntime.InferenceSession`` on the CPU for a file path or serialised model.

    Raises:
        CheckpointError: a file onnxruntime cannot read.
        UserError: onnxruntime is not installed.
    """
    ort = import_optional("onnxruntime")
    source = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(source).is_file():
        raise CheckpointError(f"ONNX model not found: {source}")
    try:
        return ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        where = "the exported model" if isinstance(model, bytes) else source
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"onnxruntime cannot load {where}: {first}") from None


def read_onnx_metadata(session: Any, source: str = "the ONNX model") -> tuple[Config, DatasetMeta]:
    """The config and class metadata an exported model carries in its ``metadata_props``."""
    props = session.get_modelmeta().custom_metadata_map
    if props.get("format") != ONNX_FORMAT:
        raise CheckpointError(
            f"{source} is not a MaskFormer Studio export (no 'format: {ONNX_FORMAT}' metadata): "
            "export one with python -m maskformer export-onnx"
        )
    try:
        cfg = config_from_dict(json.loads(props["config"]))
        meta = DatasetMeta.from_dict(json.loads(props["meta"]))
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{source} has broken config/meta metadata: {e}") from None
    return cfg, meta


def onnx_predictor_parts(path: str | Path) -> tuple[OnnxRuntimeBackend, Config, DatasetMeta]:
    """What a Predictor on an exported .onnx file needs: its backend, config and classes."""
    session = onnx_session(path)
    cfg, meta = read_onnx_metadata(session, str(path))
    return OnnxRuntimeBackend(session=session), cfg, meta


def onnx_backend_for_model(
    model: nn.Module, *, cfg: Config, meta: DatasetMeta
) -> OnnxRuntimeBackend:
    """Export ``model`` in memory (dynamic input size) and wrap an onnxruntime session on it."""
    return OnnxRuntimeBackend(session=onnx_session(onnx_bytes(model, cfg=cfg, meta=meta)))
