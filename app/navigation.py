"""Moving through the workspace from the Annotate tab: previous / next / save-and-next / next most
uncertain, the review verdict, and where the open image stands in its queue. No gradio here.

Every move stores the open image's edits first (``open_image`` flushes the autosave).
"""

from __future__ import annotations

from app import autosave, callbacks
from app.context import AppContext
from app.queue import QUEUES, image_order, neighbour
from app.session import Session
from maskformer.errors import UserError


def _queue(queue: str | None) -> str:
    queue = queue or "all"
    if queue not in QUEUES:
        raise UserError(f"unknown queue {queue!r}; choose one of {', '.join(QUEUES)}")
    return queue


def locate(ctx: AppContext, s: Session, queue: str | None) -> None:
    """Set ``s.position`` ("3 / 20 in unseen") and ``s.review`` for the open image."""
    if s.image_id is None:
        return
    queue = _queue(queue)
    order = image_order(ctx.workspace, queue)
    rec = ctx.workspace.image(s.image_id)
    s.review, s.reviewed = rec.review, rec.reviewed
    if s.image_id in order:
        s.position = f"{order.index(s.image_id) + 1} / {len(order)} in {queue}"
    else:
        s.position = f"not in {queue} ({len(order)} images)"


def open_id(
    ctx: AppContext, s: Session, image_id: int, score: float, overlap: float, queue: str | None
) -> Session:
    """Open a workspace image by id (from the Workspace tab, a reload, or the API)."""
    callbacks.open_image(ctx, s, int(image_id), score, overlap)
    locate(ctx, s, queue)
    return s


def step(
    ctx: AppContext, s: Session, direction: int, score: float, overlap: float, queue: str | None
) -> Session:
    """Open the next (+1) or previous (-1) image of ``queue``; with none open, the first."""
    queue = _queue(queue)
    autosave.flush(ctx, s)  # a status change may move the image within its queue
    target = neighbour(ctx.workspace, s.image_id, direction, queue)
    if target is None:
        where = "after" if direction > 0 else "before"
        if s.image_id is None or not image_order(ctx.workspace, queue):
            raise UserError(f"the queue '{queue}' has no images")
        raise UserError(f"no image {where} this one in the queue '{queue}'")
    return open_id(ctx, s, target, score, overlap, queue)


def save_and_next(
    ctx: AppContext, s: Session, score: float, overlap: float, queue: str | None
) -> tuple[Session, str]:
    """Store the annotation as corrected (edited or not), then open the next image of the queue.

    Returns the session and what was saved; at the end of the queue the image stays open.
    """
    msg = callbacks.save(ctx, s)
    try:
        step(ctx, s, +1, score, overlap, queue)
    except UserError as e:
        locate(ctx, s, queue)
        return s, f"{msg} {e}."
    return s, msg


def next_uncertain(ctx: AppContext, s: Session, score: float, overlap: float) -> Session:
    """Open the most unsure image still to review: the next in the "uncertain" queue's order
    after the open one (from its start again at the end) that is neither corrected nor accepted.
    The arrows keep the queue the user chose."""
    autosave.flush(ctx, s)  # a correction takes the open image out of the running
    ws = ctx.workspace
    todo = {r.id for r in ws.list_images() if r.status != "corrected" and r.review != "accepted"}
    order = image_order(ws, "uncertain")
    if s.image_id in order:
        i = order.index(s.image_id)
        order = order[i + 1 :] + order[:i]
    order = [i for i in order if i in todo and i != s.image_id]
    if not order:
        raise UserError("every other image is corrected or accepted: nothing left to review")
    return open_id(ctx, s, order[0], score, overlap, "uncertain")


def set_review(ctx: AppContext, s: Session, review: str | None, queue: str | None) -> Session:
    """Record the reviewer's verdict ("accepted" / "needs-changes" / None) for the open image."""
    s.require_image()
    autosave.flush(ctx, s)
    rec = ctx.workspace.set_review(s.image_id, review)
    locate(ctx, s, queue)
    s.touch(f"Review: {rec.review or 'cleared'} ({rec.reviewed or ''}).")
    return s
