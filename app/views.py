"""Read-only views of a session for the UI: overlays, gallery, query detail, pixel probe, tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app import render
from app.editing import Annotation, EditError
from app.session import Session
from app.store import Category, Workspace

NO_OBJECT = "no-object"
REASONS = {
    "no-object": "its best class is 'no object'",
    "below-threshold": "class score not above the score threshold",
    "overlap": "kept less than the overlap threshold of its mask (occluded)",
    "empty": "won no pixel, or its mask has no pixel with probability >= 0.5",
}


@dataclass(frozen=True)
class QueryDetail:
    heatmap: np.ndarray  # (H, W, 3) uint8
    top5: dict[str, float]  # class name -> probability (no-object included)
    text: str  # area and fate in the merge


def categories(ws: Workspace) -> dict[int, Category]:
    return {c.id: c for c in ws.categories()}


def class_name(meta: Any, label: int) -> str:
    """Model class name; index K (one past the last class) is no-object."""
    return meta.class_names[label] if 0 <= label < meta.num_classes else NO_OBJECT


def segment_label(seg: dict[str, Any], cats: dict[int, Category]) -> str:
    cat = cats.get(int(seg["category_id"]))
    return f"{seg['id']}: {cat.name if cat else '?'}"


def segment_colors(ann: Annotation, cats: dict[int, Category]) -> dict[int, render.RGB]:
    """Stuff segments use the class colour; thing instances a jittered one (as detectron2 does)."""
    out = {}
    for s in ann.segments:
        cat = cats.get(int(s["category_id"]))
        color = cat.color if cat else (128, 128, 128)
        out[int(s["id"])] = render.jitter(color, int(s["id"])) if s.get("isthing") else color
    return out


def panoptic_view(ws: Workspace, s: Session) -> tuple[Any, dict[str, str]]:
    """AnnotatedImage value ``(image, [(mask, label), ...])`` and its colour map."""
    if s.annotation is None:
        return None, {}
    cats = categories(ws)
    colors = segment_colors(s.annotation, cats)
    anns, cmap = [], {}
    for seg in s.annotation.segments:
        label = segment_label(seg, cats)
        anns.append(((s.annotation.id_map == seg["id"]).astype(np.float32), label))
        cmap[label] = render.hex_color(colors[int(seg["id"])])
    return (s.image, anns), cmap


def panoptic_picture(ws: Workspace, s: Session) -> np.ndarray | None:
    """The annotation as one blended picture (used by the editor tab and screenshots)."""
    if s.annotation is None:
        return None
    colors = segment_colors(s.annotation, categories(ws))
    return render.overlay(s.image, s.annotation.id_map, colors)


def semantic_view(meta: Any, s: Session) -> tuple[Any, dict[str, str]]:
    """AnnotatedImage value for the semantic map (one annotation per class present)."""
    if s.semantic is None:
        return None, {}
    sem = np.asarray(s.semantic)
    anns, cmap = [], {}
    for label in np.unique(sem).tolist():
        name = class_name(meta, label)
        anns.append(((sem == label).astype(np.float32), name))
        cmap[name] = render.hex_color(meta.colors[label])
    return (s.image, anns), cmap


def instance_view(meta: Any, s: Session) -> np.ndarray | None:
    """Instances scoring above the score threshold, as masks, boxes and captions."""
    if s.instances is None:
        return None
    inst = s.instances
    keep = [i for i in range(len(inst)) if float(inst.scores[i]) > s.score_threshold]
    masks = np.stack([inst.masks[i].numpy() for i in keep]) if keep else np.zeros((0, 1, 1), bool)
    labels = [int(inst.labels[i]) for i in keep]
    captions = [f"{class_name(meta, c)} {float(inst.scores[i]):.2f}" for c, i in zip(labels, keep)]
    colors = [render.jitter(meta.colors[c], int(inst.queries[i])) for c, i in zip(labels, keep)]
    return render.instance_overlay(s.image, masks, captions, colors)


def query_scores(s: Session) -> tuple[np.ndarray, np.ndarray]:
    """Best real class and its probability per query: (Q,) int64, (Q,) float32."""
    probs = s.prediction.class_probs[:, :-1].numpy()  # (Q, K)
    return probs.argmax(1), probs.max(1)


def query_fate(meta: Any, s: Session, q: int) -> str:
    """How query q fared in the current merge, in words."""
    for seg in s.merged.segments:
        if int(seg["query"]) == q:
            return f"survived as segment {seg['id']} ({class_name(meta, int(seg['category_id']))})"
    for d in s.merged.dropped:
        if d.query == q:
            return f"dropped ({d.reason}: {REASONS[d.reason]})"
    label = int(s.prediction.class_probs[q].argmax())
    for seg in s.merged.segments:  # a kept stuff query merges into its class's first segment
        if int(seg["category_id"]) == label and not seg["isthing"]:
            return f"merged into stuff segment {seg['id']} ({class_name(meta, label)})"
    return "not in the merge"


def gallery(meta: Any, s: Session, dropped_only: bool) -> list[tuple[np.ndarray, str]]:
    """Query thumbnails sorted by score, captioned "q<index> <class> <score>".

    With ``dropped_only`` only the queries the merge dropped are listed, with the reason.
    Also records the query at each position in ``s.gallery_queries``.
    """
    if s.prediction is None:
        s.gallery_queries = []
        return []
    labels, scores = query_scores(s)
    reasons = {d.query: d.reason for d in s.merged.dropped}
    order = [int(q) for q in np.argsort(-scores, kind="stable")]
    if dropped_only:
        order = [q for q in order if q in reasons]
    s.gallery_queries = order
    items = []
    for q in order:
        caption = f"q{q} {class_name(meta, int(labels[q]))} {scores[q]:.2f}"
        if dropped_only:
            caption += f" - {reasons[q]}"
        items.append((s.thumbs[q], caption))
    return items


def query_detail(meta: Any, s: Session, q: int) -> QueryDetail:
    """Mask probability heatmap, top-5 classes, mask area and fate of query q."""
    if s.prediction is None:
        raise EditError("open an image first")
    num_q = s.prediction.num_queries
    if not 0 <= q < num_q:
        raise EditError(f"query {q} does not exist (the model has {num_q} queries)")
    probs = s.prediction.query_probs(q).numpy()  # (H, W)
    cls = s.prediction.class_probs[q]  # (K+1,)
    top = cls.topk(min(5, cls.numel()))
    top5 = {class_name(meta, int(i)): float(p) for p, i in zip(top.values, top.indices)}
    area = s.prediction.query_area(q)
    text = f"query {q}: mask area {area} px (probability >= 0.5); {query_fate(meta, s, q)}"
    return QueryDetail(render.heatmap(s.image, probs), top5, text)


def probe(meta: Any, ws: Workspace, s: Session, x: int, y: int) -> tuple[str, list[list[Any]]]:
    """The queries claiming pixel (x, y): mask probability >= 0.5, strongest first.

    Returns:
        A one-line summary and rows [query, mask prob, class, class score, prob x score].
    """
    if s.prediction is None:
        raise EditError("open an image first")
    h, w = s.image.shape[:2]
    if not (0 <= x < w and 0 <= y < h):
        raise EditError(f"pixel ({x}, {y}) lies outside the {w}x{h} image")
    mask_p = s.prediction.pixel_probs(x, y).numpy()  # (Q,)
    labels, scores = query_scores(s)
    claim = np.nonzero(mask_p >= 0.5)[0]
    claim = claim[np.argsort(-(mask_p[claim] * scores[claim]), kind="stable")]
    rows = [
        [
            int(q),
            round(float(mask_p[q]), 3),
            class_name(meta, int(labels[q])),
            round(float(scores[q]), 3),
            round(float(mask_p[q] * scores[q]), 3),
        ]
        for q in claim
    ]
    seg_id = int(s.annotation.id_map[y, x])
    where = "void" if seg_id == 0 else segment_label(s.annotation.segment(seg_id), categories(ws))
    return f"pixel ({x}, {y}): segment {where}; {len(rows)} queries claim it", rows


SEGMENT_HEADERS = ["id", "class", "kind", "area", "query", "score"]


def segment_rows(ws: Workspace, s: Session) -> list[list[Any]]:
    if s.annotation is None:
        return []
    cats = categories(ws)
    rows = []
    for seg in s.annotation.segments:
        cat = cats.get(int(seg["category_id"]))
        score = seg.get("score")
        rows.append(
            [
                int(seg["id"]),
                cat.name if cat else "?",
                "thing" if seg.get("isthing") else "stuff",
                int(seg["area"]),
                "" if seg.get("query") is None else int(seg["query"]),
                "" if score is None else round(float(score), 3),
            ]
        )
    return rows


def segment_choices(ws: Workspace, s: Session) -> list[tuple[str, int]]:
    if s.annotation is None:
        return []
    cats = categories(ws)
    return [
        (f"{segment_label(seg, cats)} ({seg['area']} px)", int(seg["id"]))
        for seg in s.annotation.segments
    ]


def dropped_choices(meta: Any, s: Session) -> list[tuple[str, int]]:
    if s.merged is None:
        return []
    return [
        (f"q{d.query} {class_name(meta, d.label)} {d.score:.2f} ({d.reason})", d.query)
        for d in s.merged.dropped
        if d.reason != "no-object"
    ]


WORKSPACE_HEADERS = ["id", "name", "size", "status", "classes"]


def workspace_rows(ws: Workspace) -> list[list[Any]]:
    rows = []
    for r in ws.list_images():
        classes = ", ".join(f"{n} x{c}" for n, c in sorted(r.counts.items()))
        rows.append([r.id, r.name, f"{r.width}x{r.height}", r.status, classes])
    return rows


def editor_label(ws: Workspace, s: Session) -> str:
    """What the brush editor edits, e.g. "Brush on 3: person (1234 px): green adds, red removes"."""
    if s.annotation is None:
        return "Brush (open an image first)"
    if s.selected is None:
        return "Brush: green paints a new segment of the chosen class"
    seg = s.annotation.segment(s.selected)
    return (
        f"Brush on {segment_label(seg, categories(ws))} ({seg['area']} px): green adds, red removes"
    )


def status_line(ws: Workspace, s: Session) -> str:
    if s.image_id is None:
        return "No image open."
    n = len(s.annotation.segments) if s.annotation is not None else 0
    state = "unsaved changes" if s.dirty else "saved" if s.edited else "model merge"
    return (
        f"Image {s.image_id} ({s.image_name}, {s.image.shape[1]}x{s.image.shape[0]}): "
        f"{n} segments, {state}; undo {len(s.undo_stack)}, redo {len(s.redo_stack)}."
    )
