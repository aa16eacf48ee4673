"""Model versions for the Train tab, without gradio: list, compare, hot switch and roll back."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.store import ModelVersion, Workspace, WorkspaceError


def version_label(v: ModelVersion) -> str:
    return f"v{v.id} ({Path(v.path).name})" + (" [active]" if v.active else "")


VERSION_HEADERS = [
    "version",
    "source",
    "parent",
    "created",
    "active",
    "verdict",
    "held-out PQ",
    "held-out mIoU",
    "classes",
]


def fmt_metric(x: Any) -> str:
    """A score with one decimal, or a dash when undefined."""
    return "—" if x is None else f"{float(x):.1f}"


def verdict_of(v: ModelVersion) -> dict[str, Any] | None:
    """The fine-tune verdict stored with a version (None: not a fine-tune result)."""
    return v.metrics.get("verdict")


def needs_confirmation(v: ModelVersion) -> str:
    """Why switching to ``v`` should be confirmed first ("" when it need not): a fine-tune result
    that was not judged better than the model it came from."""
    verdict = verdict_of(v)
    if not verdict or verdict.get("status") == "improved":
        return ""
    return f"v{v.id} was not activated by its fine-tune: {verdict.get('summary', '')}"


def version_rows(ws: Workspace) -> list[list[Any]]:
    """One row per model version (newest first) with its held-out scores and verdict."""
    rows = []
    for v in reversed(ws.model_versions()):
        held = v.metrics.get("heldout", {})
        before = v.metrics.get("before", {})
        unchecked = (verdict_of(v) or {}).get("status") == "unchecked"
        pq, miou = (
            "too little data"
            if unchecked
            else f"{fmt_metric(before.get(k))} → {fmt_metric(held.get(k))}"
            if held
            else "—"
            for k in ("PQ", "mIoU")
        )
        rows.append(
            [
                f"v{v.id}",
                (v.metrics.get("source") or Path(v.path).name)  # a converted model: where from
                + (" (base kept + expert head)" if v.metrics.get("recipe") == "expert" else ""),
                "" if v.parent is None else f"v{v.parent}",
                v.created,
                "yes" if v.active else "",
                (verdict_of(v) or {}).get("status", ""),
                pq,
                miou,
                len(v.metrics.get("classes", [])) or "",
            ]
        )
    return rows


COMPARE_KEYS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "pAcc")


def compare_scores(
    ws: Workspace, a: int, b: int, scorer: Callable[..., dict[str, Any]] | None = None
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Held-out scores of versions ``a`` and ``b`` on one common set of images, and what it is.

    A fine-tune and the version it came from: that job's own before / after scores. Any other
    pair: both scored now by ``scorer(version, heldout_dir, classes)`` on the held-out images of
    the fine-tune among them with the most classes (its job folder keeps them).
    """
    va, vb = ws.model_version(int(a)), ws.model_version(int(b))
    for parent, child, flip in ((va, vb, False), (vb, va, True)):
        if child.parent == parent.id and "before" in child.metrics and "heldout" in child.metrics:
            pair = child.metrics["before"], child.metrics["heldout"]
            what = f"the {child.metrics.get('heldout_images', '?')} held-out images of v{child.id}"
            return (pair[1], pair[0], what) if flip else (pair[0], pair[1], what)
    tuned = [v for v in (va, vb) if v.metrics.get("job")]
    if not tuned or scorer is None:
        return {}, {}, "no held-out images in common (neither version is a fine-tune result)"
    ref = max(tuned, key=lambda v: len(v.metrics.get("classes", [])))
    held = ws.root / "finetune" / ref.metrics["job"] / "heldout"
    if not (held / "panoptic.json").is_file():
        return {}, {}, f"the held-out images of v{ref.id} are gone ({held})"
    classes = list(ref.metrics.get("classes", []))
    return scorer(va, held, classes), scorer(vb, held, classes), f"the held-out images of v{ref.id}"


