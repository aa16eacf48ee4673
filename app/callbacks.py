"""What the UI's events do, as plain functions over a shared AppContext and a per-user Session.

No gradio here: ``app.ui`` wires these to components and turns ``UserError`` into ``gr.Warning``.
Every function that changes the annotation goes through ``Session.push`` (one undo step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import editing, render, transfer
from app.editing import Annotation, EditError
from app.session import Session
from app.store import Workspace
from app.uncertainty import image_uncertainty
from maskformer.errors import ImageReadError, UserError
from maskformer.inference import Prediction

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
THUMB_SIDE = 96  # gallery thumbnail size (longer side, pixels)
EDITOR_MAX_SIDE = 768  # larger images are cropped around the segment in the brush editor
ADD_COLOR = (50, 204, 112)  # brush colour that adds pixels to the segment
REMOVE_COLOR = (204, 50, 50)  # brush colour that removes them


@dataclass
class AppContext:
    """Shared by every user and read-only after start-up: the model and the workspace."""

    predictor: Any
    workspace: Workspace
    meta: Any  # the model's DatasetMeta
    class_categories: list[int]  # workspace category id of each model class
    examples: list[Path] = field(default_factory=list)
    model_version_id: int | None = None
    default_score: float = 0.8
    default_overlap: float = 0.8


def make_context(
    predictor: Any,
    workspace: Workspace,
    checkpoint: str | Path = "",
    examples_dir: Path = EXAMPLES_DIR,
) -> AppContext:
    """Register the model's classes (and the checkpoint as a model version, made the active one:
    the version the app serves, restored by the next start) in the workspace."""
    meta = predictor.meta
    version = next((v for v in workspace.model_versions() if v.path == str(checkpoint)), None)
    if version is None and checkpoint:
        version = workspace.add_model_version(checkpoint, active=True)
    elif version is not None and not version.active:
        workspace.set_active_model_version(version.id)
    test = getattr(getattr(predictor, "cfg", None), "test", None)
    return AppContext(
        predictor=predictor,
        workspace=workspace,
        meta=meta,
        class_categories=workspace.ensure_meta(meta),
        examples=sorted(examples_dir.glob("*.png")) if examples_dir.is_dir() else [],
        model_version_id=version.id if version else None,
        default_score=float(getattr(test, "object_mask_threshold", 0.8)),
        default_overlap=float(getattr(test, "overlap_threshold", 0.8)),
    )


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
    """Run the model once on a workspace image and cache what every later view needs.

    A stored correction is opened as is; otherwise the model merge is stored as "predicted".
    """
    ws = ctx.workspace
    rec = ws.image(int(image_id))
    image = ws.load_image(rec.id)
    pred = ctx.predictor.predict(image)
    s.start(rec.id, rec.name, image)
    s.prediction = pred
    s.semantic = pred.semantic()
    s.instances = pred.instances()
    s.thumbs = _thumbnails(image, pred)
    _merge(ctx, s, score, overlap)
    stored = ws.load_annotation(rec.id)
    if stored is not None and rec.status == "corrected":
        s.annotation = editing.make_annotation(stored[0], stored[1])
        s.edited = True
    else:
        s.annotation = merged_annotation(ctx, s)
        ws.save_annotation(
            rec.id,
            s.annotation.id_map,
            list(s.annotation.segments),
            status="predicted",
            source="model",
            model_version_id=ctx.model_version_id,
        )
        # The review queue's score (app.uncertainty) of the prediction just stored.
        ws.set_uncertainty(rec.id, image_uncertainty(pred, score, overlap))
    return s


def _thumbnails(image: np.ndarray, pred: Prediction) -> list[np.ndarray]:
    h, w = render.thumbnail_size(*image.shape[:2], THUMB_SIDE)
    return render.thumbnails(image, pred.thumbnail_probs(h, w).numpy())  # (Q, h, w)


# ------------------------------------------------------------------------------------ merging


def _merge(ctx: AppContext, s: Session, score: float, overlap: float) -> None:
    s.score_threshold, s.overlap_threshold = float(score), float(overlap)
    # The engine's own merge on cached sigmoid probabilities and mask areas: no model run, and
    # exactly what `predict` / `evaluate` compute at these thresholds.
    s.merged = s.prediction.panoptic(float(score), float(overlap))


def prediction_categories(ctx: AppContext, s: Session) -> list[int]:
    """Workspace category id of each class of the model that made ``s.prediction``: after a model
    switch an open image keeps the classes of the model that predicted it."""
    meta = s.prediction.meta
    if meta == ctx.meta:
        return ctx.class_categories
    return ctx.workspace.ensure_meta(meta)


def merged_annotation(ctx: AppContext, s: Session) -> Annotation:
    """The current merge as an editable annotation (model classes -> workspace categories)."""
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
    return editing.make_annotation(s.merged.panoptic_seg.numpy(), segs)


def remerge(ctx: AppContext, s: Session, score: float, overlap: float) -> Session:
    """Re-merge the cached outputs at new thresholds (no model run).

    The annotation follows the merge until the user edits it; after that only the model views
    change ("Reset to model" brings the merge back as an undoable step).
    """
    if s.prediction is None:
        s.score_threshold, s.overlap_threshold = float(score), float(overlap)
        return s
    _merge(ctx, s, score, overlap)
    if not s.edited:
        s.annotation = merged_annotation(ctx, s)
        s.selected = s.selected if s.selected in s.annotation.ids else None
    return s


def reset_to_model(ctx: AppContext, s: Session) -> Session:
    s.require_image()
    s.push(merged_annotation(ctx, s))
    s.edited = False
    return s


# ------------------------------------------------------------------------------------ edits


def _segment_id(s: Session, seg_id: Any, what: str = "segment") -> int:
    s.require_image()
    if seg_id is None or seg_id == "":
        raise EditError(f"select a {what} first")
    try:
        sid = int(seg_id)
    except (TypeError, ValueError):
        raise EditError(f"{what} {seg_id!r} is not a segment id") from None
    s.annotation.segment(sid)  # raises for unknown ids
    return sid


def category_for(ctx: AppContext, name: str | None, isthing_if_new: bool) -> tuple[int, bool]:
    """(workspace category id, isthing) by name; an unknown name creates a new category."""
    name = (name or "").strip()
    if not name:
        raise EditError("choose a class, or type a new class name")
    cat = ctx.workspace.category_by_name(name)
    if cat is None:
        cat = ctx.workspace.add_category(name, isthing=bool(isthing_if_new))
    return cat.id, cat.isthing


def select_segment(s: Session, seg_id: Any) -> Session:
    s.selected = None if seg_id in (None, "") else _segment_id(s, seg_id)
    return s


def relabel_segment(
    ctx: AppContext, s: Session, seg_id: Any, class_name: str | None, isthing_if_new: bool = True
) -> Session:
    sid = _segment_id(s, seg_id)
    cat_id, isthing = category_for(ctx, class_name, isthing_if_new)
    s.push(editing.relabel(s.annotation, sid, cat_id, isthing))
    s.selected = sid
    return s


def delete_segment(s: Session, seg_id: Any) -> Session:
    s.push(editing.delete(s.annotation, _segment_id(s, seg_id)))
    return s


def merge_segments(s: Session, keep_id: Any, other_id: Any) -> Session:
    keep = _segment_id(s, keep_id)
    other = _segment_id(s, other_id, "second segment to merge")
    s.push(editing.merge(s.annotation, keep, other))
    s.selected = keep
    return s


def split_segment(s: Session, seg_id: Any) -> Session:
    sid = _segment_id(s, seg_id)
    new = editing.split(s.annotation, sid)
    if new is s.annotation:
        raise EditError(f"segment {sid} is one connected part; nothing to split")
    s.push(new)
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
    s.push(ann)
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
    s.push(
        editing.relabel(
            s.annotation,
            sid,
            prediction_categories(ctx, s)[second],
            bool(s.prediction.meta.isthing[second]),
        )
    )
    s.selected = sid
    return s


def undo(s: Session) -> Session:
    s.undo()
    return s


def redo(s: Session) -> Session:
    s.redo()
    return s


def save(ctx: AppContext, s: Session) -> str:
    """Store the annotation as the image's correction (one transaction)."""
    s.require_image()
    ann = s.annotation
    ctx.workspace.save_annotation(
        s.image_id,
        ann.id_map,
        list(ann.segments),
        status="corrected",
        source="user",
        model_version_id=ctx.model_version_id,
    )
    s.dirty = False
    s.edited = True
    return f"Saved {len(ann.segments)} segments of image {s.image_id} ({s.image_name})."


