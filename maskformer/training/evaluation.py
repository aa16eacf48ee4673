"""Periodic evaluation during training: the current weights through the app's Predictor and metrics."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from maskformer.config import Config, DatasetMeta
from maskformer.data import LabeledDataset
from maskformer.evaluation import evaluate_model
from maskformer.inference import Predictor


def eval_tasks(cfg: Config) -> list[str]:
    """The tasks ``cfg.test`` turns on (panoptic, semantic, instance)."""
    flags = {
        "panoptic": cfg.test.panoptic_on,
        "semantic": cfg.test.semantic_on,
        "instance": cfg.test.instance_on,
    }
    return [task for task, on in flags.items() if on] or ["semantic"]


@torch.no_grad()
def evaluate_weights(
    model: nn.Module,
    cfg: Config,
    meta: DatasetMeta,
    dataset: LabeledDataset,
    device: torch.device,
) -> dict[str, Any]:
    """Score ``model`` (left in eval mode) on ``dataset``; returns the flat metrics (no tables).

    The numbers are those ``python -m maskformer evaluate`` reports for the saved checkpoint.
    """
    predictor = Predictor(model, cfg=cfg, meta=meta, device=device)
    metrics = evaluate_model(predictor, dataset, eval_tasks(cfg), progress=False)
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
