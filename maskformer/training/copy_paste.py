"""Copy-paste augmentation (Ghiasi et al., *Simple Copy-Paste is a Strong Data Augmentation Method
for Instance Segmentation*, CVPR 2021), off by default: ``input.copy_paste > 0``.

With that probability an image gets 1-2 thing instances cut from other training images (of the
classes from ``input.copy_paste_from`` on: for a fine-tune, the new ones; a class is drawn first,
then one of its instances, so rare classes are pasted as often as common ones), each flipped, rotated
by any angle and scaled by 0.75-1.25, with chance ``input.copy_paste_color`` recoloured (hue
turned by any angle, brightness x 0.7-1.3: the copies teach the outline rather than the colour of
the few instances there are), pasted at a random place on top. What they cover is taken
from the segments beneath; a paste that would leave an instance with less than 40 % of its area
is tried elsewhere. A few corrected images with a new class thus show it in many places, sizes
and contexts, and many queries see it.

The view is ``repeats`` times longer than the dataset, so that item ``j`` (image ``j % n``) is
pasted with its own ``np.random.default_rng([seed, j])``: deterministic, and a resumed run sees
the same images as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import cv2
import numpy as np

from maskformer.data import LabeledDataset
from maskformer.data.datasets import Sample

MIN_VISIBLE = 0.4  # an instance under a paste keeps at least this share of its area
SCALES = (0.75, 1.25)
TRIES = 6


class CopyPaste:
    """A ``LabeledDataset`` view whose ``load(j)`` is image ``j % n`` with instances pasted on.

    Args:
        dataset: the training set.
        prob: chance that an item gets pastes.
        from_class: paste instances of thing classes with contiguous id >= this.
        color: chance that a pasted instance is recoloured.
        seed: the augmentation seed.
        repeats: the view is ``repeats * len(dataset)`` items long.
    """

    def __init__(
        self,
        dataset: LabeledDataset,
        *,
        prob: float,
        from_class: int = 0,
        color: float = 0.0,
        seed: int = 0,
        repeats: int = 64,
    ):
        self.dataset, self.prob, self.seed, self.repeats = dataset, prob, seed, repeats
        self.color = color
        self.meta = dataset.meta
        # (image index, segment id) of the pasteable instances, by class
        self.pool: dict[int, list[tuple[int, int]]] = {}
        for i in range(len(dataset)):
            _, segments = dataset.load_labels(i)
            for s in segments:
                c = int(s["category_id"])
                thing = from_class <= c < self.meta.num_classes and self.meta.isthing[c]
                if thing and not s.get("iscrowd", 0):
                    self.pool.setdefault(c, []).append((i, int(s["id"])))
        self.classes = sorted(self.pool)
        self._patches: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, int]] = {}

    def __len__(self) -> int:
        return len(self.dataset) * self.repeats

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dataset, name)  # validate(), root, format, ...

    def load(self, j: int) -> Sample:
        n = len(self.dataset)
        smp = self.dataset.load(j % n)
        rng = np.random.default_rng([self.seed, 104729, int(j)])
        # colours from a stream of their own: recolouring does not move what is pasted where
        tint = np.random.default_rng([self.seed, 7919, int(j)])
        if not self.pool or rng.random() >= self.prob:
            return smp
        image, id_map = smp.image.copy(), smp.id_map.copy()
        segments = [dict(s) for s in smp.segments]
        for _ in range(int(rng.integers(1, 3))):
            # class-balanced: a class first, then one of its instances
            instances = self.pool[self.classes[int(rng.integers(len(self.classes)))]]
            patch = self._patch(instances[int(rng.integers(len(instances)))])
            recolor = tint if self.color > 0 and tint.random() < self.color else None
            _paste(image, id_map, segments, patch, rng, recolor)
        areas = np.bincount(id_map.ravel(), minlength=max([s["id"] for s in segments] + [0]) + 1)
        segments = [{**s, "area": int(areas[s["id"]])} for s in segments if areas[s["id"]] > 0]
        return replace(smp, image=image, id_map=id_map, segments=segments)

    def _patch(self, key: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
        """(image crop (h, w, 3), mask crop (h, w) bool, class) of one instance, cached."""
        if key not in self._patches:
            smp = self.dataset.load(key[0])
            mask = smp.id_map == key[1]
            ys, xs = np.nonzero(mask)
            box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
            cls = next(int(s["category_id"]) for s in smp.segments if int(s["id"]) == key[1])
            self._patches[key] = (smp.image[box].copy(), mask[box].copy(), cls)
        return self._patches[key]


def _paste(
    image: np.ndarray,
    id_map: np.ndarray,
    segments: list[dict[str, Any]],
    patch: tuple[np.ndarray, np.ndarray, int],
    rng: np.random.Generator,
    recolor: np.random.Generator | None = None,
) -> bool:
    """Paste one transformed instance in place (image, id map, segments); False if it found no
    place that keeps every instance beneath visible enough. ``recolor``: recolour it with this
    generator."""
    pix, mask = _transform(patch[0], patch[1], rng)
    if recolor is not None:
        pix = _recolor(pix, recolor)
    cls = patch[2]
    h, w = id_map.shape
    ph, pw = mask.shape
    if ph > h or pw > w or not mask.any():
        return False
    for _ in range(TRIES):
        y0, x0 = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        placed = np.zeros((h, w), bool)
        placed[y0 : y0 + ph, x0 : x0 + pw] = mask
        if not _others_visible(id_map, segments, placed):
            continue
        window = image[y0 : y0 + ph, x0 : x0 + pw]
        window[mask] = pix[mask]
        seg_id = max([int(s["id"]) for s in segments] + [0]) + 1
        id_map[placed] = seg_id
        segments.append({"id": seg_id, "category_id": cls, "iscrowd": 0, "isthing": True})
        return True
    return False


def _transform(
    pix: np.ndarray, mask: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip, rotate by any angle and scale an instance crop; returns the new crop and mask."""
    if rng.random() < 0.5:
        pix, mask = pix[:, ::-1], mask[:, ::-1]
    angle, scale = rng.uniform(0, 360), rng.uniform(*SCALES)
    h, w = mask.shape
    rad = math.radians(angle)
    out_w = math.ceil(scale * (abs(w * math.cos(rad)) + abs(h * math.sin(rad)))) + 1
    out_h = math.ceil(scale * (abs(h * math.cos(rad)) + abs(w * math.sin(rad)))) + 1
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)  # (2, 3)
    m[:, 2] += (out_w / 2 - w / 2, out_h / 2 - h / 2)
    pix = cv2.warpAffine(np.ascontiguousarray(pix), m, (out_w, out_h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(
        np.ascontiguousarray(mask, dtype=np.uint8), m, (out_w, out_h), flags=cv2.INTER_NEAREST
    ).astype(bool)
    import os

    if os.environ.get("CP_HUE"):
        hsv = cv2.cvtColor(np.ascontiguousarray(pix), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + int(rng.integers(0, 180))) % 180).astype(
            np.uint8
        )
        v = hsv[..., 2].astype(np.float32) * rng.uniform(0.7, 1.3)
        hsv[..., 2] = np.clip(v, 0, 255).astype(np.uint8)
        pix = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return pix, mask
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    return pix[box], mask[box]


def _recolor(pix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 crop with its hue turned by any angle and its brightness scaled by 0.7-1.3."""
    hsv = cv2.cvtColor(np.ascontiguousarray(pix), cv2.COLOR_RGB2HSV)  # H in 0..179
    hue = hsv[..., 0].astype(np.int32) + int(rng.integers(0, 180))
    hsv[..., 0] = (hue % 180).astype(np.uint8)
    value = hsv[..., 2].astype(np.float32) * rng.uniform(0.7, 1.3)
    hsv[..., 2] = np.clip(np.rint(value), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _others_visible(id_map: np.ndarray, segments: list[dict[str, Any]], placed: np.ndarray) -> bool:
    """Each thing instance keeps at least ``MIN_VISIBLE`` of its pixels (and one pixel)."""
    covered = np.bincount(id_map[placed].ravel(), minlength=id_map.max() + 1)
    total = np.bincount(id_map.ravel(), minlength=id_map.max() + 1)
    for s in segments:
        if s.get("isthing"):
            sid = int(s["id"])
            if sid < len(total) and total[sid] - covered[sid] < max(1, MIN_VISIBLE * total[sid]):
                return False
    return True
