"""COCO panoptic / instances formats: id<->RGB, RLE, polygons, JSON and PNG reading and writing."""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskformer.config import DatasetMeta
from maskformer.errors import DatasetError
from maskformer.image_io import DEFAULT_MAX_PIXELS

# --------------------------------------------------------------------------------------------
# panoptic ids <-> RGB (panopticapi convention: id = R + 256 G + 256^2 B; 0 is VOID)


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Decode a COCO panoptic PNG.

    Args:
        rgb: (H, W, 3) uint8 RGB.

    Returns:
        (H, W) int32 segment ids.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"rgb2id expects an (H, W, 3) array, got shape {rgb.shape}")
    rgb = rgb[..., :3].astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]  # (H, W)


def id2rgb(id_map: np.ndarray) -> np.ndarray:
    """Encode segment ids (0 .. 2^24-1) as a COCO panoptic RGB image: (H, W) -> (H, W, 3) uint8."""
    ids = np.asarray(id_map).astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 1 << 24):
        raise ValueError(f"segment ids must lie in [0, 2^24), got {ids.min()}..{ids.max()}")
    out = np.empty((*ids.shape, 3), np.uint8)
    for c in range(3):
        out[..., c] = (ids >> (8 * c)) & 255
    return out


# --------------------------------------------------------------------------------------------
# masks: RLE and polygons (pycocotools does the work)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed COCO RLE of a binary (H, W) mask, JSON-ready (``counts`` is a str)."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),
    }


# pycocotools trusts its input: coordinates of +-1e9 or NaN, an RLE whose counts do not add up
# to h * w, or a size of 200000 x 200000 make its C code write out of bounds or allocate without
# limit (the process dies with signal 11). Everything below is checked in Python first.
MAX_MASK_PIXELS = DEFAULT_MAX_PIXELS
# Polygon vertices may lie this far (pixels) outside the image: annotation tools put them on the
# border or just past it; anything further is not a polygon of this image.
POLYGON_MARGIN = 1.0


def check_mask_size(height: Any, width: Any) -> tuple[int, int]:
    """(H, W) as ints when they are a size pycocotools can safely allocate; ValueError otherwise."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (height, width)):
        raise ValueError(f"mask size must be two integers, got {height!r} x {width!r}"[:200])
    if height < 1 or width < 1 or height * width > MAX_MASK_PIXELS:
        raise ValueError(
            f"mask size {width}x{height} is out of range (1 .. {MAX_MASK_PIXELS // 10**6} MP)"
        )
    return height, width


def rle_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' rleFrString, in Python).

    Each count is 6-bit characters '0'..'o', 5 payload bits each, a continuation bit, a sign bit
    on the last character; from the third count on, a count is stored as the difference to the
    count two places before. Raises ValueError on any malformed string.
    """
    if isinstance(counts, str):
        if not counts.isascii():
            raise ValueError("must be ASCII characters '0'..'o'")
        counts = counts.encode("ascii")
    out: list[int] = []
    x = k = 0
    for c in counts:
        c -= 48
        if not 0 <= c < 64:
            raise ValueError("must be characters '0'..'o'")
        if k >= 6:  # 30 bits are plenty for counts of a 100 MP mask; C shifts past int width
            raise ValueError("hold a number too large for a mask")
        x |= (c & 0x1F) << (5 * k)
        k += 1
        if c & 0x20:
            continue
        if c & 0x10:
            x -= 1 << (5 * k)  # sign extension
        if len(out) > 2:
            x += out[-2]
        out.append(x)
        x = k = 0
    if k:
        raise ValueError("end in the middle of a number")
    return out