# ------------------------------------------------------------------------------------ brush


def editor_value(ctx: AppContext, s: Session) -> dict[str, Any] | None:
    """Brush editor content: the selected segment burned into the background (no layers: a
    preloaded layer is not drawn by gradio 6.31's editor, see GRADIO_NOTES section 5).

    Big images are cropped around the segment; ``s.editor_window`` remembers where.
    """
    if s.image is None or s.annotation is None:
        s.editor_window = None
        return None
    h, w = s.image.shape[:2]
    mask = s.annotation.mask(s.selected) if s.selected is not None else None
    y0, x0, y1, x1 = 0, 0, h, w
    if mask is not None and max(h, w) > EDITOR_MAX_SIDE:
        ys, xs = np.nonzero(mask)
        my, mx = max(16, (np.ptp(ys) + 1) // 4), max(16, (np.ptp(xs) + 1) // 4)
        y0, y1 = max(0, ys.min() - my), min(h, ys.max() + 1 + my)
        x0, x1 = max(0, xs.min() - mx), min(w, xs.max() + 1 + mx)
    s.editor_window = (int(y0), int(x0), int(y1), int(x1))
    color = ADD_COLOR
    if s.selected is not None:
        cats = {c.id: c for c in ctx.workspace.categories()}
        cat = cats.get(int(s.annotation.segment(s.selected)["category_id"]))
        color = cat.color if cat else ADD_COLOR
    crop = np.s_[y0:y1, x0:x1]
    bg = render.burn_segment(
        s.image[crop], None if mask is None else mask[crop], color, s.annotation.id_map[crop]
    )
    return {"background": bg, "layers": [], "composite": bg}


def strokes(value: dict[str, Any] | None, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Split the editor's painted pixels into (add, remove) (h, w) bool masks by brush colour.

    Painted = alpha > 127 in a layer (strokes are antialiased at their rim), or, in the flattened
    ``composite``, a pixel closer to a brush colour than to the background we sent: gradio 6.31's
    editor does not always return its stroke layer after the background was replaced, but its
    composite always holds the strokes.
    """
    value = value or {}
    add, remove = np.zeros(shape, bool), np.zeros(shape, bool)
    for layer in [np.asarray(x) for x in value.get("layers") or [] if x is not None]:
        _check_rgba(layer, shape, "brush layer")
        a, r = _by_colour(layer[..., :3], layer[..., 3] > 127)
        add |= a
        remove |= r
    bg, comp = value.get("background"), value.get("composite")
    if bg is not None and comp is not None:
        bg, comp = np.asarray(bg), np.asarray(comp)
        _check_rgba(bg, shape, "editor background")
        _check_rgba(comp, shape, "editor composite")
        rgb = comp[..., :3].astype(np.int32)
        d_bg = ((rgb - bg[..., :3]) ** 2).sum(-1)
        d_brush = np.minimum(_dist2(rgb, ADD_COLOR), _dist2(rgb, REMOVE_COLOR))
        a, r = _by_colour(comp[..., :3], d_brush < d_bg)
        add |= a
        remove |= r
    return add, remove


def _dist2(rgb: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    return ((rgb.astype(np.int32) - np.array(color)) ** 2).sum(-1)


def _by_colour(rgb: np.ndarray, painted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(add, remove): painted pixels nearer the add colour, and those nearer the remove colour."""
    d_add, d_rem = _dist2(rgb, ADD_COLOR), _dist2(rgb, REMOVE_COLOR)
    return painted & (d_add <= d_rem), painted & (d_rem < d_add)


def _check_rgba(a: np.ndarray, shape: tuple[int, int], what: str) -> None:
    if a.ndim != 3 or a.shape[2] != 4:
        raise EditError(f"the {what} has shape {a.shape}; expected (H, W, 4) RGBA")
    if a.shape[:2] != tuple(shape):
        raise EditError(
            "the brush strokes do not match the editor image; select the segment again and repaint"
        )


def apply_brush(
    ctx: AppContext,
    s: Session,
    value: dict[str, Any] | None,
    class_name: str | None,
    isthing_if_new: bool = True,
) -> Session:
    """Apply the strokes: edit the selected segment, or with none selected draw a new segment of
    ``class_name`` from the 'add' strokes."""
    s.require_image()
    if s.editor_window is None:
        raise EditError("the brush editor is not ready; select a segment (or none) first")
    y0, x0, y1, x1 = s.editor_window
    add_c, rem_c = strokes(value, (y1 - y0, x1 - x0))
    if not add_c.any() and not rem_c.any():
        raise EditError("nothing painted: paint with the green (add) or red (remove) brush first")
    full = s.annotation.id_map.shape
    add, remove = np.zeros(full, bool), np.zeros(full, bool)
    add[y0:y1, x0:x1], remove[y0:y1, x0:x1] = add_c, rem_c
    if s.selected is None:
        cat_id, isthing = category_for(ctx, class_name, isthing_if_new)
        ann, sid = editing.add_segment(s.annotation, add & ~remove, cat_id, isthing)
        s.push(ann)
        s.selected = sid
    else:
        sid = s.selected
        s.push(editing.edit_mask(s.annotation, sid, add, remove))
        s.selected = sid if sid in s.annotation.ids else None
    return s


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
