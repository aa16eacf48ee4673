"""What the Annotate tab's events do, as plain functions over a shared AppContext and a Session.

No gradio here: ``app.annotate_tab`` wires these to components and turns ``UserError`` into a
warning. Every function that changes the annotation goes through ``Session.push`` (one undo step
with a label). Canvas edits arrive in full-size image coordinates (``app.raster``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app import autosave, canvas, editing, raster, render, transfer
from app.context import AppContext, ModelState, make_context
from app.editing import Annotation, EditError
from app.session import Merge, Session
from app.uncertainty import image_uncertainty
from maskformer.errors import ImageReadError, UserError

__all__ = ["AppContext", "make_context"]

THUMB_SIDE = 96  # gallery thumbnail size (longer side, pixels)
MAX_BRUSH = 2000.0  # brush width limit in image pixels


# ------------------------------------------------------------------------------------ opening


def open_upload(
    ctx: AppContext, s: Session, path: str | Path | None, score: float, overlap: float
) -> Session:
    """Add an uploaded file to the workspace and open it (bad files raise ImageReadError)."""
    if not path:
        raise ImageReadError("no file was uploaded")
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ImageReadError(f"cannot read the uploaded file {p.name}: {e}") from None
    rec = ctx.workspace.add_image(data, p.name)
    return open_image(ctx, s, rec.id, score, overlap)


def open_example(ctx: AppContext, s: Session, name: str, score: float, overlap: float) -> Session:
    path = next((p for p in ctx.examples if p.name == name), None)
    if path is None:
        raise UserError(f"there is no example called {name!r}")
    rec = ctx.workspace.add_image(path.read_bytes(), path.name)
    return open_image(ctx, s, rec.id, score, overlap)


def open_image(ctx: AppContext, s: Session, image_id: int, score: float, overlap: float) -> Session:
    """Run the model once on a workspace image and keep what every later view needs.

    Unsaved edits of the image open before are stored first (autosave). A stored correction is
    opened as is; otherwise the model merge is stored as "predicted".
    """
    ws = ctx.workspace
    rec = ws.image(int(image_id))  # an unknown id fails before anything changes
    image = ws.load_image(rec.id)
    model = ctx.model
    pred = model.predictor.predict(image)
    autosave.flush(ctx, s)
    s.start(rec.id, rec.name, image.shape[:2])
    s.view = canvas.view_image(image, *canvas.display_size(*image.shape[:2]))
    s.prediction = pred
    s.model_version_id = model.version_id
    pan = _merge(s, score, overlap)
    stored = ws.load_annotation(rec.id)
    if stored is not None and rec.status == "corrected":
        s.annotation = editing.make_annotation(stored[0], stored[1])
        s.edited = True
        s.stored_status = "corrected"
    else:
        s.annotation = merged_annotation(ctx, s, np.asarray(pan.panoptic_seg))
        ws.save_annotation(
            rec.id,
            s.annotation.id_map,
            list(s.annotation.segments),
            status="predicted",
            source="model",
            model_version_id=model.version_id,
        )
        s.stored_status = rec.status if rec.status == "corrected" else "predicted"
    # the review queue's score, from the merge just made (a second merge costs seconds at 12 MP)
    ws.set_uncertainty(rec.id, image_uncertainty(_SameMerge(pred, pan), score, overlap))
    s.message = f"Opened {rec.name} ({image.shape[1]}x{image.shape[0]})."
    return s


class _SameMerge:
    """A ``Prediction`` whose ``panoptic`` at the given thresholds is an already made result."""

    def __init__(self, pred: Any, pan: Any):
        self._pred, self._pan = pred, pan

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pred, name)

    def panoptic(self, score: float | None = None, overlap: float | None = None) -> Any:
        return self._pan


def inspect_prediction(ctx: AppContext, s: Session) -> Session:
    """The part of opening done after the canvas shows: the query thumbnails."""
    s.require_image()
    h, w = render.thumbnail_size(*s.image_hw, THUMB_SIDE)
    small = canvas.view_image(s.view, h, w)
    s.thumbs = np.stack(render.thumbnails(small, s.prediction.thumbnail_probs(h, w).numpy()))
    return s


# ------------------------------------------------------------------------------------ merging


def _merge(s: Session, score: float, overlap: float) -> Any:
    """Merge at new thresholds; returns the engine's ``PanopticResult`` (the session keeps only
    its segment list: its full-size map becomes the annotation or is dropped)."""
    s.score_threshold, s.overlap_threshold = float(score), float(overlap)
    # The engine's own merge on the cached outputs: no model run, and exactly what
    # `predict` / `evaluate` compute at these thresholds.
    pan = s.prediction.panoptic(float(score), float(overlap))
    s.merged = Merge(list(pan.segments), list(pan.dropped), float(score), float(overlap))
    return pan


def prediction_categories(ctx: AppContext, s: Session) -> list[int]:
    """Workspace category id of each class of the model that made ``s.prediction``: after a model
    switch an open image keeps the classes of the model that predicted it."""
    meta = s.prediction.meta
    model: ModelState = ctx.model
    if meta == model.meta:
        return list(model.class_categories)
    return ctx.workspace.ensure_meta(meta)


def merged_annotation(ctx: AppContext, s: Session, merge_map: np.ndarray) -> Annotation:
    """The current merge (``s.merged`` and its id map) as an editable annotation (model classes
    -> workspace categories)."""
    cats = prediction_categories(ctx, s)
    segs = [
        {
            "id": int(g["id"]),
            "category_id": cats[int(g["category_id"])],
            "isthing": bool(g["isthing"]),
            "query": int(g["query"]),
            "score": float(g["score"]),
        }
        for g in s.merged.segments
    ]
    return editing.make_annotation(merge_map, segs)


def remerge(ctx: AppContext, s: Session, score: float, overlap: float) -> Session:
    """Re-merge the cached outputs at new thresholds (no model run).

    The annotation follows the merge until the user edits it; after that only the model's views
    change ("Reset to model" brings the merge back as an undoable step).
    """
    if s.prediction is None:
        s.score_threshold, s.overlap_threshold = float(score), float(overlap)
        return s
    merge_map = np.asarray(_merge(s, score, overlap).panoptic_seg)
    if s.edited:
        s.touch(f"Merged at score {score:.2f}, overlap {overlap:.2f}; your edits are kept.")
        return s
    with s.lock:
        s.annotation = merged_annotation(ctx, s, merge_map)
        s.dirty = True  # the stored prediction follows the sliders (autosave)
    s.touch(f"Merged at score {score:.2f}, overlap {overlap:.2f}.")
    return s


def reset_to_model(ctx: AppContext, s: Session) -> Session:
    s.require_image()
    merge_map = np.asarray(_merge(s, s.score_threshold, s.overlap_threshold).panoptic_seg)
    s.push(merged_annotation(ctx, s, merge_map), "reset to the model's merge", edited=False)
    return s


# ------------------------------------------------------------------------------------ edits


def _segment_id(s: Session, seg_id: Any, what: str = "segment") -> int:
    s.require_image()
    if seg_id is None or seg_id == "":
        if what == "segment" and s.selected is not None:
            return s.selected
        raise EditError(f"select a {what} first")
    try:
        sid = int(seg_id)
    except (TypeError, ValueError):
        raise EditError(f"{what} {seg_id!r} is not a segment id") from None
    s.annotation.segment(sid)  # raises for unknown ids
    return sid


def category_for(ctx: AppContext, cls: Any, isthing_if_new: bool = True) -> tuple[int, bool, str]:
    """(workspace category id, isthing, name) of a category given by id or by name; an unknown
    name creates a new category."""
    if isinstance(cls, (int, np.integer)) and not isinstance(cls, bool):
        cat = ctx.workspace.category(int(cls))
        return cat.id, cat.isthing, cat.name
    name = str(cls or "").strip()
    if not name:
        raise EditError("choose a class, or type a new class name")
    cat = ctx.workspace.category_by_name(name)
    if cat is None:
        cat = ctx.workspace.add_category(name, isthing=bool(isthing_if_new))
    return cat.id, cat.isthing, cat.name


def _name(ctx: AppContext, category_id: int) -> str:
    return ctx.workspace.category(category_id).name


def select_segment(s: Session, seg_id: Any) -> Session:
    s.selected = None if seg_id in (None, "") else _segment_id(s, seg_id)
    s.touch()
    return s


def select_at(s: Session, x: float, y: float) -> Session:
    """Select the segment under image point (x, y) (full-size pixels); void clears it."""
    s.require_image()
    h, w = s.image_hw
    col, row = int(np.floor(float(x))), int(np.floor(float(y)))
    if not (0 <= col < w and 0 <= row < h):
        raise EditError(f"point ({x}, {y}) lies outside the {w}x{h} image")
    sid = int(s.annotation.id_map[row, col])
    s.selected = sid or None
    s.touch()
    return s


def relabel_segment(
    ctx: AppContext, s: Session, seg_id: Any, cls: Any, isthing_if_new: bool = True
) -> Session:
    sid = _segment_id(s, seg_id)
    cat_id, isthing, name = category_for(ctx, cls, isthing_if_new)
    s.push(editing.relabel(s.annotation, sid, cat_id, isthing), f"relabel {sid} → {name}")
    s.selected = sid
    return s


def delete_segment(s: Session, seg_id: Any) -> Session:
    sid = _segment_id(s, seg_id)
    s.push(editing.delete(s.annotation, sid), f"delete {sid}")
    return s


def merge_segments(s: Session, keep_id: Any, other_id: Any) -> Session:
    """Merge ``other_id`` into ``keep_id`` (which keeps its class)."""
    keep = _segment_id(s, keep_id)
    other = _segment_id(s, other_id, "second segment to merge")
    s.push(editing.merge(s.annotation, keep, other), f"merge {other} → {keep}")
    s.selected = keep
    return s


def split_segment(s: Session, seg_id: Any) -> Session:
    sid = _segment_id(s, seg_id)
    new = editing.split(s.annotation, sid)
    if new is s.annotation:
        raise EditError(f"segment {sid} is one connected part; nothing to split")
    parts = len(new.segments) - len(s.annotation.segments) + 1
    s.push(new, f"split {sid} into {parts} parts")
    s.selected = sid
    return s


def accept_query(ctx: AppContext, s: Session, query: Any) -> Session:
    """Add a (dropped) query's mask (probability >= 0.5) as a segment of its best real class."""
    s.require_image()
    if query is None or query == "":
        raise EditError("choose a dropped query first")
    q = int(query)
    if not 0 <= q < s.prediction.num_queries:
        raise EditError(f"query {q} does not exist")
    probs = s.prediction.class_probs[q, :-1]  # (K,)
    label = int(probs.argmax())
    mask = s.prediction.query_mask(q).numpy()
    if not mask.any():
        raise EditError(f"query {q} has no pixel with mask probability >= 0.5")
    ann, sid = editing.add_segment(
        s.annotation,
        mask,
        prediction_categories(ctx, s)[label],
        bool(s.prediction.meta.isthing[label]),
        query=q,
        score=float(probs[label]),
    )
    s.push(ann, f"accept query {q} as segment {sid}")
    s.selected = sid
    return s


