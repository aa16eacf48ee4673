"""Mask AP with pycocotools' COCOeval: ground truth and results in COCO instances form."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pycocotools.mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskformer.config import DatasetMeta
from maskformer.data.coco import read_json, segmentation_to_rle
from maskformer.errors import DatasetError
from maskformer.evaluation.metrics import compact_ids

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """Compressed RLEs (JSON-ready: ``counts`` as str) of (N, H, W) binary masks."""
    masks = np.asfortranarray(_as_array(masks).astype(np.uint8).transpose(1, 2, 0))  # (H, W, N)
    rles = mask_util.encode(masks) if masks.shape[2] else []
    return [
        {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles
    ]


def instances_from_panoptic(
    image_id: Any,
    id_map: Any,
    segments: Sequence[Mapping[str, Any]],
    meta: DatasetMeta,
) -> list[dict[str, Any]]:
    """COCO instance annotations (no ``id`` yet) for the thing segments of one panoptic annotation.

    Category ids are the dataset's (``meta.category_ids()``); ``iscrowd`` is kept.
    """
    id_map = _as_array(id_map)
    cat_ids = meta.category_ids()
    things = [
        s
        for s in segments
        if 0 <= int(s["category_id"]) < meta.num_classes and meta.isthing[int(s["category_id"])]
    ]
    idx = compact_ids(id_map, [int(s["id"]) for s in things]).reshape(id_map.shape)  # (H, W)
    masks = idx[None] == np.arange(1, len(things) + 1)[:, None, None]  # (N, H, W)
    anns = []
    for seg, rle, mask in zip(things, encode_masks(masks), masks):
        area = int(mask.sum())
        if area == 0:
            continue
        anns.append(
            {
                "image_id": image_id,
                "category_id": int(cat_ids[int(seg["category_id"])]),
                "segmentation": rle,
                "area": area,
                "bbox": [float(v) for v in mask_util.toBbox(rle)],
                "iscrowd": int(bool(seg.get("iscrowd", 0))),
            }
        )
    return anns


def instance_results(
    image_id: Any, masks: Any, labels: Any, scores: Any, meta: DatasetMeta
) -> list[dict[str, Any]]:
    """COCO results entries for one image's instances (``InstanceResult`` fields), things only.

    Args:
        masks: (N, H, W) bool: an array, a tensor, or ``InstanceMasks`` (each mask is read and
            encoded alone, so lazy masks of a large image are never all in memory).
        labels: (N,) contiguous class ids.
        scores: (N,) confidences.
    """
    labels, scores = _as_array(labels), _as_array(scores)
    cat_ids = meta.category_ids()
    keep = [i for i, c in enumerate(labels.tolist()) if meta.isthing[int(c)]]
    rles = [encode_masks(_as_array(masks[i])[None])[0] for i in keep]
    return [
        {
            "image_id": image_id,
            "category_id": int(cat_ids[int(labels[i])]),
            "segmentation": rle,
            "score": float(scores[i]),
        }
        for i, rle in zip(keep, rles)
    ]


def coco_gt_dict(
    images: Sequence[Mapping[str, Any]], annotations: Sequence[Mapping[str, Any]], meta: DatasetMeta
) -> dict[str, Any]:
    """A COCO instances dict over ``meta``'s thing classes; annotation ids are numbered from 1."""
    cat_ids = meta.category_ids()
    anns = [dict(a, id=i + 1) for i, a in enumerate(annotations)]
    cats = [{"id": int(cat_ids[c]), "name": meta.class_names[c]} for c in meta.thing_ids]
    return {"images": [dict(im) for im in images], "annotations": anns, "categories": cats}


def _load_json(path: str | Path) -> Any:
    return read_json(path)  # one line for a broken, unreadable or too deeply nested file


def _to_rle(seg: Any, h: int, w: int) -> dict[str, Any]:
    """Compressed RLE of a polygon list, an uncompressed RLE or a compressed one.

    Checked in Python first (``segmentation_to_rle``): pycocotools crashes or raises assorted
    errors on garbage. A bad result raises DatasetError.
    """
    return segmentation_to_rle(seg, h, w)


