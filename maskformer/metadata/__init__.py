"""Shipped class metadata (names, thing/stuff flags, colours, dataset ids) of standard datasets."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from maskformer.config import DatasetMeta, generic_meta

_DIR = Path(__file__).parent

# Class count -> dataset, used when a checkpoint does not say which dataset it was trained on.
_BY_NUM_CLASSES = {
    150: "ade20k_150",
    133: "coco_panoptic_133",
    171: "coco_stuff_171",
    19: "cityscapes_19",
}


def available_metadata() -> tuple[str, ...]:
    """Names accepted by ``get_metadata`` (and by ``convert --dataset``)."""
    return tuple(sorted(p.stem for p in _DIR.glob("*.json")))


@cache
def get_metadata(name: str) -> DatasetMeta:
    """The shipped metadata for one dataset, e.g. ``get_metadata("ade20k_150")``.

    Raises:
        KeyError: ``name`` is not one of ``available_metadata()``.
    """
    path = _DIR / f"{name}.json"
    if name not in available_metadata():
        raise KeyError(
            f"unknown dataset metadata {name!r}; choose one of: {', '.join(available_metadata())}"
        )
    d = json.loads(path.read_text())
    cats = d["categories"]
    return DatasetMeta(
        class_names=tuple(c["name"] for c in cats),
        isthing=tuple(bool(c["isthing"]) for c in cats),
        colors=tuple(tuple(int(v) for v in c["color"]) for c in cats),
        # ADE20K's ids are already 0..K-1, so it stores none (DatasetMeta: empty means 0..K-1).
        dataset_ids=tuple(int(c["id"]) for c in cats) if d["ids_are_dataset_ids"] else (),
        ignore_label=int(d["ignore_label"]),
        name=d["name"],
    )


def infer_metadata(num_classes: int) -> DatasetMeta:
    """The shipped metadata whose class count is ``num_classes``, else K generic names."""
    name = _BY_NUM_CLASSES.get(num_classes)
    return get_metadata(name) if name else generic_meta(num_classes)
