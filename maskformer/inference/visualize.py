"""Overlay pictures of panoptic, semantic and instance results, with a class-name legend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskformer.config import DatasetMeta

RGB = tuple[int, int, int]
LegendEntry = tuple[str, RGB]


def jitter_color(color: Sequence[int], key: int, amount: int = 40) -> RGB:
    """A reproducible variation of ``color`` for instance ``key`` (things of one class differ)."""
    rng = np.random.default_rng(int(key) * 7919 + 17)
    c = np.asarray(color, np.int32) + rng.integers(-amount, amount + 1, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


BAND_ROWS = 256  # rows rendered at a time: float and label temporaries stay small on big photos


def blend(
    image: np.ndarray,
    color_map: np.ndarray,
    where: np.ndarray,
    alpha: float = 0.55,
    borders: bool = True,
) -> np.ndarray:
    """Mix ``color_map`` into ``image`` on ``where`` and draw white boundaries between regions.

    Computed in bands of rows (the boundaries with a one-row halo), so a 48 MP photo needs no
    full-size float copy.

    Args:
        image: (H, W, 3) uint8.
        color_map: (H, W, 3) uint8 region colours.
        where: (H, W) bool, pixels to colour (void stays the plain image).
        alpha: weight of the colour.
        borders: outline the regions of ``color_map``.

    Returns:
        (H, W, 3) uint8.
    """
    h, w = image.shape[:2]
    out = np.empty_like(image)
    thick = min(h, w) > 64  # thicker lines on larger pictures
    for y0 in range(0, h, BAND_ROWS):
        y1 = min(y0 + BAND_ROWS, h)
        band = image[y0:y1].astype(np.float32)
        sel = where[y0:y1]
        band[sel] = (1 - alpha) * band[sel] + alpha * color_map[y0:y1][sel].astype(np.float32)
        out[y0:y1] = band.round().clip(0, 255).astype(np.uint8)
        if borders:
            out[y0:y1][_band_borders(color_map, where, y0, y1, thick)] = 255
    return out


def _labels(color_map: np.ndarray) -> np.ndarray:
    return color_map.astype(np.int32) @ np.array([1, 256, 65536], np.int32)  # (h, W) int32


def _band_borders(
    color_map: np.ndarray, where: np.ndarray, y0: int, y1: int, thick: bool
) -> np.ndarray:
    """Rows y0 .. y1 of ``region_borders(labels of color_map, where)`` (with ``thick`` lines)."""
    h = color_map.shape[0]
    a = max(0, y0 - 1) if thick else y0  # the dilation reads the row above
    labels = _labels(color_map[a : min(h, y1 + 1)])  # one row below for the vertical edges
    edge = np.zeros((y1 - a, labels.shape[1]), bool)
    edge[:, :-1] |= labels[: y1 - a, :-1] != labels[: y1 - a, 1:]
    below = labels[1 : y1 - a + 1]
    edge[: len(below)] |= labels[: len(below)] != below
    if thick:
        edge = cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
        if a < y0:  # drop the halo row (dilation spreads down and right only)
            edge = edge[1:]
    above = where[y0 - 1 : y1 - 1] if y0 > 0 else np.concatenate([where[-1:], where[: y1 - 1]])
    return edge & (where[y0:y1] | above | np.roll(where[y0:y1], 1, 1))


def region_borders(label_map: np.ndarray, where: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has another label (inside ``where``)."""
    edge = np.zeros(label_map.shape, bool)
    edge[:, :-1] |= label_map[:, :-1] != label_map[:, 1:]
    edge[:-1, :] |= label_map[:-1, :] != label_map[1:, :]
    if min(label_map.shape) > 64:  # thicker lines on larger pictures
        edge = cv2.dilate(edge.astype(np.uint8), np.ones((2, 2), np.uint8)).astype(bool)
    return edge & (where | np.roll(where, 1, 0) | np.roll(where, 1, 1))


