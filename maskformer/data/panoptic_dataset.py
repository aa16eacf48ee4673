"""COCO panoptic reader: a JSON with ``segments_info``, a folder of RGB id PNGs + images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskformer.config import DatasetMeta
from maskformer.data.base import (
    LabeledDataset,
    Problems,
    check_type,
    format_hw,
    image_header_size,
    inside,
    meta_from_categories,
    override_meta,
    segments_with_area,
)
from maskformer.data.coco import read_json, read_panoptic_png
from maskformer.data.coco_checks import parse_categories, parse_images
from maskformer.errors import DatasetError


@dataclass(frozen=True)
class _Item:
    image_id: int | str
    file_name: str  # relative to image_dir
    png_name: str  # relative to png_dir
    size: tuple[int, int] | None  # (H, W) from the JSON, if given
    segments: tuple[dict[str, Any], ...]  # id, category_id (contiguous), iscrowd, isthing


class CocoPanopticDataset(LabeledDataset):
    """COCO panoptic: ``json_path`` (segments_info), ``png_dir`` (id PNGs), ``image_dir``."""

    format = "coco_panoptic"

    def __init__(
        self,
        json_path: str | Path,
        png_dir: str | Path,
        image_dir: str | Path,
        *,
        meta: DatasetMeta | None = None,
        data: Any = None,
    ):
        self.json_path, self.png_dir, self.image_dir = (
            Path(json_path),
            Path(png_dir),
            Path(image_dir),
        )
        self.root = self.json_path.parent
        jname = self.rel(self.json_path)
        data = read_json(self.json_path) if data is None else data
        problems = Problems()
        cats = parse_categories(data, jname, problems)
        problems.raise_if_any(jname)
        self.meta = override_meta(meta_from_categories(cats, self.root.name, True), meta, jname)
        contiguous = {int(c["id"]): i for i, c in enumerate(cats)}
        images = parse_images(data, jname, problems, need_size=False)
        self._items = self._parse_annotations(data, images, contiguous, jname, problems)
        problems.raise_if_any(jname)
        self._check_files(problems)
        problems.raise_if_any(str(self.root))

    def _parse_annotations(
        self, data: dict, images: dict, contiguous: dict[int, int], jname: str, problems: Problems
    ) -> list[_Item]:
        anns = data.get("annotations")
        if not isinstance(anns, list):
            problems.add(f"{jname}: 'annotations' must be a list, got {anns!r}"[:300])
            return []
        items = []
        for j, ann in enumerate(anns):
            at = f"{jname}: annotations[{j}]"
            if not check_type(ann, dict, at, problems):
                continue
            ok = check_type(ann.get("image_id"), (int, str), f"{at}.image_id", problems)
            ok &= check_type(ann.get("file_name"), str, f"{at}.file_name", problems)
            ok &= check_type(ann.get("segments_info"), list, f"{at}.segments_info", problems)
            if not ok:
                continue
            im = images.get(ann["image_id"])
            if im is None:
                problems.add(f"{at}.image_id {ann['image_id']!r} is not in images")
                continue
            segs = self._parse_segments(
                ann["segments_info"], f"{at} ({ann['file_name']})", contiguous, problems
            )
            size = (im["height"], im["width"]) if "height" in im and "width" in im else None
            items.append(_Item(im["id"], im["file_name"], ann["file_name"], size, tuple(segs)))
        return items

    def _parse_segments(
        self, infos: list, at: str, contiguous: dict[int, int], problems: Problems
    ) -> list[dict[str, Any]]:
        segs, seen = [], set()
        for k, s in enumerate(infos):
            sat = f"{at}.segments_info[{k}]"
            if not check_type(s, dict, sat, problems):
                continue
            ok = check_type(s.get("id"), int, f"{sat}.id", problems)
            ok &= check_type(s.get("category_id"), int, f"{sat}.category_id", problems)
            if not ok:
                continue
            crowd = s.get("iscrowd", 0)
            if crowd not in (0, 1):
                problems.add(f"{sat}.iscrowd must be 0 or 1, got {crowd!r}")
                continue
            if s["category_id"] not in contiguous:
                problems.add(
                    f"{at}: segment {s['id']} has category_id {s['category_id']}, "
                    "which is not in categories"
                )
                continue
            if not 0 < s["id"] < 1 << 24 or s["id"] in seen:  # ids are RGB triples in the PNG
                problems.add(
                    f"{sat}.id {s['id']} is not a unique segment id in 1 .. 2^24 - 1"[:300]
                )
                continue
            seen.add(s["id"])
            cls = contiguous[s["category_id"]]
            segs.append(
                {
                    "id": s["id"],
                    "category_id": cls,
                    "iscrowd": int(crowd),
                    "isthing": self.meta.isthing[cls],
                }
            )
        return segs

    def _check_files(self, problems: Problems) -> None:
        jname = self.rel(self.json_path)
        for it in self._items:
            for folder, name, what in (
                (self.image_dir, it.file_name, "image file"),
                (self.png_dir, it.png_name, "panoptic PNG"),
            ):
                path = inside(folder, name)
                if path is None:
                    problems.add(
                        f"{jname}: file_name {name[:200]!r} leaves the {what}'s folder "
                        f"{self.rel(folder)}/ (absolute, '..' or a symlink out)"
                    )
                elif not path.is_file():
                    problems.add(f"{self.rel(path)}: {what} not found (listed in {jname})")

    # ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self._items[i].file_name

    def png_path(self, i: int) -> Path:
        return self.png_dir / self._items[i].png_name

    def image_info(self, i: int) -> tuple[int | str, str]:
        return self._items[i].image_id, self._items[i].file_name

    def _read_png(self, i: int) -> np.ndarray:
        try:
            return read_panoptic_png(self.png_path(i))
        except DatasetError as e:
            msg = str(e).replace(str(self.png_path(i)), self.rel(self.png_path(i)))
            raise DatasetError(msg) from None

    def load_labels(self, i: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        id_map = self._read_png(i)  # (H, W)
        segments = [dict(s) for s in self._items[i].segments]
        known = np.array(sorted(s["id"] for s in segments), dtype=np.int64)
        id_map[~np.isin(id_map, known)] = 0  # ids without segments_info are void
        return id_map, segments_with_area(id_map, segments)

    def source_files(self, i: int) -> list[Path]:
        return [self.image_path(i), self.png_path(i)]

    def problems(self, i: int) -> list[str]:
        it, png = self._items[i], self.rel(self.png_path(i))
        ids_map = self._read_png(i)
        out = []
        h, w = image_header_size(self.image_path(i))
        img = self.rel(self.image_path(i))
        if (h, w) != ids_map.shape:
            out.append(
                f"{png}: size {format_hw(ids_map.shape)} differs from its image {img} ({format_hw((h, w))})"
            )
        if it.size is not None and it.size != (h, w):
            out.append(
                f"{img}: size {format_hw((h, w))} differs from {self.rel(self.json_path)} "
                f"(height {it.size[0]}, width {it.size[1]})"
            )
        present = set(np.unique(ids_map).tolist()) - {0}
        listed = {s["id"] for s in it.segments}
        for sid in sorted(listed - present):
            out.append(f"{png}: segment id {sid} from segments_info is absent from the PNG")
        for sid in sorted(present - listed):
            out.append(f"{png}: id {sid} in the PNG is not in segments_info")
        return out


def open_coco_panoptic(
    json_path: str | Path,
    png_dir: str | Path,
    image_dir: str | Path,
    *,
    meta: DatasetMeta | None = None,
) -> CocoPanopticDataset:
    """Open COCO panoptic data from an explicit JSON, PNG folder and image folder."""
    return CocoPanopticDataset(json_path, png_dir, image_dir, meta=meta)


def open_coco_panoptic_json(
    json_path: str | Path,
    *,
    meta: DatasetMeta | None = None,
    data: Any = None,
    within: str | Path | None = None,
) -> CocoPanopticDataset:
    """Open a COCO panoptic JSON, finding its PNG and image folders next to it.

    PNGs: ``<json stem>/`` or ``panoptic/`` beside the JSON. Images: ``images/`` beside it, the
    split folder named by the stem without ``panoptic_`` (beside it or one level up, as in COCO's
    ``annotations/panoptic_val2017.json`` + ``val2017/``), or the JSON's own folder. With
    ``within``, only folders inside it are considered.
    """
    p = Path(json_path)
    parent, split = p.parent, p.stem.removeprefix("panoptic_")
    png_dirs = _within([parent / p.stem, parent / "panoptic"], within)
    png_dir = next((d for d in png_dirs if d.is_dir()), None)
    if png_dir is None:
        raise DatasetError(
            f"{p}: cannot find its panoptic PNG folder (tried "
            f"{', '.join(d.name + '/' for d in png_dirs)}); use "
            "open_coco_panoptic(json, png_dir, image_dir)"
        )
    data = read_json(p) if data is None else data
    first = _first_file_name(data)
    image_dirs = _within([parent / "images", parent / split, parent.parent / split, parent], within)
    existing = [d for d in image_dirs if d.is_dir() and d != png_dir]
    with_first = [d for d in existing if first and (d / first).is_file()]
    image_dir = (with_first or existing or [parent])[0]
    return CocoPanopticDataset(p, png_dir, image_dir, meta=meta, data=data)


def _within(folders: list[Path], root: str | Path | None) -> list[Path]:
    if root is None:
        return folders
    top = Path(root).resolve()
    return [d for d in folders if d.resolve().is_relative_to(top)]


def _first_file_name(data: Any) -> str | None:
    images = data.get("images") if isinstance(data, dict) else None
    if isinstance(images, list) and images and isinstance(images[0], dict):
        name = images[0].get("file_name")
        return name if isinstance(name, str) else None
    return None
