"""Panoptic quality, semantic confusion metrics and mask AP on hand-made cases and references."""

import copy

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskformer.config import generic_meta
from maskformer.evaluation.coco_ap import (
    coco_gt_dict,
    coco_mask_ap,
    encode_masks,
    instance_results,
    instances_from_panoptic,
)
from maskformer.evaluation.metrics import (
    PQStat,
    SemSegConfusion,
    pq_from_id_maps,
    semantic_from_segments,
)

# two classes: 0 = stuff, 1 = thing
META = generic_meta(2, thing_ids=(1,))


def seg(i, c, crowd=0):
    return {"id": i, "category_id": c, "iscrowd": crowd}


def grid(rows):
    return np.array(rows, dtype=np.int32)


# ---------------------------------------------------------------------------------------------
# an independent, literal per-segment implementation of panopticapi's rules


def reference_pq(images, num_classes):
    """Per-class (tp, fp, fn, iou) by looping over segment pairs with boolean masks."""
    tp, fp, fn, iou = (np.zeros(num_classes) for _ in range(4))
    for gt_map, gt_segs, pred_map, pred_segs in images:
        gt_segs = [s for s in gt_segs if 0 <= s["category_id"] < num_classes]
        listed = np.isin(gt_map, [s["id"] for s in gt_segs])
        void = ~listed
        matched_gt, matched_pred = set(), set()
        for g in gt_segs:
            if g["iscrowd"]:
                continue
            gm = gt_map == g["id"]
            for p in pred_segs:
                pm = pred_map == p["id"]
                if p["category_id"] != g["category_id"] or not (gm & pm).any():
                    continue
                inter = (gm & pm).sum()
                union = (gm | pm).sum() - (pm & void).sum()
                if inter / union > 0.5:
                    tp[g["category_id"]] += 1
                    iou[g["category_id"]] += inter / union
                    matched_gt.add(g["id"])
                    matched_pred.add(p["id"])
        crowd_of = {}
        for g in gt_segs:
            if g["iscrowd"]:
                crowd_of[g["category_id"]] = g["id"]
            elif g["id"] not in matched_gt:
                fn[g["category_id"]] += 1
        for p in pred_segs:
            pm = pred_map == p["id"]
            if p["id"] in matched_pred or pm.sum() == 0:
                continue
            ignored = (pm & void).sum()
            if p["category_id"] in crowd_of:
                ignored += (pm & (gt_map == crowd_of[p["category_id"]])).sum()
            if ignored / pm.sum() <= 0.5:
                fp[p["category_id"]] += 1
    return tp, fp, fn, iou


def reference_summary(stats, isthing):
    tp, fp, fn, iou = stats
    denom = tp + 0.5 * fp + 0.5 * fn
    out = {}
    for suffix, group in (("", np.ones(len(tp), bool)), ("_th", isthing), ("_st", ~isthing)):
        sel = (denom > 0) & group
        if not sel.any():
            out["PQ" + suffix] = None
            continue
        out["PQ" + suffix] = 100 * np.mean(iou[sel] / denom[sel])
        sq = np.where(tp[sel] > 0, iou[sel] / np.maximum(tp[sel], 1), 0)
        out["SQ" + suffix] = 100 * np.mean(sq)
        out["RQ" + suffix] = 100 * np.mean(tp[sel] / denom[sel])
    return out


# ---------------------------------------------------------------------------------------------
# PQ: hand-computed cases


def test_pq_perfect_prediction_is_100():
    gt = grid([[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 3, 3], [1, 1, 3, 3]])
    pred = grid([[7, 7, 5, 5], [7, 7, 5, 5], [7, 7, 9, 9], [7, 7, 9, 9]])  # ids need not agree
    r = pq_from_id_maps(
        gt, [seg(1, 0), seg(2, 1), seg(3, 1)], pred, [seg(7, 0), seg(5, 1), seg(9, 1)], META
    )
    for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert r[k] == pytest.approx(100.0)
    assert [c["TP"] for c in r["per_class"]] == [1, 2]


