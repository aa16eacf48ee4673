"""Exact, deterministic rasterisation of the canvas's edits at the image's full resolution.

Coordinates are continuous image coordinates in full-resolution pixels: pixel (column i, row j)
covers [i, i + 1) x [j, j + 1) and its centre is (i + 0.5, j + 0.5). A pixel belongs to a shape
when its centre does:

- a brush stroke (polyline + width): centres within ``width / 2`` of the polyline (the union of
  one capsule per segment; a single point is a disc);
- a polygon: centres inside by the even-odd rule, a centre exactly on a left edge counts and one
  on a right edge does not (each crossing is half-open), so two polygons sharing an edge never
  both take a pixel.

Only float64 arithmetic on the points is involved, so the same edit gives the same pixels on any
machine; the browser's preview is drawn the same way but is only a preview.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from app.editing import EditError

MAX_POINTS = 20_000  # a longer stroke / polygon is refused (a client gone wrong)
Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), half-open


def _points(points: Sequence[Sequence[float]], what: str) -> np.ndarray:
    try:
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)  # (N, 2) x, y
    except (TypeError, ValueError):
        raise EditError(f"the {what} points must be [x, y] pairs of numbers") from None
    if len(pts) > MAX_POINTS:
        raise EditError(f"the {what} has {len(pts)} points; at most {MAX_POINTS} are accepted")
    if not np.isfinite(pts).all():
        raise EditError(f"the {what} has a point that is not a finite number")
    return pts


def _clip_box(y0: float, x0: float, y1: float, x1: float, shape: tuple[int, int]) -> Box | None:
    h, w = shape
    box = (
        max(0, math.floor(y0)),
        max(0, math.floor(x0)),
        min(h, math.ceil(y1) + 1),
        min(w, math.ceil(x1) + 1),
    )
    return box if box[0] < box[2] and box[1] < box[3] else None


def stroke_mask(
    shape: tuple[int, int], points: Sequence[Sequence[float]], width: float
) -> tuple[np.ndarray, Box] | None:
    """Pixels whose centre lies within ``width / 2`` of the polyline through ``points``.

    Returns:
        ``(mask, box)``: a bool mask of the box ``(y0, x0, y1, x1)`` of the image, or None when
        the stroke covers no pixel of an image of ``shape`` (H, W).
    """
    pts = _points(points, "stroke")
    if len(pts) == 0:
        return None
    if not (math.isfinite(width) and width > 0):
        raise EditError(f"the brush width must be a positive number, got {width}")
    r = width / 2
    lo, hi = pts.min(0) - r, pts.max(0) + r
    box = _clip_box(lo[1], lo[0], hi[1], hi[0], shape)
    if box is None:
        return None
    y0, x0, y1, x1 = box
    out = np.zeros((y1 - y0, x1 - x0), bool)
    segs = np.stack([pts[:-1], pts[1:]], 1) if len(pts) > 1 else np.stack([pts, pts], 1)
    for (ax, ay), (bx, by) in segs:  # each capsule on its own small box
        sb = _clip_box(min(ay, by) - r, min(ax, bx) - r, max(ay, by) + r, max(ax, bx) + r, shape)
        if sb is None:
            continue
        cy = np.arange(sb[0], sb[2], dtype=np.float64)[:, None] + 0.5  # (h, 1)
        cx = np.arange(sb[1], sb[3], dtype=np.float64)[None, :] + 0.5  # (1, w)
        dx, dy = bx - ax, by - ay
        len2 = dx * dx + dy * dy
        if len2 > 0:
            t = np.clip(((cx - ax) * dx + (cy - ay) * dy) / len2, 0.0, 1.0)  # (h, w)
            px, py = ax + t * dx, ay + t * dy
        else:
            px, py = ax, ay
        inside = (cx - px) ** 2 + (cy - py) ** 2 <= r * r  # (h, w)
        out[sb[0] - y0 : sb[2] - y0, sb[1] - x0 : sb[3] - x0] |= inside
    return (out, box) if out.any() else None


def polygon_mask(
    shape: tuple[int, int], points: Sequence[Sequence[float]]
) -> tuple[np.ndarray, Box] | None:
    """Pixels whose centre is inside the polygon ``points`` (closed automatically; even-odd).

    Returns:
        ``(mask, box)`` as for ``stroke_mask``, or None when no pixel centre is inside.
    """
    pts = _points(points, "polygon")
    if len(pts) < 3:
        raise EditError(f"a polygon needs at least 3 points, got {len(pts)}")
    lo, hi = pts.min(0), pts.max(0)
    box = _clip_box(lo[1], lo[0], hi[1], hi[0], shape)
    if box is None:
        return None
    y0, x0, y1, x1 = box
    cy = np.arange(y0, y1, dtype=np.float64) + 0.5  # (h,) row centres
    cx = np.arange(x0, x1, dtype=np.float64) + 0.5  # (w,) column centres
    a, b = pts, np.roll(pts, -1, axis=0)  # edges a -> b
    counts = np.zeros((len(cy), len(cx)), np.int32)
    for (ax, ay), (bx, by) in zip(a, b):
        if ay == by:
            continue  # horizontal edges never cross a row of centres
        lo_y, hi_y = min(ay, by), max(ay, by)
        rows = (cy >= lo_y) & (cy < hi_y)  # half-open: a shared vertex is crossed once
        if not rows.any():
            continue
        xs = ax + (cy[rows] - ay) * (bx - ax) / (by - ay)  # (r,) crossing of each row
        counts[rows] += cx[None, :] >= xs[:, None]  # (r, w): centres right of the crossing
    out = counts % 2 == 1
    return (out, box) if out.any() else None


def paste(shape: tuple[int, int], part: tuple[np.ndarray, Box] | None) -> np.ndarray:
    """A full-size (H, W) bool mask from ``(mask, box)`` (all False for None)."""
    full = np.zeros(shape, bool)
    if part is not None:
        mask, (y0, x0, y1, x1) = part
        full[y0:y1, x0:x1] = mask
    return full
