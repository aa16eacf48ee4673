"""Replay for the fine-tune: the current model's confident predictions on workspace images that
were not corrected become extra training images, so the classes it already knows keep being seen
(on more images than the few corrected ones) while it learns from the corrections.

Only segments predicted with a class probability of at least ``MIN_SCORE`` are kept; the rest of
such an image is void (no label: the loss leaves it alone). The corrected images are repeated so
that about half of what the training sees is corrected (``repeats``).

For an expert head (the fine-tune's recipe when the corrections add classes), the replay also
leaves out the old classes the model gives to new-class objects (``confused_classes``): the model
cannot know the new class, so on uncorrected images it calls those objects by an old name with
confidence (on the benchmark's workspace, 72 % of the new-class pixels), and replaying that would
teach the expert the opposite of the corrections. The base model answers for the old classes, so
the expert loses nothing by not seeing them there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from typing import Any

import numpy as np

from app.store import ImageRecord

MAX_IMAGES = 200  # uncorrected images used at most (the job predicts each once)
MIN_SCORE = 0.7  # class probability a predicted segment needs to become a pseudo-label
# An old class is "confused" with the new ones when at least this share of its confident segments
# on the corrected images lie mostly (> half their pixels) on new-class ground truth.
CONFUSED_SHARE = 0.3


def replay_images(records: list[ImageRecord], limit: int = MAX_IMAGES) -> list[int]:
    """Ids of up to ``limit`` images without a correction, in a stable pseudo-random order."""
    todo = [r for r in records if r.status != "corrected"]
    todo.sort(key=lambda r: hashlib.sha256(f"replay:{r.sha256}".encode()).hexdigest())
    return [r.id for r in todo[:limit]]


def pseudo_label(
    predictor: Any,
    image: np.ndarray,
    min_score: float = MIN_SCORE,
    leave_out: Collection[int] = (),
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """(id_map (H, W) int32, segments) of the model's confident segments; other pixels are 0, as
    are the segments of the classes in ``leave_out``."""
    pan = predictor.predict(image).panoptic()
    seg_map = np.asarray(pan.panoptic_seg)
    id_map = np.zeros(seg_map.shape, np.int32)
    segments = []
    for s in pan.segments:
        if float(s.get("score", 0.0)) < min_score or int(s["category_id"]) in leave_out:
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


def confused_classes(
    predictor: Any, dataset: Any, old_classes: int, share: float = CONFUSED_SHARE
) -> list[int]:
    """Old classes (ids < ``old_classes``) the model gives to new-class objects.

    Args:
        predictor: the current model (``predict(image)``).
        dataset: the corrected images (a ``LabeledDataset``); labels >= ``old_classes`` are new.
        share: a class is confused when at least this share of its confident segments lie mostly
            on new-class ground truth.
    """
    on_new = np.zeros(old_classes)
    seen = np.zeros(old_classes)
    for i in range(len(dataset)):
        smp = dataset.load(i)
        new_ids = [g["id"] for g in smp.segments if g["category_id"] >= old_classes]
        new_px = np.isin(smp.id_map, new_ids)
        id_map, segments = pseudo_label(predictor, smp.image)
        for s in segments:
            c = s["category_id"]
            if c < old_classes:
                seen[c] += 1
                on_new[c] += new_px[id_map == s["id"]].mean() > 0.5
    return [c for c in range(old_classes) if seen[c] and on_new[c] / seen[c] >= share]


def repeats(corrected: int, replayed: int) -> int:
    """How many times each corrected image is written so that they are about half the data."""
    return max(1, round(replayed / max(corrected, 1)))