def test_pq_one_false_positive():
    # stuff 0 on the left half; thing 1 (8 px) on the right, predicted as 6 px + a 2 px extra piece
    gt = grid([[1, 1, 2, 2]] * 4)
    pred = grid([[1, 1, 2, 2]] * 3 + [[1, 1, 3, 3]])
    r = pq_from_id_maps(gt, [seg(1, 0), seg(2, 1)], pred, [seg(1, 0), seg(2, 1), seg(3, 1)], META)
    th = r["per_class"][1]
    assert (th["TP"], th["FP"], th["FN"]) == (1, 1, 0)
    assert th["SQ"] == pytest.approx(75.0)  # IoU 6/8
    assert th["RQ"] == pytest.approx(100 / 1.5)
    assert th["PQ"] == pytest.approx(50.0)  # 0.75 / (1 + 0.5)
    assert r["PQ_st"] == pytest.approx(100.0)
    assert r["PQ"] == pytest.approx(75.0)
    assert r["SQ"] == pytest.approx(87.5)
    assert r["RQ"] == pytest.approx((100 + 100 / 1.5) / 2)


def test_pq_one_false_negative():
    gt = grid([[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 3, 3], [1, 1, 3, 3]])
    pred = grid([[1, 1, 2, 2], [1, 1, 2, 2], [1, 1, 0, 0], [1, 1, 0, 0]])  # segment 3 missed
    r = pq_from_id_maps(gt, [seg(1, 0), seg(2, 1), seg(3, 1)], pred, [seg(1, 0), seg(2, 1)], META)
    th = r["per_class"][1]
    assert (th["TP"], th["FP"], th["FN"]) == (1, 0, 1)
    assert r["PQ_th"] == pytest.approx(100 / 1.5)
    assert r["SQ_th"] == pytest.approx(100.0)


def test_pq_iou_exactly_half_is_not_a_match():
    gt = grid([[1, 1, 2, 2], [1, 1, 2, 2]])
    half = grid([[1, 1, 2, 2], [1, 1, 0, 0]])  # 2 of the 4 thing pixels: IoU = 2/4
    r = pq_from_id_maps(gt, [seg(1, 0), seg(2, 1)], half, [seg(1, 0), seg(2, 1)], META)
    th = r["per_class"][1]
    assert (th["TP"], th["FP"], th["FN"]) == (0, 1, 1)
    assert r["PQ_th"] == 0.0
    three = grid([[1, 1, 2, 2], [1, 1, 2, 0]])  # IoU 3/4 matches
    r = pq_from_id_maps(gt, [seg(1, 0), seg(2, 1)], three, [seg(1, 0), seg(2, 1)], META)
    assert r["per_class"][1]["TP"] == 1 and r["PQ_th"] == pytest.approx(75.0)


def test_pq_void_pixels_leave_the_union_and_excuse_false_positives():
    gt = grid([[2, 2, 0, 0, 0, 0], [2, 2, 0, 0, 0, 0]])
    # pred 5 = gt 2 plus 4 void pixels (IoU 1 after removing void); pred 6: 3 of 4 on void
    pred = grid([[5, 5, 5, 5, 0, 0], [5, 5, 5, 5, 0, 0]])
    r = pq_from_id_maps(gt, [seg(2, 1)], pred, [seg(5, 1)], META)
    assert r["per_class"][1]["TP"] == 1 and r["PQ_th"] == pytest.approx(100.0)

    gt = grid([[2, 2, 2, 0], [0, 0, 0, 0]])
    mostly_void = grid([[0, 0, 6, 6], [0, 0, 6, 6]])  # 3 of its 4 px are void: ignored
    r = pq_from_id_maps(gt, [seg(2, 1)], mostly_void, [seg(6, 1)], META)
    assert (r["per_class"][1]["FP"], r["per_class"][1]["FN"]) == (0, 1)
    half_void = grid([[0, 0, 6, 6], [0, 0, 0, 0]])  # 1 of 2 on void: not more than half -> FP
    r = pq_from_id_maps(gt, [seg(2, 1)], half_void, [seg(6, 1)], META)
    assert (r["per_class"][1]["FP"], r["per_class"][1]["FN"]) == (1, 1)


