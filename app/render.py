"""Pictures the app makes on the server: query heatmap thumbnails, the instance view, colours."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

RGB = tuple[int, int, int]

# Anchors of a perceptually ordered dark-blue -> yellow colour map (like viridis), 0..1 -> RGB.
_CMAP_POS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_CMAP_RGB = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32
)


def hex_color(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def jitter(color: RGB, seed: int, amount: int = 48) -> RGB:
    """A reproducible variation of a class colour, so two instances of a class look different."""
    rng = np.random.default_rng(seed)
    delta = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(color) + delta, 0, 255))  # type: ignore[return-value]


def colormap(values: np.ndarray) -> np.ndarray:
    """(...) floats in [0, 1] -> (..., 3) uint8 RGB."""
    v = np.clip(values, 0, 1)
    chans = [np.interp(v, _CMAP_POS, _CMAP_RGB[:, c]) for c in range(3)]
    return np.stack(chans, -1).round().astype(np.uint8)


def heatmap(image: np.ndarray, probs: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """A (H, W) probability map coloured over a greyed image: (H, W, 3) uint8."""
    grey = image.astype(np.float32).mean(-1, keepdims=True)  # (H, W, 1)
    out = grey * (1 - alpha) + colormap(probs).astype(np.float32) * alpha
    return out.round().astype(np.uint8)


def thumbnail_size(h: int, w: int, side: int) -> tuple[int, int]:
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def thumbnails(image: np.ndarray, small_probs: np.ndarray) -> list[np.ndarray]:
    """Heatmap thumbnails: ``small_probs`` (Q, h, w) already at thumbnail size."""
    h, w = small_probs.shape[1:]
    small = np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    return [heatmap(small, p) for p in small_probs]


def instance_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    captions: list[str],
    colors: list[RGB],
    alpha: float = 0.45,
) -> np.ndarray:
    """Instances drawn largest first: translucent masks, boxes, captions. masks: (N, H, W) bool."""
    out = image.astype(np.float32)
    order = np.argsort([-int(m.sum()) for m in masks]) if len(masks) else []
    boxes = []
    for i in order:
        m = masks[i]
        if not m.any():
            continue
        out[m] = out[m] * (1 - alpha) + np.array(colors[i], np.float32) * alpha
        ys, xs = np.nonzero(m)
        boxes.append((int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()), i))
    pil = Image.fromarray(out.round().astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for x0, y0, x1, y1, i in boxes:
        draw.rectangle((x0, y0, x1, y1), outline=tuple(colors[i]), width=2)
        draw.text((x0 + 3, y0 + 2), captions[i], fill=(255, 255, 255))
    return np.asarray(pil)
