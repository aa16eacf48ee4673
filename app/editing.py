"""Pure segment edits on an annotation (id map + segment list); each returns a new Annotation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from maskformer.errors import UserError


class EditError(UserError):
    """An edit that cannot be applied (unknown segment, empty mask, wrong size)."""


@dataclass(frozen=True)
class Annotation:
    """What the user edits and saves. Never mutated: edits build a new one (cheap undo snapshots).

    Attributes:
        id_map: (H, W) segment ids, 0 = void: uint16 while every id fits (half the memory of
            int32 on a 12 MP photo), int32 beyond (``id_dtype``).
        segments: one dict per id present: ``id``, ``category_id`` (workspace category id),
            ``isthing``, ``area`` (pixels), ``query`` (source query or None), ``score`` (or None).
    """

    id_map: np.ndarray
    segments: tuple[dict[str, Any], ...]

    @property
    def ids(self) -> list[int]:
        return [int(s["id"]) for s in self.segments]

    def segment(self, seg_id: int) -> dict[str, Any]:
        for s in self.segments:
            if int(s["id"]) == int(seg_id):
                return s
        raise EditError(f"there is no segment {seg_id} in this annotation")

    def mask(self, seg_id: int) -> np.ndarray:
        """(H, W) bool pixels of one segment."""
        self.segment(seg_id)
        return self.id_map == int(seg_id)


def id_dtype(max_id: int) -> np.dtype:
    """The smallest id map dtype holding ids up to ``max_id``."""
    return np.dtype(np.uint16) if max_id <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def with_room(id_map: np.ndarray, max_id: int) -> np.ndarray:
    """A writable copy of ``id_map`` whose dtype holds ``max_id``."""
    return id_map.astype(np.promote_types(id_map.dtype, id_dtype(max_id)), copy=True)


def make_annotation(id_map: np.ndarray, segments: list[dict[str, Any]] | tuple) -> Annotation:
    """Normalise: compact id map (``id_dtype``), areas recomputed, segments without pixels
    dropped.

    Pixels whose id has no segment entry become void, so the two parts always agree.
    """
    id_map = np.asarray(id_map)
    if id_map.ndim != 2:
        raise EditError(f"an id map must be 2-D, got shape {id_map.shape}")
    if id_map.size and int(id_map.min()) < 0:
        raise EditError("segment ids must not be negative")
    max_id = max([int(id_map.max()) if id_map.size else 0, *(int(s["id"]) for s in segments)])
    id_map = id_map.astype(id_dtype(max_id), copy=True)
    known = np.array(sorted({int(s["id"]) for s in segments} - {0}), dtype=np.int64)
    stray = (id_map != 0) & ~np.isin(id_map, known)
    if stray.any():
        id_map[stray] = 0
    return _with_areas(id_map, segments)


def _with_areas(id_map: np.ndarray, segments) -> Annotation:
    areas = np.bincount(id_map.ravel(), minlength=1) if id_map.size else np.zeros(1, np.int64)
    out = []
    for s in segments:
        sid = int(s["id"])
        area = int(areas[sid]) if 0 < sid < len(areas) else 0
        if area > 0:
            out.append({**s, "id": sid, "area": area})
    return Annotation(id_map, tuple(out))


def next_id(ann: Annotation) -> int:
    return max(ann.ids, default=0) + 1


def relabel(ann: Annotation, seg_id: int, category_id: int, isthing: bool) -> Annotation:
    """Give a segment another category (pixels unchanged)."""
    ann.segment(seg_id)
    segs = tuple(
        {**s, "category_id": int(category_id), "isthing": bool(isthing)}
        if int(s["id"]) == int(seg_id)
        else s
        for s in ann.segments
    )
    return Annotation(ann.id_map, segs)


def delete(ann: Annotation, seg_id: int) -> Annotation:
    """Remove a segment; its pixels become void."""
    mask = ann.mask(seg_id)
    id_map = ann.id_map.copy()
    id_map[mask] = 0
    return Annotation(id_map, tuple(s for s in ann.segments if int(s["id"]) != int(seg_id)))


def merge(ann: Annotation, keep_id: int, other_id: int) -> Annotation:
    """Move ``other_id``'s pixels into ``keep_id`` (keeping its category); drop ``other_id``."""
    if int(keep_id) == int(other_id):
        raise EditError(f"cannot merge segment {keep_id} with itself")
    ann.segment(keep_id)
    mask = ann.mask(other_id)
    id_map = ann.id_map.copy()
    id_map[mask] = int(keep_id)
    segs = [s for s in ann.segments if int(s["id"]) != int(other_id)]
    return _with_areas(id_map, segs)


def split(ann: Annotation, seg_id: int, connectivity: int = 1) -> Annotation:
    """Split a segment into its connected parts (4-connected by default; 2 = 8-connected).

    The largest part keeps the id; the others get new ids with the same category and source.
    """
    mask = ann.mask(seg_id)
    structure = ndimage.generate_binary_structure(2, connectivity)
    labels, n = ndimage.label(mask, structure=structure)  # (H, W), parts 1..n
    if n <= 1:
        return ann
    sizes = np.bincount(labels.ravel())[1:]  # (n,)
    order = np.argsort(-sizes, kind="stable") + 1  # part labels, largest first
    src = ann.segment(seg_id)
    id_map = with_room(ann.id_map, next_id(ann) + n)
    segs = list(ann.segments)
    new = next_id(ann)
    for part in order[1:]:
        id_map[labels == part] = new
        segs.append({**src, "id": new})
        new += 1
    return _with_areas(id_map, segs)


def add_segment(
    ann: Annotation,
    mask: np.ndarray,
    category_id: int,
    isthing: bool,
    *,
    query: int | None = None,
    score: float | None = None,
) -> tuple[Annotation, int]:
    """Paint a new segment over ``mask`` (it takes those pixels from any other segment).

    Returns:
        The new annotation and the new segment's id.
    """
    mask = _check_mask(ann, mask, "new segment")
    if not mask.any():
        raise EditError("the new segment has no pixels: paint with the 'add' colour first")
    sid = next_id(ann)
    id_map = with_room(ann.id_map, sid)
    id_map[mask] = sid
    seg = {
        "id": sid,
        "category_id": int(category_id),
        "isthing": bool(isthing),
        "query": None if query is None else int(query),
        "score": None if score is None else float(score),
    }
    return _with_areas(id_map, [*ann.segments, seg]), sid


def edit_mask(ann: Annotation, seg_id: int, add: np.ndarray, remove: np.ndarray) -> Annotation:
    """Brush edit: the segment becomes ``(mask | add) & ~remove``.

    Added pixels are taken from whatever segment had them; removed pixels become void. A segment
    that loses all its pixels disappears.
    """
    add = _check_mask(ann, add, "brush 'add' strokes")
    remove = _check_mask(ann, remove, "brush 'remove' strokes")
    old = ann.mask(seg_id)
    new = (old | add) & ~remove
    id_map = ann.id_map.copy()
    id_map[old & ~new] = 0
    id_map[new] = int(seg_id)
    return _with_areas(id_map, ann.segments)


def _check_mask(ann: Annotation, mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != ann.id_map.shape:
        raise EditError(
            f"{what}: mask shape {mask.shape} differs from the image's {ann.id_map.shape} (H, W)"
        )
    return mask


def class_counts(ann: Annotation) -> dict[int, int]:
    """category id -> number of segments."""
    out: dict[int, int] = {}
    for s in ann.segments:
        out[int(s["category_id"])] = out.get(int(s["category_id"]), 0) + 1
    return out
