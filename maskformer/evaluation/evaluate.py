"""Score a Predictor on a labelled dataset, or score COCO-format prediction files against one."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maskformer.config import DatasetMeta
from maskformer.data import open_dataset
from maskformer.data.coco import check_results, read_json, read_panoptic_png
from maskformer.errors import DatasetError, UserError
from maskformer.evaluation.coco_ap import (
    coco_gt_dict,
    coco_mask_ap,
    instance_results,
    instances_from_panoptic,
)
from maskformer.evaluation.metrics import PQStat, SemSegConfusion, semantic_from_segments

TASKS = ("panoptic", "semantic", "instance")
# Ignored ground-truth pixels are marked -1 internally, so no class id (even 65535) can collide.
_IGNORE = -1


def _progress(items: Iterable[int], total: int, enabled: bool, desc: str) -> Iterable[int]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, file=sys.stderr, leave=False)


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise UserError(f"unknown task(s) {bad or list(tasks)}; choose from {', '.join(TASKS)}")
    return tuple(dict.fromkeys(tasks))


def _check_classes(pred_meta: DatasetMeta, meta: DatasetMeta) -> None:
    if pred_meta.num_classes != meta.num_classes:
        raise DatasetError(
            f"the model predicts {pred_meta.num_classes} classes but the dataset "
            f"has {meta.num_classes}; evaluate on a dataset with the model's "
            "classes"
        )


class _Scores:
    """Accumulators of the requested tasks, fed one image at a time."""

    def __init__(
        self, meta: DatasetMeta, tasks: tuple[str, ...], native_gt: dict[str, Any] | None = None
    ):
        self.meta, self.tasks = meta, tasks
        self.pq = PQStat(meta.num_classes)
        self.conf = SemSegConfusion(meta.num_classes, ignore_label=_IGNORE)
        self.native_gt = native_gt  # a COCO instances dict to score against, instead of our own
        self.image_ids: list[Any] = []
        self.gt_images: list[dict[str, Any]] = []
        self.gt_anns: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []

    def add_ground_truth(
        self, image_id: Any, file_name: str, id_map: np.ndarray, segments: list[dict[str, Any]]
    ) -> None:
        self.image_ids.append(image_id)
        if "instance" in self.tasks and self.native_gt is None:
            h, w = id_map.shape
            self.gt_images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
            self.gt_anns += instances_from_panoptic(image_id, id_map, segments, self.meta)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        per_class: dict[str, Any] = {}
        if "panoptic" in self.tasks:
            pan = self.pq.summary(self.meta)
            per_class["panoptic"] = pan.pop("per_class")
            out.update(pan)
        if "semantic" in self.tasks:
            sem = self.conf.summary(self.meta.class_names)
            per_class["semantic"] = sem.pop("per_class")
            out.update(sem)
        if "instance" in self.tasks:
            ap = self._mask_ap()
            per_class["instance"] = ap.pop("per_class")
            out.update(ap)
        out["per_class"] = per_class
        return out

    def _mask_ap(self) -> dict[str, Any]:
        if not self.meta.thing_ids:  # no thing classes: nothing to detect
            return {
                "AP": None,
                "AP50": None,
                "AP75": None,
                "APs": None,
                "APm": None,
                "APl": None,
                "per_class": [],
            }
        if self.native_gt is not None:
            return coco_mask_ap(self.native_gt, self.results, img_ids=self.image_ids)
        gt = coco_gt_dict(self.gt_images, self.gt_anns, self.meta)
        return coco_mask_ap(gt, self.results)


def native_instances_gt(dataset: Any) -> dict[str, Any] | None:
    """The COCO instances JSON a dataset was read from, restricted to its thing classes.

    Scoring against the file itself keeps overlapping instances, which the dataset's id maps
    (one segment per pixel) cannot. None for every other format.
    """
    if getattr(dataset, "format", "") != "coco_instances":
        return None
    meta: DatasetMeta = dataset.meta
    things = {int(meta.category_ids()[c]) for c in meta.thing_ids}
    data = read_json(dataset.json_path)
    return {
        "images": data.get("images", []),
        "annotations": [a for a in data.get("annotations", []) if a["category_id"] in things],
        "categories": [c for c in data.get("categories", []) if c["id"] in things],
    }


def evaluate_model(
    predictor: Any,
    dataset: Any,
    tasks: Sequence[str] = TASKS,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``predictor`` on a labelled dataset and score it with the app's own post-processing.

    Panoptic uses ``Prediction.panoptic()`` (PQ, panopticapi rules), semantic ``.semantic()``
    (mIoU etc., detectron2 rules; void and crowd pixels ignored), instance ``.instances()``
    (mask AP by COCOeval against the thing segments, crowd kept as crowd).

    Args:
        predictor: a ``maskformer.inference.Predictor`` (anything with ``predict(image)``).
        dataset: a ``LabeledDataset`` (``maskformer.data.open_dataset``) with the model's classes.
        tasks: any of "panoptic", "semantic", "instance".
        max_images: score only the first N images.
        progress: show a progress bar on stderr.

    Returns:
        Flat metrics (PQ, SQ, RQ, PQ_th, ..., mIoU, fwIoU, mAcc, pAcc, AP, AP50, AP75, APs, APm,
        APl; ×100, None where undefined), ``num_images``, and ``per_class`` (one table per task).
    """
    tasks = _check_tasks(tasks)
    meta: DatasetMeta = dataset.meta
    n = len(dataset) if max_images is None else min(len(dataset), max(0, int(max_images)))
    native = native_instances_gt(dataset) if "instance" in tasks else None
    scores = _Scores(meta, tasks, native)
    for i in _progress(range(n), n, progress, "evaluate"):
        sample = dataset.load(i)
        pred = predictor.predict(sample.image)
        if i == 0:
            _check_classes(pred.meta, meta)
        # Against our own ground truth, 1-based ids: robust to whatever ids the dataset uses.
        image_id = sample.image_id if native is not None else i + 1
        scores.add_ground_truth(image_id, sample.file_name, sample.id_map, sample.segments)
        if "panoptic" in tasks:
            pan = pred.panoptic()
            scores.pq.add(sample.id_map, sample.segments, pan.panoptic_seg, pan.segments)
        if "semantic" in tasks:
            gt = semantic_from_segments(sample.id_map, sample.segments, meta.num_classes, _IGNORE)
            scores.conf.update(pred.semantic(), gt)
        if "instance" in tasks:
            inst = pred.instances()
            scores.results += instance_results(image_id, inst.masks, inst.labels, inst.scores, meta)
    out = scores.summary()
    out["num_images"] = n
    return out


