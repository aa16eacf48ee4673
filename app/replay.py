"""Replay for the fine-tune: the current model's confident predictions on workspace images that
were not corrected become extra training images, so the classes it already knows keep being seen
(on more images than the few corrected ones) while it learns from the corrections.

Only segments predicted with a class probability of at least ``MIN_SCORE`` are kept; the rest of
such an image is void (no label: the loss leaves it alone). The corrected images are repeated so
that about half of what the training sees is corrected (``repeats``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from app.store import ImageRecord

MAX_IMAGES = 200  # uncorrected images used at most (the job predicts each once)
MIN_SCORE = 0.7  # class probability a predicted segment needs to become a pseudo-label


def replay_images(records: list[ImageRecord], limit: int = MAX_IMAGES) -> list[int]:
    """Ids of up to ``limit`` images without a correction, in a stable pseudo-random order."""
    todo = [r for r in records if r.status != "corrected"]
    todo.sort(key=lambda r: hashlib.sha256(f"replay:{r.sha256}".encode()).hexdigest())
    return [r.id for r in todo[:limit]]


def pseudo_label(
    predictor: Any, image: np.ndarray, min_score: float = MIN_SCORE
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(id_map (H, W) int32, segments) of the model's confident segments; other pixels are 0."""
    pan = predictor.predict(image).panoptic()
    seg_map = np.asarray(pan.panoptic_seg)
    id_map = np.zeros(seg_map.shape, np.int32)
    segments = []
    for s in pan.segments:
        if float(s.get("score", 0.0)) < min_score:
            continue
        new_id = len(segments) + 1
        id_map[seg_map == s["id"]] = new_id
        segments.append(
            {
                "id": new_id,
                "category_id": int(s["category_id"]),
                "iscrowd": 0,
                "isthing": bool(s.get("isthing", False)),
            }
        )
    return id_map, segments


def repeats(corrected: int, replayed: int) -> int:
    """How many times each corrected image is written so that they are about half the data."""
    return max(1, round(replayed / max(corrected, 1)))