def check_rle(
    rle: Any, height: int | None = None, width: int | None = None, where: str = "RLE"
) -> tuple[int, int]:
    """Validate a COCO RLE (compressed or not); returns its (H, W). Raises ValueError.

    The size must be the image's (when given) and the runs must be non-negative and add up to
    exactly H * W: pycocotools reads past its buffer otherwise. Messages start with ``where``.
    """
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        raise ValueError(f"{where} must be an object with 'size' and 'counts'")
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise ValueError(f"{where}.size must be [height, width], got {size!r}"[:300])
    if height is not None and list(size) != [height, width]:
        raise ValueError(
            f"{where}.size {size!r} differs from the image size [{height}, {width}]"[:300]
        )
    try:
        h, w = check_mask_size(*size)
    except ValueError as e:
        raise ValueError(f"{where}.size: {e}") from None
    counts = rle["counts"]
    try:
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
                raise ValueError("uncompressed counts must be integers")
            runs = counts
        elif isinstance(counts, (str, bytes)):
            runs = rle_counts(counts)
        else:
            raise ValueError(  # noqa: TRY004 -- a bad value in a file, reported like the others
                f"must be a string or a list of integers, got {type(counts).__name__}"
            )
        if any(v < 0 for v in runs):
            raise ValueError("hold a negative run")
        if sum(runs) != h * w:
            raise ValueError(f"add up to {sum(runs)} pixels, not {h} x {w} = {h * w}")
    except ValueError as e:
        raise ValueError(f"{where}.counts {e}") from None
    return h, w


def check_polygons(polygons: Any, height: int, width: int, where: str = "polygons") -> None:
    """Validate COCO polygons for an image of (height, width); raises ValueError.

    Each polygon is a list of an even number (>= 6) of finite numbers, every vertex inside the
    image (``POLYGON_MARGIN`` pixels of slack). Messages start with ``where[k]``.
    """
    check_mask_size(height, width)
    if not isinstance(polygons, list):
        raise ValueError(f"{where} must be a list of coordinate lists")  # noqa: TRY004
    lo = -POLYGON_MARGIN
    for k, poly in enumerate(polygons):
        if not isinstance(poly, list) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in poly
        ):
            raise ValueError(f"{where}[{k}] must be a list of numbers, got {poly!r}"[:300])
        if len(poly) < 6 or len(poly) % 2:
            raise ValueError(
                f"{where}[{k}] has {len(poly)} coordinates; a polygon needs an even number, "
                "at least 6"
            )
        xs, ys = np.asarray(poly[0::2], np.float64), np.asarray(poly[1::2], np.float64)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise ValueError(f"{where}[{k}] has a coordinate that is not a finite number")
        if (
            xs.min() < lo
            or ys.min() < lo
            or xs.max() > width + POLYGON_MARGIN
            or ys.max() > height + POLYGON_MARGIN
        ):
            raise ValueError(
                f"{where}[{k}] has a vertex outside the {width}x{height} image "
                f"(x {xs.min():.6g}..{xs.max():.6g}, y {ys.min():.6g}..{ys.max():.6g})"
            )


def segmentation_to_rle(segm: Any, height: int, width: int) -> dict[str, Any]:
    """Any COCO ``segmentation`` -> compressed RLE (bytes counts), validated before pycocotools.

    Raises:
        DatasetError: a malformed or out-of-image segmentation (the message says which part).
    """
    try:
        if isinstance(segm, list):
            check_polygons(segm, height, width, "segmentation")
            if not segm:
                return mask_utils.encode(np.zeros((height, width, 1), np.uint8, order="F"))[0]
            return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        check_rle(segm, height, width, "segmentation")
    except ValueError as e:
        raise DatasetError(f"invalid {e}") from None
    return _compressed(segm, height, width)


def _compressed(rle: dict[str, Any], height: int, width: int) -> dict[str, Any]:
    """A checked RLE (``check_rle``) as pycocotools' compressed form."""
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(rle, height, width)  # uncompressed -> compressed
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [height, width], "counts": counts}


def check_results(results: Any, where: str) -> None:
    """COCO instance results: a list of objects with an ``image_id`` (integer or string), an
    integer ``category_id``, a ``segmentation`` (polygons or RLE, checked against the image
    later) and an optional numeric ``score``. Raises DatasetError naming the first bad one."""
    if not isinstance(results, list):
        raise DatasetError(f"{where}: instance results must be a list of objects")
    for k, r in enumerate(results):
        at = f"{where}: result {k}"
        if not isinstance(r, dict):
            raise DatasetError(f"{at} must be an object, got {type(r).__name__}")
        if not isinstance(r.get("image_id"), (int, str)) or isinstance(r.get("image_id"), bool):
            raise DatasetError(f"{at} needs an image_id (an integer or a string)")
        if not isinstance(r.get("category_id"), int) or isinstance(r.get("category_id"), bool):
            raise DatasetError(f"{at} needs an integer category_id")
        if not isinstance(r.get("segmentation"), (list, dict)):
            raise DatasetError(f"{at} needs a segmentation (polygons or an RLE object)")
        score = r.get("score", 1.0)
        if not isinstance(score, (int, float)) or isinstance(score, bool) or math.isnan(score):
            raise DatasetError(f"{at}: score must be a number, got {score!r}"[:300])