def swap_second_class(ctx: AppContext, s: Session, seg_id: Any) -> Session:
    """Relabel a segment to its source query's second most likely real class."""
    sid = _segment_id(s, seg_id)
    q = s.annotation.segment(sid).get("query")
    if q is None:
        raise EditError(f"segment {sid} was drawn by hand and has no model query")
    probs = s.prediction.class_probs[int(q), :-1]  # (K,)
    if probs.numel() < 2:
        raise EditError("the model has only one class")
    second = int(probs.topk(2).indices[1])
    cat = prediction_categories(ctx, s)[second]
    ann = editing.relabel(s.annotation, sid, cat, bool(s.prediction.meta.isthing[second]))
    s.push(ann, f"2nd class for {sid} → {_name(ctx, cat)}")
    s.selected = sid
    return s


def _shape_edit(
    ctx: AppContext,
    s: Session,
    part: tuple[np.ndarray, raster.Box] | None,
    mode: str,
    seg_id: Any,
    cls: Any,
    tool: str,
) -> Session:
    """Apply a rasterised stroke / polygon: add to or erase from a segment, paint a new segment
    of class ``cls`` (add, nothing selected) or erase from every segment (erase, nothing selected).
    """
    if mode not in ("add", "erase"):
        raise EditError(f"unknown {tool} mode {mode!r}; expected 'add' or 'erase'")
    if part is None:
        raise EditError(f"the {tool} covers no pixel of the image")
    mask = raster.paste(s.image_hw, part)
    empty = np.zeros_like(mask)
    if seg_id not in (None, ""):
        sid = _segment_id(s, seg_id)
        add, remove = (mask, empty) if mode == "add" else (empty, mask)
        verb = "on" if mode == "add" else "erased from"
        s.push(editing.edit_mask(s.annotation, sid, add, remove), f"{tool} {verb} {sid}")
        s.selected = sid if sid in s.annotation.ids else None
    elif mode == "add":
        if cls in (None, ""):
            raise EditError("pick a class for the new segment (keys 1-9, or the class list)")
        cat_id, isthing, name = category_for(ctx, cls)
        ann, sid = editing.add_segment(s.annotation, mask, cat_id, isthing)
        s.push(ann, f"new segment {sid} ({name}, {tool})")
        s.selected = sid
    else:
        id_map = s.annotation.id_map.copy()
        id_map[mask] = 0
        s.push(editing.make_annotation(id_map, s.annotation.segments), f"{tool} erased")
    return s