def test_pq_ignored_category_and_unlisted_ids_are_void():
    gt = grid([[2, 2, 9, 9], [2, 2, 4, 4]])  # id 9 has category 255 (ignore), id 4 is unlisted
    pred = grid([[5, 5, 5, 5], [5, 5, 5, 5]])
    r = pq_from_id_maps(gt, [seg(2, 1), seg(9, 255)], pred, [seg(5, 1)], META)
    assert r["per_class"][1]["TP"] == 1 and r["SQ_th"] == pytest.approx(100.0)
    assert r["per_class"][0]["FN"] == 0


def test_pq_crowd_regions():
    # gt: crowd of class 1 (ids 3) on the right; stuff 1 on the left
    gt = grid([[1, 1, 3, 3], [1, 1, 3, 3], [1, 1, 3, 3], [1, 1, 0, 0]])
    segs = [seg(1, 0), seg(3, 1, crowd=1)]
    on_crowd = grid([[1, 1, 0, 0], [1, 1, 0, 7], [1, 1, 7, 7], [1, 1, 0, 7]])  # 2 crowd + 1 void
    r = pq_from_id_maps(gt, segs, on_crowd, [seg(1, 0), seg(7, 1)], META)
    th = r["per_class"][1]
    assert (th["TP"], th["FP"], th["FN"]) == (0, 0, 0)  # crowd never FN; the prediction excused
    assert r["PQ_th"] is None and r["PQ"] == pytest.approx(100.0)
    # the same region predicted as stuff class 0 is a false positive (crowd is class 1 only)
    r = pq_from_id_maps(gt, segs, on_crowd, [seg(1, 0), seg(7, 0)], META)
    assert r["per_class"][0]["FP"] == 1
    # a thing prediction exactly on the crowd region is never matched to it
    r = pq_from_id_maps(gt, segs, np.where(gt == 3, 7, gt), [seg(1, 0), seg(7, 1)], META)
    assert r["per_class"][1]["TP"] == 0 and r["per_class"][1]["FP"] == 0


def test_pq_rejects_unlisted_predicted_ids():
    gt = grid([[1, 1], [1, 1]])
    with pytest.raises(ValueError, match="no segment lists"):
        pq_from_id_maps(gt, [seg(1, 0)], grid([[1, 1], [2, 2]]), [seg(1, 0)], META)


def _random_image(rng, k, h=24, w=32):
    """Random blocky gt; a prediction made from it by shifting, merging, relabelling, dropping."""
    cells = rng.integers(1, 9, size=(h // 4, w // 4))
    gt = np.kron(cells, np.ones((4, 4), np.int32)).astype(np.int32)
    gt[rng.random((h, w)) < 0.05] = 0  # void speckles
    ids = np.unique(gt[gt > 0])
    gt_segs = [seg(int(i), int(rng.integers(0, k)), crowd=int(rng.random() < 0.15)) for i in ids]
    if rng.random() < 0.3:
        gt_segs[0]["category_id"] = 255  # an ignored category
    pred = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)) * 3
    pred[pred == 6] = 9  # merge two segments
    pred[rng.random((h, w)) < 0.1] = 0
    pids = np.unique(pred[pred > 0])
    by_gt = {s["id"] * 3: s["category_id"] for s in gt_segs}
    pred_segs = []
    for i in pids:
        c = by_gt.get(int(i), 0) % k if rng.random() < 0.8 else int(rng.integers(0, k))
        pred_segs.append(seg(int(i), int(c)))
    return gt, gt_segs, pred.astype(np.int32), pred_segs


