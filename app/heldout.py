"""Scoring a model on the fine-tune's held-out images, image by image (what the verdict needs).

``score`` gives the usual held-out summary (PQ, SQ, RQ, mIoU, per class) plus each image's
per-class panoptic counts, so that ``app.verdict`` can resample images to tell a real change from
noise. ``unchanged`` finds corrections that are exactly what the model already predicted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from maskformer.evaluation.metrics import PQStat, SemSegConfusion, semantic_from_segments

_IGNORE = -1  # ground-truth pixels left out of mIoU (void, crowd)
# A saved correction counts as unchanged when the model's own prediction matches every one of its
# segments (and nothing else) with at least this mean IoU: saving it taught the model nothing.
UNCHANGED_IOU = 0.97


def score(
    predictor: Any, dataset_dir: str | Path, names: dict[int, str] | None = None
) -> dict[str, Any]:
    """Held-out scores of ``predictor`` on a dataset folder (the job's export).

    Args:
        predictor: anything with ``predict(image)`` returning a ``Prediction``.
        dataset_dir: a COCO panoptic folder with the model's classes (or more: new ones last).
        names: image id -> the name the user knows the image by (default: the file name).

    Returns:
        PQ, SQ, RQ, PQ_th, PQ_st (x100, None when undefined), mIoU, pAcc, ``num_images``,
        ``per_class`` {name: {PQ, SQ, RQ, IoU, segments}} and ``images``: one dict per image with
        ``name``, ``image_id`` and the per-class panoptic counts ``tp``, ``fp``, ``fn``, ``iou``
        (lists of K), which add up to the totals.
    """
    from maskformer.data import open_dataset

    ds = open_dataset(dataset_dir)
    meta = ds.meta
    k = meta.num_classes
    total, conf = PQStat(k), SemSegConfusion(k, ignore_label=_IGNORE)
    images = []
    for i in range(len(ds)):
        smp = ds.load(i)
        pred = predictor.predict(smp.image)
        pan = pred.panoptic()
        one = PQStat(k)
        one.add(smp.id_map, smp.segments, pan.panoptic_seg, pan.segments)
        total += one
        conf.update(pred.semantic(), semantic_from_segments(smp.id_map, smp.segments, k, _IGNORE))
        image_id = smp.image_id
        images.append(
            {
                "name": (names or {}).get(image_id, smp.file_name),
                "image_id": image_id,
                "tp": one.tp.tolist(),
                "fp": one.fp.tolist(),
                "fn": one.fn.tolist(),
                "iou": one.iou.tolist(),
            }
        )
    pan = total.summary(meta)
    sem = conf.summary(meta.class_names)
    per_class: dict[str, dict[str, Any]] = {}
    for row in pan.pop("per_class"):
        c = row["class_id"]
        per_class[row["name"]] = {
            "PQ": row["PQ"],
            "SQ": row["SQ"],
            "RQ": row["RQ"],
            "segments": int(total.tp[c] + total.fn[c]),
        }
    for row in sem.pop("per_class"):
        per_class.setdefault(row["name"], {})["IoU"] = row["IoU"]
    return {
        **pan,
        **{k_: v for k_, v in sem.items() if not isinstance(v, (dict, list))},
        "num_images": len(ds),
        "classes": list(meta.class_names),
        "per_class": per_class,
        "images": images,
    }


def unchanged(scores: dict[str, Any]) -> list[str]:
    """Names of the images whose ground truth the scored model reproduces segment for segment."""
    out = []
    for img in scores.get("images", []):
        tp, fp, fn = (np.asarray(img[key]) for key in ("tp", "fp", "fn"))
        n = int(tp.sum())
        if n and not fp.any() and not fn.any() and sum(img["iou"]) / n >= UNCHANGED_IOU:
            out.append(img["name"])
    return out