# --------------------------------------------------------------------------------------------
# existing prediction files


def evaluate_predictions(
    pred_path: str | Path, gt_path: str | Path, progress: bool = False
) -> dict[str, Any]:
    """Score prediction files against a labelled dataset, as panopticapi / COCOeval do.

    Args:
        pred_path: what ``predict`` writes, or any COCO-format equivalent:
            a COCO panoptic JSON whose PNGs lie in ``<json stem>/`` or ``panoptic/`` beside it
            (category ids are the dataset's); COCO instance results (a JSON list, or a COCO
            instances file whose annotations are the results; missing scores count as 1.0);
            or a folder of semantic label PNGs (contiguous class ids, named like the images).
            Images are matched by file name, else by ``image_id``.
        gt_path: the dataset (anything ``open_dataset`` reads).

    Returns:
        Panoptic: PQ, SQ, RQ (all / _th / _st); instances: AP, AP50, AP75, APs, APm, APl;
        semantic: mIoU, fwIoU, mAcc, pAcc; plus ``num_images`` and ``per_class``.
    """
    pred_path = Path(pred_path)
    if pred_path.is_dir():
        return _score_semantic_folder(pred_path, open_dataset(gt_path), progress)
    data = read_json(pred_path)
    dataset = open_dataset(gt_path)
    anns = data.get("annotations") if isinstance(data, dict) else None
    if isinstance(anns, list) and anns and isinstance(anns[0], dict) and "segments_info" in anns[0]:
        return _score_panoptic_file(pred_path, data, dataset, progress)
    if isinstance(data, list) or isinstance(anns, list):
        return _score_instance_file(pred_path, data, dataset, progress)
    raise DatasetError(
        f"{pred_path}: neither a COCO panoptic JSON (annotations with "
        "segments_info) nor COCO instance results (a list, or a dict with "
        "annotations)"
    )


def _score_semantic_folder(pred_dir: Path, dataset: Any, progress: bool) -> dict[str, Any]:
    meta: DatasetMeta = dataset.meta
    files = {p.stem: p for p in sorted(pred_dir.iterdir()) if p.suffix.lower() == ".png"}
    if not files:
        raise DatasetError(f"{pred_dir}: no semantic label PNGs in this folder")
    keys = _match_images(dataset, {stem: stem for stem in files}, pred_dir)
    scores = _Scores(meta, ("semantic",))
    for i in _progress(range(len(dataset)), len(dataset), progress, "score"):
        png = files[keys[i]]
        try:
            with Image.open(png) as im:
                pred = np.asarray(im).astype(np.int64)
        except OSError as e:
            raise DatasetError(f"{png}: cannot read the label PNG ({e})") from None
        gt_map, gt_segments = dataset.load_labels(i)
        if pred.shape != gt_map.shape:
            raise DatasetError(
                f"{png}: a {pred.ndim}-d {pred.shape} label image, but the ground "
                f"truth is {gt_map.shape[1]}x{gt_map.shape[0]} (one channel)"
            )
        gt = semantic_from_segments(gt_map, gt_segments, meta.num_classes, _IGNORE)
        try:
            scores.conf.update(pred, gt)
        except ValueError as e:
            raise DatasetError(f"{png}: {e}") from None
    out = scores.summary()
    out["num_images"] = len(dataset)
    return out