def add_legend(
    picture: np.ndarray, entries: Sequence[LegendEntry], max_rows: int = 40
) -> np.ndarray:
    """Append a white panel on the right listing colour swatches and names (first ``max_rows``)."""
    if not entries:
        return picture
    h = picture.shape[0]
    size = int(np.clip(h / 40, 10, 18))
    font = _font(size)
    row = size + 6
    shown = list(entries)[:max_rows]
    more = len(entries) - len(shown)
    lines = [name for name, _ in shown] + ([f"... {more} more"] if more > 0 else [])
    text_w = max(int(font.getlength(t)) for t in lines)
    panel = Image.new("RGB", (size + text_w + 20, max(h, row * len(lines) + 8)), "white")
    draw = ImageDraw.Draw(panel)
    for i, text in enumerate(lines):
        y = 4 + i * row
        if i < len(shown):
            draw.rectangle([4, y, 4 + size, y + size], fill=tuple(shown[i][1]), outline="black")
        draw.text((size + 12, y), text, fill="black", font=font)
    panel_np = np.asarray(panel)
    if panel_np.shape[0] > h:  # a tall legend: pad the picture with white below
        pad = np.full((panel_np.shape[0] - h, picture.shape[1], 3), 255, np.uint8)
        picture = np.concatenate([picture, pad], 0)
    return np.concatenate([picture, panel_np[: picture.shape[0]]], 1)


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_semantic(
    image: np.ndarray,
    sem_seg: np.ndarray,
    meta: DatasetMeta,
    alpha: float = 0.55,
    legend: bool = True,
) -> np.ndarray:
    """Colour each pixel by its class; the legend lists the classes present, largest first.

    Args:
        image: (H, W, 3) uint8.
        sem_seg: (H, W) int contiguous class ids; ids outside 0..K-1 (ignore) stay uncoloured.
    """
    sem = np.asarray(sem_seg)
    k = meta.num_classes
    palette = np.asarray(meta.colors, np.uint8).reshape(-1, 3)
    color_map = np.empty((*sem.shape, 3), np.uint8)
    valid = np.empty(sem.shape, bool)
    counts = np.zeros(k, np.int64)
    for y0 in range(0, sem.shape[0], BAND_ROWS):
        band = sem[y0 : y0 + BAND_ROWS].astype(np.int64)
        ok = (band >= 0) & (band < k)
        valid[y0 : y0 + BAND_ROWS] = ok
        color_map[y0 : y0 + BAND_ROWS] = palette[np.where(ok, band, 0)]
        counts += np.bincount(band[ok], minlength=k)
    out = blend(image, color_map, valid, alpha)
    if not legend:
        return out
    order = [c for c in np.argsort(-counts, kind="stable") if counts[c] > 0]
    return add_legend(out, [(meta.class_names[c], tuple(meta.colors[c])) for c in order])


def render_panoptic(
    image: np.ndarray,
    panoptic_seg: np.ndarray,
    segments: Sequence[dict],
    meta: DatasetMeta,
    alpha: float = 0.55,
    legend: bool = True,
) -> np.ndarray:
    """Colour each segment (things jittered per instance); void pixels stay the plain image.

    Args:
        image: (H, W, 3) uint8.
        panoptic_seg: (H, W) int segment ids, 0 = void.
        segments: dicts with ``id``, ``category_id`` (contiguous), optional ``isthing``/``score``.
    """
    ids = np.asarray(panoptic_seg)
    lut = np.zeros((int(ids.max(initial=0)) + 1, 3), np.uint8)
    entries: list[LegendEntry] = []
    for s in sorted(segments, key=lambda s: -int(s.get("area", 0))):
        sid, cls = int(s["id"]), int(s["category_id"])
        if sid >= len(lut):
            continue
        thing = bool(s.get("isthing", meta.isthing[cls]))
        color = jitter_color(meta.colors[cls], sid) if thing else tuple(meta.colors[cls])
        lut[sid] = color
        score = f" {s['score']:.2f}" if "score" in s else ""
        entries.append((f"{meta.class_names[cls]}{score}", color))
    known = np.zeros(len(lut), bool)
    known[[int(s["id"]) for s in segments if int(s["id"]) < len(lut)]] = True
    known[0] = False
    color_map = np.empty((*ids.shape, 3), np.uint8)
    where = np.empty(ids.shape, bool)
    for y0 in range(0, ids.shape[0], BAND_ROWS):
        band = np.clip(ids[y0 : y0 + BAND_ROWS], 0, None).astype(np.intp)  # negative: void
        color_map[y0 : y0 + BAND_ROWS] = lut[band]
        where[y0 : y0 + BAND_ROWS] = known[band]
    out = blend(image, color_map, where, alpha)
    return add_legend(out, entries) if legend else out


def render_instances(
    image: np.ndarray,
    masks: Any,
    labels: Sequence[int],
    scores: Sequence[float],
    meta: DatasetMeta,
    score_threshold: float = 0.5,
    alpha: float = 0.55,
    legend: bool = True,
) -> np.ndarray:
    """Paint instances with score >= ``score_threshold`` (lowest score first, best on top).

    Args:
        image: (H, W, 3) uint8.
        masks: (N, H, W) bool: an array, a tensor or lazy ``InstanceMasks`` (read one at a time).
        labels: (N,) contiguous class ids.
        scores: (N,) confidence.
    """
    keep = [
        i
        for i in np.argsort(np.asarray(scores, np.float64), kind="stable")
        if scores[i] >= score_threshold
    ]
    id_map = np.zeros(image.shape[:2], np.int32)
    segments = []
    for rank, i in enumerate(keep, start=1):
        mask = np.asarray(masks[int(i)], bool)
        id_map[mask] = rank
        segments.append(
            {
                "id": rank,
                "category_id": int(labels[i]),
                "isthing": True,
                "score": float(scores[i]),
                "area": int(mask.sum()),
            }
        )
    return render_panoptic(image, id_map, segments, meta, alpha, legend)
