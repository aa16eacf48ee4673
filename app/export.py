"""Export a workspace as COCO: which images go in, under which file names, and what was left out.

Exported image files keep the names they were imported with; only a name that collides with an
earlier one (compared without case and without extension, since the panoptic PNG of ``a.jpg``
and of ``a.png`` would both be ``a.png``) gets ``_2``, ``_3``, ... before its extension. Every
``images`` entry of the JSON carries ``original_file_name`` (the imported name) next to
``file_name`` (the exported one) and the workspace image id as ``id``.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from app.store import REVIEWS, ImageRecord, Workspace
from maskformer.data.coco import write_coco_instances, write_coco_panoptic, write_json
from maskformer.errors import UserError

FORMATS = ("coco-panoptic", "coco-instances")
EXPORTABLE = ("corrected", "predicted")  # statuses with an annotation to export
REVIEW_FILTERS = ("any", "accepted", "needs-changes", "unreviewed")
# Extensions that name the same format, so "photo.jpeg" stored as ".jpg" keeps its name.
_SAME_FORMAT = {".jpeg": ".jpg", ".tiff": ".tif"}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")
_MAX_NAME = 200  # bytes: well under every file system's 255


@dataclass(frozen=True)
class Record:
    """What ``write_coco_*`` needs per image (category ids contiguous in the export meta)."""

    id_map: object
    segments: list[dict]
    image_id: int
    file_name: str


@dataclass(frozen=True)
class Selection:
    """Which images an export takes: their status, and optionally their review.

    Attributes:
        statuses: any of ``EXPORTABLE``; the default is corrected only.
        review: "any", "accepted", "needs-changes" or "unreviewed".
    """

    statuses: tuple[str, ...] = ("corrected",)
    review: str = "any"

    def __post_init__(self) -> None:
        bad = [s for s in self.statuses if s not in EXPORTABLE]
        if bad or not self.statuses:
            raise UserError(
                f"export can include images that are {' or '.join(EXPORTABLE)}; got "
                f"{', '.join(bad) or 'nothing'} (unseen images have no annotation)"
            )
        if self.review not in REVIEW_FILTERS:
            raise UserError(
                f"unknown review filter {self.review!r}; choose one of {', '.join(REVIEW_FILTERS)}"
            )

    def why_not(self, rec: ImageRecord) -> str | None:
        """None when the image goes in, else the reason it is left out (for the message)."""
        if rec.status == "unseen":
            return "unseen (no annotation yet)"
        if rec.status not in self.statuses:
            return f"{rec.status} (not included)"
        if self.review == "unreviewed" and rec.review is not None:
            return f"{rec.review} (only unreviewed images asked for)"
        if self.review in REVIEWS and rec.review != self.review:
            return f"{rec.review or 'not reviewed'} (only {self.review} asked for)"
        return None


@dataclass
class ExportReport:
    """What an export wrote: where, which images (by status), what it left out and why."""

    path: Path
    fmt: str
    included: dict[str, int] = field(default_factory=dict)  # status -> images
    left_out: dict[str, int] = field(default_factory=dict)  # reason -> images
    renamed: list[tuple[str, str]] = field(default_factory=list)  # (imported name, exported)

    @property
    def count(self) -> int:
        return sum(self.included.values())

    def summary(self) -> str:
        inc = ", ".join(f"{n} {s}" for s, n in self.included.items())
        text = f"Exported {self.count} image(s) ({inc}) as {self.fmt} to {self.path}."
        if self.left_out:
            out = "; ".join(f"{n} {why}" for why, n in self.left_out.items())
            text += f" Left out {sum(self.left_out.values())}: {out}."
        else:
            text += " Nothing was left out."
        if self.renamed:
            pairs = ", ".join(f"{a} → {b}" for a, b in self.renamed[:5])
            more = f" and {len(self.renamed) - 5} more" if len(self.renamed) > 5 else ""
            text += f" Renamed {len(self.renamed)} colliding name(s): {pairs}{more}."
        return text


# ------------------------------------------------------------------------------------ names


def kept_name(name: str, stored_suffix: str) -> str:
    """The imported name, made a safe file name whose extension matches the stored bytes."""
    name = _UNSAFE.sub("_", name).strip() or "image"
    if name in (".", ".."):
        name = "image"
    stem, suffix = Path(name).stem or "image", Path(name).suffix
    if _SAME_FORMAT.get(suffix.lower(), suffix.lower()) != stored_suffix.lower():
        stem, suffix = name, stored_suffix  # "scan" or "x.heic" stored as PNG -> "scan.png"
    while len((stem + suffix).encode()) > _MAX_NAME:
        stem = stem[:-1]
    return stem + suffix


def export_names(records: list[ImageRecord]) -> dict[int, str]:
    """Image id -> exported file name: the imported name unless an earlier image (by id) took
    the same stem (case-insensitive); then ``<stem>_<n><ext>`` with the first free n >= 2."""
    wanted = {r.id: kept_name(r.name, Path(r.file).suffix) for r in records}
    taken: set[str] = set()
    out: dict[int, str] = {}
    for r in sorted(records, key=lambda r: r.id):  # first pass: first comer keeps its name
        key = Path(wanted[r.id]).stem.casefold()
        if key not in taken:
            taken.add(key)
            out[r.id] = wanted[r.id]
    for r in sorted(records, key=lambda r: r.id):  # second pass: the others get a free suffix
        if r.id in out:
            continue
        p, n = Path(wanted[r.id]), 2
        while f"{p.stem}_{n}".casefold() in taken:
            n += 1
        taken.add(f"{p.stem}_{n}".casefold())
        out[r.id] = f"{p.stem}_{n}{p.suffix}"
    return out


# ------------------------------------------------------------------------------------ export


def export_dataset(
    ws: Workspace, fmt: str, out_dir: str | Path, selection: Selection = Selection()
) -> ExportReport:
    """Write the selected images in the project's dataset layout (``open_dataset`` reads it).

    ``coco-panoptic``: ``images/``, ``panoptic/`` (RGB id PNGs), ``panoptic.json``.
    ``coco-instances``: ``images/``, ``instances.json`` (RLE masks of thing segments).
    The folder is built next to ``out_dir`` and renamed into place, so a crash leaves no half
    export.

    Raises:
        UserError: unknown format, ``out_dir`` not empty, or no image selected (the message
            says what was left out and why).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not an empty folder")
    report = ExportReport(out, fmt)
    chosen = []
    for rec in ws.list_images(counts=False):
        why = selection.why_not(rec)
        if why is not None:
            report.left_out[why] = report.left_out.get(why, 0) + 1
        else:
            chosen.append(rec)
    if not chosen:
        left = "; ".join(f"{n} {why}" for why, n in report.left_out.items())
        asked = " or ".join(selection.statuses)
        if selection.review != "any":
            asked += f", review {selection.review}"
        raise UserError(
            f"nothing to export: no image is {asked}"
            + (f"; left out {left}" if left else ": the workspace has no images")
        )
    with ws.writing_files():  # Workspace.cleanup leaves the temp folder alone meanwhile
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_parent(out)))
        try:
            records = _write_images(ws, chosen, tmp / "images", report)
            meta, _ = ws.meta()
            if fmt == "coco-panoptic":
                obj = write_coco_panoptic(tmp / "panoptic.json", tmp / "panoptic", records, meta)
            else:
                obj = write_coco_instances(tmp / "instances.json", records, meta)
            names = {r.id: r.name for r in chosen}
            for entry in obj["images"]:  # which exported file is which imported one
                entry["original_file_name"] = names[entry["id"]]
            write_json(tmp / ("panoptic.json" if fmt == "coco-panoptic" else "instances.json"), obj)
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return report