def _match_images(dataset: Any, pred_images: dict[Any, str], pred_path: Path) -> list[Any]:
    """For each dataset image, the prediction's image id.

    Matched by file stem first (``predict`` numbers images its own way), then by image id.
    """
    by_id = {str(k): k for k in pred_images}
    by_stem: dict[str, Any] = {}
    repeated = set()
    for k, name in pred_images.items():
        stem = Path(name).stem if name else None
        if stem in by_stem:
            repeated.add(stem)
        elif stem:
            by_stem[stem] = k
    matched = []
    for i in range(len(dataset)):
        image_id, file_name = dataset.image_info(i)
        stem = Path(file_name).stem
        key = by_stem.get(stem) if stem not in repeated else None
        key = by_id.get(str(image_id)) if key is None else key
        if key is None:
            raise DatasetError(
                f"{pred_path}: no prediction for the dataset image {file_name} "
                f"(image_id {image_id})"
            )
        matched.append(key)
    return matched


def _png_dir(pred_path: Path) -> Path:
    for d in (pred_path.with_suffix(""), pred_path.parent / "panoptic"):
        if d.is_dir():
            return d
    raise DatasetError(
        f"{pred_path}: cannot find its PNG folder ({pred_path.stem}/ or panoptic/ beside it)"
    )


def _contiguous(meta: DatasetMeta) -> dict[int, int]:
    return {int(c): i for i, c in enumerate(meta.category_ids())}


def _pred_segments(ann: dict[str, Any], to_contiguous: dict[int, int], where: str) -> list[dict]:
    segs = []
    for s in ann.get("segments_info", []):
        cat = int(s["category_id"])
        if cat not in to_contiguous:
            raise DatasetError(
                f"{where}: segment {s['id']} has category_id {cat}, which the "
                "dataset does not define"
            )
        segs.append({"id": int(s["id"]), "category_id": to_contiguous[cat]})
    return segs


def _score_panoptic_file(
    pred_path: Path, data: dict[str, Any], dataset: Any, progress: bool
) -> dict[str, Any]:
    meta: DatasetMeta = dataset.meta
    png_dir, to_contiguous = _png_dir(pred_path), _contiguous(meta)
    anns = {a["image_id"]: a for a in data["annotations"]}
    names = {im["id"]: im.get("file_name", "") for im in data.get("images", [])}
    pred_images = {k: names.get(k) or a.get("file_name", "") for k, a in anns.items()}
    keys = _match_images(dataset, pred_images, pred_path)
    stat = PQStat(meta.num_classes)
    for i in _progress(range(len(dataset)), len(dataset), progress, "score"):
        ann = anns[keys[i]]
        png = png_dir / ann["file_name"]
        where = f"{pred_path.name}: image_id {keys[i]}"
        pred_map = read_panoptic_png(png)
        gt_map, gt_segments = dataset.load_labels(i)
        if pred_map.shape != gt_map.shape:
            raise DatasetError(
                f"{png}: size {pred_map.shape[1]}x{pred_map.shape[0]} differs from "
                f"the ground truth's {gt_map.shape[1]}x{gt_map.shape[0]}"
            )
        try:
            stat.add(gt_map, gt_segments, pred_map, _pred_segments(ann, to_contiguous, where))
        except ValueError as e:
            raise DatasetError(f"{where}: {e}") from None
    out = stat.summary(meta)
    out["per_class"] = {"panoptic": out.pop("per_class")}
    out["num_images"] = len(dataset)
    return out


def _score_instance_file(
    pred_path: Path, data: Any, dataset: Any, progress: bool
) -> dict[str, Any]:
    meta: DatasetMeta = dataset.meta
    results = data if isinstance(data, list) else data["annotations"]
    check_results(results, pred_path.name)  # before pycocotools sees a single field
    # File names: the file's own "images", else the images.json that ``predict`` writes beside it.
    listing = data if isinstance(data, dict) else {}
    if not listing and (pred_path.parent / "images.json").is_file():
        listing = read_json(pred_path.parent / "images.json")
    pred_names: dict[Any, str] = {}
    if isinstance(listing, dict):
        images = listing.get("images")
        pred_names = {
            im["id"]: str(im.get("file_name", ""))
            for im in (images if isinstance(images, list) else [])
            if isinstance(im, dict) and isinstance(im.get("id"), (int, str))
        }
    for r in results:
        pred_names.setdefault(r["image_id"], "")
    keys = _match_images(dataset, pred_names, pred_path)
    scores = _Scores(meta, ("instance",), native_instances_gt(dataset))
    to_gt = {}
    for i in _progress(range(len(dataset)), len(dataset), progress, "ground truth"):
        image_id, file_name = dataset.image_info(i)
        to_gt[keys[i]] = image_id
        if scores.native_gt is None:
            id_map, segments = dataset.load_labels(i)
            scores.add_ground_truth(image_id, file_name, id_map, segments)
        else:
            scores.image_ids.append(image_id)
    known = set(_contiguous(meta))
    for r in results:
        if int(r["category_id"]) not in known:
            raise DatasetError(
                f"{pred_path}: a result has category_id {r['category_id']}, which "
                "the dataset does not define"
            )
    # Results in the dataset's image ids; those of images outside the dataset are left out.
    scores.results = [
        dict(r, image_id=to_gt[r["image_id"]]) for r in results if r["image_id"] in to_gt
    ]
    out = scores.summary()
    out["num_images"] = len(dataset)
    return out
