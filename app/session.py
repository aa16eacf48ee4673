"""Per-user state kept in ``gr.State``: the open image, compact caches, the edit history.

Memory is bounded by design (a 12 MP photo costs tens of MB here, not GB): the full-size
annotation is a uint16 id map; every picture the browser is shown comes from ``view``, a copy of
the image at display resolution (at most ``canvas.DISPLAY_MAX_PIXELS``); the undo history keeps
compressed deltas (``app.history``); the model merge keeps its segment list, not its id map;
semantic and instance views are made at display resolution when asked for and not kept.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.editing import Annotation, EditError
from app.history import HISTORY_LIMIT, History

__all__ = ["HISTORY_LIMIT", "Merge", "Session"]


@dataclass(frozen=True)
class Merge:
    """The model's merge at the session's thresholds, without its full-size id map."""

    segments: list[dict[str, Any]]  # the engine's segments (model class ids)
    dropped: list[Any]  # ``DroppedQuery`` of every query that made no segment
    score_threshold: float
    overlap_threshold: float


@dataclass
class Session:
    """Everything one browser tab works on. The model and the workspace are shared, this is not.

    Attributes:
        image_id / image_name / image_hw: the open workspace image and its full size (H, W).
        view: (h, w, 3) uint8, the image at display resolution (``app.canvas.display_size``).
        prediction: the engine's ``Prediction`` (cached outputs: the sliders re-merge them).
        merged: the model's ``Merge`` at the current thresholds.
        thumbs: (Q, th, tw, 3) uint8 heatmap thumbnails, one per query.
        annotation: the editable segments (starts as the merge, or the stored correction).
        history: undo / redo deltas, each with a label ("merge 7 → 1").
        edited: the annotation no longer follows the model merge.
        dirty: changed since it was last written to the workspace (autosave clears it).
        stored_status: the image's status in the workspace when it was opened or last saved.
        selected: selected segment id (gradio_client users; the browser sends ids with edits).
        revision: increases with every change of what the canvas shows.
        sent: keys of the pictures the browser already holds (``app.canvas``).
        message: what the last action did, shown under the canvas ("Undid: merge 7 → 1").
        model_version_id: the model version that predicted the open image.
        review / reviewed / position: its review verdict and its time, and where it stands in
            the navigation queue.
    """

    image_id: int | None = None
    image_name: str = ""
    image_hw: tuple[int, int] = (0, 0)
    view: np.ndarray | None = None
    prediction: Any = None
    merged: Merge | None = None
    thumbs: np.ndarray | None = None
    score_threshold: float = 0.8
    overlap_threshold: float = 0.8
    annotation: Annotation | None = None
    history: History = field(default_factory=History)
    edited: bool = False
    dirty: bool = False
    stored_status: str = "unseen"
    selected: int | None = None
    revision: int = 0
    sent: set[str] = field(default_factory=set)
    message: str = ""
    model_version_id: int | None = None
    review: str | None = None
    reviewed: str | None = None
    position: str = ""
    overlay: tuple | None = field(default=None, repr=False, compare=False)  # app.views cache
    inspector: dict[str, Any] = field(default_factory=dict, repr=False)  # app.inspector state
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)
    # autosave (app.autosave): one writer at a time, the pending timer
    save_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    timer: Any = field(default=None, repr=False, compare=False)

    def __deepcopy__(self, memo: dict) -> Session:
        """A fresh session with the same thresholds: gradio copies the ``gr.State`` default
        for every new user; nothing of an open image is ever shared."""
        return Session(
            score_threshold=self.score_threshold, overlap_threshold=self.overlap_threshold
        )

    def require_image(self) -> None:
        if self.image_id is None or self.annotation is None:
            raise EditError("open an image first (upload one, or pick one from the workspace)")

    def push(self, ann: Annotation, label: str, edited: bool = True) -> None:
        """Make ``ann`` current; the previous annotation becomes one undo step named ``label``.

        ``edited`` False: ``ann`` is the model's merge (it follows the sliders again)."""
        self.require_image()
        with self.lock:
            self.history.record(label, self.annotation, ann, self.edited)  # type: ignore[arg-type]
            self.annotation = ann
            self.edited, self.dirty = edited, True
            self._changed(label)

    def undo(self) -> str:
        """Undo one step; returns what was undone ("merge 7 → 1")."""
        self.require_image()
        with self.lock:
            self.annotation, label, self.edited = self.history.undo(self.annotation, self.edited)  # type: ignore[arg-type]
            self.dirty = True
            self._changed(f"Undid: {label}")
        return label

    def redo(self) -> str:
        self.require_image()
        with self.lock:
            self.annotation, label, self.edited = self.history.redo(self.annotation, self.edited)  # type: ignore[arg-type]
            self.dirty = True
            self._changed(f"Redid: {label}")
        return label

    def start(self, image_id: int, name: str, image_hw: tuple[int, int]) -> None:
        """Forget the previous image (and its history) and open another."""
        with self.lock:
            self.image_id, self.image_name, self.image_hw = image_id, name, tuple(image_hw)
            self.view = self.prediction = self.merged = self.thumbs = self.annotation = None
            self.edited = self.dirty = False
            self.stored_status = "unseen"
            self.selected = self.review = self.reviewed = self.overlay = None
            self.position = ""
            self.inspector = {}
            self.history.clear()
            self.sent.clear()
            self.message = ""
            self.revision += 1

    def release(self) -> None:
        """Drop everything held for the open image (the page is gone: gradio keeps a closed
        session's state for an hour, and a reload starts a new one)."""
        with self.lock:
            self.start(None, "", (0, 0))  # type: ignore[arg-type]
            self.image_id = None

    def _changed(self, message: str) -> None:
        if self.annotation is not None and self.selected not in self.annotation.ids:
            self.selected = None
        self.message = message
        self.revision += 1

    def touch(self, message: str | None = None) -> None:
        """Record a change of what the canvas shows that is not an edit (a re-merge, a select)."""
        with self.lock:
            self._changed(self.message if message is None else message)

    @property
    def nbytes(self) -> int:
        """Bytes this session holds itself (the ``Prediction`` is the engine's and not counted)."""
        arrays = [
            self.view,
            self.thumbs,
            None if self.annotation is None else self.annotation.id_map,
        ]
        overlay = len(self.overlay[3]) if self.overlay is not None else 0
        return sum(a.nbytes for a in arrays if a is not None) + self.history.nbytes + overlay
