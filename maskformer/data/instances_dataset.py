"""COCO instances reader: polygons, RLE (compressed or not) and crowd regions -> id maps."""

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
)
from maskformer.data.coco import check_polygons, check_rle, read_json, segmentation_to_mask
from maskformer.data.coco_checks import parse_categories, parse_images
from maskformer.errors import DatasetError


@dataclass(frozen=True)
class _Item:
    image_id: int | str
    file_name: str
    size: tuple[int, int]  # (H, W)
    anns: tuple[dict[str, Any], ...]  # segmentation, category_id (contiguous), iscrowd, ann_id


class CocoInstancesDataset(LabeledDataset):
    """COCO instances JSON; images in ``image_dir`` (default ``images/`` beside it, or its folder).

    Overlaps are resolved by painting larger annotations first, so small objects stay visible;
    an annotation left with no visible pixels is dropped. Crowd regions become segments with
    ``iscrowd=1`` (excluded from training targets). Every image is an item, also without labels.
    """

    format = "coco_instances"

    def __init__(
        self,
        json_path: str | Path,
        image_dir: str | Path | None = None,
        *,
        meta: DatasetMeta | None = None,
        data: Any = None,
    ):
        self.json_path = Path(json_path)
        self.root = self.json_path.parent
        if image_dir is None:
            image_dir = self.root / "images" if (self.root / "images").is_dir() else self.root
        self.image_dir = Path(image_dir)
        jname = self.rel(self.json_path)
        data = read_json(self.json_path) if data is None else data
        problems = Problems()
        cats = parse_categories(data, jname, problems)
        problems.raise_if_any(jname)
        self.meta = override_meta(meta_from_categories(cats, self.root.name, True), meta, jname)
        contiguous = {int(c["id"]): i for i, c in enumerate(cats)}
        images = parse_images(data, jname, problems, need_size=True)
        per_image = self._parse_annotations(data, images, contiguous, jname, problems)
        problems.raise_if_any(jname)
        self._items = [
            _Item(
                im["id"],
                im["file_name"],
                (im["height"], im["width"]),
                tuple(per_image.get(im["id"], ())),
            )
            for im in images.values()
        ]
        for it in self._items:
            path = inside(self.image_dir, it.file_name)
            if path is None:
                problems.add(
                    f"{jname}: file_name {it.file_name[:200]!r} leaves the image folder "
                    f"{self.rel(self.image_dir)}/ (absolute, '..' or a symlink out)"
                )
            elif not path.is_file():
                problems.add(f"{self.rel(path)}: image file not found (listed in {jname})")
        problems.raise_if_any(str(self.root))

    def _parse_annotations(
        self, data: dict, images: dict, contiguous: dict[int, int], jname: str, problems: Problems
    ) -> dict[Any, list[dict[str, Any]]]:
        anns = data.get("annotations", [])
        if not isinstance(anns, list):
            problems.add(f"{jname}: 'annotations' must be a list, got {anns!r}"[:300])
            return {}
        out: dict[Any, list[dict[str, Any]]] = {}
        for j, a in enumerate(anns):
            at = f"{jname}: annotations[{j}]"
            if not check_type(a, dict, at, problems):
                continue
            ok = check_type(a.get("image_id"), (int, str), f"{at}.image_id", problems)
            ok &= check_type(a.get("category_id"), int, f"{at}.category_id", problems)
            if not ok:
                continue
            im = images.get(a["image_id"])
            if im is None:
                problems.add(f"{at}.image_id {a['image_id']!r} is not in images")
                continue
            if a["category_id"] not in contiguous:
                problems.add(
                    f"{at} (image {im['file_name']}) has category_id {a['category_id']}, "
                    "which is not in categories"
                )
                continue
            crowd = a.get("iscrowd", 0)
            if crowd not in (0, 1):
                problems.add(f"{at}.iscrowd must be 0 or 1, got {crowd!r}")
                continue
            if not _check_segmentation(
                a.get("segmentation"), (im["height"], im["width"]), f"{at}.segmentation", problems
            ):
                continue
            out.setdefault(a["image_id"], []).append(
                {
                    "segmentation": a["segmentation"],
                    "category_id": contiguous[a["category_id"]],
                    "iscrowd": int(crowd),
                    "ann_id": a.get("id", j),
                }
            )
        return out

    # ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._items)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self._items[i].file_name

    def image_info(self, i: int) -> tuple[int | str, str]:
        return self._items[i].image_id, self._items[i].file_name

    def _size_problem(self, i: int) -> str | None:
        """The image's real size must be the declared one before any mask is decoded at it."""
        it = self._items[i]
        h, w = image_header_size(self.image_path(i))
        if (h, w) == it.size:
            return None
        return (
            f"{self.rel(self.image_path(i))}: size {format_hw((h, w))} differs from "
            f"{self.rel(self.json_path)} (height {it.size[0]}, width {it.size[1]})"
        )

    def load_labels(self, i: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        it = self._items[i]
        problem = self._size_problem(i)
        if problem:
            raise DatasetError(problem)
        h, w = it.size
        masks = [segmentation_to_mask(a["segmentation"], h, w) for a in it.anns]
        areas = [int(m.sum()) for m in masks]
        id_map = np.zeros((h, w), np.int32)
        for k in sorted(range(len(masks)), key=lambda k: -areas[k]):  # large first, small on top
            id_map[masks[k]] = k + 1
        counts = np.bincount(id_map.ravel(), minlength=len(masks) + 1)
        segments = []
        for k, a in enumerate(it.anns):
            if counts[k + 1] == 0:
                continue  # fully covered by smaller annotations
            cls = a["category_id"]
            segments.append(
                {
                    "id": k + 1,
                    "category_id": cls,
                    "iscrowd": a["iscrowd"],
                    "isthing": self.meta.isthing[cls],
                    "area": int(counts[k + 1]),
                }
            )
        return id_map, segments

    def problems(self, i: int) -> list[str]:
        it = self._items[i]
        problem = self._size_problem(i)
        if problem:
            return [problem]  # masks are not decoded at a size that is not the image's
        out = []
        for a in it.anns:
            try:
                segmentation_to_mask(a["segmentation"], *it.size)
            except DatasetError as e:
                out.append(
                    f"{self.rel(self.json_path)}: annotation {a['ann_id']}: cannot decode "
                    f"its segmentation ({e})"
                )
        return out


def _check_segmentation(segm: Any, size: tuple[int, int], at: str, problems: Problems) -> bool:
    """Polygons inside the image, or an RLE of the image's size whose runs cover it exactly."""
    try:
        if isinstance(segm, list):
            check_polygons(segm, *size, at)
        elif isinstance(segm, dict):
            check_rle(segm, *size, at)
        else:
            problems.add(f"{at} must be a polygon list or an RLE object, got {type(segm).__name__}")
            return False
    except ValueError as e:
        problems.add(str(e))
        return False
    return True
