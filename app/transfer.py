"""Import into a workspace (image folders, COCO panoptic / instances) and export it as COCO."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

# FORMATS and Record are re-exported for the callers that import them from here.
from app.export import FORMATS, Record, export_dataset, export_dataset_zip, selection_for
from app.store import NewAnnotation, NewImage, Workspace, prepare_image
from maskformer.config import DatasetMeta
from maskformer.data import open_dataset
from maskformer.data.base import IMAGE_EXTENSIONS
from maskformer.errors import DatasetError, ImageReadError, UserError

__all__ = ["FORMATS", "ImportReport", "Record", "export", "export_zip", "import_source"]


@dataclass
class ImportReport:
    added: int = 0  # new images
    duplicates: int = 0  # images already in the workspace (same bytes)
    annotated: int = 0  # images that came with annotations
    skipped: list[str] = field(default_factory=list)  # "name: reason" for unreadable files
    notes: list[str] = field(default_factory=list)  # what the import changed to fit the workspace

    def summary(self) -> str:
        parts = [f"imported {self.added} new image(s)"]
        if self.duplicates:
            parts.append(f"{self.duplicates} already present")
        if self.annotated:
            parts.append(f"{self.annotated} with annotations")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} unreadable: " + "; ".join(self.skipped[:5]))
        text = ", ".join(parts) + "."
        return " ".join([text, *self.notes[:5]])

    def merge(self, other: ImportReport) -> None:
        self.added += other.added
        self.duplicates += other.duplicates
        self.annotated += other.annotated
        self.skipped += other.skipped
        self.notes += other.notes


# ------------------------------------------------------------------------------------ import

# An uploaded archive may hold at most this much (declared, uncompressed) and this many files;
# zipfile stops each member at its declared size, so a zip bomb cannot write more.
MAX_ARCHIVE_BYTES = 4 << 30
MAX_ARCHIVE_FILES = 100_000
ARCHIVE_EXTENSIONS = (".zip",)
OUTSIDE_ROOT = "{given}: not inside the folder this server imports from"


def import_source(
    ws: Workspace, src: str | Path | list[str | Path], *, root: Path | None = None
) -> ImportReport:
    """Import a COCO panoptic folder/JSON, a COCO instances JSON, a folder of images, or files.

    Nothing is written unless the whole source is readable (bad images inside a plain image
    folder are skipped and reported instead). With ``root``, every file read (the source, a
    dataset's images and label files, the images of a folder, symlinks resolved) must lie inside
    ``root``; anything else is refused with one message that does not say whether it exists.
    """
    ws.check_writable()
    if isinstance(src, (list, tuple)):
        files = [Path(p) for p in src]
        if root is not None:
            files = [confine(str(f), root) for f in files]
        return import_images(ws, files)
    p = Path(str(src).strip())
    if root is not None:
        p = confine(str(src).strip(), root)
    if not _exists(p):
        raise UserError(f"{str(src)[:200]}: no such file or folder")
    if p.is_file() and p.suffix.lower() == ".json" or (p.is_dir() and _is_dataset(p)):
        return import_dataset(ws, p, root=root)
    if p.is_dir():
        files = image_files(p)
        if not files:
            raise UserError(f"{p}: the folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        return import_images(ws, files)
    if p.suffix.lower() in ARCHIVE_EXTENSIONS:
        return import_archive(ws, p)
    return import_images(ws, [p])


def _exists(p: Path) -> bool:
    try:
        return p.exists()
    except (OSError, ValueError):  # a name too long, a NUL byte
        return False


def confine(given: str, root: Path) -> Path:
    """``given`` (absolute, or relative to ``root``) resolved, if it lies inside ``root``.

    Raises UserError otherwise, with the same words whether or not the path exists.
    """
    try:
        path = Path(given)
        if not path.is_absolute():
            path = root / path
        resolved = path.resolve()
        inside = "\x00" not in given and resolved.is_relative_to(root.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte, a name too long
        inside = False
    if not inside:
        raise UserError(OUTSIDE_ROOT.format(given=given[:200]))
    return resolved


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``: symlinked folders are not entered, and files that are
    symlinks to outside ``folder`` are left out (a folder import reads only that folder)."""
    out = []
    top = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            f = Path(dirpath) / name
            if f.suffix.lower() not in IMAGE_EXTENSIONS or name.startswith("."):
                continue
            try:
                if f.resolve().is_relative_to(top) and f.is_file():
                    out.append(f)
            except (OSError, RuntimeError):
                continue
    return out


def _is_dataset(p: Path) -> bool:
    return any((p / n).is_file() for n in ("panoptic.json", "instances.json"))


def import_images(ws: Workspace, files: list[Path]) -> ImportReport:
    """Add image files (and .zip archives among them); unreadable ones are skipped (all of
    them unreadable raises)."""
    report, ready = ImportReport(), []
    archives = [f for f in files if f.suffix.lower() in ARCHIVE_EXTENSIONS]
    for f in archives:
        report.merge(import_archive(ws, f))
    for f in files:
        if f in archives:
            continue
        try:
            ready.append(prepare_image(_read(f), f.name))
        except ImageReadError as e:
            report.skipped.append(f"{f.name}: {e}")
    if not ready and not archives:
        raise ImageReadError("no readable image to import: " + "; ".join(report.skipped[:3]))
    if ready:
        _add(ws, ready, None, None, report)
    return report


def _read(f: Path) -> bytes:
    try:
        return f.read_bytes()
    except OSError as e:
        raise ImageReadError(f"cannot read {f.name}: {e.strerror or e}") from None


def import_dataset(ws: Workspace, path: Path, *, root: Path | None = None) -> ImportReport:
    """Import a COCO panoptic or instances dataset with its labels, all or nothing."""
    ds = open_dataset(path, within=root)  # cheap checks: JSON, categories, references, files
    if root is not None:
        for i in range(len(ds)):
            for f in ds.source_files(i):
                confine(str(f), root)
    ds.validate()  # reads every label file; raises one DatasetError listing the problems
    report = ImportReport(annotated=len(ds))
    isthing = _isthing_in_workspace(ws, ds.meta, report)
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
                "isthing": isthing[int(s["category_id"])],
                "iscrowd": int(s.get("iscrowd", 0)),
                "query": None,
                "score": None,
            }
            for s in sample.segments
        ]
        anns.append(NewAnnotation(sample.id_map.astype("int32"), segs))
    if not images:
        raise DatasetError(f"{path}: the dataset has no images")
    _add(ws, images, anns, ds.meta, report)
    return report


