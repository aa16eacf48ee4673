"""Pure metrics: panoptic quality (panopticapi rules) and semantic confusion (detectron2 rules)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self

import numpy as np

from maskformer.config import DatasetMeta

# A prediction and a ground-truth segment match when their IoU is strictly above this. Above 0.5 at
# most one match per segment is possible, so no assignment problem has to be solved.
MATCH_IOU = 0.5
# An unmatched prediction is not a false positive when more than this share of it lies on void or on
# a crowd region of its own class.
IGNORE_FRACTION = 0.5


def _as_array(x: Any) -> np.ndarray:
    """numpy view of a numpy array or a (CPU or GPU) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def compact_ids(id_map: np.ndarray, seg_ids: Sequence[int]) -> np.ndarray:
    """Replace segment ids by their 1-based position in ``seg_ids``; unlisted ids become 0.

    Args:
        id_map: (H, W) integer segment ids.
        seg_ids: (N,) distinct, non-zero ids.

    Returns:
        (H*W,) int64 indices in 0..N, 0 meaning "not a listed segment".
    """
    flat = _as_array(id_map).reshape(-1).astype(np.int64)
    ids = np.asarray(seg_ids, dtype=np.int64).reshape(-1)
    if len(ids) == 0:
        return np.zeros_like(flat)
    if len(np.unique(ids)) != len(ids) or (ids == 0).any():
        raise ValueError(
            f"segment ids must be distinct and non-zero (0 is void), got {ids.tolist()}"
        )
    order = np.argsort(ids)
    pos = np.minimum(np.searchsorted(ids[order], flat), len(ids) - 1)
    found = ids[order][pos] == flat
    return np.where(found, order[pos] + 1, 0)


