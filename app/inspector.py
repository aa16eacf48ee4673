"""The inspection views beside the canvas: every query, one query in detail, the pixel probe,
the semantic and instance views. Plain functions over a Session; values for ``app/web/inspector.js``.

Pictures are sent once (by key, ``views._once``) and at display resolution: the query gallery as
one sprite of heatmap thumbnails, a query's mask probability as a grey PNG the browser colours,
the semantic map as class indices the browser colours.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from app import canvas, render
from app.context import AppContext
from app.editing import EditError
from app.session import Session
from app.views import _once, categories

NO_OBJECT = "no-object"
SPRITE_COLUMNS = 10
EXACT_BUDGET = 8_000_000  # query-pixels evaluated exactly for "why dropped"; beyond, a grid


def class_name(meta: Any, label: int) -> str:
    """Model class name; index K (one past the last class) is no-object."""
    return meta.class_names[label] if 0 <= label < meta.num_classes else NO_OBJECT


def query_scores(s: Session) -> tuple[np.ndarray, np.ndarray]:
    """Best real class and its probability per query: (Q,) int64, (Q,) float32."""
    probs = s.prediction.class_probs[:, :-1].numpy()  # (Q, K)
    return probs.argmax(1), probs.max(1)


def fates(s: Session) -> dict[int, dict[str, Any]]:
    """query -> {"seg": segment id or None, "reason": drop reason or None} in the model merge."""
    out: dict[int, dict[str, Any]] = {}
    for g in s.merged.segments:
        out[int(g["query"])] = {"seg": int(g["id"]), "reason": None}
    for d in s.merged.dropped:
        out[d.query] = {"seg": None, "reason": d.reason}
    return out


def _stuff_home(s: Session, q: int) -> int | None:
    """A kept stuff query merges into the first segment of its class."""
    label = int(s.prediction.class_probs[q].argmax())
    for g in s.merged.segments:
        if int(g["category_id"]) == label and not g["isthing"]:
            return int(g["id"])
    return None


def gallery(s: Session) -> dict[str, Any]:
    """Every query sorted by score, with its fate; the thumbnails as one sprite (sent once)."""
    if s.prediction is None:
        return {"items": []}
    meta = s.prediction.meta
    labels, scores = query_scores(s)
    fate = fates(s)
    items = []
    for q in (int(q) for q in np.argsort(-scores, kind="stable")):
        f = fate.get(q) or {"seg": _stuff_home(s, q), "reason": None}
        items.append(
            {
                "q": q,
                "cls": class_name(meta, int(labels[q])),
                "score": round(float(scores[q]), 3),
                "seg": f["seg"],
                "reason": f["reason"],
            }
        )
    if s.thumbs is None:  # made after the canvas shows (``callbacks.inspect_prediction``)
        return {"items": items}
    n, th, tw = s.thumbs.shape[:3]
    cols = min(SPRITE_COLUMNS, n)
    rows = math.ceil(n / cols)
    sheet = np.zeros((rows * th, cols * tw, 3), np.uint8)
    for q in range(n):
        r, c = divmod(q, cols)
        sheet[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = s.thumbs[q]
    key = f"th{s.image_id}"
    sprite = {"key": key, "cols": cols, "tw": tw, "th": th}
    if key not in s.sent:
        sprite["data"] = _once(s, key, lambda: canvas.data_url(sheet))
    return {"items": items, "sprite": sprite}


def why_dropped(ctx: AppContext, s: Session, q: int) -> str:
    """Why the merge dropped query ``q``, with the numbers that decided it."""
    pred, m = s.prediction, s.merged
    meta = pred.meta
    probs = pred.class_probs[q]  # (K+1,)
    label = int(probs.argmax())
    best_real = int(probs[:-1].argmax())
    reason = next((d.reason for d in m.dropped if d.query == q), None)
    if reason == "no-object":
        return (
            f"dropped: its best class is no-object ({float(probs[label]):.2f}); best real class "
            f"{class_name(meta, best_real)} {float(probs[best_real]):.2f}"
        )
    if reason == "below-threshold":
        return (
            f"dropped: class score {float(probs[label]):.2f} is not above the score threshold "
            f"{m.score_threshold:.2f}"
        )
    area = pred.query_area(q)
    if reason == "empty" and area == 0:
        return "dropped: no pixel of its mask has probability ≥ 0.5"
    won, exact = _won_pixels(s, q)
    kept = won / area if area else 0.0
    cover = _covering_segment(ctx, s, q)
    approx = "" if exact else "≈ "
    text = (
        f"dropped: it keeps {approx}{kept:.0%} of its mask ({approx}{won} of {area} px) after "
        f"the stronger queries take theirs; the overlap threshold asks for "
        f"{m.overlap_threshold:.0%}"
    )
    if reason == "empty":
        text = f"dropped: it wins {approx}{won} px, none of them in its own mask"
    return text + (f"; {cover}" if cover else "")


def _won_pixels(s: Session, q: int) -> tuple[int, bool]:
    """Pixels where ``q`` is the merge's strongest kept query (probability x score), as the
    engine counts them; on a grid (scaled up) when the exact count would cost too much."""
    pred, m = s.prediction, s.merged
    probs = pred.class_probs
    labels, scores = probs.max(1)[1].numpy(), probs.max(1)[0].numpy()
    k = probs.shape[1] - 1
    kept = [i for i in range(pred.num_queries) if labels[i] != k and scores[i] > m.score_threshold]
    if q not in kept:
        kept.append(q)
    h, w = s.image_hw
    step = max(1, math.ceil(math.sqrt(h * w * len(kept) / EXACT_BUDGET)))
    best = None
    for i in kept:
        p = pred.query_probs(i).numpy()[::step, ::step] * scores[i]
        if best is None:
            best, arg = p, np.full(p.shape, i, np.int64)
        else:
            win = p > best  # ties go to the earlier query, as argmax does
            best = np.where(win, p, best)
            arg = np.where(win, i, arg)
    won = int((arg == q).sum()) * step * step
    return won, step == 1


def _covering_segment(ctx: AppContext, s: Session, q: int) -> str:
    """Which segment of the annotation now holds most of ``q``'s mask."""
    mask = s.prediction.query_mask(q).numpy()
    ids = s.annotation.id_map[mask]
    if ids.size == 0:
        return ""
    counts = np.bincount(ids.astype(np.int64))
    counts[0] = 0
    sid = int(counts.argmax())
    if counts[sid] == 0:
        return "its pixels are void now"
    cat = categories(ctx.workspace).get(int(s.annotation.segment(sid)["category_id"]))
    name = cat.name if cat else "?"
    return f"segment {sid} ({name}) covers {counts[sid] / ids.size:.0%} of its mask"


