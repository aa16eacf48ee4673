"""Synthetic panoptic data: textured shapes ("things") on textured regions ("stuff"), deterministic.

Classes (contiguous id: name), things first as in COCO; JSON category ids are contiguous + 1:
0 circle, 1 square, 2 triangle, 3 star, 4 ring (things); 5 sky (smooth gradient),
6 grass (fine noise), 7 water (wavy stripes) (stuff). K = 8, matching the tiny preset.

A thing's class is its shape: colours and textures (solid, gradient, stripes, noise) are drawn
independently of the class. A stuff class is its texture, in random colours. Images are square,
0-8 instances each; an instance is rejected when it would leave itself or an earlier one with less
than 40 % of its full area (or less than 64 px at 128 px) visible. Item ``i`` of seed ``s`` uses
``np.random.default_rng([s, i])``, so the output is byte-identical for any number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskformer.config import DatasetMeta
from maskformer.data import coco
from maskformer.data.base import Sample

THING_NAMES = ("circle", "square", "triangle", "star", "ring")
STUFF_NAMES = ("sky", "grass", "water")
CLASS_NAMES = THING_NAMES + STUFF_NAMES
CLASS_COLORS = (
    (220, 20, 60),
    (0, 130, 200),
    (255, 180, 0),
    (145, 30, 180),
    (0, 190, 160),
    (135, 206, 235),
    (60, 180, 75),
    (0, 60, 140),
)
MIN_VISIBLE_FRACTION = 0.4
MIN_VISIBLE_PIXELS_128 = 64  # at 128 px; scales with the image area
MIN_STUFF_FRACTION = 0.06
_SHIFT = 4  # cv2 sub-pixel bits
_ONE = 1 << _SHIFT


def synthetic_meta() -> DatasetMeta:
    """The 8 classes of the synthetic data (things first), with COCO ids 1..8."""
    return DatasetMeta(
        class_names=CLASS_NAMES,
        isthing=tuple(n in THING_NAMES for n in CLASS_NAMES),
        colors=CLASS_COLORS,
        dataset_ids=tuple(range(1, len(CLASS_NAMES) + 1)),
        name="synthetic-shapes",
    )


# --------------------------------------------------------------------------------------------
# textures: (h, w, 3) float32 images


def _coords(h: int, w: int, angle: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs * math.cos(angle) + ys * math.sin(angle)  # (h, w)


def _gradient(h: int, w: int, c0: np.ndarray, c1: np.ndarray, angle: float) -> np.ndarray:
    t = _coords(h, w, angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    return c0 + t[..., None] * (c1 - c0)  # (h, w, 3)


def _stripes(t: np.ndarray, period: float, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    v = np.clip(0.5 + 1.5 * np.sin(t * (2 * math.pi / period)), 0.0, 1.0)
    return c0 + v[..., None] * (c1 - c0)  # (h, w, 3)


def _noise(h: int, w: int, rng: np.random.Generator, sigma: float, cell: float) -> np.ndarray:
    """Value noise of std ~sigma and feature size ~cell px, shared by the channels plus 20 % own."""
    gh, gw = max(int(h / cell), 1) + 1, max(int(w / cell), 1) + 1
    grid = rng.normal(0.0, sigma, (gh, gw, 1)) + rng.normal(0.0, 0.2 * sigma, (gh, gw, 3))
    return cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _other_color(rng: np.random.Generator, c: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """A colour at distance ~lo..hi from ``c`` (clipped into range)."""
    d = rng.normal(size=3)
    d = d / (np.linalg.norm(d) + 1e-6) * rng.uniform(lo, hi)
    return np.clip(c + d, 0, 255).astype(np.float32)


def _stuff_texture(cls: int, s: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    c0 = _color(rng)
    name = CLASS_NAMES[cls]
    if name == "sky":
        tex = _gradient(
            s, s, c0, _other_color(rng, c0, 60, 120), math.pi / 2 + rng.uniform(-0.4, 0.4)
        )
        return tex + _noise(s, s, rng, 2.0, 4 * scale)
    if name == "grass":
        return c0 + _noise(s, s, rng, 38.0, 1.5 * scale)
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)  # water: wavy, roughly horizontal stripes
    amp, wave = rng.uniform(1.0, 3.0) * scale, rng.uniform(18, 40) * scale
    t = ys + amp * np.sin(xs * (2 * math.pi / wave) + rng.uniform(0, 2 * math.pi))
    return _stripes(t, rng.uniform(5, 9) * scale, c0, _other_color(rng, c0, 60, 110))


def _thing_texture(
    h: int, w: int, base: np.ndarray, scale: float, rng: np.random.Generator
) -> np.ndarray:
    kind = rng.choice(4, p=(0.35, 0.25, 0.2, 0.2))
    if kind == 0:  # solid
        return np.broadcast_to(base, (h, w, 3)) + _noise(h, w, rng, 3.0, 3.0)
    if kind == 1:  # gradient
        return _gradient(h, w, base, _other_color(rng, base, 50, 110), rng.uniform(0, 2 * math.pi))
    if kind == 2:  # stripes in a random direction
        return _stripes(
            _coords(h, w, rng.uniform(0, math.pi)),
            rng.uniform(3, 7) * scale,
            base,
            _other_color(rng, base, 50, 100),
        )
    return base + _noise(h, w, rng, 25.0, 1.0)


# --------------------------------------------------------------------------------------------
# shapes: binary masks drawn on a canvas with a margin, so clipping at the border is measurable


def _poly(center: np.ndarray, radii: np.ndarray, angle: float) -> np.ndarray:
    a = angle + np.arange(len(radii)) * (2 * math.pi / len(radii))
    pts = center + np.stack([np.cos(a), np.sin(a)], 1) * radii[:, None]
    return np.round(pts * _ONE).astype(np.int32)[None]  # (1, P, 2) fixed point


def _draw_shape(
    cls: int, canvas: np.ndarray, center: np.ndarray, r: float, rng: np.random.Generator
) -> None:
    name, angle = THING_NAMES[cls], rng.uniform(0, 2 * math.pi)
    c = tuple(int(v) for v in np.round(center * _ONE))
    if name in ("circle", "ring"):
        cv2.circle(canvas, c, int(r * _ONE), 1, -1, cv2.LINE_8, _SHIFT)
        if name == "ring":
            cv2.circle(canvas, c, int(r * rng.uniform(0.5, 0.65) * _ONE), 0, -1, cv2.LINE_8, _SHIFT)
        return
    if name == "square":
        radii = np.full(4, r * 1.1)
    elif name == "triangle":
        radii = np.full(3, r * 1.3)
    else:  # star: alternating outer / inner radius
        radii = np.tile([r * 1.3, r * rng.uniform(0.5, 0.6)], 5)
    cv2.fillPoly(canvas, _poly(center, radii, angle), 1, cv2.LINE_8, _SHIFT)


# --------------------------------------------------------------------------------------------
# one image


def _stuff_layout(s: int, rng: np.random.Generator) -> np.ndarray:
    """(s, s) int32 stuff class per pixel: argmax of smooth random fields over 1-3 classes."""
    n = int(rng.choice([1, 2, 3], p=[0.2, 0.45, 0.35]))
    classes = len(THING_NAMES) + rng.choice(len(STUFF_NAMES), n, replace=False)
    fields = [
        cv2.resize(
            rng.normal(size=(3, 3)).astype(np.float32), (s, s), interpolation=cv2.INTER_CUBIC
        )
        for _ in classes
    ]
    fields = np.stack(fields)  # (n, s, s)
    alive = list(range(n))
    while True:
        arg = fields.argmax(0)
        frac = np.bincount(arg.ravel(), minlength=n) / arg.size
        small = [k for k in alive if frac[k] < MIN_STUFF_FRACTION]
        if not small:
            return classes[arg].astype(np.int32)
        alive.remove(small[0])  # drop a too-small region type and re-split
        fields[small[0]] = -np.inf


def generate_sample(index: int, *, seed: int = 0, size: int = 128) -> Sample:
    """Make synthetic image ``index`` of ``seed``: (size, size) image, id map and segments."""
    rng = np.random.default_rng([seed, index])
    s, scale = size, size / 128.0
    stuff = _stuff_layout(s, rng)
    image = np.zeros((s, s, 3), np.float32)
    for cls in np.unique(stuff):
        np.copyto(image, _stuff_texture(int(cls), s, scale, rng), where=(stuff == cls)[..., None])
    things, thing_cls = _place_things(image, s, scale, rng)
    image += 2.0 * rng.standard_normal(image.shape, dtype=np.float32)  # sensor noise
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    id_map, segments = _segments(stuff, things, thing_cls, s)
    return Sample(
        image=image, id_map=id_map, segments=segments, image_id=index, file_name=f"{index:06d}.png"
    )


def _place_things(
    image: np.ndarray, s: int, scale: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[int]]:
    """Paint 0-8 instances onto ``image`` (in place); returns the (s, s) instance map (0 = none)."""
    target = int(rng.integers(0, 9))
    margin = math.ceil(0.25 * s * 1.3) + 2
    min_px = MIN_VISIBLE_PIXELS_128 * scale * scale
    inst = np.zeros((s, s), np.int32)
    full_area: list[float] = []
    classes: list[int] = []
    for _ in range(target * 6):
        if len(classes) == target:
            break
        cls, r = int(rng.integers(len(THING_NAMES))), rng.uniform(0.07, 0.2) * s
        center = rng.uniform(0.6 * r, s - 0.6 * r, 2)
        canvas = np.zeros((s + 2 * margin, s + 2 * margin), np.uint8)
        _draw_shape(cls, canvas, center + margin, r, rng)
        full = float(canvas.sum())
        mask = canvas[margin : margin + s, margin : margin + s].astype(bool)
        if not _visible_enough(inst, mask, full, full_area, min_px):
            continue
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        base = _contrasting_color(image[mask], rng)
        tex = _thing_texture(int(y1 - y0), int(x1 - x0), base, scale, rng)
        box = mask[y0:y1, x0:x1]
        np.copyto(image[y0:y1, x0:x1], tex, where=box[..., None])
        classes.append(cls)
        full_area.append(full)
        inst[mask] = len(classes)
    return inst, classes


def _visible_enough(
    inst: np.ndarray, mask: np.ndarray, full: float, full_area: list[float], min_px: float
) -> bool:
    """Would the new (top) instance and every earlier one keep enough visible area?"""
    own = float(mask.sum())
    if own < max(0.7 * full, min_px):
        return False  # too much of the new shape falls outside the image
    if not full_area:
        return True
    before = np.bincount(inst.ravel(), minlength=len(full_area) + 1)[1:]
    lost = np.bincount(inst[mask], minlength=len(full_area) + 1)[1:]
    after = before - lost
    need = np.maximum(MIN_VISIBLE_FRACTION * np.asarray(full_area), min_px)
    return bool(np.all(after >= need))


def _contrasting_color(under: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour at least 100 away (RGB distance) from the mean of the pixels beneath."""
    mean = under.mean(0)
    for _ in range(20):
        c = _color(rng)
        if np.linalg.norm(c - mean) > 100:
            return c
    return (255.0 - mean).astype(np.float32)