def brush(
    ctx: AppContext,
    s: Session,
    points: Any,
    width: float,
    mode: str = "add",
    seg_id: Any = None,
    cls: Any = None,
) -> Session:
    """A brush stroke: the polyline ``points`` ([x, y] in image pixels) of ``width`` pixels."""
    s.require_image()
    width = float(width)
    if not 0 < width <= MAX_BRUSH:
        raise EditError(f"the brush width must lie in (0, {MAX_BRUSH:g}] pixels, got {width:g}")
    part = raster.stroke_mask(s.image_hw, points or [], width)
    return _shape_edit(ctx, s, part, mode, seg_id, cls, "brush" if mode == "add" else "eraser")


def polygon(
    ctx: AppContext, s: Session, points: Any, mode: str = "add", seg_id: Any = None, cls: Any = None
) -> Session:
    """A polygon (``points`` in image pixels, closed automatically)."""
    s.require_image()
    return _shape_edit(
        ctx, s, raster.polygon_mask(s.image_hw, points or []), mode, seg_id, cls, "polygon"
    )


def undo(s: Session) -> Session:
    s.undo()
    return s


def redo(s: Session) -> Session:
    s.redo()
    return s


def save(ctx: AppContext, s: Session) -> str:
    """Store the annotation as the image's correction, edited or not (one transaction)."""
    s.require_image()
    autosave.store(ctx, s, force_corrected=True)
    n = len(s.annotation.segments)
    s.touch(f"Saved {n} segments of {s.image_name} as corrected.")
    return f"Saved {n} segments of image {s.image_id} ({s.image_name})."


# ------------------------------------------------------------------------------------ workspace


def import_source(ctx: AppContext, src: str | Path | list[str] | None) -> str:
    """Import a folder of images, a COCO dataset / JSON, or uploaded image files."""
    if not src:
        raise UserError("give a folder or COCO JSON path, or upload image files, to import")
    report = transfer.import_source(ctx.workspace, src)
    return report.summary()


def export(ctx: AppContext, fmt: str, include_predicted: bool = False) -> Path:
    """Export the workspace to a zip under ``<workspace>/exports`` and return its path."""
    return transfer.export_zip(ctx.workspace, fmt, include_predicted=include_predicted)