def query_detail(ctx: AppContext, s: Session, q: int) -> dict[str, Any]:
    """Top-5 classes, mask area, fate (with numbers when dropped) and the mask probability."""
    if s.prediction is None:
        raise EditError("open an image first")
    pred = s.prediction
    if not 0 <= int(q) < pred.num_queries:
        raise EditError(f"query {q} does not exist (the model has {pred.num_queries} queries)")
    q = int(q)
    meta = pred.meta
    cls = pred.class_probs[q]  # (K+1,)
    top = cls.topk(min(5, cls.numel()))
    fate = fates(s).get(q)
    seg = fate["seg"] if fate else _stuff_home(s, q)
    if fate and fate["reason"]:
        text = why_dropped(ctx, s, q)
    elif seg is not None and fate:
        text = f"kept as segment {seg}"
    elif seg is not None:
        text = f"kept, merged into the stuff segment {seg} of its class"
    else:
        text = "not in the merge"
    cats = categories(ctx.workspace)
    if seg is not None and seg in s.annotation.ids:
        cat = cats.get(int(s.annotation.segment(seg)["category_id"]))
        text += f" (now {cat.name if cat else '?'})"
    key = f"hm{s.image_id}.{q}"
    heat = {"key": key}
    if key not in s.sent:
        dh, dw = s.view.shape[:2]
        probs = canvas.downsample_ids(pred.query_probs(q).numpy(), dh, dw)  # (dh, dw)
        heat["data"] = _once(
            s, key, lambda: canvas.data_url((probs * 255).round().astype(np.uint8))
        )
    return {
        "q": q,
        "top5": [[class_name(meta, int(i)), round(float(p), 4)] for p, i in zip(*top)],
        "area": pred.query_area(q),
        "text": text,
        "seg": seg,
        "accept": bool(fate and fate["reason"] in ("overlap", "below-threshold", "empty")),
        "heat": heat,
        "image": f"img{s.image_id}",
    }


