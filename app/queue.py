"""The order in which the Annotate tab moves through the workspace: queues by status or review.

A queue is a filter and an order over the workspace's images; ``neighbour`` is what the previous /
next keys use. "uncertain" orders the images the model predicted (not yet corrected or accepted)
by their uncertainty score, most unsure first.
"""

from __future__ import annotations

from app.store import ImageRecord, Workspace

QUEUES = ("all", "unseen", "predicted", "corrected", "needs-changes", "accepted", "uncertain")


def _member(rec: ImageRecord, queue: str) -> bool:
    if queue == "all":
        return True
    if queue in ("unseen", "predicted", "corrected"):
        return rec.status == queue
    if queue in ("needs-changes", "accepted"):
        return rec.review == queue
    if queue == "uncertain":
        return (
            rec.uncertainty is not None and rec.status != "corrected" and rec.review != "accepted"
        )
    raise ValueError(f"unknown queue {queue!r}; expected one of {QUEUES}")


def image_order(ws: Workspace, queue: str = "all") -> list[int]:
    """Image ids of ``queue`` in navigation order (insertion order; "uncertain": most unsure
    first, ties by id)."""
    recs = [r for r in ws.list_images() if _member(r, queue)]
    if queue == "uncertain":
        recs.sort(key=lambda r: (-float(r.uncertainty or 0.0), r.id))
    return [r.id for r in recs]


def neighbour(ws: Workspace, current: int | None, step: int, queue: str = "all") -> int | None:
    """The image ``step`` (+1 next, -1 previous) from ``current`` in ``queue``.

    With ``current`` None, or not in the queue, the first image of the queue (step > 0) or the
    last (step < 0); None past either end or when the queue is empty.
    """
    order = image_order(ws, queue)
    if not order:
        return None
    if current is None or int(current) not in order:
        if queue != "uncertain" and current is not None:
            # in an ordered-by-id queue, continue from where the current image would be
            later = [i for i in order if (i > current) == (step > 0) and i != current]
            if not later:
                return None
            return min(later) if step > 0 else max(later)
        return order[0] if step > 0 else order[-1]
    i = order.index(int(current)) + (1 if step > 0 else -1)
    return order[i] if 0 <= i < len(order) else None