def _prepare_results(results: Sequence[Mapping[str, Any]], gt: COCO) -> list[dict[str, Any]]:
    """Copies of the results with compressed RLE masks, a score, and no box.

    The box is dropped as detectron2 does for "segm": ``loadRes`` would otherwise take the box area
    as the mask area and put instances in the wrong size range.
    """
    out = []
    for r in results:
        if r["image_id"] not in gt.imgs:
            raise DatasetError(
                f"a result refers to image_id {r['image_id']!r}, which the ground "
                "truth does not have"
            )
        img = gt.imgs[r["image_id"]]
        r = {k: v for k, v in copy.deepcopy(dict(r)).items() if k not in ("bbox", "id", "area")}
        r["segmentation"] = _to_rle(r["segmentation"], img["height"], img["width"])
        r.setdefault("score", 1.0)
        out.append(r)
    return out


def _prepare_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a COCO instances dict with the fields COCOeval needs filled in."""
    gt = copy.deepcopy(dict(gt))
    imgs = {im["id"]: im for im in gt.get("images", [])}
    for i, ann in enumerate(gt.get("annotations", [])):
        ann.setdefault("iscrowd", 0)
        ann.setdefault("id", i + 1)
        if "area" not in ann:
            img = imgs[ann["image_id"]]
            ann["area"] = float(
                mask_util.area(_to_rle(ann["segmentation"], img["height"], img["width"]))
            )
    return gt


def coco_mask_ap(
    gt: Mapping[str, Any] | str | Path,
    results: Sequence[Mapping[str, Any]],
    *,
    img_ids: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Mask AP of COCO results against COCO instance ground truth, by ``COCOeval(iouType="segm")``.

    Args:
        gt: a COCO instances dict or the path of its JSON.
        results: dicts with ``image_id``, ``category_id``, ``segmentation`` (RLE or polygons) and
            ``score`` (1.0 when missing).
        img_ids: evaluate these images only (default: every ground-truth image).

    Returns:
        AP, AP50, AP75, APs, APm, APl ×100 (None where COCOeval has nothing to average) and
        ``per_class``: [{"category_id", "name", "AP"}] from the IoU 0.50:0.95, all-areas precision.
    """
    gt_dict = _prepare_gt(_load_json(gt) if isinstance(gt, (str, Path)) else gt)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = gt_dict
        coco_gt.createIndex()
        res = _prepare_results(results, coco_gt)
        if img_ids is not None:
            res = [r for r in res if r["image_id"] in set(img_ids)]
        if not res:  # loadRes cannot take an empty list; no detections means AP 0 where GT exists
            return _empty_result(coco_gt, img_ids)
        coco_dt = coco_gt.loadRes(res)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        if img_ids is not None:
            ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    out: dict[str, Any] = {k: _pct(v) for k, v in zip(AP_KEYS, ev.stats[:6])}
    out["per_class"] = _per_class_ap(ev, coco_gt)
    return out


def _pct(v: float) -> float | None:
    return None if v < 0 or np.isnan(v) else float(100 * v)


def _per_class_ap(ev: COCOeval, coco_gt: COCO) -> list[dict[str, Any]]:
    # (T, R, K, A, M): IoU thresholds, recall levels, classes, area ranges, max detections
    precision = ev.eval["precision"]
    rows = []
    for k, cat_id in enumerate(ev.params.catIds):
        cat_id = cat_id.item() if hasattr(cat_id, "item") else cat_id  # evaluate() makes numpy ids
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        rows.append(
            {
                "category_id": cat_id,
                "name": coco_gt.cats[cat_id].get("name", str(cat_id)),
                "AP": float(100 * p.mean()) if p.size else None,
            }
        )
    return rows


def _empty_result(coco_gt: COCO, img_ids: Sequence[Any] | None) -> dict[str, Any]:
    """What COCOeval reports without detections: 0 where non-crowd ground truth exists, or None."""
    ids = set(coco_gt.getImgIds() if img_ids is None else img_ids)
    gts = [a for a in coco_gt.dataset["annotations"] if a["image_id"] in ids and not a["iscrowd"]]
    ranges = {"AP": (0, 1e10), "APs": (0, 32**2), "APm": (32**2, 96**2), "APl": (96**2, 1e10)}
    found = {k: any(lo <= a["area"] <= hi for a in gts) for k, (lo, hi) in ranges.items()}
    found["AP50"] = found["AP75"] = found["AP"]
    out: dict[str, Any] = {k: 0.0 if found[k] else None for k in AP_KEYS}
    with_gt = {a["category_id"] for a in gts}
    out["per_class"] = [
        {
            "category_id": c,
            "name": coco_gt.cats[c].get("name", str(c)),
            "AP": 0.0 if c in with_gt else None,
        }
        for c in coco_gt.getCatIds()
    ]
    return out
