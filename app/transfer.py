"""Import into a workspace (image folders, COCO panoptic / instances) and export it as COCO."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# FORMATS and Record are re-exported for the callers that import them from here.
from app.export import FORMATS, Record, export_dataset, export_dataset_zip, selection_for
from app.store import NewAnnotation, NewImage, Workspace, prepare_image
from maskformer.config import DatasetMeta
from maskformer.data import open_dataset
from maskformer.data.datasets import IMAGE_EXTENSIONS
from maskformer.errors import DatasetError, ImageReadError, UserError

__all__ = ["FORMATS", "ImportReport", "Record", "export", "export_zip", "import_source"]


@dataclass
class ImportReport:
    added: int = 0  # new images
    duplicates: int = 0  # images already in the workspace (same bytes)
    annotated: int = 0  # images that came with annotations
    skipped: list[str] = field(default_factory=list)  # "name: reason" for unreadable files

    def summary(self) -> str:
        parts = [f"imported {self.added} new image(s)"]
        if self.duplicates:
            parts.append(f"{self.duplicates} already present")
        if self.annotated:
            parts.append(f"{self.annotated} with annotations")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} unreadable: " + "; ".join(self.skipped[:5]))
        return ", ".join(parts) + "."


# ------------------------------------------------------------------------------------ import


def import_source(ws: Workspace, src: str | Path | list[str | Path]) -> ImportReport:
    """Import a COCO panoptic folder/JSON, a COCO instances JSON, a folder of images, or files.

    Nothing is written unless the whole source is readable (bad images inside a plain image
    folder are skipped and reported instead).
    """
    if isinstance(src, (list, tuple)):
        return import_images(ws, [Path(p) for p in src])
    p = Path(str(src).strip()).expanduser()
    if not p.exists():
        raise UserError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix.lower() == ".json" or (p.is_dir() and _is_dataset(p)):
        return import_dataset(ws, p)
    if p.is_dir():
        files = sorted(
            f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise UserError(f"{p}: the folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return import_images(ws, files)
    return import_images(ws, [p])


def _is_dataset(p: Path) -> bool:
    return any((p / n).is_file() for n in ("panoptic.json", "instances.json"))


def import_images(ws: Workspace, files: list[Path]) -> ImportReport:
    """Add image files; unreadable ones are skipped (all of them unreadable raises)."""
    report, ready = ImportReport(), []
    for f in files:
        try:
            ready.append(prepare_image(_read(f), f.name))
        except ImageReadError as e:
            report.skipped.append(f"{f.name}: {e}")
    if not ready:
        raise ImageReadError("no readable image to import: " + "; ".join(report.skipped[:3]))
    _add(ws, ready, None, None, report)
    return report


def _read(f: Path) -> bytes:
    try:
        return f.read_bytes()
    except OSError as e:
        raise ImageReadError(f"cannot read {f}: {e}") from None


def import_dataset(ws: Workspace, path: Path) -> ImportReport:
    """Import a COCO panoptic or instances dataset with its labels, all or nothing."""
    ds = open_dataset(path)  # cheap checks: JSON, categories, references, files exist
    ds.validate()  # reads every label file; raises one DatasetError listing the problems
    images, anns = [], []
    for i in range(len(ds)):
        sample = ds.load(i)
        try:
            img = prepare_image(_read(ds.image_path(i)), Path(sample.file_name).name)
        except ImageReadError as e:
            raise DatasetError(f"{ds.rel(ds.image_path(i))}: {e}") from None
        images.append(img)
        segs = [
            {
                "id": int(s["id"]),
                "category_id": int(s["category_id"]),
                "isthing": bool(s["isthing"]),
                "iscrowd": int(s.get("iscrowd", 0)),
                "query": None,
                "score": None,
            }
            for s in sample.segments
        ]
        anns.append(NewAnnotation(sample.id_map.astype("int32"), segs))
    if not images:
        raise DatasetError(f"{path}: the dataset has no images")
    report = ImportReport(annotated=len(images))
    _add(ws, images, anns, ds.meta, report)
    return report


def _add(
    ws: Workspace,
    images: list[NewImage],
    anns: list | None,
    meta: DatasetMeta | None,
    report: ImportReport,
) -> None:
    known = {r.sha256 for r in ws.list_images()}
    ws.add_images(images, anns, meta)
    new = {img.sha256 for img in images} - known
    report.added += len(new)
    report.duplicates += len(images) - len(new)


# ------------------------------------------------------------------------------------ export
# The export lives in app/export.py; these keep the callers that want only the path working.


def export(ws: Workspace, fmt: str, out_dir: str | Path, include_predicted: bool = False) -> Path:
    """``export_dataset`` of the corrected images (and predicted ones when asked); the folder."""
    return export_dataset(ws, fmt, out_dir, selection_for(include_predicted)).path


def export_zip(ws: Workspace, fmt: str, include_predicted: bool = False) -> Path:
    """``export_dataset_zip`` of the corrected (and predicted, when asked) images; the zip."""
    return export_dataset_zip(ws, fmt, selection_for(include_predicted)).path
