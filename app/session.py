"""Per-user state kept in ``gr.State``: the open image, cached model outputs, the edit history."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.editing import Annotation, EditError

HISTORY_LIMIT = 50  # undo steps kept per user; one step holds one (H, W) int32 id map


@dataclass
class Session:
    """Everything one browser tab works on. The model and the workspace are shared, this is not.

    Attributes:
        image_id: workspace id of the open image (None before the first upload).
        image: (H, W, 3) uint8 RGB.
        prediction: the engine's ``Prediction`` for the image (class and mask logits, cached so
            threshold changes re-merge without running the model).
        merged: the ``PanopticResult`` at the current thresholds.
        semantic: (H, W) int64 semantic map (model classes); instances: ``InstanceResult``.
        thumbs: one heatmap thumbnail per query, (h, w, 3) uint8.
        annotation: the editable segments (starts as the merge, or the stored correction).
        edited: True once the annotation no longer follows the model merge.
        selected: selected segment id; query: selected query index.
        gallery_queries: query index shown at each gallery position.
        editor_window: (y0, x0, y1, x1) of the image region shown in the brush editor.
    """

    image_id: int | None = None
    image_name: str = ""
    image: np.ndarray | None = None
    prediction: Any = None
    merged: Any = None
    semantic: Any = None
    instances: Any = None
    thumbs: list[np.ndarray] = field(default_factory=list)
    score_threshold: float = 0.8
    overlap_threshold: float = 0.8
    annotation: Annotation | None = None
    edited: bool = False
    dirty: bool = False
    selected: int | None = None
    query: int | None = None
    gallery_queries: list[int] = field(default_factory=list)
    editor_window: tuple[int, int, int, int] | None = None
    undo_stack: list[Annotation] = field(default_factory=list)
    redo_stack: list[Annotation] = field(default_factory=list)

    def require_image(self) -> None:
        if self.image is None or self.annotation is None:
            raise EditError("open an image first (upload one, or pick one from the workspace)")

    def push(self, ann: Annotation) -> None:
        """Make ``ann`` current; the previous annotation becomes one undo step."""
        self.require_image()
        self.undo_stack.append(self.annotation)  # type: ignore[arg-type]
        del self.undo_stack[:-HISTORY_LIMIT]
        self.redo_stack.clear()
        self.annotation = ann
        self.edited = True
        self.dirty = True
        self._fix_selection()

    def undo(self) -> None:
        self._step(self.undo_stack, self.redo_stack, "undo")

    def redo(self) -> None:
        self._step(self.redo_stack, self.undo_stack, "redo")

    def _step(self, source: list[Annotation], target: list[Annotation], what: str) -> None:
        """Move one step of history from ``source`` to current, the current one onto ``target``."""
        if not source:
            raise EditError(f"nothing to {what}")
        target.append(self.annotation)  # type: ignore[arg-type]
        self.annotation = source.pop()
        self.dirty = True
        self._fix_selection()

    def start(self, image_id: int, name: str, image: np.ndarray) -> None:
        """Forget the previous image (and its history) and open another."""
        self.image_id, self.image_name, self.image = image_id, name, image
        self.prediction = self.merged = self.annotation = None
        self.semantic = self.instances = None
        self.thumbs = []
        self.edited = self.dirty = False
        self.selected = self.query = self.editor_window = None
        self.gallery_queries = []
        self.undo_stack.clear()
        self.redo_stack.clear()

    def _fix_selection(self) -> None:
        if self.annotation is not None and self.selected not in self.annotation.ids:
            self.selected = None
