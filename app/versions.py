"""Model versions for the Train tab, without gradio: list, compare, hot switch and roll back."""

from __future__ import annotations

import threading
import time
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
    "held-out PQ",
    "held-out mIoU",
    "classes",
]


def fmt_metric(x: Any) -> str:
    """A score with one decimal, or a dash when undefined."""
    return "—" if x is None else f"{float(x):.1f}"


def version_rows(ws: Workspace) -> list[list[Any]]:
    """One row per model version (newest first) with its held-out scores."""
    rows = []
    for v in reversed(ws.model_versions()):
        held = v.metrics.get("heldout", {})
        before = v.metrics.get("before", {})
        pq, miou = (
            f"{fmt_metric(before.get(k))} → {fmt_metric(held.get(k))}" if held else "—"
            for k in ("PQ", "mIoU")
        )
        rows.append(
            [
                f"v{v.id}",
                v.metrics.get("source") or Path(v.path).name,  # a converted model: where from
                "" if v.parent is None else f"v{v.parent}",
                v.created,
                "yes" if v.active else "",
                pq,
                miou,
                len(v.metrics.get("classes", [])) or "",
            ]
        )
    return rows


def compare_rows(ws: Workspace, a: int, b: int) -> list[list[Any]]:
    """Metrics of two versions side by side (their held-out scores, then per-class PQ)."""
    va, vb = ws.model_version(int(a)), ws.model_version(int(b))
    ma, mb = va.metrics.get("heldout", {}), vb.metrics.get("heldout", {})
    rows = [["held-out images", ma.get("num_images", "—"), mb.get("num_images", "—")]]
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "mIoU", "pAcc"):
        rows.append([key, fmt_metric(ma.get(key)), fmt_metric(mb.get(key))])
    pa, pb = ma.get("per_class", {}), mb.get("per_class", {})
    for name in list(dict.fromkeys([*pa, *pb])):
        rows.append(
            [
                f"PQ {name}",
                fmt_metric(pa.get(name, {}).get("PQ")),
                fmt_metric(pb.get(name, {}).get("PQ")),
            ]
        )
    return rows


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
