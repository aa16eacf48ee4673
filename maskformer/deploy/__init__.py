"""Deployment: the network as an ONNX model (with its config and classes) and onnxruntime to run it.

``onnx`` and ``onnxruntime`` are optional (``requirements-onnx.txt``); nothing else in the engine or
the app imports them, and a missing one is a clear ``UserError`` here.
"""

from maskformer.deploy.onnx_export import ONNX_FORMAT, OPSET, export_onnx, onnx_bytes
from maskformer.deploy.onnx_runtime import (
    onnx_backend_for_model,
    onnx_predictor_parts,
    onnx_session,
    read_onnx_metadata,
)

__all__ = [
    "ONNX_FORMAT",
    "OPSET",
    "export_onnx",
    "onnx_backend_for_model",
    "onnx_bytes",
    "onnx_predictor_parts",
    "onnx_session",
    "read_onnx_metadata",
]
