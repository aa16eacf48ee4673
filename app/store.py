"""The workspace: `workspace.sqlite` and content-addressed image files; one transaction a write."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from app.store_fs import (
    BUSY_WAIT,
    FILES_LOCK,
    READ_ONLY,
    WorkspaceError,
    WorkspaceFullError,  # noqa: F401 -- the workspace's errors are imported from here
    WorkspaceLockedError,
    WorkspaceReadOnlyError,
    explain,
    flock,
    read_only_uri,
    sqlite_code,
    writable,
    write_file,
)
from maskformer.config import DatasetMeta, default_colors
from maskformer.data.coco import id2rgb, png_bytes, rgb2id
from maskformer.errors import ImageReadError, UserError
from maskformer.image_io import load_image

log = logging.getLogger(__name__)

STATUSES = ("unseen", "predicted", "corrected")
REVIEWS = ("accepted", "needs-changes")  # a reviewer's verdict on an image, as CVAT has
_FORMAT_EXT = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "WEBP": ".webp",
    "GIF": ".gif",
}

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    file TEXT NOT NULL,                -- path under the workspace root: images/<sha256>.<ext>
    name TEXT NOT NULL,                -- the file name the user gave
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'unseen' CHECK (status IN ('unseen', 'predicted', 'corrected')),
    added TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS categories (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    isthing INTEGER NOT NULL,
    color TEXT NOT NULL,               -- JSON [r, g, b]
    dataset_id INTEGER NOT NULL UNIQUE -- the COCO category id used on export
);
CREATE TABLE IF NOT EXISTS model_versions (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    parent INTEGER REFERENCES model_versions(id),
    created TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    active INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS annotations (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    id_map_png BLOB NOT NULL,          -- COCO panoptic RGB encoding of the (H, W) id map
    segments TEXT NOT NULL,            -- JSON list of segment dicts (category_id = categories.id)
    source TEXT NOT NULL,              -- 'model' | 'user' | 'import'
    model_version_id INTEGER REFERENCES model_versions(id),
    updated TEXT NOT NULL
);
"""

# Columns added after the first schema: ``_migrate`` adds the missing ones to an existing file
# (``ALTER TABLE ... ADD COLUMN``; existing rows get NULL), so old workspaces open unchanged.
ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "images": (
        ("review", "TEXT CHECK (review IS NULL OR review IN ('accepted', 'needs-changes'))"),
        ("reviewed", "TEXT"),  # ISO time of the review verdict
        (
            "uncertainty",
            "REAL",
        ),  # app.uncertainty score of the stored prediction; higher = less sure
    ),
}


def _column(row: sqlite3.Row, name: str) -> Any:
    """``row[name]``, or None where the file predates the column (``ADDED_COLUMNS``)."""
    return row[name] if name in row.keys() else None  # noqa: SIM118 (Row "in" tests values)


# Names go into every response that lists classes or images: bounded, printable, one line.
MAX_CATEGORY_NAME = 100
MAX_IMAGE_NAME = 255


@dataclass(frozen=True)
class ImageRecord:
    id: int
    name: str
    sha256: str
    file: str
    width: int
    height: int
    status: str
    counts: dict[str, int] = field(default_factory=dict)  # category name -> segments
    review: str | None = None  # "accepted" | "needs-changes" | None (not reviewed)
    reviewed: str | None = None  # ISO time of the review, None when not reviewed
    uncertainty: float | None = (
        None  # model uncertainty of the stored prediction (higher: less sure)
    )


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    isthing: bool
    color: tuple[int, int, int]
    dataset_id: int


@dataclass(frozen=True)
class ModelVersion:
    id: int
    path: str
    parent: int | None
    created: str
    metrics: dict[str, Any]
    active: bool


@dataclass(frozen=True)
class NewImage:
    """Encoded image bytes waiting to be added (validated and hashed by ``prepare_image``)."""

    data: bytes
    name: str
    sha256: str
    ext: str
    height: int
    width: int


