"""Evaluation: panoptic quality, semantic confusion metrics, mask AP, and whole-dataset scoring."""

from typing import Any

from maskformer.evaluation.coco_ap import coco_mask_ap, instance_results, instances_from_panoptic
from maskformer.evaluation.metrics import (
    PQStat,
    SemSegConfusion,
    pq_from_id_maps,
    semantic_from_segments,
)

__all__ = [
    "TASKS",
    "PQStat",
    "SemSegConfusion",
    "coco_mask_ap",
    "evaluate_model",
    "evaluate_predictions",
    "instance_results",
    "instances_from_panoptic",
    "pq_from_id_maps",
    "semantic_from_segments",
]

_LAZY = {"TASKS", "evaluate_model", "evaluate_predictions"}


def __getattr__(name: str) -> Any:
    # The dataset-level scorers pull in the data readers; the pure metrics above do not need them.
    if name in _LAZY:
        from maskformer.evaluation import evaluate

        return getattr(evaluate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