def _parent(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return out.parent


def _write_images(
    ws: Workspace, chosen: list[ImageRecord], image_dir: Path, report: ExportReport
) -> list[Record]:
    """Copy the original image bytes under their export names; records with contiguous ids."""
    _, cat_ids = ws.meta()
    contiguous = {cid: i for i, cid in enumerate(cat_ids)}
    names = export_names(chosen)
    image_dir.mkdir(parents=True)
    records = []
    for rec in chosen:
        stored = ws.load_annotation(rec.id)
        if stored is None:  # a status without its annotation: not exportable
            why = f"{rec.status} without a stored annotation"
            report.left_out[why] = report.left_out.get(why, 0) + 1
            continue
        id_map, segments, _ = stored
        name = names[rec.id]
        if name != rec.name:
            report.renamed.append((rec.name, name))
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
        report.included[rec.status] = report.included.get(rec.status, 0) + 1
    if not records:
        raise UserError("nothing to export: no selected image has a stored annotation")
    return records


def export_dataset_zip(ws: Workspace, fmt: str, selection: Selection = Selection()) -> ExportReport:
    """Export under ``<workspace>/exports/<fmt>-<time>/`` and zip it; ``report.path`` is the zip."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    with ws.writing_files():
        report = export_dataset(ws, fmt, ws.root / "exports" / f"{fmt}-{stamp}", selection)
        folder = report.path
        zip_path = folder.with_suffix(".zip")
        tmp = zip_path.with_name(f".{zip_path.name}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(folder.parent).as_posix())
        tmp.replace(zip_path)
    report.path = zip_path
    return report


def selection_for(include_predicted: bool) -> Selection:
    return Selection(("corrected", "predicted") if include_predicted else ("corrected",))
