"""The shared types of the dataset readers: ``Sample``, ``LabeledDataset``, ``Problems`` and checks.

Every format (COCO panoptic, COCO instances, semantic PNG folders, the app's export) is presented
as a ``LabeledDataset`` whose ``load(i)`` returns a ``Sample``: the image, an (H, W) int32 id map
(0 = void, i.e. ignored / unlabelled) and one segment dict per id. Class ids are contiguous
0..K-1; ``meta.dataset_ids`` keeps the original COCO category ids.

The format modules import this one; ``datasets.open_dataset`` imports the formats. Nothing here
imports a format, so the package's imports form a DAG.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskformer.config import DatasetMeta, default_colors
from maskformer.errors import DatasetError, ImageReadError
from maskformer.image_io import load_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class Sample:
    """One labelled image.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        id_map: (H, W) int32 segment ids; 0 = void (unlabelled or ignored pixels).
        segments: one dict per segment: ``id`` (value in id_map), ``category_id`` (contiguous
            0..K-1), ``iscrowd`` (0/1), ``isthing`` (bool), ``area`` (pixels in id_map).
        image_id: the dataset's image id (COCO int, or the file stem for semantic folders).
        file_name: the image file name relative to the image folder.
    """

    image: np.ndarray
    id_map: np.ndarray
    segments: list[dict[str, Any]]
    image_id: int | str
    file_name: str

    @property
    def height(self) -> int:
        return int(self.id_map.shape[0])

    @property
    def width(self) -> int:
        return int(self.id_map.shape[1])


@dataclass
class Problems:
    """Collects validation messages and raises them as one DatasetError."""

    max_errors: int = 20
    messages: list[str] = field(default_factory=list)
    total: int = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.messages) < self.max_errors:
            self.messages.append(message)

    def extend(self, messages: Sequence[str]) -> None:
        for m in messages:
            self.add(m)

    def raise_if_any(self, where: str) -> None:
        if not self.total:
            return
        if self.total == 1:
            raise DatasetError(self.messages[0])
        more = (
            f"; and {self.total - len(self.messages)} more"
            if self.total > len(self.messages)
            else ""
        )
        raise DatasetError(f"{self.total} problems in {where}: " + "; ".join(self.messages) + more)


class LabeledDataset:
    """Base class. Subclasses set ``meta``, ``root``, ``format`` and implement the hooks below."""

    meta: DatasetMeta
    root: Path
    format: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def image_path(self, i: int) -> Path:
        raise NotImplementedError

    def image_info(self, i: int) -> tuple[int | str, str]:
        """(image_id, file_name) of item i, without reading any file."""
        raise NotImplementedError

    def load_labels(self, i: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """(id_map (H, W) int32, segments) of item i, without decoding the image."""
        raise NotImplementedError

    def problems(self, i: int) -> list[str]:
        """Every problem of item i found by reading its label file and image header."""
        raise NotImplementedError

    def source_files(self, i: int) -> list[Path]:
        """Every file that loading item i reads (the image, and a label file if it has one)."""
        return [self.image_path(i)]

    def load(self, i: int) -> Sample:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        i %= len(self)
        path = self.image_path(i)
        try:
            image = load_image(path)
        except ImageReadError as e:
            raise DatasetError(f"{self.rel(path)}: {e}") from None
        id_map, segments = self.load_labels(i)
        if image.shape[:2] != id_map.shape:
            raise DatasetError(
                f"{self.rel(path)}: image size {format_hw(image.shape)} differs from "
                f"its label size {format_hw(id_map.shape)}"
            )
        image_id, file_name = self.image_info(i)
        return Sample(image, id_map, segments, image_id, file_name)

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)

    def validate(self, max_errors: int = 20, workers: int | None = None) -> None:
        """Read every label file (threads); raise one DatasetError listing the first problems."""
        found = Problems(max_errors)
        workers = workers or min(4, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            for msgs in pool.map(self._safe_problems, range(len(self))):
                found.extend(msgs)
        found.raise_if_any(str(self.root))

    def _safe_problems(self, i: int) -> list[str]:
        try:
            return self.problems(i)
        except DatasetError as e:
            return [str(e)]
        except Exception as e:  # noqa: BLE001 -- an odd decoder failure is still a file problem
            return [
                f"{self.rel(self.image_path(i))}: cannot check item {i} ({type(e).__name__}: {e})"
            ]

    def rel(self, path: str | Path) -> str:
        """``path`` relative to the dataset root when it lies inside it (for messages)."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, images={len(self)}, "
            f"classes={self.meta.num_classes})"
        )


# --------------------------------------------------------------------------------------------
# helpers shared by the readers


def format_hw(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"  # W x H, as image viewers print it


def image_header_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image as ``load_image`` will return it (EXIF rotation applied), header only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                with contextlib.suppress(Exception):  # a broken EXIF block: no rotation
                    if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                        w, h = h, w
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except Image.DecompressionBombError:
        raise DatasetError(f"{path}: the image is too large to read safely") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None
    return h, w


def inside(folder: Path, name: str) -> Path | None:
    """``folder / name`` if it stays inside ``folder`` with every symlink resolved, else None.

    A dataset names its files relative to its folders; an absolute name, a name that climbs out
    with ``..`` or a symlink to somewhere else would make a reader (and the app's import, and
    ``train``) read files from outside the dataset.
    """
    if not name or "\x00" in name or Path(name).is_absolute():
        return None
    path = folder / name
    try:
        if not path.resolve().is_relative_to(folder.resolve()):
            return None
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
        return None
    return path


def segments_with_area(id_map: np.ndarray, segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy ``segments`` with ``area`` recomputed from the id map."""
    ids, counts = np.unique(id_map, return_counts=True)
    areas = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    return [{**s, "area": int(areas.get(s["id"], 0))} for s in segments]


def check_type(value: Any, kind: type | tuple[type, ...], where: str, problems: Problems) -> bool:
    """Record a problem unless ``value`` is of ``kind`` (bools are not integers here)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return True
    names = {
        int: "an integer",
        str: "a string",
        list: "a list",
        dict: "an object",
        (int, float): "a number",
        (int, str): "an integer or a string",
    }
    problems.add(f"{where} must be {names.get(kind, str(kind))}, got {value!r}"[:300])
    return False


def meta_from_categories(
    cats: list[dict[str, Any]], name: str, default_isthing: bool
) -> DatasetMeta:
    """DatasetMeta from COCO categories, in their order (contiguous id = position)."""
    colors = default_colors(len(cats))
    return DatasetMeta(
        class_names=tuple(str(c.get("name", f"class_{c['id']}")) for c in cats),
        isthing=tuple(bool(c.get("isthing", default_isthing)) for c in cats),
        colors=tuple(_color(c.get("color"), colors[i]) for i, c in enumerate(cats)),
        dataset_ids=tuple(int(c["id"]) for c in cats),
        name=name,
    )


def _color(value: Any, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if (
        isinstance(value, (list, tuple))
        and len(value) == 3
        and all(isinstance(v, int) for v in value)
    ):
        return tuple(int(v) for v in value)  # type: ignore[return-value]
    return default


def override_meta(found: DatasetMeta, meta: DatasetMeta | None, source: str) -> DatasetMeta:
    """Use the caller's ``meta`` for names/colours when given; it must have the same K."""
    if meta is None:
        return found
    if meta.num_classes != found.num_classes:
        raise DatasetError(
            f"{source}: the dataset has {found.num_classes} categories but the "
            f"given metadata has {meta.num_classes} classes"
        )
    return meta
