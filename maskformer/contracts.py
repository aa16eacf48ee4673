"""Typed containers passed between the model, the losses, post-processing and the app."""

from __future__ import annotations

from typing import TypedDict

import torch


class AuxOutput(TypedDict):
    pred_logits: torch.Tensor  # (B, Q, K+1) class logits; index K is "no object"
    pred_masks: torch.Tensor  # (B, Q, H/4, W/4) mask logits


class MaskFormerOutput(TypedDict):
    pred_logits: torch.Tensor  # (B, Q, K+1)
    pred_masks: torch.Tensor  # (B, Q, H/4, W/4)
    aux_outputs: list[AuxOutput]  # one per earlier decoder layer (5 for the official model; with
    # masked attention also the prediction before the first layer)


class Target(TypedDict):
    labels: torch.Tensor  # (N,) int64 contiguous class ids
    masks: torch.Tensor  # (N, H, W) bool or float {0, 1}, at the padded input size


class Segment(TypedDict, total=False):
    id: int  # segment id in the panoptic id map (1, 2, ...; 0 is void)
    category_id: int  # contiguous class id
    isthing: bool
    score: float  # the source query's class probability
    query: int  # index of the query that produced the segment
    area: int  # pixels
