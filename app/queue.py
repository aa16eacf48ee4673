"""The order in which a person moves through a workspace: named queues, and next / previous.

A queue is a filter over the workspace's images plus a sort order. Status queues ("unseen",
"predicted", "corrected") and review queues ("needs-changes", "accepted") keep the import order;
"uncertain" puts the images the model is least sure about first (``ImageRecord.uncertainty``,
higher = less sure; images without a score come after every scored one, in import order).

``neighbour`` steps along the queue's order from any image, also one that is not (or no longer)
in the queue: a "predicted" image that was just saved as "corrected" still has its place in the
order, so "next" goes on from there instead of jumping back to the start.
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
    if queue == "uncertain":  # most unsure first; unscored last; ties in import order
        return lambda r: (r.uncertainty is None, -(r.uncertainty or 0.0), r.id)
    return lambda r: (r.id,)


def ordered(records: list[ImageRecord], queue: str = "all") -> list[ImageRecord]:
    """``records`` that belong to ``queue``, in the queue's order (pure)."""
    _check(queue)
    keep = _FILTERS[queue]
    return sorted((r for r in records if keep(r)), key=_sort_key(queue))


def image_order(ws: Workspace, queue: str = "all") -> list[int]:
    """Image ids of ``queue`` in navigation order."""
    return [r.id for r in ordered(ws.list_images(counts=False), queue)]


def step_from(
    records: list[ImageRecord], current: int | None, step: int, queue: str = "all"
) -> int | None:
    """``neighbour`` on a list of records (pure): see there."""
    _check(queue)
    if step == 0:
        raise ValueError("step must be a non-zero number of images (+1 next, -1 previous)")
    everything = sorted(records, key=_sort_key(queue))  # the queue's order over all images
    ids = [r.id for r in everything]
    members = [_FILTERS[queue](r) for r in everything]
    if current is None or int(current) not in ids:
        return next((i for i, m in zip(ids, members) if m), None)
    pos, left = ids.index(int(current)), abs(int(step))
    direction = 1 if step > 0 else -1
    while True:
        pos += direction
        if not 0 <= pos < len(ids):
            return None
        if members[pos]:
            left -= 1
            if left == 0:
                return ids[pos]


def neighbour(ws: Workspace, current: int | None, step: int, queue: str = "all") -> int | None:
    """The image ``step`` places after (+) or before (-) ``current`` in ``queue``.

    With ``current`` None (no image open) or an id the workspace does not have: the first image of
    the queue. None when the step goes past either end (or the queue is empty).
    """
    return step_from(ws.list_images(counts=False), current, step, queue)
