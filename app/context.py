"""What every user of the app shares: the workspace, the examples and the current model.

The model is one immutable ``ModelState``; a model switch builds a new one and swaps the single
reference under a lock (``AppContext.swap_model``). A request reads ``ctx.model`` once and uses
that object throughout, so it never sees the predictor of one version with the classes of another.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from app.store import Workspace

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
EXAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ModelState:
    """One loaded model and what the app derives from it; never mutated.

    Attributes:
        predictor: the engine's ``Predictor`` (stateless, shared by every request).
        meta: its ``DatasetMeta`` (class names, thing flags, colours).
        class_categories: workspace category id of each model class.
        version_id: the workspace model version it is, or None when not registered.
        default_score / default_overlap: the checkpoint's merge thresholds.
        checkpoint: the file it was loaded from ("" when unknown).
    """

    predictor: Any
    meta: Any
    class_categories: tuple[int, ...]
    version_id: int | None = None
    default_score: float = 0.8
    default_overlap: float = 0.8
    checkpoint: str = ""


class AppContext:
    """Shared by every user: the workspace and examples (fixed), and the model (swapped whole).

    The read-only properties (``predictor``, ``meta``, ...) read the current model; code that
    uses more than one of them for one request should read ``ctx.model`` once instead.
    """

    def __init__(
        self,
        *,
        workspace: Workspace,
        model: ModelState | None = None,
        examples: list[Path] | tuple[Path, ...] = (),
        predictor: Any = None,
        meta: Any = None,
        class_categories: list[int] | tuple[int, ...] = (),
        model_version_id: int | None = None,
        default_score: float = 0.8,
        default_overlap: float = 0.8,
    ):
        self.workspace = workspace
        self.examples = tuple(examples)
        self._lock = threading.Lock()
        self._model = model or ModelState(
            predictor=predictor,
            meta=meta if meta is not None else getattr(predictor, "meta", None),
            class_categories=tuple(class_categories),
            version_id=model_version_id,
            default_score=float(default_score),
            default_overlap=float(default_overlap),
        )

    @property
    def model(self) -> ModelState:
        """The current model (one reference read: consistent for the whole request)."""
        return self._model

    def swap_model(self, new: ModelState) -> ModelState:
        """Make ``new`` the model of every later request; returns the one it replaced."""
        with self._lock:
            old, self._model = self._model, new
        return old

    @property
    def lock(self) -> threading.Lock:
        """Held while the model reference is replaced."""
        return self._lock

    @property
    def predictor(self) -> Any:
        return self._model.predictor

    @property
    def meta(self) -> Any:
        return self._model.meta

    @property
    def class_categories(self) -> list[int]:
        return list(self._model.class_categories)

    @property
    def default_score(self) -> float:
        return self._model.default_score

    @property
    def default_overlap(self) -> float:
        return self._model.default_overlap

    @property
    def model_version_id(self) -> int | None:
        return self._model.version_id

    @model_version_id.setter
    def model_version_id(self, version_id: int | None) -> None:
        """Registering the running model as a version: a swap like any other."""
        with self._lock:
            self._model = replace(self._model, version_id=version_id)


def model_state(
    predictor: Any, workspace: Workspace, version_id: int | None, checkpoint: str | Path = ""
) -> ModelState:
    """The ``ModelState`` of a loaded predictor (its classes registered in the workspace)."""
    test = getattr(getattr(predictor, "cfg", None), "test", None)
    return ModelState(
        predictor=predictor,
        meta=predictor.meta,
        class_categories=tuple(workspace.ensure_meta(predictor.meta)),
        version_id=version_id,
        default_score=float(getattr(test, "object_mask_threshold", 0.8)),
        default_overlap=float(getattr(test, "overlap_threshold", 0.8)),
        checkpoint=str(checkpoint),
    )


def make_context(
    predictor: Any,
    workspace: Workspace,
    checkpoint: str | Path = "",
    examples_dir: Path = EXAMPLES_DIR,
) -> AppContext:
    """Register the model's classes (and the checkpoint as a model version, made the active one:
    the version the app serves, restored by the next start) in the workspace."""
    version = next((v for v in workspace.model_versions() if v.path == str(checkpoint)), None)
    if version is None and checkpoint:
        version = workspace.add_model_version(checkpoint, active=True)
    elif version is not None and not version.active:
        workspace.set_active_model_version(version.id)
    examples = (
        sorted(p for p in examples_dir.iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES)
        if examples_dir.is_dir()
        else []
    )
    return AppContext(
        workspace=workspace,
        model=model_state(predictor, workspace, version.id if version else None, checkpoint),
        examples=examples,
    )
