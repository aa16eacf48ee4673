"""Inference: the stateless ``Predictor`` and the pure post-processing functions it shares."""

from maskformer.inference.instances import InstanceMasks
from maskformer.inference.postprocess import (
    DROP_REASONS,
    DroppedQuery,
    InstanceResult,
    PanopticResult,
    class_probs,
    instance_inference,
    mask_areas,
    panoptic_inference,
    resize_maps,
    resize_mask_logits,
    semantic_inference,
    semantic_map,
)
from maskformer.inference.prediction import Prediction
from maskformer.inference.predictor import Predictor, pad_batch, resize_shortest_edge_shape

__all__ = [
    "DROP_REASONS",
    "DroppedQuery",
    "InstanceMasks",
    "InstanceResult",
    "PanopticResult",
    "Prediction",
    "Predictor",
    "class_probs",
    "instance_inference",
    "mask_areas",
    "pad_batch",
    "panoptic_inference",
    "resize_maps",
    "resize_mask_logits",
    "resize_shortest_edge_shape",
    "semantic_inference",
    "semantic_map",
]
