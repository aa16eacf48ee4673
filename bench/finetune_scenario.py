"""The fine-tune benchmark's scenario: synthetic images with a shape the demo model never saw.

The shipped demo model knows five thing shapes (circle, square, triangle, star, ring) and three
stuff textures (``maskformer.data.synthetic``). Here a sixth thing shape, a plus-shaped
``cross``, is painted into the synthetic images with the same rules as the other shapes: a random
colour far from what lies beneath, one of the four thing textures, a random size and rotation, and
the synthetic data's visibility rule (every instance keeps at least 40 % of its full area).
The class is the shape alone, so a model has to learn the outline to tell it from a star.

Item ``i`` of seed ``s`` is ``generate_sample(i, seed=s)`` plus crosses drawn from
``np.random.default_rng([s, i, 7])``: deterministic, and the base image is byte-identical to the
synthetic dataset's.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskformer.config import DatasetMeta
from maskformer.data.coco import write_dataset
from maskformer.data.datasets import Sample
from maskformer.data.synthetic import (
    MIN_VISIBLE_FRACTION,
    MIN_VISIBLE_PIXELS_128,
    _contrasting_color,
    _thing_texture,
    generate_sample,
    synthetic_meta,
)

NEW_CLASS = "cross"
NEW_COLOR = (250, 110, 190)


def scenario_meta() -> DatasetMeta:
    """The synthetic classes (contiguous 0..7) plus the new thing class at index 8."""
    m = synthetic_meta()
    return replace(
        m,
        class_names=m.class_names + (NEW_CLASS,),
        isthing=m.isthing + (True,),
        colors=m.colors + (NEW_COLOR,),
        dataset_ids=m.dataset_ids + (len(m.class_names) + 1,),
        name="synthetic-shapes + cross",
    )


def cross_mask(s: int, center: np.ndarray, r: float, angle: float, margin: int) -> np.ndarray:
    """(s + 2 margin, s + 2 margin) uint8 canvas with a plus sign of arm length ~1.25 r."""
    arm, half = 1.25 * r, 0.4 * r
    # 12 corners of a plus sign, counter-clockwise, before rotation.
    pts = np.array(
        [
            (half, half),
            (arm, half),
            (arm, -half),
            (half, -half),
            (half, -arm),
            (-half, -arm),
            (-half, -half),
            (-arm, -half),
            (-arm, half),
            (-half, half),
            (-half, arm),
            (half, arm),
        ]
    )  # (12, 2)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    poly = center + margin + pts @ rot.T  # (12, 2)
    canvas = np.zeros((s + 2 * margin, s + 2 * margin), np.uint8)
    cv2.fillPoly(canvas, np.round(poly * 16).astype(np.int32)[None], 1, cv2.LINE_8, 4)
    return canvas


def add_crosses(smp: Sample, rng: np.random.Generator, count: int) -> Sample:
    """Paint ``count`` crosses (fewer when no place keeps everything visible enough) on top."""
    s = smp.image.shape[0]
    scale = s / 128.0
    image = smp.image.astype(np.float32)
    id_map = smp.id_map.copy()
    segments = [dict(g) for g in smp.segments]
    margin = math.ceil(0.25 * s * 1.3) + 2
    min_px = MIN_VISIBLE_PIXELS_128 * scale * scale
    new_class = len(synthetic_meta().class_names)
    painted = np.zeros((s, s), bool)
    added = 0
    for _ in range(count * 10):
        if added == count:
            break
        r = rng.uniform(0.09, 0.2) * s
        center = rng.uniform(0.6 * r, s - 0.6 * r, 2)
        canvas = cross_mask(s, center, r, rng.uniform(0, math.pi / 2), margin)
        full = float(canvas.sum())
        mask = canvas[margin : margin + s, margin : margin + s].astype(bool)
        if mask.sum() < max(0.7 * full, min_px):
            continue
        if not _others_stay_visible(id_map, segments, mask, min_px):
            continue
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        base = _contrasting_color(image[mask], rng)
        tex = _thing_texture(int(y1 - y0), int(x1 - x0), base, scale, rng)
        np.copyto(image[y0:y1, x0:x1], tex, where=mask[y0:y1, x0:x1][..., None])
        seg_id = max((int(g["id"]) for g in segments), default=0) + 1
        id_map[mask] = seg_id
        painted |= mask
        segments.append(
            {"id": seg_id, "category_id": new_class, "iscrowd": 0, "isthing": True, "area": 0}
        )
        added += 1
    noise = 2.0 * rng.standard_normal(image.shape, dtype=np.float32)  # the synthetic sensor noise
    image[painted] += noise[painted]
    areas = np.bincount(id_map.ravel(), minlength=max(int(g["id"]) for g in segments) + 1)
    segments = [{**g, "area": int(areas[g["id"]])} for g in segments if areas[g["id"]] > 0]
    return replace(
        smp,
        image=np.clip(np.round(image), 0, 255).astype(np.uint8),
        id_map=id_map,
        segments=segments,
    )


def _others_stay_visible(
    id_map: np.ndarray, segments: list[dict[str, Any]], mask: np.ndarray, min_px: float
) -> bool:
    """Each thing instance keeps >= 40 % of its current area (and min_px) under the new shape."""
    for g in segments:
        if not g["isthing"]:
            continue
        own = id_map == g["id"]
        left = float((own & ~mask).sum())
        if left < max(MIN_VISIBLE_FRACTION * float(own.sum()), min_px):
            return False
    return True


def scenario_sample(index: int, *, seed: int, size: int = 128, crosses: bool = True) -> Sample:
    """Synthetic image ``index`` of ``seed``, with 1-2 crosses when ``crosses``."""
    smp = generate_sample(index, seed=seed, size=size)
    if not crosses:
        return smp
    rng = np.random.default_rng([seed, index, 7])
    return add_crosses(smp, rng, int(rng.integers(1, 3)))


def write_scenario(
    out_dir: str | Path, num_images: int, *, seed: int, size: int = 128, crosses: bool = True
) -> Path:
    """A COCO panoptic folder of scenario images (9 classes whether or not crosses are drawn)."""
    samples = [scenario_sample(i, seed=seed, size=size, crosses=crosses) for i in range(num_images)]
    return write_dataset(out_dir, samples, scenario_meta())
