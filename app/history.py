"""Undo / redo as compact deltas: one step keeps the changed rectangle of the id map, compressed.

A step is what it takes to go back: the segment list before the edit and, when pixels changed,
the bounding box of the changed pixels with their previous ids (zlib, level 1: id maps are large
flat regions, so a step is typically a few KB even on a 12 MP photo). Undoing a step records the
opposite step for redo the same way. Each step carries a label for the UI ("merge 7 → 1").
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from app.editing import Annotation, EditError

HISTORY_LIMIT = 100  # steps kept per direction


@dataclass(frozen=True)
class Step:
    """How to restore one earlier annotation from the one after it."""

    label: str
    segments: tuple  # the segment list to restore
    box: tuple[int, int, int, int] | None  # (y0, x0, y1, x1) of the changed pixels, or None
    region: bytes = b""  # zlib of the ids in ``box`` to restore (dtype of the id map)
    edited: bool = True  # whether the restored annotation departs from the model's merge

    @property
    def nbytes(self) -> int:
        return len(self.region) + 200 * len(self.segments)  # segment dicts: a rough size


def changed_box(old: np.ndarray, new: np.ndarray) -> tuple[int, int, int, int] | None:
    """Bounding box (y0, x0, y1, x1) of the pixels that differ, or None when none do."""
    if old is new:
        return None
    diff = old != new  # (H, W)
    rows = np.flatnonzero(diff.any(1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(diff[rows[0] : rows[-1] + 1].any(0))
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def make_step(label: str, before: Annotation, after: Annotation, edited: bool = True) -> Step:
    """The step that turns ``after`` back into ``before`` (whose edited flag is ``edited``)."""
    box = changed_box(before.id_map, after.id_map)
    region = b""
    if box is not None:
        y0, x0, y1, x1 = box
        region = zlib.compress(np.ascontiguousarray(before.id_map[y0:y1, x0:x1]).tobytes(), 1)
    return Step(label, before.segments, box, region, edited)


def apply_step(step: Step, current: Annotation, edited: bool) -> tuple[Annotation, Step]:
    """(the restored annotation, the opposite step that turns it back into ``current``, whose
    edited flag is ``edited``)."""
    id_map = current.id_map
    if step.box is not None:
        y0, x0, y1, x1 = step.box
        old = np.frombuffer(zlib.decompress(step.region), dtype=id_map.dtype)
        id_map = id_map.copy()
        id_map[y0:y1, x0:x1] = old.reshape(y1 - y0, x1 - x0)
    restored = Annotation(id_map, step.segments)
    return restored, make_step(step.label, current, restored, edited)


class History:
    """Undo and redo stacks of ``Step``s, each bounded to ``HISTORY_LIMIT``."""

    def __init__(self) -> None:
        self.undo_steps: list[Step] = []
        self.redo_steps: list[Step] = []

    def record(self, label: str, before: Annotation, after: Annotation, edited: bool) -> None:
        """A new edit from ``before`` (edited flag ``edited``) to ``after``: one undo step; the
        redo stack is dropped."""
        self.undo_steps.append(make_step(label, before, after, edited))
        del self.undo_steps[:-HISTORY_LIMIT]
        self.redo_steps.clear()

    def undo(self, current: Annotation, edited: bool) -> tuple[Annotation, str, bool]:
        """(the annotation before the last edit, that edit's label, its edited flag)."""
        return self._move(self.undo_steps, self.redo_steps, current, edited, "undo")

    def redo(self, current: Annotation, edited: bool) -> tuple[Annotation, str, bool]:
        return self._move(self.redo_steps, self.undo_steps, current, edited, "redo")

    @staticmethod
    def _move(
        source: list[Step], target: list[Step], current: Annotation, edited: bool, what: str
    ) -> tuple[Annotation, str, bool]:
        if not source:
            raise EditError(f"nothing to {what}")
        step = source.pop()
        restored, opposite = apply_step(step, current, edited)
        target.append(opposite)
        del target[:-HISTORY_LIMIT]
        return restored, step.label, step.edited

    def clear(self) -> None:
        self.undo_steps.clear()
        self.redo_steps.clear()

    @property
    def undo_label(self) -> str | None:
        return self.undo_steps[-1].label if self.undo_steps else None

    @property
    def redo_label(self) -> str | None:
        return self.redo_steps[-1].label if self.redo_steps else None

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in (*self.undo_steps, *self.redo_steps))

    def __len__(self) -> int:
        return len(self.undo_steps)
