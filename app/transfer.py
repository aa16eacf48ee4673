"""Import into a workspace (image folders, COCO panoptic / instances) and export it as COCO."""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from app.store import NewAnnotation, NewImage, Workspace, prepare_image
from maskformer.config import DatasetMeta
from maskformer.data import open_dataset
from maskformer.data.base import IMAGE_EXTENSIONS
from maskformer.data.coco import write_coco_instances, write_coco_panoptic
from maskformer.errors import DatasetError, ImageReadError, UserError

FORMATS = ("coco-panoptic", "coco-instances")


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


@dataclass(frozen=True)
class Record:
    """What ``write_coco_*`` needs per image (category ids contiguous in the export meta)."""

    id_map: object
    segments: list[dict]
    image_id: int
    file_name: str


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


def export(ws: Workspace, fmt: str, out_dir: str | Path, include_predicted: bool = False) -> Path:
    """Write the annotated images in the project's dataset layout (``open_dataset`` reads it).

    ``coco-panoptic``: ``images/``, ``panoptic/`` (RGB id PNGs), ``panoptic.json``.
    ``coco-instances``: ``images/``, ``instances.json`` (RLE masks of thing segments).
    The folder is built next to ``out_dir`` and renamed into place, so a crash leaves no half
    export. Images with status "corrected" are exported (plus "predicted" when asked).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not an empty folder")
    records, tmp = [], Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_parent(out)))
    try:
        records = _write_images(ws, tmp / "images", include_predicted)
        if not records:
            raise UserError("nothing to export: no image has a saved (corrected) annotation")
        meta, _ = ws.meta()
        if fmt == "coco-panoptic":
            write_coco_panoptic(tmp / "panoptic.json", tmp / "panoptic", records, meta)
        else:
            write_coco_instances(tmp / "instances.json", records, meta)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _write_images(ws: Workspace, image_dir: Path, include_predicted: bool) -> list[Record]:
    """Copy the original image bytes and collect records with contiguous category ids."""
    statuses = {"corrected", "predicted"} if include_predicted else {"corrected"}
    _, cat_ids = ws.meta()
    contiguous = {cid: i for i, cid in enumerate(cat_ids)}
    image_dir.mkdir(parents=True)
    records = []
    for rec in ws.list_images():
        if rec.status not in statuses:
            continue
        stored = ws.load_annotation(rec.id)
        if stored is None:
            continue
        id_map, segments, _ = stored
        name = f"{rec.id:06d}_{_safe_stem(rec.name)}{Path(rec.file).suffix}"
        shutil.copyfile(ws.root / rec.file, image_dir / name)
        # Ground truth only: the model's query/score stay in the workspace.
        segs = [
            {
                "id": int(s["id"]),
                "category_id": contiguous[int(s["category_id"])],
                "iscrowd": int(s.get("iscrowd") or 0),
                "isthing": bool(s.get("isthing")),
            }
            for s in segments
        ]
        records.append(Record(id_map, segs, rec.id, name))
    return records


def _safe_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)[:60] or "image"


def export_zip(ws: Workspace, fmt: str, include_predicted: bool = False) -> Path:
    """Export under ``<workspace>/exports/<fmt>-<time>/`` and zip it; returns the zip path."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    folder = export(ws, fmt, ws.root / "exports" / f"{fmt}-{stamp}", include_predicted)
    zip_path = folder.with_suffix(".zip")
    tmp = zip_path.with_name(f".{zip_path.name}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(folder.parent).as_posix())
    tmp.replace(zip_path)
    return zip_path