def test_pq_matches_the_per_segment_reference_on_random_images():
    rng = np.random.default_rng(0)
    k = 4
    meta = generic_meta(k, thing_ids=(1, 3))
    images = [_random_image(rng, k) for _ in range(40)]
    stat = PQStat(k)
    for im in images:
        stat.add(*im)
    tp, fp, fn, iou = reference_pq(images, k)
    np.testing.assert_array_equal(stat.tp, tp)
    np.testing.assert_array_equal(stat.fp, fp)
    np.testing.assert_array_equal(stat.fn, fn)
    np.testing.assert_allclose(stat.iou, iou, rtol=1e-12)
    assert tp.sum() > 20 and fp.sum() > 5 and fn.sum() > 5  # the cases are not degenerate
    got, want = stat.summary(meta), reference_summary((tp, fp, fn, iou), np.array(meta.isthing))
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_pqstat_accumulates_like_one_pass():
    rng = np.random.default_rng(1)
    images = [_random_image(rng, 3) for _ in range(6)]
    a, b, whole = PQStat(3), PQStat(3), PQStat(3)
    for j, im in enumerate(images):
        (a if j % 2 else b).add(*im)
        whole.add(*im)
    a += b
    np.testing.assert_array_equal(a.tp, whole.tp)
    np.testing.assert_allclose(a.iou, whole.iou)
    assert a.num_images == 6


# ---------------------------------------------------------------------------------------------
# semantic metrics


def test_semseg_metrics_by_hand():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 2, 2]])
    conf = SemSegConfusion(3, ignore_label=255)
    conf.update(pred, gt)
    r = conf.summary(["a", "b", "c"])
    # class 0: tp 3, gt 4, pred 3 -> IoU 3/4, acc 3/4; class 1: tp 2, gt 3, pred 3 -> IoU 2/4
    # class 2: no gt pixels -> left out of every mean (detectron2), although predicted once
    assert r["mIoU"] == pytest.approx(100 * (0.75 + 0.5) / 2)
    assert r["fwIoU"] == pytest.approx(100 * (4 / 7 * 0.75 + 3 / 7 * 0.5))
    assert r["mAcc"] == pytest.approx(100 * (0.75 + 2 / 3) / 2)
    assert r["pAcc"] == pytest.approx(100 * 5 / 7)
    assert r["per_class"][2]["IoU"] is None and r["per_class"][1]["IoU"] == pytest.approx(50.0)
    assert conf.matrix[2, 3] == 1  # the ignored pixel sits in the ignore column


def test_semseg_accumulates_over_images_and_checks_labels():
    conf = SemSegConfusion(2)
    conf.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    conf.update(np.ones((2, 2), int), np.array([[1, 1], [0, 255]]))
    r = conf.summary()
    # class 0: tp 4, gt 5, pred 4 -> IoU 4/5; class 1: tp 2, gt 2, pred 3 -> IoU 2/3
    assert r["mIoU"] == pytest.approx(100 * (4 / 5 + 2 / 3) / 2)
    assert r["pAcc"] == pytest.approx(100 * 6 / 7)
    with pytest.raises(ValueError):
        conf.update(np.full((2, 2), 2), np.zeros((2, 2), int))
    with pytest.raises(ValueError):
        conf.update(np.zeros((2, 2), int), np.full((2, 2), 7))
    assert SemSegConfusion(2).summary()["mIoU"] is None


def test_semantic_ground_truth_from_segments():
    id_map = grid([[0, 1, 2], [3, 4, 1]])
    segs = [seg(1, 0), seg(2, 1, crowd=1), seg(3, 1), seg(4, 99)]
    out = semantic_from_segments(id_map, segs, num_classes=2, ignore_label=255)
    np.testing.assert_array_equal(out, [[255, 0, 255], [1, 255, 0]])


# ---------------------------------------------------------------------------------------------
# mask AP


def _coco_case(rng, n_images=4, h=48, w=64):
    """Ground truth with 2 thing classes (+1 stuff), instances as blocky panoptic maps."""
    meta = generic_meta(3, thing_ids=(0, 2))
    images, anns, samples = [], [], []
    for img_id in range(1, n_images + 1):
        id_map = np.zeros((h, w), np.int32)
        segments = [seg(100, 1)]
        id_map[:] = 100
        for j in range(int(rng.integers(2, 6))):
            y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
            hh, ww = int(rng.integers(4, 30)), int(rng.integers(4, 30))
            id_map[y : y + hh, x : x + ww] = j + 1
            segments.append(seg(j + 1, int(rng.choice([0, 2])), crowd=int(j == 3)))
        images.append({"id": img_id, "file_name": f"{img_id}.png", "height": h, "width": w})
        anns += instances_from_panoptic(img_id, id_map, segments, meta)
        samples.append((img_id, id_map, segments))
    return meta, coco_gt_dict(images, anns, meta), samples