def _isthing_in_workspace(ws: Workspace, meta: DatasetMeta, report: ImportReport) -> list[bool]:
    """Thing/stuff of each imported class: the workspace's where it has a category of that name
    (classes go by name there), said in the report when the file disagrees."""
    known = {c.name: c.isthing for c in ws.categories()}
    out = []
    for name, thing in zip(meta.class_names, meta.isthing, strict=True):
        kept = known.get(name.strip(), thing)
        if kept != thing:
            kinds = ("stuff", "a thing")
            report.notes.append(
                f"Category {name.strip()[:100]!r} is {kinds[thing]} in the file but "
                f"{kinds[kept]} in the workspace: imported as {kinds[kept]}."
            )
        out.append(bool(kept))
    return out


def import_archive(ws: Workspace, archive: Path) -> ImportReport:
    """Import a .zip (of images, or of a COCO dataset) by unpacking it safely into a temp folder
    of the workspace: no member outside that folder, no links, bounded size and count."""
    scratch = ws.root / ".imports"
    scratch.mkdir(exist_ok=True)
    with ws.writing_files():  # Workspace.cleanup removes the folder only if this process died
        tmp = Path(tempfile.mkdtemp(prefix="zip-", dir=scratch))
        try:
            unpack_zip(archive, tmp)
            entries = [e for e in tmp.iterdir() if not e.name.startswith(".")]
            top = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
            try:
                return import_source(ws, top, root=tmp)
            except UserError as e:
                raise UserError(f"{archive.name}: {str(e).replace(str(tmp) + '/', '')}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def unpack_zip(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing anything that could leave it or fill a disk."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{archive.name}: not a readable zip archive ({e})") from None
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        if len(members) > MAX_ARCHIVE_FILES:
            raise UserError(f"{archive.name}: more than {MAX_ARCHIVE_FILES} files")
        if sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
            raise UserError(f"{archive.name}: unpacks to more than {MAX_ARCHIVE_BYTES >> 30} GiB")
        for m in members:
            name = m.filename.replace("\\", "/")  # old Windows tools write backslashes
            where = f"{archive.name}: {name[:100]!r}"
            if stat.S_ISLNK(m.external_attr >> 16):
                raise UserError(f"{where} is a link; archives may hold files only")
            target = dest / name
            if Path(name).is_absolute() or ".." in Path(name).parts or "\x00" in name:
                raise UserError(f"{where} would land outside the archive's folder")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(m) as src, open(target, "xb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except FileExistsError:
                raise UserError(f"{where} appears twice") from None
            except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as e:
                raise UserError(f"{where} is damaged ({e})") from None
            except RuntimeError as e:  # an encrypted member
                raise UserError(f"{where} cannot be read ({e})") from None
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise UserError(f"disk full while unpacking {archive.name}") from None
                raise UserError(f"{where} cannot be unpacked ({e.strerror})") from None


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
