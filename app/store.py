"""The workspace: `workspace.sqlite` and content-addressed image files; one transaction a write."""

from __future__ import annotations

import hashlib
import io
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskformer.config import DatasetMeta, default_colors
from maskformer.data.coco import atomic_write_bytes, id2rgb, png_bytes, rgb2id
from maskformer.errors import ImageReadError, UserError
from maskformer.image_io import load_image

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

# Columns added after the first schema: ``_migrate`` adds the missing ones to an existing file.
ADDED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "images": (
        ("review", "TEXT CHECK (review IS NULL OR review IN ('accepted', 'needs-changes'))"),
        ("reviewed", "TEXT"),  # ISO time of the review verdict
        ("uncertainty", "REAL"),  # app.uncertainty score of the last prediction; higher = less sure
    ),
}


class WorkspaceError(UserError):
    """A workspace operation that cannot be done (unknown image or category, bad annotation)."""


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
    reviewed: str | None = None  # ISO time of the review
    uncertainty: float | None = None  # of the last prediction (higher: the model is less sure)


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


def prepare_image(data: bytes, name: str) -> NewImage:
    """Decode ``data`` once (``load_image`` rejects empty, corrupt, oversized files) and hash it."""
    try:
        h, w = load_image(bytes(data)).shape[:2]
    except ImageReadError as e:
        raise ImageReadError(f"{Path(name).name}: {e}") from None
    with Image.open(io.BytesIO(data)) as im:
        ext = _FORMAT_EXT.get(im.format or "", "")
    if not ext:  # a format we decode but do not keep as is: store a lossless PNG
        data = png_bytes(load_image(bytes(data)))
        ext = ".png"
    return NewImage(
        bytes(data), Path(name).name or "image", hashlib.sha256(data).hexdigest(), ext, h, w
    )


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
    the old or the new state. Image files are written (atomically) before the row that names them.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "workspace.sqlite"
        self._lock = threading.Lock()  # one writer at a time inside this process
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Add the columns of ``ADDED_COLUMNS`` that an older workspace file lacks."""
        with self._tx() as con:
            for table, columns in ADDED_COLUMNS.items():
                have = {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}
                for name, decl in columns:
                    if name not in have:
                        con.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")

    # ---------------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.db_path, timeout=30, isolation_level=None, check_same_thread=False
        )
        con.execute("PRAGMA foreign_keys=ON")
        con.row_factory = sqlite3.Row
        return con

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            con = self._connect()
            try:
                con.execute("BEGIN IMMEDIATE")
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.close()

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        con = self._connect()
        try:
            return con.execute(sql, tuple(args)).fetchall()
        finally:
            con.close()

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
        for img in images:  # files first: a crash leaves at most an unreferenced file
            path = self.root / "images" / f"{img.sha256}{img.ext}"
            if not path.exists():
                atomic_write_bytes(path, img.data)
        ids = []
        with self._tx() as con:
            cat_ids = None
            if meta is not None:
                cat_ids = [self._ensure_category(con, *spec) for spec in _meta_specs(meta)]
            for img, ann in zip(images, annotations):
                image_id = self._insert_image(con, img)
                if ann is not None:
                    segs = ann.segments
                    if cat_ids is not None:
                        segs = [{**s, "category_id": cat_ids[int(s["category_id"])]} for s in segs]
                    self._write_annotation(
                        con, image_id, ann.id_map, segs, "corrected", "import", None
                    )
                ids.append(image_id)
        return [self.image(i) for i in ids]

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

    def list_images(self) -> list[ImageRecord]:
        """All images in insertion order, with status and per-class segment counts."""
        counts = self._counts()
        return [
            self._record(r, counts.get(int(r["id"]), {}))
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
            review=r["review"],
            reviewed=r["reviewed"],
            uncertainty=None if r["uncertainty"] is None else float(r["uncertainty"]),
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
        it. Independent of the status."""
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
        if value is not None and not math.isfinite(float(value)):
            raise WorkspaceError(f"uncertainty must be a finite number, got {value}")
        with self._tx() as con:
            con.execute(
                "UPDATE images SET uncertainty = ? WHERE id = ?",
                (None if value is None else float(value), int(image_id)),
            )

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
        name = str(name).strip()
        if not name:
            raise WorkspaceError("a category name may not be empty")
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