def decode_rle(
    rle: dict[str, Any], height: int | None = None, width: int | None = None
) -> np.ndarray:
    """Decode compressed (str/bytes counts) or uncompressed (list counts) RLE to (H, W) bool.

    Raises:
        DatasetError: a malformed RLE, or one whose size is not (height, width) when given.
    """
    try:
        h, w = check_rle(rle, height, width)
    except ValueError as e:
        raise DatasetError(f"invalid {e}") from None
    return mask_utils.decode(_compressed(rle, h, w)).astype(bool)  # (H, W)


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` with pycocotools -> (H, W) bool."""
    polys = [list(map(float, p)) for p in polygons if len(p) >= 6]
    return mask_utils.decode(segmentation_to_rle(polys, height, width)).astype(bool)


def segmentation_to_mask(segm: Any, height: int, width: int) -> np.ndarray:
    """Any COCO ``segmentation`` (polygons, compressed or uncompressed RLE) -> (H, W) bool."""
    if not isinstance(segm, (list, dict)):
        raise DatasetError(f"unsupported segmentation value of type {type(segm).__name__}")
    return mask_utils.decode(segmentation_to_rle(segm, height, width)).astype(bool)


def mask_bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, w, h]`` box of a binary mask (zeros when empty)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


# --------------------------------------------------------------------------------------------
# files: JSON with line/column errors, atomic writes


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a broken file raises DatasetError naming the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise DatasetError(f"{path}: the JSON is nested too deeply to read") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise DatasetError(f"{path}: invalid JSON ({e})") from None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temp name is short whatever the final name: ".<first 64 chars>.<random>.tmp".
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:64]}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Atomic, deterministic JSON write (compact separators, insertion key order)."""
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def png_bytes(array: np.ndarray, compress_level: int = 1) -> bytes:
    """Encode a uint8 (H, W) or (H, W, 3) array as PNG (deterministic for the same input)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(
        buf, format="PNG", compress_level=compress_level
    )
    return buf.getvalue()


def write_png(path: str | Path, array: np.ndarray) -> None:
    atomic_write_bytes(path, png_bytes(array))


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO panoptic PNG as (H, W) int32 segment ids (its size checked before decoding)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                check_mask_size(im.height, im.width)
                rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: panoptic PNG not found") from None
    except Image.DecompressionBombError:
        raise DatasetError(f"{path}: cannot read panoptic PNG (too large)") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read panoptic PNG ({e})") from None
    return rgb2id(rgb)


# --------------------------------------------------------------------------------------------
# writing: categories, panoptic and instances JSON from (id_map, segments) records


def categories_from_meta(meta: DatasetMeta) -> list[dict[str, Any]]:
    """COCO panoptic ``categories`` (with ``isthing`` and ``color``) in contiguous order."""
    return [
        {
            "id": int(cid),
            "name": name,
            "supercategory": "thing" if thing else "stuff",
            "isthing": int(thing),
            "color": [int(c) for c in color],
        }
        for cid, name, thing, color in zip(
            meta.category_ids(), meta.class_names, meta.isthing, meta.colors, strict=True
        )
    ]


def image_entry(image_id: int, file_name: str, height: int, width: int) -> dict[str, Any]:
    return {"id": int(image_id), "file_name": file_name, "height": int(height), "width": int(width)}


def panoptic_annotation(
    id_map: np.ndarray, segments: Iterable[dict], image_id: int, png_name: str, meta: DatasetMeta
) -> dict[str, Any]:
    """One COCO panoptic annotation; ``category_id`` goes back from contiguous to dataset ids.

    Args:
        id_map: (H, W) int segment ids, 0 = void.
        segments: dicts with ``id``, ``category_id`` (contiguous) and optionally ``iscrowd``.
    """
    cat_ids = meta.category_ids()
    ids, counts = np.unique(id_map, return_counts=True)
    areas = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    info = []
    for s in segments:
        sid = int(s["id"])
        if areas.get(sid, 0) == 0:
            continue  # a segment without pixels would break the PNG <-> JSON consistency
        info.append(
            {
                "id": sid,
                "category_id": int(cat_ids[int(s["category_id"])]),
                "iscrowd": int(s.get("iscrowd", 0)),
                "area": int(areas[sid]),
                "bbox": mask_bbox(id_map == sid),
            }
        )
    return {"image_id": int(image_id), "file_name": png_name, "segments_info": info}


def instance_annotations(
    id_map: np.ndarray,
    segments: Iterable[dict],
    image_id: int,
    meta: DatasetMeta,
    first_ann_id: int = 1,
    things_only: bool = True,
) -> list[dict[str, Any]]:
    """COCO instance annotations (compressed RLE) for the segments of one image.

    A segment's optional ``score`` is copied, which makes the list a valid results file.
    """
    cat_ids = meta.category_ids()
    anns = []
    for s in segments:
        cls = int(s["category_id"])
        if things_only and not meta.isthing[cls]:
            continue
        mask = id_map == int(s["id"])
        area = int(mask.sum())
        if area == 0:
            continue
        ann = {
            "id": first_ann_id + len(anns),
            "image_id": int(image_id),
            "category_id": int(cat_ids[cls]),
            "segmentation": encode_rle(mask),
            "area": area,
            "bbox": mask_bbox(mask),
            "iscrowd": int(s.get("iscrowd", 0)),
        }
        if "score" in s:
            ann["score"] = float(s["score"])
        anns.append(ann)
    return anns


def write_coco_panoptic(
    json_path: str | Path, png_dir: str | Path | None, records: Iterable[Any], meta: DatasetMeta
) -> dict[str, Any]:
    """Write a COCO panoptic JSON (and, unless ``png_dir`` is None, one RGB id PNG per record).

    Args:
        json_path: output JSON.
        png_dir: folder for ``<stem>.png`` id PNGs; None writes only the JSON.
        records: objects with ``id_map`` (H, W), ``segments``, ``image_id`` and ``file_name``
            (the image file name), e.g. ``Sample``.
        meta: classes; contiguous ``category_id`` values are mapped to ``meta.category_ids()``.

    Returns:
        The JSON dict that was written.
    """
    images, annotations = [], []
    for r in records:
        png_name = Path(r.file_name).stem + ".png"
        h, w = r.id_map.shape
        images.append(image_entry(r.image_id, r.file_name, h, w))
        annotations.append(panoptic_annotation(r.id_map, r.segments, r.image_id, png_name, meta))
        if png_dir is not None:
            write_png(Path(png_dir) / png_name, id2rgb(r.id_map))
    obj = {
        "info": {"description": meta.name or "maskformer"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories_from_meta(meta),
    }
    write_json(json_path, obj)
    return obj


def write_coco_instances(
    json_path: str | Path, records: Iterable[Any], meta: DatasetMeta
) -> dict[str, Any]:
    """Write a COCO instances JSON (RLE masks of thing segments; all categories listed)."""
    images, annotations = [], []
    for r in records:
        h, w = r.id_map.shape
        images.append(image_entry(r.image_id, r.file_name, h, w))
        annotations += instance_annotations(
            r.id_map, r.segments, r.image_id, meta, first_ann_id=len(annotations) + 1
        )
    obj = {
        "info": {"description": meta.name or "maskformer"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories_from_meta(meta),
    }
    write_json(json_path, obj)
    return obj


def write_dataset(out_dir: str | Path, samples: Iterable[Any], meta: DatasetMeta) -> Path:
    """Write the project's dataset layout: images/, panoptic/, panoptic.json, instances.json.

    ``samples`` need ``image`` (H, W, 3) uint8 too; images are stored as PNG under their
    ``file_name`` (its extension is replaced by .png when it is not one).
    """
    out = Path(out_dir)
    kept = []
    for s in samples:
        name = Path(s.file_name).stem + ".png"
        write_png(out / "images" / name, s.image)
        kept.append(_Renamed(s, name))
    write_coco_panoptic(out / "panoptic.json", out / "panoptic", kept, meta)
    write_coco_instances(out / "instances.json", kept, meta)
    return out


class _Renamed:
    """A record view with another file_name (no copy of the arrays)."""

    def __init__(self, rec: Any, file_name: str):
        self.id_map, self.segments, self.image_id = rec.id_map, rec.segments, rec.image_id
        self.file_name = file_name
