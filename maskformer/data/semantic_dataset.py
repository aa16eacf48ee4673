"""Semantic PNG folders (ADE20K layout): ``images/`` + ``annotations/`` (class id per pixel)."""

from __future__ import annotations

import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskformer.config import DatasetMeta, default_colors, generic_meta
from maskformer.data.base import (
    IMAGE_EXTENSIONS,
    LabeledDataset,
    Problems,
    format_hw,
    image_header_size,
    inside,
)
from maskformer.data.coco import check_mask_size, read_json
from maskformer.errors import DatasetError

LABEL_EXTENSIONS = (".png", ".tif", ".tiff")


class SemanticDataset(LabeledDataset):
    """Pairs ``image_dir/<rel>.<ext>`` with ``ann_dir/<rel>.png`` (sub-folders allowed).

    Labels: pixel value = class id 0..K-1, ``ignore_label`` = ignored. With ``ade_shift`` the raw
    values are ADE20K's (0 = "other", classes 1..K): class = value - 1 and 0 becomes ignored (as
    the official ``prepare_ade20k_sem_seg.py``), while a raw ``ignore_label`` stays ignored.
    Samples get one segment per class present (id = class + 1); ignored pixels are void (0).

    K and names come from ``meta``, else ``classes.txt`` (one name per line) or ``classes.json``
    (a list of names or of ``{"name", "isthing", "color"}``) in ``root``, else generic names with
    K = the largest label found + 1 (this reads every label file once).
    """

    format = "semantic"

    def __init__(
        self,
        image_dir: str | Path,
        ann_dir: str | Path,
        *,
        ade_shift: bool = False,
        ignore_label: int = 255,
        meta: DatasetMeta | None = None,
        root: str | Path | None = None,
    ):
        self.image_dir, self.ann_dir = Path(image_dir), Path(ann_dir)
        self.root = Path(root) if root is not None else self.image_dir.parent
        self.ade_shift, self.ignore_label = ade_shift, int(ignore_label)
        self._pairs = self._pair_files()
        self.meta = meta or self._meta_from_files() or self._meta_from_labels()

    def _pair_files(self) -> list[tuple[Path, Path]]:
        problems = Problems()
        images = _by_stem(self.image_dir, IMAGE_EXTENSIONS, problems)
        labels = _by_stem(self.ann_dir, LABEL_EXTENSIONS, problems)
        for key in sorted(set(images) - set(labels)):
            problems.add(
                f"{self.rel(images[key])}: no label file for it in {self.rel(self.ann_dir)}/"
            )
        for key in sorted(set(labels) - set(images)):
            problems.add(f"{self.rel(labels[key])}: no image for it in {self.rel(self.image_dir)}/")
        problems.raise_if_any(str(self.root))
        if not images:
            raise DatasetError(f"{self.image_dir}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
        return [(images[k], labels[k]) for k in sorted(images)]

    def _meta_from_files(self) -> DatasetMeta | None:
        txt, js = self.root / "classes.txt", self.root / "classes.json"
        if txt.is_file():
            names = [
                ln.strip() for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()
            ]
            entries: list[Any] = names
        elif js.is_file():
            entries = read_json(js)
            entries = entries.get("classes") if isinstance(entries, dict) else entries
        else:
            return None
        where = self.rel(txt if txt.is_file() else js)
        if not isinstance(entries, list) or not entries:
            raise DatasetError(f"{where}: expected a non-empty list of class names")
        return _meta_from_entries(entries, where, self.ignore_label, self.root.name)

    def _meta_from_labels(self) -> DatasetMeta:
        with ThreadPoolExecutor(4) as pool:
            maxima = list(pool.map(self._max_label, range(len(self))))
        k = max(maxima) + 1
        if k <= 0:
            raise DatasetError(f"{self.rel(self.ann_dir)}: every pixel of every label is ignored")
        m = generic_meta(k)
        return DatasetMeta(
            m.class_names, m.isthing, m.colors, ignore_label=self.ignore_label, name=self.root.name
        )

    def _max_label(self, i: int) -> int:
        values = self._classes(self._read_label(i))
        values = values[values != self.ignore_label]
        return int(values.max()) if values.size else -1

    # ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pairs)

    def image_path(self, i: int) -> Path:
        return self._pairs[i][0]

    def label_path(self, i: int) -> Path:
        return self._pairs[i][1]

    def image_info(self, i: int) -> tuple[int | str, str]:
        rel = self._pairs[i][0].relative_to(self.image_dir)
        return rel.with_suffix("").as_posix(), rel.as_posix()

    def _read_label(self, i: int) -> np.ndarray:
        path = self.label_path(i)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
            with im:
                check_mask_size(im.height, im.width)
                if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                    raise DatasetError(
                        f"{self.rel(path)}: label image has mode {im.mode}; "
                        "semantic labels must be single-channel (one class per pixel)"
                    )
                return np.asarray(im).astype(np.int32)  # (H, W)
        except Image.DecompressionBombError:
            raise DatasetError(f"{self.rel(path)}: cannot read label file (too large)") from None
        except (OSError, ValueError) as e:
            raise DatasetError(f"{self.rel(path)}: cannot read label file ({e})") from None

    def _classes(self, raw: np.ndarray) -> np.ndarray:
        """Raw label values -> class ids with ``ignore_label`` for ignored pixels."""
        if not self.ade_shift:
            return raw
        out = raw - 1
        out[(raw == 0) | (raw == self.ignore_label)] = self.ignore_label
        return out

    def _out_of_range(self, i: int, labels: np.ndarray) -> str | None:
        k = self.meta.num_classes
        bad = labels[(labels != self.ignore_label) & ((labels >= k) | (labels < 0))]
        if not bad.size:
            return None
        v = int(bad.max())
        raw = f" (raw value {v + 1}; ade_shift is on)" if self.ade_shift else ""
        return f"{self.rel(self.label_path(i))}: label {v}{raw} out of range for {k} classes"

    def load_labels(self, i: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        labels = self._classes(self._read_label(i))
        msg = self._out_of_range(i, labels)
        if msg:
            raise DatasetError(msg)
        valid = labels != self.ignore_label
        id_map = np.where(valid, labels + 1, 0).astype(np.int32)  # (H, W), 0 = void
        counts = np.bincount(id_map.ravel(), minlength=self.meta.num_classes + 1)
        segments = [
            {
                "id": c + 1,
                "category_id": c,
                "iscrowd": 0,
                "isthing": self.meta.isthing[c],
                "area": int(counts[c + 1]),
            }
            for c in range(self.meta.num_classes)
            if counts[c + 1] > 0
        ]
        return id_map, segments

    def source_files(self, i: int) -> list[Path]:
        return list(self._pairs[i])

    def problems(self, i: int) -> list[str]:
        labels = self._classes(self._read_label(i))
        out = []
        h, w = image_header_size(self.image_path(i))
        if (h, w) != labels.shape:
            out.append(
                f"{self.rel(self.label_path(i))}: size {format_hw(labels.shape)} differs from "
                f"its image {self.rel(self.image_path(i))} ({format_hw((h, w))})"
            )
        msg = self._out_of_range(i, labels)
        if msg:
            out.append(msg)
        return out


def _by_stem(folder: Path, exts: tuple[str, ...], problems: Problems) -> dict[str, Path]:
    """Files under ``folder`` with one of ``exts``, keyed by relative path without the extension.

    Symlinked folders are not entered and a file that resolves outside ``folder`` is a problem:
    a dataset reads only its own files.
    """
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if Path(name).suffix.lower() not in exts or name.startswith("."):
                continue
            rel = p.relative_to(folder).as_posix()
            if inside(folder, rel) is None:
                problems.add(
                    f"{p}: a symlink to outside {folder}/ (a dataset reads only its files)"
                )
                continue
            if p.is_file():
                out.setdefault(p.relative_to(folder).with_suffix("").as_posix(), p)
    return out


def _meta_from_entries(entries: list[Any], where: str, ignore_label: int, name: str) -> DatasetMeta:
    colors = default_colors(len(entries))
    names, things, cols = [], [], []
    for j, e in enumerate(entries):
        if isinstance(e, str):
            e = {"name": e}
        if not isinstance(e, dict) or not isinstance(e.get("name"), str):
            raise DatasetError(
                f"{where}: entry {j} must be a class name or an object with a "
                f"'name', got {json.dumps(e)[:100]}"
            )
        names.append(e["name"])
        things.append(bool(e.get("isthing", False)))
        c = e.get("color")
        ok = isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) for v in c)
        cols.append(tuple(c) if ok else colors[j])
    return DatasetMeta(
        tuple(names), tuple(things), tuple(cols), ignore_label=ignore_label, name=name
    )
