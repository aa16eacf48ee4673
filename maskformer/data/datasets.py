"""``open_dataset(path)``: open a dataset folder or annotation file, detecting its format.

Problems are found up front: opening a dataset does cheap checks (JSON syntax and types, category
references, files exist and stay inside the dataset's folders); ``validate()`` reads every label
file. Both raise one ``DatasetError`` naming the file and the offending value.
"""

from __future__ import annotations

from pathlib import Path

from maskformer.config import DatasetMeta
from maskformer.data.base import IMAGE_EXTENSIONS, LabeledDataset, Sample
from maskformer.data.coco import read_json
from maskformer.data.instances_dataset import CocoInstancesDataset
from maskformer.data.panoptic_dataset import open_coco_panoptic_json
from maskformer.data.semantic_dataset import SemanticDataset
from maskformer.errors import DatasetError

__all__ = ["IMAGE_EXTENSIONS", "LabeledDataset", "Sample", "open_dataset"]


def open_dataset(
    path: str | Path,
    *,
    ade_shift: bool = False,
    ignore_label: int = 255,
    meta: DatasetMeta | None = None,
    within: str | Path | None = None,
) -> LabeledDataset:
    """Open a dataset folder or annotation file, detecting its format.

    Args:
        path: a folder with ``panoptic.json`` (+ ``panoptic/``, ``images/``: COCO panoptic, the
            layout ``synth`` and the app's export write), a folder with ``instances.json``, a
            folder with ``images/`` + ``annotations/`` (semantic PNGs, ADE20K layout; files in
            sub-folders such as ``training/`` and ``validation/`` are all taken, so open one split
            with ``SemanticDataset(root/"images/training", root/"annotations/training")``), or a
            COCO panoptic / instances JSON file.
        ade_shift: semantic only: labels are ``value - 1`` and 0 becomes ignore (ADE20K raw).
        ignore_label: semantic only: the label value that marks ignored pixels.
        meta: class names/colours to use instead of the ones found (same number of classes;
            for semantic folders it also fixes K).
        within: look for a COCO JSON's image and PNG folders only inside this folder (a server
            that imports from one folder must not probe others).

    Raises:
        DatasetError: the path is not a dataset, or a cheap check failed.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_file():
        if p.suffix.lower() != ".json":
            raise DatasetError(f"{p}: expected a dataset folder or a COCO .json file")
        return _open_json(p, meta, within)
    if (p / "panoptic.json").is_file():
        return open_coco_panoptic_json(p / "panoptic.json", meta=meta, within=within)
    if (p / "instances.json").is_file():
        return CocoInstancesDataset(p / "instances.json", meta=meta)
    if (p / "images").is_dir() and (p / "annotations").is_dir():
        return SemanticDataset(
            p / "images",
            p / "annotations",
            ade_shift=ade_shift,
            ignore_label=ignore_label,
            meta=meta,
            root=p,
        )
    raise DatasetError(
        f"{p}: not a dataset folder (expected panoptic.json, instances.json, "
        "or images/ + annotations/)"
    )


def _open_json(p: Path, meta: DatasetMeta | None, within: str | Path | None) -> LabeledDataset:
    data = read_json(p)
    anns = data.get("annotations") if isinstance(data, dict) else None
    is_panoptic = bool(anns) and isinstance(anns[0], dict) and "segments_info" in anns[0]
    if not anns and "panoptic" in p.stem.lower():
        is_panoptic = True
    if is_panoptic:
        return open_coco_panoptic_json(p, meta=meta, data=data, within=within)
    return CocoInstancesDataset(p, meta=meta, data=data)
