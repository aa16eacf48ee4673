"""Nothing is lost: edits reach the workspace shortly after they are made and before anything
else is opened.

After an edit the UI calls ``schedule``: a timer writes the annotation ``DELAY_S`` later (later
edits restart it), so closing or reloading the page keeps everything but the last second at most,
and the undo history stays in the session. ``flush`` writes at once (opening another image,
switching tabs, leaving the page, Save). Edited annotations are stored as the user's correction
(status "corrected", source "user"); a merge only moved by the sliders as the model's prediction.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from app.session import Session

log = logging.getLogger(__name__)

DELAY_S = 1.0


def store(ctx: Any, s: Session, *, force_corrected: bool = False) -> bool:
    """Write the session's annotation if it changed since the last write (or ``force_corrected``:
    Save marks even an unedited merge as the user's). Returns whether anything was written.

    Writes of one session are serialised and each takes its snapshot inside the serialised part,
    so a later write never stores an older annotation than an earlier one.
    """
    with s.save_lock:
        with s.lock:
            if s.image_id is None or s.annotation is None:
                return False
            if not (s.dirty or force_corrected):
                return False
            image_id, ann, version = s.image_id, s.annotation, s.model_version_id
            corrected = s.edited or force_corrected
            s.dirty = False
        try:
            written = ctx.workspace.save_annotation(
                image_id,
                ann.id_map,
                list(ann.segments),
                status="corrected" if corrected else "predicted",
                source="user" if corrected else "model",
                model_version_id=version,
            )
        except BaseException:
            with s.lock:
                if s.image_id == image_id:
                    s.dirty = True  # the next flush tries again
            raise
        if written and corrected:
            with s.lock:
                if s.image_id == image_id:
                    s.stored_status = "corrected"
        return written


def schedule(ctx: Any, s: Session, delay: float = DELAY_S) -> None:
    """Write ``delay`` seconds from now unless another edit comes first (then from that one)."""
    with s.lock:
        if s.timer is not None:
            s.timer.cancel()
        s.timer = threading.Timer(delay, _background, (ctx, s))
        s.timer.daemon = True
        s.timer.start()


def flush(ctx: Any, s: Session) -> bool:
    """Write now what is not written yet (cancels the pending timer)."""
    with s.lock:
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
    return store(ctx, s)


def _background(ctx: Any, s: Session) -> None:
    try:
        store(ctx, s)
    except Exception:
        log.exception("autosave of image %s failed; it is retried on the next save", s.image_id)