class PQStat:
    """Per-class TP / FP / FN counts and matched IoU sums over images (panopticapi's PQStat).

    Ground truth: pixels with id 0, with an id no segment lists, or of a segment whose
    ``category_id`` is outside ``0..K-1`` are VOID. Segments with ``iscrowd`` are never matched;
    an unmatched prediction lying more than half on VOID plus the (last listed) crowd region of
    its own class is not a false positive. Predictions: id 0 is "no segment"; every other id must
    be listed.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.tp = np.zeros(num_classes, dtype=np.int64)
        self.fp = np.zeros(num_classes, dtype=np.int64)
        self.fn = np.zeros(num_classes, dtype=np.int64)
        self.iou = np.zeros(num_classes, dtype=np.float64)
        self.num_images = 0

    def __iadd__(self, other: PQStat) -> Self:
        for name in ("tp", "fp", "fn", "iou"):
            getattr(self, name).__iadd__(getattr(other, name))
        self.num_images += other.num_images
        return self

    def add(
        self,
        gt_id_map: Any,
        gt_segments: Sequence[Mapping[str, Any]],
        pred_id_map: Any,
        pred_segments: Sequence[Mapping[str, Any]],
    ) -> None:
        """Match one image's prediction against its ground truth and accumulate the counts.

        Args:
            gt_id_map: (H, W) ground-truth segment ids, 0 = void.
            gt_segments: dicts with ``id``, ``category_id`` (contiguous) and optional ``iscrowd``.
            pred_id_map: (H, W) predicted segment ids, 0 = no segment.
            pred_segments: dicts with ``id`` and ``category_id`` (contiguous).
        """
        gt_map, pred_map = _as_array(gt_id_map), _as_array(pred_id_map)
        if gt_map.shape != pred_map.shape:
            raise ValueError(f"ground truth is {gt_map.shape} but prediction is {pred_map.shape}")
        k = self.num_classes
        gt_segs = [s for s in gt_segments if 0 <= int(s["category_id"]) < k]
        gt_cat = np.array([int(s["category_id"]) for s in gt_segs], dtype=np.int64)
        crowd = np.array([bool(s.get("iscrowd", 0)) for s in gt_segs], dtype=bool)
        pred_cat = np.array([int(s["category_id"]) for s in pred_segments], dtype=np.int64)
        if ((pred_cat < 0) | (pred_cat >= k)).any():
            raise ValueError(f"predicted category ids {pred_cat.tolist()} outside 0..{k - 1}")

        g = compact_ids(gt_map, [int(s["id"]) for s in gt_segs])
        p = compact_ids(pred_map, [int(s["id"]) for s in pred_segments])
        unlisted = (p == 0) & (pred_map.reshape(-1) != 0)
        if unlisted.any():
            bad = sorted(set(pred_map.reshape(-1)[unlisted].tolist()))[:5]
            raise ValueError(f"predicted id map holds segment ids {bad} that no segment lists")
        ng, npred = len(gt_segs), len(pred_segments)
        joint = np.bincount(g * (npred + 1) + p, minlength=(ng + 1) * (npred + 1))
        joint = joint.reshape(ng + 1, npred + 1)  # (1+Ng, 1+Np) pixel counts, row/col 0 = void
        self._accumulate(joint, gt_cat, crowd, pred_cat)
        self.num_images += 1

    def _accumulate(
        self, joint: np.ndarray, gt_cat: np.ndarray, crowd: np.ndarray, pred_cat: np.ndarray
    ) -> None:
        inter = joint[1:, 1:]  # (Ng, Np)
        gt_area, pred_area = joint[1:].sum(1), joint[:, 1:].sum(0)  # (Ng,), (Np,)
        pred_void = joint[0, 1:]  # (Np,) predicted pixels on void ground truth
        # Void pixels do not count against a prediction: they are taken out of the union.
        union = gt_area[:, None] + pred_area[None, :] - inter - pred_void[None, :]  # (Ng, Np)
        candidate = (gt_cat[:, None] == pred_cat[None, :]) & ~crowd[:, None] & (inter > 0)
        iou = np.where(candidate, inter / np.maximum(union, 1), 0.0)  # (Ng, Np)
        match = iou > MATCH_IOU
        gi, pj = np.nonzero(match)
        np.add.at(self.tp, gt_cat[gi], 1)
        np.add.at(self.iou, gt_cat[gi], iou[gi, pj])

        missed = ~match.any(1) & ~crowd
        np.add.at(self.fn, gt_cat[missed], 1)

        # panopticapi keeps one crowd region per class: the last one listed.
        crowd_row = {int(gt_cat[i]): i for i in np.flatnonzero(crowd)}
        ignored = pred_void.astype(np.float64)
        for j, c in enumerate(pred_cat.tolist()):
            if c in crowd_row:
                ignored[j] += inter[crowd_row[c], j]
        # Listed predictions with no pixels are skipped (panopticapi rejects such files outright).
        unmatched = ~match.any(0) & (pred_area > 0)
        counted = unmatched & (ignored <= IGNORE_FRACTION * np.maximum(pred_area, 1))
        np.add.at(self.fp, pred_cat[counted], 1)

    def per_class(self) -> dict[str, np.ndarray]:
        """Per-class PQ, SQ, RQ in [0, 1] and ``valid`` (the class has TP + FP + FN > 0)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        valid = denom > 0
        pq = np.where(valid, self.iou / np.maximum(denom, 1e-12), 0.0)
        sq = np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0)
        rq = np.where(valid, self.tp / np.maximum(denom, 1e-12), 0.0)
        return {"PQ": pq, "SQ": sq, "RQ": rq, "valid": valid}

    def summary(self, meta: DatasetMeta) -> dict[str, Any]:
        """PQ / SQ / RQ ×100 over all, thing and stuff classes, plus a per-class table.

        Averages run over the classes with TP + FP + FN > 0; a group with no such class gives None.
        """
        if meta.num_classes != self.num_classes:
            raise ValueError(f"metadata has {meta.num_classes} classes, PQStat {self.num_classes}")
        pc = self.per_class()
        things = np.array(meta.isthing, dtype=bool)
        out: dict[str, Any] = {}
        for suffix, group in (("", np.ones_like(things)), ("_th", things), ("_st", ~things)):
            sel = pc["valid"] & group
            for m in ("PQ", "SQ", "RQ"):
                out[m + suffix] = float(100 * pc[m][sel].mean()) if sel.any() else None
        out["per_class"] = [
            {
                "class_id": i,
                "name": meta.class_names[i],
                "isthing": bool(things[i]),
                "PQ": float(100 * pc["PQ"][i]) if pc["valid"][i] else None,
                "SQ": float(100 * pc["SQ"][i]) if pc["valid"][i] else None,
                "RQ": float(100 * pc["RQ"][i]) if pc["valid"][i] else None,
                "TP": int(self.tp[i]),
                "FP": int(self.fp[i]),
                "FN": int(self.fn[i]),
            }
            for i in range(self.num_classes)
        ]
        return out


def pq_from_id_maps(
    gt_id_map: Any,
    gt_segments: Sequence[Mapping[str, Any]],
    pred_id_map: Any,
    pred_segments: Sequence[Mapping[str, Any]],
    meta: DatasetMeta,
) -> dict[str, Any]:
    """Panoptic quality of a single image (see ``PQStat`` for the rules)."""
    stat = PQStat(meta.num_classes)
    stat.add(gt_id_map, gt_segments, pred_id_map, pred_segments)
    return stat.summary(meta)