@dataclass(frozen=True)
class NewAnnotation:
    """An annotation for an image that is added in the same transaction (import)."""

    id_map: np.ndarray  # (H, W) int32, 0 = void
    segments: list[dict[str, Any]]  # category_id = workspace category id


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_category_name(name: str) -> str:
    """The name stripped; WorkspaceError if it is empty, too long or has control characters."""
    name = str(name).strip()
    if not name:
        raise WorkspaceError("a category name may not be empty")
    if len(name) > MAX_CATEGORY_NAME:
        raise WorkspaceError(
            f"category name {name[:40]!r}... is {len(name)} characters long; the limit is "
            f"{MAX_CATEGORY_NAME}"
        )
    if not name.isprintable():
        raise WorkspaceError(f"category name {name[:40]!r} has control characters")
    return name


def image_name(name: str) -> str:
    """A file name as shown and stored: its last part, printable, at most MAX_IMAGE_NAME chars."""
    name = "".join(c if c.isprintable() else "_" for c in Path(str(name)).name) or "image"
    if len(name) > MAX_IMAGE_NAME:
        suffix = Path(name).suffix[:16]
        name = name[: MAX_IMAGE_NAME - len(suffix)] + suffix
    return name


def prepare_image(data: bytes, name: str) -> NewImage:
    """Decode ``data`` once (``load_image`` rejects empty, corrupt, oversized files) and hash it."""
    name = image_name(name)
    try:
        h, w = load_image(bytes(data)).shape[:2]
    except ImageReadError as e:
        raise ImageReadError(f"{name}: {e}") from None
    with Image.open(io.BytesIO(data)) as im:
        ext = _FORMAT_EXT.get(im.format or "", "")
    if not ext:  # a format we decode but do not keep as is: store a lossless PNG
        data = png_bytes(load_image(bytes(data)))
        ext = ".png"
    return NewImage(bytes(data), name, hashlib.sha256(data).hexdigest(), ext, h, w)


def encode_id_map(id_map: np.ndarray) -> bytes:
    """(H, W) int ids -> PNG bytes (COCO RGB encoding; exact for ids < 2^24)."""
    return png_bytes(id2rgb(id_map))


def decode_id_map(data: bytes) -> np.ndarray:
    """PNG bytes from ``encode_id_map`` -> (H, W) int32 ids."""
    with Image.open(io.BytesIO(data)) as im:
        return rgb2id(np.asarray(im.convert("RGB"))).astype(np.int32)


