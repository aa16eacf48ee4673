"""The order in which the Annotate tab moves through the workspace: named queues, next / previous.

A queue is a filter over the workspace's images plus a sort order: status queues ("unseen",
"predicted", "corrected") and review queues ("needs-changes", "accepted") keep the import order;
"uncertain" holds every image, the ones the model is least sure about first (unscored last).
``neighbour`` steps along the queue's order from any image, also one that is no longer in the
queue (a "predicted" image just saved as "corrected" keeps its place), so "next" goes on from
there instead of jumping back to the start.
"""

from __future__ import annotations

from collections.abc import Callable

from app.store import ImageRecord, Workspace, WorkspaceError

QUEUES = ("all", "unseen", "predicted", "corrected", "needs-changes", "accepted", "uncertain")

_FILTERS: dict[str, Callable[[ImageRecord], bool]] = {
    "all": lambda r: True,
    "unseen": lambda r: r.status == "unseen",
    "predicted": lambda r: r.status == "predicted",
    "corrected": lambda r: r.status == "corrected",
    "needs-changes": lambda r: r.review == "needs-changes",
    "accepted": lambda r: r.review == "accepted",
    "uncertain": lambda r: True,
}


def _check(queue: str) -> str:
    if queue not in QUEUES:
        raise WorkspaceError(f"unknown queue {queue!r}; choose one of {', '.join(QUEUES)}")
    return queue


def _sort_key(queue: str) -> Callable[[ImageRecord], tuple]:
    if queue == "uncertain":  # most unsure first, unscored last, ties in import order
        return lambda r: (r.uncertainty is None, -(r.uncertainty or 0.0), r.id)
    return lambda r: (r.id,)


def image_order(ws: Workspace, queue: str = "all") -> list[int]:
    """Image ids of ``queue`` in navigation order."""
    keep = _FILTERS[_check(queue)]
    return [r.id for r in sorted(ws.list_images(), key=_sort_key(queue)) if keep(r)]


def neighbour(ws: Workspace, current: int | None, step: int, queue: str = "all") -> int | None:
    """The image ``step`` places after (+) or before (-) ``current`` in ``queue``.

    With ``current`` None, or an id the workspace does not have: the first image of the queue.
    None past either end, or when the queue is empty.
    """
    keep = _FILTERS[_check(queue)]
    everything = sorted(ws.list_images(), key=_sort_key(queue))  # the order over all images
    ids = [r.id for r in everything]
    members = [keep(r) for r in everything]
    if current is None or int(current) not in ids:
        return next((i for i, m in zip(ids, members) if m), None)
    pos, direction = ids.index(int(current)), 1 if step > 0 else -1
    while 0 <= pos + direction < len(ids):
        pos += direction
        if members[pos]:
            return ids[pos]
    return None