def _segments(
    stuff: np.ndarray, things: np.ndarray, thing_cls: list[int], s: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Panoptic id map (stuff segments first, then instances) and segment dicts."""
    id_map = np.zeros((s, s), np.int32)
    segments: list[dict[str, Any]] = []
    free = things == 0
    min_stuff = 2 * MIN_VISIBLE_PIXELS_128 * (s / 128.0) ** 2
    for cls in np.unique(stuff):
        m = (stuff == cls) & free
        if m.sum() < min_stuff:
            continue  # a stuff remnant this small stays void
        segments.append(
            {
                "id": len(segments) + 1,
                "category_id": int(cls),
                "iscrowd": 0,
                "isthing": False,
                "area": int(m.sum()),
            }
        )
        id_map[m] = len(segments)
    for k, cls in enumerate(thing_cls):
        m = things == k + 1
        segments.append(
            {
                "id": len(segments) + 1,
                "category_id": cls,
                "iscrowd": 0,
                "isthing": True,
                "area": int(m.sum()),
            }
        )
        id_map[m] = len(segments)
    return id_map, segments


# --------------------------------------------------------------------------------------------
# the dataset on disk


def _write_one(args: tuple[Path, int, int, int]) -> tuple[dict, dict, list[dict]]:
    out, index, seed, size = args
    meta = synthetic_meta()
    smp = generate_sample(index, seed=seed, size=size)
    coco.write_png(out / "images" / smp.file_name, smp.image)
    coco.write_png(out / "panoptic" / smp.file_name, coco.id2rgb(smp.id_map))
    return (
        coco.image_entry(index, smp.file_name, size, size),
        coco.panoptic_annotation(smp.id_map, smp.segments, index, smp.file_name, meta),
        coco.instance_annotations(smp.id_map, smp.segments, index, meta),
    )


def write_synthetic_dataset(
    out_dir: str | Path,
    num_images: int,
    *,
    seed: int = 0,
    size: int = 128,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``num_images`` synthetic images in the project layout (see ``coco.write_dataset``).

    Writes ``images/*.png``, ``panoptic/*.png``, ``panoptic.json`` and ``instances.json`` (RLE);
    the same arguments give byte-identical files whatever ``workers`` is.
    """
    out = Path(out_dir)
    for sub in ("images", "panoptic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(out, i, seed, size) for i in range(num_images)]
    images, panoptic, instances = [], [], []
    pool = get_context("fork").Pool(workers) if workers > 1 else None
    try:
        results = pool.imap(_write_one, jobs, chunksize=16) if pool else map(_write_one, jobs)
        for n, (im, pan, inst) in enumerate(results, 1):
            images.append(im)
            panoptic.append(pan)
            for a in inst:
                instances.append({**a, "id": len(instances) + 1})
            if progress:
                progress(n)
    finally:
        if pool:
            pool.close()
            pool.join()
    meta = synthetic_meta()
    info = {"description": f"synthetic shapes, seed {seed}, size {size}"}
    cats = coco.categories_from_meta(meta)
    coco.write_json(
        out / "panoptic.json",
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": panoptic,
            "categories": cats,
        },
    )
    coco.write_json(
        out / "instances.json",
        {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": instances,
            "categories": cats,
        },
    )
    return out