def semantic_from_segments(
    id_map: Any,
    segments: Sequence[Mapping[str, Any]],
    num_classes: int,
    ignore_label: int = 255,
) -> np.ndarray:
    """Per-pixel class labels of a panoptic annotation; void, crowd and unknown pixels are ignored.

    Args:
        id_map: (H, W) segment ids, 0 = void.
        segments: dicts with ``id``, ``category_id`` (contiguous) and optional ``iscrowd``.

    Returns:
        (H, W) int64 labels in ``0..num_classes-1`` or ``ignore_label``.
    """
    id_map = _as_array(id_map)
    keep = [
        s for s in segments if 0 <= int(s["category_id"]) < num_classes and not s.get("iscrowd", 0)
    ]
    lut = np.array([ignore_label] + [int(s["category_id"]) for s in keep], dtype=np.int64)
    return lut[compact_ids(id_map, [int(s["id"]) for s in keep])].reshape(id_map.shape)


class SemSegConfusion:
    """Confusion matrix with detectron2 SemSegEvaluator's metrics (mIoU, fwIoU, mAcc, pAcc).

    ``matrix[p, g]`` counts pixels predicted ``p`` whose ground truth is ``g``; column K collects
    ground-truth pixels equal to ``ignore_label``, which no metric uses.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255):
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)

    def update(self, pred: Any, gt: Any) -> None:
        """Add one image.

        Args:
            pred: (H, W) predicted labels in ``0..K-1``.
            gt: (H, W) ground-truth labels in ``0..K-1`` or ``ignore_label``.
        """
        k = self.num_classes
        pred = _as_array(pred).astype(np.int64).reshape(-1)
        gt = _as_array(gt).astype(np.int64).reshape(-1)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.size} pixels but ground truth {gt.size}")
        gt = np.where(gt == self.ignore_label, k, gt)
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predicted labels must lie in 0..{k - 1}")
        if gt.size and (gt.min() < 0 or gt.max() > k):
            raise ValueError(
                f"ground-truth labels must lie in 0..{k - 1} or be {self.ignore_label}"
            )
        counts = np.bincount((k + 1) * pred + gt, minlength=(k + 1) ** 2)
        self.matrix += counts.reshape(k + 1, k + 1)

    def per_class(self) -> dict[str, np.ndarray]:
        """Per-class IoU and accuracy in [0, 1]; NaN for classes without ground-truth pixels."""
        conf = self.matrix[:-1, :-1].astype(np.float64)  # (K, K) ignore column dropped
        tp = np.diag(conf)
        pos_gt, pos_pred = conf.sum(0), conf.sum(1)
        union = pos_gt + pos_pred - tp
        # detectron2: a class counts in the means only if it has ground-truth pixels.
        acc_valid = pos_gt > 0
        iou_valid = acc_valid & (union > 0)
        acc = np.full(self.num_classes, np.nan)
        iou = np.full(self.num_classes, np.nan)
        acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
        iou[iou_valid] = tp[iou_valid] / union[iou_valid]
        return {"IoU": iou, "Acc": acc, "tp": tp, "pos_gt": pos_gt}

    def summary(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """mIoU, fwIoU, mAcc, pAcc ×100 (None without ground-truth pixels) and a per-class table."""
        pc = self.per_class()
        iou, acc, pos_gt = pc["IoU"], pc["Acc"], pc["pos_gt"]
        total = pos_gt.sum()
        iou_ok, acc_ok = ~np.isnan(iou), ~np.isnan(acc)
        out: dict[str, Any] = {"mIoU": None, "fwIoU": None, "mAcc": None, "pAcc": None}
        if total > 0:
            weights = pos_gt / total
            out["mIoU"] = float(100 * iou[iou_ok].mean()) if iou_ok.any() else None
            out["fwIoU"] = float(100 * (iou[iou_ok] * weights[iou_ok]).sum())
            out["mAcc"] = float(100 * acc[acc_ok].mean())
            out["pAcc"] = float(100 * pc["tp"].sum() / total)
        names = class_names or [f"class_{i}" for i in range(self.num_classes)]
        out["per_class"] = [
            {
                "class_id": i,
                "name": names[i],
                "IoU": None if np.isnan(iou[i]) else float(100 * iou[i]),
                "Acc": None if np.isnan(acc[i]) else float(100 * acc[i]),
                "gt_pixels": int(pos_gt[i]),
            }
            for i in range(self.num_classes)
        ]
        return out
