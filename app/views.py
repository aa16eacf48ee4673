"""Read-only views of a session for the browser: the canvas's value, status and model lines.

``canvas_value`` is what the Annotate canvas (``app/web/annotator.js``) receives after every
event: small JSON plus the pictures it does not hold yet (``app.canvas``).
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app import canvas
from app.context import AppContext
from app.session import Session
from app.store import Category, Workspace

KEEP = "keep"  # the browser keeps its own selection (when that segment still exists)
SYNTHETIC_CLASSES = ("circle", "square", "triangle", "star", "ring", "sky", "grass", "water")


def categories(ws: Workspace) -> dict[int, Category]:
    return {c.id: c for c in ws.categories()}


def _overlay(s: Session) -> dict[str, Any]:
    """The id map as an index PNG at display size; encoded again only when it changed."""
    ann = s.annotation
    ids = tuple(ann.ids)
    cached = s.overlay
    if cached is None or cached[0] is not ann.id_map or cached[1] != ids:
        dh, dw = s.view.shape[:2]
        url, mode = canvas.index_png(canvas.downsample_ids(ann.id_map, dh, dw), list(ids))
        key = f"ov{s.image_id}.{s.revision}"
        s.overlay = cached = (ann.id_map, ids, key, url, mode)
    _, ids, key, url, mode = cached
    return {"key": key, "data": _once(s, key, lambda: url), "mode": mode, "ids": list(ids)}


def _once(s: Session, key: str, make: Callable[[], str]) -> str | None:
    """``make()`` the first time the browser is sent ``key``, then None (it keeps it)."""
    if key in s.sent:
        return None
    s.sent.add(key)
    return make()


def image_key(s: Session) -> str:
    return f"img{s.image_id}"


def canvas_value(ctx: AppContext, s: Session, select: Any = KEEP) -> dict[str, Any]:
    """Everything the canvas shows, for the browser.

    Args:
        select: the segment the browser should select: an id, None (clear) or ``KEEP``.
    """
    value: dict[str, Any] = {
        "rev": s.revision,
        "message": s.message,
        "undo": s.history.undo_label,
        "redo": s.history.redo_label,
    }
    if s.annotation is None or s.view is None:
        return {**value, "image_id": None}
    ws = ctx.workspace
    cats = ws.categories()
    dh, dw = s.view.shape[:2]
    key = image_key(s)
    return {
        **value,
        "image_id": s.image_id,
        "name": s.image_name,
        "size": [s.image_hw[1], s.image_hw[0]],
        "view": [dw, dh],
        "image": {"key": key, "data": _once(s, key, lambda: canvas.data_url(s.view, "JPEG"))},
        "overlay": _overlay(s),
        "segments": canvas.segment_rows(s.annotation.segments, {c.id: c for c in cats}),
        "classes": canvas.class_rows(cats),
        "select": select,
        "status": status_word(s),
        "review": s.review,
        "reviewed": s.reviewed,
        "position": s.position,
        "thresholds": [s.score_threshold, s.overlap_threshold],
    }


def resend(s: Session) -> None:
    """The browser lost its pictures (a reload of the component): send them again."""
    s.sent.clear()


def status_word(s: Session) -> str:
    """What the workspace holds for the open image, in a word or two."""
    if s.edited:
        return "edited · saved automatically"
    return s.stored_status


def status_line(s: Session) -> str:
    """One line for gradio_client users and tests (the browser composes its own)."""
    if s.image_id is None:
        return "No image open."
    n = len(s.annotation.segments) if s.annotation is not None else 0
    h, w = s.image_hw
    return (
        f"Image {s.image_id} ({s.image_name}, {w}x{h}): {n} segments, {status_word(s)}; "
        f"undo {len(s.history.undo_steps)}, redo {len(s.history.redo_steps)}."
    )


def model_line(ctx: AppContext) -> str:
    """HTML: the active model, its classes with their colours, what it was trained on, and a
    plain warning when it is the shipped demo (8 synthetic shapes)."""
    model = ctx.model
    meta = model.meta
    name = Path(model.checkpoint).name or "the model"
    version = f"v{model.version_id} " if model.version_id is not None else ""
    trained = _trained_on(model.checkpoint, meta)
    swatches = "".join(
        f'<span class="mfs-class"><i style="background:{canvas.hex_color(c)}"></i>'
        f"{html.escape(n)}</span>"
        for n, c in zip(meta.class_names[:40], meta.colors[:40])
    )
    more = f" … {meta.num_classes - 40} more" if meta.num_classes > 40 else ""
    warning = ""
    if tuple(meta.class_names) == SYNTHETIC_CLASSES:
        warning = (
            '<div class="mfs-warning">⚠ The shipped demo model knows only 8 synthetic shape '
            "classes: real photos will be mislabelled until it is fine-tuned on your corrections "
            "(Train tab) or a real model is loaded (<code>launch.py --checkpoint</code>).</div>"
        )
    return (
        f'<div class="mfs-model"><b>Model {html.escape(version + name)}</b> · '
        f"{meta.num_classes} classes{html.escape(trained)}: {swatches}{more}</div>{warning}"
    )


def _trained_on(checkpoint: str, meta: Any) -> str:
    """ ", trained on <data> (<iterations> iterations)" from the checkpoint's metadata."""
    if not checkpoint or not Path(checkpoint).is_file():
        return ""
    try:
        from maskformer.checkpoint import peek_checkpoint

        extra = peek_checkpoint(checkpoint).extra
    except Exception:  # noqa: BLE001 -- an unreadable header only loses this line
        return ""
    data = extra.get("train_data") or extra.get("source") or meta.name
    iters = extra.get("iteration")
    if not data:
        return ""
    return f", trained on {Path(str(data)).name or data}" + (
        f" ({iters} iterations)" if iters else ""
    )