def probe(ctx: AppContext, s: Session, x: float, y: float) -> dict[str, Any]:
    """The queries claiming pixel (x, y) (mask probability >= 0.5), strongest first."""
    if s.prediction is None:
        raise EditError("open an image first")
    h, w = s.image_hw
    col, row = int(np.floor(float(x))), int(np.floor(float(y)))
    if not (0 <= col < w and 0 <= row < h):
        raise EditError(f"pixel ({col}, {row}) lies outside the {w}x{h} image")
    meta = s.prediction.meta
    mask_p = s.prediction.pixel_probs(col, row).numpy()  # (Q,)
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
    sid = int(s.annotation.id_map[row, col])
    cats = categories(ctx.workspace)
    where = "void"
    if sid:
        cat = cats.get(int(s.annotation.segment(sid)["category_id"]))
        where = f"{sid}: {cat.name if cat else '?'}"
    text = f"pixel ({col}, {row}): segment {where}; {len(rows)} queries claim it"
    return {"x": col, "y": row, "text": text, "rows": rows}


def semantic_view(s: Session) -> dict[str, Any]:
    """The semantic map (class per pixel) at display size as class indices + colours."""
    if s.prediction is None:
        raise EditError("open an image first")
    meta = s.prediction.meta
    dh, dw = s.view.shape[:2]
    sem = canvas.downsample_ids(np.asarray(s.prediction.semantic()), dh, dw).astype(np.int64)
    present = [int(c) for c in np.unique(sem)]
    url, mode = canvas.index_png(sem + 1, [c + 1 for c in present])  # index 0 stays "none"
    return {
        "data": url,
        "mode": mode,
        "classes": [
            {"name": class_name(meta, c), "color": render.hex_color(meta.colors[c])}
            for c in present
        ],
    }


def instance_view(s: Session) -> dict[str, Any]:
    """Instances scoring above the score threshold: masks, boxes and captions, at display size."""
    if s.prediction is None:
        raise EditError("open an image first")
    meta = s.prediction.meta
    inst = s.prediction.instances()
    dh, dw = s.view.shape[:2]
    keep = [i for i in range(len(inst)) if float(inst.scores[i]) > s.score_threshold]
    masks = [canvas.downsample_ids(np.asarray(inst.masks[i]), dh, dw) for i in keep]
    stack = np.stack(masks) if masks else np.zeros((0, dh, dw), bool)
    labels = [int(inst.labels[i]) for i in keep]
    captions = [f"{class_name(meta, c)} {float(inst.scores[i]):.2f}" for c, i in zip(labels, keep)]
    colors = [render.jitter(meta.colors[c], int(inst.queries[i])) for c, i in zip(labels, keep)]
    picture = render.instance_overlay(s.view, stack, captions, colors)
    return {"data": canvas.data_url(picture), "count": len(keep)}


def inspector_value(
    ctx: AppContext, s: Session, tab: str | None = None, views: bool = False
) -> dict[str, Any]:
    """The inspector's value: the gallery, the query detail and probe last asked for, and (when
    ``views``) the semantic and instance views."""
    if s.prediction is None:
        return {"rev": s.revision, "image_id": None, "tab": tab}
    st = s.inspector
    value: dict[str, Any] = {"rev": s.revision, "image_id": s.image_id, "tab": tab}
    value["gallery"] = gallery(s)
    if st.get("query") is not None:
        value["query"] = query_detail(ctx, s, st["query"])
    if st.get("probe") is not None:
        value["probe"] = probe(ctx, s, *st["probe"])
    if views:
        value["views"] = {"semantic": semantic_view(s), "instances": instance_view(s)}
    return value
