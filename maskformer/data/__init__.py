"""Datasets by path (COCO panoptic/instances, semantic folders), augmentation, targets, synthetic.

``open_dataset(path) -> LabeledDataset``; ``ds.load(i) -> Sample``. The torch-side pieces
(``TrainDataset``, ``collate``, ``InfiniteSampler``, ``sample_to_target``) live in
``maskformer.data.targets`` and are imported lazily so that reading data does not load torch.
"""

from maskformer.data.base import LabeledDataset, Sample
from maskformer.data.datasets import open_dataset
from maskformer.data.instances_dataset import CocoInstancesDataset
from maskformer.data.panoptic_dataset import (
    CocoPanopticDataset,
    open_coco_panoptic,
    open_coco_panoptic_json,
)
from maskformer.data.semantic_dataset import SemanticDataset

__all__ = [
    "CocoInstancesDataset",
    "CocoPanopticDataset",
    "InfiniteSampler",
    "LabeledDataset",
    "Sample",
    "SemanticDataset",
    "TrainDataset",
    "collate",
    "open_coco_panoptic",
    "open_coco_panoptic_json",
    "open_dataset",
    "sample_to_target",
]

_LAZY = {"TrainDataset", "collate", "InfiniteSampler", "sample_to_target"}


def __getattr__(name):
    if name in _LAZY:
        from maskformer.data import targets

        return getattr(targets, name)
    raise AttributeError(f"module 'maskformer.data' has no attribute {name!r}")