class Workspace:
    """A folder with ``workspace.sqlite`` and ``images/``; safe to share between threads.

    Every method that writes runs in one ``BEGIN IMMEDIATE`` transaction, so a crash leaves either
    the old or the new state. Image files are written (atomically) before the row that names them;
    files a crash left unreferenced are removed the next time the workspace is opened.

    A workspace that cannot be written (a read-only file system, no permission) opens read-only:
    everything can be viewed and exported to another folder, and every write raises
    ``WorkspaceReadOnlyError``. ``read_only=True`` asks for that mode explicitly.
    """

    def __init__(self, root: str | Path, *, read_only: bool = False, lock_timeout: float = 30.0):
        self.root = Path(root)
        self.db_path = self.root / "workspace.sqlite"
        self.lock_timeout = float(lock_timeout)
        self._lock = threading.Lock()  # one writer at a time inside this process
        self.read_only = read_only or not writable(self.root, self.db_path)
        if self.read_only:
            if not self.db_path.is_file():
                raise WorkspaceReadOnlyError(
                    f"{self.root}: cannot create a workspace here (read-only or no permission)"
                )
            self._ro_uri = read_only_uri(self.db_path)
            self.cleaned: list[str] = []
            return
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self._create_schema()
        self._migrate()
        self.cleaned = self.cleanup()  # what an interrupted import or export left

    def _create_schema(self) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                con = self._connect()
                try:
                    con.execute("PRAGMA journal_mode=WAL")
                    con.executescript(SCHEMA)
                finally:
                    con.close()
                return
            except sqlite3.DatabaseError as e:
                locked = sqlite_code(e) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
                if not locked or time.monotonic() >= deadline:
                    raise explain(e, self.root) from None

    def check_writable(self) -> None:
        """Raise WorkspaceReadOnlyError (one sentence) if this workspace opened read-only."""
        if self.read_only:
            raise WorkspaceReadOnlyError(READ_ONLY.format(root=self.root))

    def _migrate(self) -> None:
        """Add the columns of ``ADDED_COLUMNS`` that an older workspace file lacks (a read when
        nothing is missing, one transaction otherwise)."""

        def missing(con: sqlite3.Connection) -> list[tuple[str, str, str]]:
            out = []
            for table, columns in ADDED_COLUMNS.items():
                have = {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}
                out += [(table, name, decl) for name, decl in columns if name not in have]
            return out

        con = self._connect()
        try:
            todo = missing(con)
        finally:
            con.close()
        if todo:
            with self._tx() as con:
                for table, name, decl in missing(con):  # again, under the write lock
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    # ---------------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            con = sqlite3.connect(
                self._ro_uri, uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            con = sqlite3.connect(
                self.db_path, timeout=BUSY_WAIT, isolation_level=None, check_same_thread=False
            )
        con.execute("PRAGMA foreign_keys=ON")
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; SQLite's errors become WorkspaceErrors that say
        what happened (locked, disk full, read-only), never the rollback's own complaint."""
        self.check_writable()
        with self._lock:
            con = self._connect()
            try:
                self._begin(con)
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:  # SQLite may have rolled back already (disk full)
                        with suppress(sqlite3.Error):
                            con.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as e:
                raise explain(e, self.root) from None
            finally:
                con.close()

    def _begin(self, con: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, retried while another process holds the lock, up to lock_timeout."""
        deadline = time.monotonic() + self.lock_timeout
        warned = False
        while True:
            try:
                con.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if sqlite_code(e) not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                if time.monotonic() >= deadline:
                    raise WorkspaceLockedError(
                        f"the workspace is locked by another process (retried for "
                        f"{self.lock_timeout:g} s); nothing was changed: try again"
                    ) from None
                if not warned:
                    log.warning("the workspace is locked by another process (retrying)")
                    warned = True

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        try:
            con = self._connect()
            try:
                return con.execute(sql, tuple(args)).fetchall()
            finally:
                con.close()
        except sqlite3.DatabaseError as e:
            raise explain(e, self.root) from None

    # ---------------------------------------------------------------- files

    @contextmanager
    def writing_files(self) -> Iterator[None]:
        """Held (shared, by any number of writers in any process) while files are written into
        the workspace and registered: image files, export and unpack folders. ``cleanup`` runs
        only when no one holds it, so it never removes a file a live writer is about to use."""
        if self.read_only:
            yield
            return
        with flock(self.root / FILES_LOCK, shared=True, wait=True):
            yield

    def cleanup(self) -> list[str]:
        """Remove what interrupted writes left: image files no row names, temp files, export and
        unpack folders that were never renamed into place.

        Skipped (returns []) while any process is writing files into this workspace
        (``writing_files``). Returns the removed paths, relative to the root.
        """
        if self.read_only:
            return []
        removed: list[str] = []
        with flock(self.root / FILES_LOCK, shared=False, wait=False) as got:
            if not got:
                return []
            known = {r["file"] for r in self._read("SELECT file FROM images")}
            for f in sorted((self.root / "images").iterdir()):
                rel = f"images/{f.name}"
                if f.is_file() and rel not in known:
                    f.unlink(missing_ok=True)
                    removed.append(rel)
            for folder, hidden_only in (("exports", True), (".imports", False)):
                if not (self.root / folder).is_dir():
                    continue
                for f in sorted((self.root / folder).iterdir()):
                    if hidden_only and not f.name.startswith("."):
                        continue  # a finished export
                    if f.is_dir():
                        shutil.rmtree(f, ignore_errors=True)
                    else:
                        f.unlink(missing_ok=True)
                    removed.append(f"{folder}/{f.name}")
        if removed:
            log.info("workspace %s: removed %d leftover file(s)", self.root, len(removed))
        return removed

    # ---------------------------------------------------------------- images

    def add_images(
        self,
        images: list[NewImage],
        annotations: list[NewAnnotation | None] | None = None,
        meta: DatasetMeta | None = None,
    ) -> list[ImageRecord]:
        """Add images (deduplicated by content) and optional annotations in one transaction.

        Args:
            images: prepared images.
            annotations: one per image or None; with ``meta`` their ``category_id`` values are
                contiguous indices into ``meta`` (an imported dataset), otherwise workspace ids.
            meta: the classes of imported annotations; missing categories are created (by name)
                in the same transaction.

        Annotated images get status "corrected" (imported labels are treated as ground truth).
        """
        annotations = annotations or [None] * len(images)
        self.check_writable()
        ids: list[int] = []
        with self.writing_files():
            written = []
            try:
                for img in images:  # files first: a crash leaves at most an unreferenced file
                    path = self.root / "images" / f"{img.sha256}{img.ext}"
                    if not path.exists():
                        write_file(path, img.data)
                        written.append(path)
                with self._tx() as con:
                    cat_ids = None
                    if meta is not None:
                        cat_ids = [self._ensure_category(con, *spec) for spec in _meta_specs(meta)]
                    for img, ann in zip(images, annotations):
                        image_id = self._insert_image(con, img)
                        if ann is not None:
                            segs = ann.segments
                            if cat_ids is not None:
                                segs = [
                                    {**s, "category_id": cat_ids[int(s["category_id"])]}
                                    for s in segs
                                ]
                            self._write_annotation(
                                con, image_id, ann.id_map, segs, "corrected", "import", None
                            )
                        ids.append(image_id)
            except BaseException:
                self._forget(written)
                raise
        return [self.image(i) for i in ids]

    def _forget(self, files: list[Path]) -> None:
        """Remove files written for a write that failed, unless a row names them after all."""
        if not files:
            return
        with suppress(UserError):
            known = {r["file"] for r in self._read("SELECT file FROM images")}
            for f in files:
                if f"images/{f.name}" not in known:
                    f.unlink(missing_ok=True)

    def add_image(self, data: bytes, name: str) -> ImageRecord:
        """Validate, store and register one encoded image; a duplicate returns the existing row."""
        return self.add_images([prepare_image(data, name)])[0]

    def _insert_image(self, con: sqlite3.Connection, img: NewImage) -> int:
        row = con.execute("SELECT id FROM images WHERE sha256 = ?", (img.sha256,)).fetchone()
        if row is not None:
            return int(row["id"])
        cur = con.execute(
            "INSERT INTO images (sha256, file, name, width, height, added) VALUES (?,?,?,?,?,?)",
            (img.sha256, f"images/{img.sha256}{img.ext}", img.name, img.width, img.height, _now()),
        )
        return int(cur.lastrowid)

    def image(self, image_id: int) -> ImageRecord:
        rows = self._read("SELECT * FROM images WHERE id = ?", (int(image_id),))
        if not rows:
            raise WorkspaceError(f"the workspace has no image with id {image_id}")
        return self._record(rows[0], self._counts().get(int(image_id), {}))

    def list_images(self, *, counts: bool = True) -> list[ImageRecord]:
        """All images in insertion order, with status, review, uncertainty and (unless
        ``counts`` is False, which saves reading every annotation) per-class segment counts."""
        per_image = self._counts() if counts else {}
        return [
            self._record(r, per_image.get(int(r["id"]), {}))
            for r in self._read("SELECT * FROM images ORDER BY id")
        ]

    def _counts(self) -> dict[int, dict[str, int]]:
        rows = self._read(
            "SELECT a.image_id AS image_id, c.name AS name, COUNT(*) AS n "
            "FROM annotations a, json_each(a.segments) s "
            "JOIN categories c ON c.id = json_extract(s.value, '$.category_id') "
            "GROUP BY a.image_id, c.name"
        )
        out: dict[int, dict[str, int]] = {}
        for r in rows:
            out.setdefault(int(r["image_id"]), {})[r["name"]] = int(r["n"])
        return out

    @staticmethod
    def _record(r: sqlite3.Row, counts: dict[str, int]) -> ImageRecord:
        return ImageRecord(
            int(r["id"]),
            r["name"],
            r["sha256"],
            r["file"],
            int(r["width"]),
            int(r["height"]),
            r["status"],
            counts,
            # A read-only workspace from before these columns cannot be migrated: read as None.
            review=_column(r, "review"),
            reviewed=_column(r, "reviewed"),
            uncertainty=None if _column(r, "uncertainty") is None else float(r["uncertainty"]),
        )

    def image_path(self, image_id: int) -> Path:
        return self.root / self.image(image_id).file

    def load_image(self, image_id: int) -> np.ndarray:
        """(H, W, 3) uint8 RGB of a stored image."""
        return load_image(self.image_path(image_id))

    def set_status(self, image_id: int, status: str) -> None:
        if status not in STATUSES:
            raise WorkspaceError(f"unknown image status {status!r}; expected one of {STATUSES}")
        with self._tx() as con:
            con.execute("UPDATE images SET status = ? WHERE id = ?", (status, int(image_id)))

    def set_review(self, image_id: int, review: str | None) -> ImageRecord:
        """Record a reviewer's verdict ("accepted" / "needs-changes") with the time; None clears
        it. Independent of the status: saving a correction keeps the verdict."""
        if review is not None and review not in REVIEWS:
            raise WorkspaceError(f"unknown review {review!r}; expected one of {REVIEWS} or None")
        with self._tx() as con:
            cur = con.execute(
                "UPDATE images SET review = ?, reviewed = ? WHERE id = ?",
                (review, None if review is None else _now(), int(image_id)),
            )
            if cur.rowcount == 0:
                raise WorkspaceError(f"the workspace has no image with id {image_id}")
        return self.image(image_id)

    def set_uncertainty(self, image_id: int, value: float | None) -> None:
        """Store the uncertainty score of the image's latest prediction (None: unknown)."""
        if value is not None:
            value = float(value)
            if not math.isfinite(value):
                raise WorkspaceError(f"uncertainty must be a finite number, got {value}")
        with self._tx() as con:
            cur = con.execute(
                "UPDATE images SET uncertainty = ? WHERE id = ?", (value, int(image_id))
            )
            if cur.rowcount == 0:
                raise WorkspaceError(f"the workspace has no image with id {image_id}")

    # ---------------------------------------------------------------- annotations

    def save_annotation(
        self,
        image_id: int,
        id_map: np.ndarray,
        segments: list[dict[str, Any]],
        *,
        status: str = "corrected",
        source: str = "user",
        model_version_id: int | None = None,
    ) -> bool:
        """Store an annotation and the image status together (one transaction).

        A model prediction (status "predicted") never replaces a corrected annotation; returns
        whether anything was written.
        """
        if status not in ("predicted", "corrected"):
            raise WorkspaceError(
                f"an annotation's status must be predicted or corrected, not {status!r}"
            )
        with self._tx() as con:
            row = con.execute("SELECT status FROM images WHERE id = ?", (int(image_id),)).fetchone()
            if row is None:
                raise WorkspaceError(f"the workspace has no image with id {image_id}")
            if status == "predicted" and row["status"] == "corrected":
                return False
            self._write_annotation(
                con, int(image_id), id_map, segments, status, source, model_version_id
            )
        return True

    def save_prediction(
        self,
        image_id: int,
        id_map: np.ndarray,
        segments: list[dict[str, Any]],
        *,
        uncertainty: float | None,
        model_version_id: int | None = None,
    ) -> bool:
        """Store a model prediction (status "predicted") and its uncertainty in one transaction;
        a corrected image is left alone (returns False)."""
        if uncertainty is not None and not math.isfinite(float(uncertainty)):
            raise WorkspaceError(f"uncertainty must be a finite number, got {uncertainty}")
        with self._tx() as con:
            row = con.execute("SELECT status FROM images WHERE id = ?", (int(image_id),)).fetchone()
            if row is None:
                raise WorkspaceError(f"the workspace has no image with id {image_id}")
            if row["status"] == "corrected":
                return False
            self._write_annotation(
                con, int(image_id), id_map, segments, "predicted", "model", model_version_id
            )
            con.execute(
                "UPDATE images SET uncertainty = ? WHERE id = ?",
                (None if uncertainty is None else float(uncertainty), int(image_id)),
            )
        return True

    def _write_annotation(
        self,
        con: sqlite3.Connection,
        image_id: int,
        id_map: np.ndarray,
        segments: list[dict[str, Any]],
        status: str,
        source: str,
        model_version_id: int | None,
    ) -> None:
        self._check_annotation(con, image_id, id_map, segments)
        con.execute(
            "INSERT OR REPLACE INTO annotations (image_id, id_map_png, segments, source, "
            "model_version_id, updated) VALUES (?,?,?,?,?,?)",
            (
                image_id,
                encode_id_map(id_map),
                json.dumps([_plain(s) for s in segments]),
                source,
                model_version_id,
                _now(),
            ),
        )
        con.execute("UPDATE images SET status = ? WHERE id = ?", (status, image_id))

    @staticmethod
    def _check_annotation(
        con: sqlite3.Connection, image_id: int, id_map: np.ndarray, segments: list[dict[str, Any]]
    ) -> None:
        row = con.execute("SELECT width, height FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise WorkspaceError(f"the workspace has no image with id {image_id}")
        if tuple(id_map.shape) != (row["height"], row["width"]):
            raise WorkspaceError(
                f"annotation of image {image_id} is {id_map.shape[1]}x"
                f"{id_map.shape[0]} but the image is "
                f"{row['width']}x{row['height']}"
            )
        known = {int(r[0]) for r in con.execute("SELECT id FROM categories")}
        seg_ids = [int(s["id"]) for s in segments]
        if len(set(seg_ids)) != len(seg_ids) or 0 in seg_ids:
            raise WorkspaceError(
                f"annotation of image {image_id}: segment ids must be unique and > 0"
            )
        for s in segments:
            if int(s["category_id"]) not in known:
                raise WorkspaceError(
                    f"annotation of image {image_id}: segment {s['id']} has "
                    f"unknown category id {s['category_id']}"
                )
        present = set(np.unique(id_map).tolist()) - {0}
        if not present <= set(seg_ids):
            missing = sorted(present - set(seg_ids))[:5]
            raise WorkspaceError(
                f"annotation of image {image_id}: id map has pixels of segment(s) "
                f"{missing} without a segment entry"
            )

    def load_annotation(self, image_id: int) -> tuple[np.ndarray, list[dict[str, Any]], str] | None:
        """(id_map (H, W) int32, segments, source) or None when the image has no annotation."""
        rows = self._read("SELECT * FROM annotations WHERE image_id = ?", (int(image_id),))
        if not rows:
            return None
        r = rows[0]
        return decode_id_map(r["id_map_png"]), json.loads(r["segments"]), r["source"]

    # ---------------------------------------------------------------- categories

    def categories(self) -> list[Category]:
        return [self._category(r) for r in self._read("SELECT * FROM categories ORDER BY id")]

    def category(self, category_id: int) -> Category:
        rows = self._read("SELECT * FROM categories WHERE id = ?", (int(category_id),))
        if not rows:
            raise WorkspaceError(f"the workspace has no category with id {category_id}")
        return self._category(rows[0])

    def category_by_name(self, name: str) -> Category | None:
        rows = self._read("SELECT * FROM categories WHERE name = ?", (name,))
        return self._category(rows[0]) if rows else None

    @staticmethod
    def _category(r: sqlite3.Row) -> Category:
        color = tuple(int(v) for v in json.loads(r["color"]))
        return Category(
            int(r["id"]),
            r["name"],
            bool(r["isthing"]),
            color,  # type: ignore[arg-type]
            int(r["dataset_id"]),
        )

    def add_category(
        self,
        name: str,
        isthing: bool = True,
        color: tuple[int, int, int] | None = None,
        dataset_id: int | None = None,
    ) -> Category:
        """Create a category (or return the one with this name). A taken dataset id is replaced."""
        return self.ensure_categories([(name, isthing, color, dataset_id)])[0]

    def ensure_categories(
        self, specs: list[tuple[str, bool, tuple[int, int, int] | None, int | None]]
    ) -> list[Category]:
        """Categories by name (name, isthing, colour, dataset id), creating the missing ones."""
        with self._tx() as con:
            ids = [self._ensure_category(con, *spec) for spec in specs]
        return [self.category(i) for i in ids]

    def ensure_meta(self, meta: DatasetMeta) -> list[int]:
        """Workspace category id of each contiguous class of ``meta`` (created when missing)."""
        return [c.id for c in self.ensure_categories(_meta_specs(meta))]

    @staticmethod
    def _ensure_category(
        con: sqlite3.Connection,
        name: str,
        isthing: bool,
        color: tuple[int, int, int] | None,
        dataset_id: int | None,
    ) -> int:
        name = check_category_name(name)
        row = con.execute("SELECT id FROM categories WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return int(row["id"])
        taken = {int(r[0]) for r in con.execute("SELECT dataset_id FROM categories")}
        if dataset_id is None or int(dataset_id) < 1 or int(dataset_id) in taken:  # COCO ids >= 1
            dataset_id = max(taken, default=0) + 1
        n = con.execute("SELECT COUNT(*) FROM categories").fetchone()[0]
        color = color or default_colors(n + 1)[-1]
        cur = con.execute(
            "INSERT INTO categories (name, isthing, color, dataset_id) VALUES (?,?,?,?)",
            (name, int(bool(isthing)), json.dumps([int(v) for v in color]), int(dataset_id)),
        )
        return int(cur.lastrowid)

    def meta(self) -> tuple[DatasetMeta, list[int]]:
        """All categories as a DatasetMeta (contiguous order = category id order) and their ids."""
        cats = self.categories()
        meta = DatasetMeta(
            class_names=tuple(c.name for c in cats),
            isthing=tuple(c.isthing for c in cats),
            colors=tuple(c.color for c in cats),
            dataset_ids=tuple(c.dataset_id for c in cats),
            name="workspace",
        )
        return meta, [c.id for c in cats]

    # ---------------------------------------------------------------- model versions

    def add_model_version(
        self,
        path: str | Path,
        parent: int | None = None,
        metrics: dict[str, Any] | None = None,
        active: bool = False,
    ) -> ModelVersion:
        """Register a checkpoint (e.g. a fine-tune result); ``active`` makes it the active one."""
        with self._tx() as con:
            if active:
                con.execute("UPDATE model_versions SET active = 0")
            cur = con.execute(
                "INSERT INTO model_versions (path, parent, created, metrics, active) "
                "VALUES (?,?,?,?,?)",
                (str(path), parent, _now(), json.dumps(metrics or {}), int(active)),
            )
            vid = int(cur.lastrowid)
        return self.model_version(vid)

    def model_version(self, version_id: int) -> ModelVersion:
        rows = self._read("SELECT * FROM model_versions WHERE id = ?", (int(version_id),))
        if not rows:
            raise WorkspaceError(f"the workspace has no model version {version_id}")
        return self._version(rows[0])

    def model_versions(self) -> list[ModelVersion]:
        return [self._version(r) for r in self._read("SELECT * FROM model_versions ORDER BY id")]

    def active_model_version(self) -> ModelVersion | None:
        rows = self._read("SELECT * FROM model_versions WHERE active = 1")
        return self._version(rows[0]) if rows else None

    def set_active_model_version(self, version_id: int) -> None:
        self.model_version(version_id)
        with self._tx() as con:
            con.execute("UPDATE model_versions SET active = (id = ?)", (int(version_id),))

    def set_model_metrics(self, version_id: int, metrics: dict[str, Any]) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE model_versions SET metrics = ? WHERE id = ?",
                (json.dumps(metrics), int(version_id)),
            )

    @staticmethod
    def _version(r: sqlite3.Row) -> ModelVersion:
        parent = None if r["parent"] is None else int(r["parent"])
        return ModelVersion(
            int(r["id"]),
            r["path"],
            parent,
            r["created"],
            json.loads(r["metrics"]),
            bool(r["active"]),
        )


def _meta_specs(meta: DatasetMeta) -> list[tuple[str, bool, tuple[int, int, int], int]]:
    return list(zip(meta.class_names, meta.isthing, meta.colors, meta.category_ids()))


def _plain(segment: dict[str, Any]) -> dict[str, Any]:
    """JSON-safe copy of a segment (numpy scalars -> Python)."""
    out = {}
    for k, v in segment.items():
        if isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out