def compare_rows(sa: dict[str, Any], sb: dict[str, Any]) -> list[list[Any]]:
    """Two score dicts side by side: image count, overall scores, then PQ per class."""
    rows = [["held-out images", sa.get("num_images", "—"), sb.get("num_images", "—")]]
    for key in COMPARE_KEYS:
        rows.append([key, fmt_metric(sa.get(key)), fmt_metric(sb.get(key))])
    pa, pb = sa.get("per_class", {}), sb.get("per_class", {})
    for name in list(dict.fromkeys([*pa, *pb])):
        rows.append(
            [
                f"PQ {name}",
                fmt_metric(pa.get(name, {}).get("PQ")),
                fmt_metric(pb.get(name, {}).get("PQ")),
            ]
        )
    return rows


def score_version(
    version: ModelVersion, heldout_dir: Path, classes: list[str], device: str = "cpu"
) -> dict[str, Any]:
    """``version`` scored on a fine-tune's held-out export (``classes``: that export's classes; a
    model that lacks the last ones never predicts them)."""
    from app.finetune_job import base_predictor
    from app.heldout import score
    from maskformer.checkpoint import peek_checkpoint
    from maskformer.data import open_dataset

    if not Path(version.path).is_file():
        raise WorkspaceError(f"the checkpoint of version v{version.id} is missing: {version.path}")
    meta = open_dataset(heldout_dir).meta
    own = peek_checkpoint(version.path).meta.class_names
    if tuple(own) != tuple(classes[: len(own)]):
        raise WorkspaceError(
            f"v{version.id}'s classes ({', '.join(own)}) are not the first classes of the "
            "held-out images; these two versions cannot be scored on the same images"
        )
    return score(base_predictor(version.path, meta, device), heldout_dir)


class ModelSwitcher:
    """Hot swap of the app's model: builds a new immutable ``ModelState`` and swaps the one
    reference the shared ``AppContext`` holds (``AppContext.swap_model``).

    Requests that started with the old model finish with it (a request reads ``ctx.model`` once;
    a Predictor keeps no per-image state); the next request reads the new one. Loading happens
    outside the lock; ``lock`` serialises switches against each other.
    """

    def __init__(self, ctx: Any, device: str | None = None):
        self.ctx = ctx
        self.device = device
        self.lock = threading.Lock()

    def switch(self, version_id: int) -> ModelVersion:
        """Load a version's checkpoint and make it the app's model and the active version."""
        from app.context import model_state
        from maskformer.inference import Predictor

        ws: Workspace = self.ctx.workspace
        version = ws.model_version(int(version_id))
        if not Path(version.path).is_file():
            raise WorkspaceError(
                f"the checkpoint of version v{version.id} is missing: {version.path}"
            )
        predictor = Predictor.from_checkpoint(
            version.path, device=self.device or _device_of(self.ctx.predictor)
        )
        state = model_state(predictor, ws, version.id, version.path)
        with self.lock:
            self.ctx.swap_model(state)
            ws.set_active_model_version(version.id)
        return ws.model_version(version.id)

    def rollback(self) -> ModelVersion:
        """Switch to the parent of the current version."""
        current = self.ctx.model.version_id
        if current is None:
            raise WorkspaceError("the current model is not a registered version")
        parent = self.ctx.workspace.model_version(current).parent
        if parent is None:
            raise WorkspaceError(f"version v{current} has no parent to roll back to")
        return self.switch(parent)

    def base_checkpoint(self) -> tuple[str, int]:
        """(checkpoint path, version id) of the current model, registering it when needed."""
        ws: Workspace = self.ctx.workspace
        vid = self.ctx.model_version_id
        if vid is not None and Path(ws.model_version(vid).path).is_file():
            return ws.model_version(vid).path, vid
        from maskformer.checkpoint import save_checkpoint

        p = self.ctx.predictor
        path = ws.root / "models" / f"base-{int(time.time())}.safetensors"
        save_checkpoint(path, p.model, p.cfg, p.meta, extra={"source": "app model at start"})
        with self.lock:
            version = ws.add_model_version(path, active=True)
            self.ctx.model_version_id = version.id
        return str(path), version.id


def _device_of(predictor: Any) -> str | None:
    dev = getattr(predictor, "device", None)
    return None if dev is None else str(dev)
