"""Bring any checkpoint into the app (no gradio): resolve, register as a model version, switch.

A path or hub id typed in the Train tab (or given to ``launch.py --checkpoint``) is converted once
into the workspace's ``models/converted`` folder (so the workspace keeps working when a user cache
is cleaned), registered as a model version whose row names its source, and switched to.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.store import ModelVersion, Workspace
from maskformer.errors import UserError
from maskformer.sources import ResolvedCheckpoint, resolve_checkpoint

Progress = Callable[[float, str], None]

# Shipped metadata names as the model line shows them.
DATASET_LABELS = {
    "ade20k_150": "ADE20K",
    "ade20k_full_847": "ADE20K-full",
    "coco_panoptic_133": "COCO panoptic",
    "coco_stuff_171": "COCO-Stuff",
    "cityscapes_19": "Cityscapes",
}


def converted_dir(ws: Workspace) -> Path:
    """Where the workspace keeps checkpoints converted from other formats."""
    return ws.root / "models" / "converted"


def resolve_for_workspace(
    ws: Workspace, spec: str | Path, progress: Progress | None = None
) -> ResolvedCheckpoint:
    """``resolve_checkpoint`` with the workspace's own conversion cache."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("type a checkpoint path, a Hugging Face folder or a hub id (owner/name)")
    return resolve_checkpoint(spec, cache_dir=converted_dir(ws), progress=progress)


def register_version(ws: Workspace, resolved: ResolvedCheckpoint) -> ModelVersion:
    """The model version of ``resolved.path`` (added, not activated, when new); its metrics record
    the source, which the versions table shows."""
    path = str(resolved.path)
    found = next((v for v in ws.model_versions() if v.path == path), None)
    if found is not None:
        if resolved.kind != "native" and "source" not in found.metrics:
            ws.set_model_metrics(found.id, {**found.metrics, **_source_metrics(resolved)})
            return ws.model_version(found.id)
        return found
    return ws.add_model_version(path, metrics=_source_metrics(resolved))


def _source_metrics(resolved: ResolvedCheckpoint) -> dict[str, Any]:
    """A converted model's origin; a native file is its own source (the row shows its name)."""
    if resolved.kind == "native":
        return {}
    return {"source": resolved.describe(), "source_kind": resolved.kind}


def load_into_app(
    ctx: Any, switcher: Any, spec: str | Path, progress: Progress | None = None
) -> ModelVersion:
    """Resolve ``spec``, register it and switch the app to it; returns the active version.

    Args:
        ctx: the app's ``AppContext``.
        switcher: its ``ModelSwitcher`` (loads the model outside the lock, then swaps it in).
        spec: a native .safetensors, a Hugging Face folder or hub id, an official .pkl/.pth.
        progress: called with (fraction, message) while downloading and converting.
    """
    resolved = resolve_for_workspace(ctx.workspace, spec, progress)
    version = register_version(ctx.workspace, resolved)
    if progress:
        progress(0.9, f"loading {resolved.describe()}")
    return switcher.switch(version.id)


def version_source(v: ModelVersion) -> str:
    """What a model version's row calls it: its recorded source, else its file name."""
    return str(v.metrics.get("source") or Path(v.path).name)


def classes_label(meta: Any) -> str:
    """``ADE20K 150 classes``, or ``3 classes: cat, dog, sky`` for a custom class set."""
    k = meta.num_classes
    name = DATASET_LABELS.get(getattr(meta, "name", ""), "")
    if name:
        return f"{name}, {k} classes"
    shown = ", ".join(meta.class_names[:4]) + (", …" if k > 4 else "")
    return f"{k} classes: {shown}"


def model_line(ctx: Any) -> str:
    """One Markdown line: the app's model version, its source and its classes."""
    vid = ctx.model_version_id
    source = "the model given at start"
    if vid is not None:
        source = f"**v{vid}** {version_source(ctx.workspace.model_version(vid))}"
    return f"Model: {source} · {classes_label(ctx.meta)}"