def _reference_cocoeval(gt, results):
    coco_gt = COCO()
    coco_gt.dataset = copy.deepcopy(gt)
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    ev = COCOeval(coco_gt, coco_dt, iouType="segm")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


def test_instances_from_panoptic_keeps_masks_crowd_and_things_only():
    _meta, gt, samples = _coco_case(np.random.default_rng(0), n_images=1)
    _img_id, id_map, segments = samples[0]
    things = [s for s in segments if s["category_id"] in (0, 2) and (id_map == s["id"]).any()]
    assert len(gt["annotations"]) == len(things)
    for ann, s in zip(gt["annotations"], things):
        decoded = mask_util.decode(dict(ann["segmentation"]))
        np.testing.assert_array_equal(decoded, id_map == s["id"])
        assert ann["iscrowd"] == s["iscrowd"] and ann["category_id"] == s["category_id"]
        assert ann["area"] == (id_map == s["id"]).sum() and ann["id"] >= 1
    assert {c["id"] for c in gt["categories"]} == {0, 2}


def test_mask_ap_perfect_prediction_is_100():
    meta, gt, samples = _coco_case(np.random.default_rng(1))
    results = []
    for img_id, id_map, segments in samples:
        for s in segments:
            if s["category_id"] in meta.thing_ids and not s["iscrowd"]:
                m = (id_map == s["id"])[None]
                results += instance_results(img_id, m, [s["category_id"]], [0.9], meta)
    r = coco_mask_ap(gt, results)
    assert r["AP"] == pytest.approx(100.0) and r["AP50"] == pytest.approx(100.0)
    assert r["AP75"] == pytest.approx(100.0)
    assert all(c["AP"] == pytest.approx(100.0) for c in r["per_class"])


def test_mask_ap_matches_cocoeval_called_directly():
    rng = np.random.default_rng(2)
    meta, gt, samples = _coco_case(rng, n_images=5)
    results = []
    for img_id, id_map, segments in samples:
        for s in segments:
            m = id_map == s["id"]
            if not m.any():
                continue
            m = np.roll(m, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
            label = s["category_id"] if rng.random() < 0.8 else int(rng.choice([0, 2]))
            results += instance_results(img_id, m[None], [label], [float(rng.random())], meta)
        # spurious detections
        noise = rng.random((2, *id_map.shape)) < 0.2
        results += instance_results(img_id, noise, [0, 2], rng.random(2).tolist(), meta)
    r = coco_mask_ap(gt, results)
    ev = _reference_cocoeval(gt, results)
    for key, ref in zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), ev.stats[:6]):
        assert (r[key] is None) == (ref < 0), key
        if ref >= 0:
            assert r[key] == pytest.approx(100 * ref), key
    assert 5 < r["AP"] < 95  # a non-trivial case
    precision = ev.eval["precision"][:, :, :, 0, -1]
    for k, row in enumerate(r["per_class"]):
        p = precision[:, :, k]
        assert row["AP"] == pytest.approx(100 * p[p > -1].mean())


def test_mask_ap_without_detections_and_from_a_file(tmp_path):
    import json

    meta, gt, samples = _coco_case(np.random.default_rng(3), n_images=2)
    r = coco_mask_ap(gt, [])
    assert r["AP"] == 0.0 and r["AP50"] == 0.0
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    img_id, id_map, segments = samples[0]
    s = next(
        s
        for s in segments
        if s["category_id"] == 2 and not s["iscrowd"] and (id_map == s["id"]).any()
    )
    res = instance_results(img_id, (id_map == s["id"])[None], [2], [1.0], meta)
    only = coco_mask_ap(path, res, img_ids=[img_id])
    assert next(c for c in only["per_class"] if c["category_id"] == 2)["AP"] > 0


def test_encode_masks_roundtrip():
    masks = np.random.default_rng(4).random((3, 7, 5)) < 0.5
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    dec = np.stack([mask_util.decode({"size": r["size"], "counts": r["counts"]}) for r in rles])
    np.testing.assert_array_equal(dec.astype(bool), masks)
