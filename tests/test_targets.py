"""Targets (one mask per non-crowd segment), TrainDataset, collate padding, InfiniteSampler."""

import functools
import itertools

import numpy as np
import torch

from maskformer.config import PIXEL_MEAN, PIXEL_STD, InputConfig
from maskformer.data import InfiniteSampler, TrainDataset, collate, open_dataset, sample_to_target
from maskformer.data.synthetic import write_synthetic_dataset


def test_sample_to_target_excludes_crowd_and_void():
    id_map = np.array([[0, 1, 1], [2, 2, 5], [3, 3, 5]], np.int32)
    segs = [
        {"id": 1, "category_id": 4},
        {"id": 2, "category_id": 0, "iscrowd": 1},
        {"id": 3, "category_id": 4},
        {"id": 5, "category_id": 7, "iscrowd": 0},
        {"id": 9, "category_id": 2},
    ]  # 9: not in the (cropped) map
    t = sample_to_target(id_map, segs)
    assert t["labels"].dtype == torch.int64 and t["labels"].tolist() == [4, 4, 7]
    assert t["masks"].dtype == torch.bool and t["masks"].shape == (3, 3, 3)
    assert t["masks"].sum().item() == 6  # void (1 px) and crowd (2 px) are in no mask
    assert t["masks"][0].tolist() == [[False, True, True], [False] * 3, [False] * 3]
    assert sample_to_target(id_map, segs, keep_empty=True)["labels"].tolist() == [4, 4, 7, 2]
    empty = sample_to_target(id_map, [])
    assert empty["labels"].shape == (0,) and empty["masks"].shape == (0, 3, 3)


def test_collate_pads_images_with_zero_and_masks_with_false():
    a = (torch.ones(3, 5, 7), {"labels": torch.tensor([1]), "masks": torch.ones(1, 5, 7).bool()})
    b = (
        torch.full((3, 9, 4), 2.0),
        {
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 9, 4, dtype=torch.bool),
        },
    )
    images, targets = collate([a, b], size_divisibility=8)
    assert images.shape == (2, 3, 16, 8)
    assert images[0, :, :5, :7].eq(1).all() and images[0].sum() == 3 * 35
    assert images[1, :, :9, :4].eq(2).all() and images[1].sum() == 2 * 3 * 36
    assert targets[0]["masks"].shape == (1, 16, 8) and targets[0]["masks"].sum() == 35
    assert targets[1]["masks"].shape == (0, 16, 8)
    images, _ = collate([a, b], size_divisibility=0)
    assert images.shape == (2, 3, 9, 7)


def test_train_dataset_with_dataloader(tmp_path):
    root = write_synthetic_dataset(tmp_path / "ds", 6, seed=1, size=64)
    cfg = InputConfig(
        min_size_train=(48, 64, 80), max_size_train=200, crop_size=(64, 64), mapper="panoptic"
    )
    ds = TrainDataset(open_dataset(root), cfg, seed=3)
    image, target = ds[2]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert target["masks"].shape[1:] == (64, 64) and len(target["labels"]) == len(target["masks"])
    again, _ = ds[2]
    assert torch.equal(image, again)  # seeded by (seed, index)
    other, _ = ds[2 + len(ds)]  # same sample, next epoch: new augmentation
    assert not torch.equal(image, other)
    raw = TrainDataset(open_dataset(root), cfg, augment=False)
    img, tgt = raw[0]
    sample = open_dataset(root).load(0)
    expected = (
        torch.from_numpy(sample.image).permute(2, 0, 1).float()
        - torch.tensor(PIXEL_MEAN)[:, None, None]
    ) / torch.tensor(PIXEL_STD)[:, None, None]
    assert torch.allclose(img, expected)
    assert len(tgt["labels"]) == len(sample.segments)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=3,
        sampler=InfiniteSampler(len(ds), seed=0),
        collate_fn=functools.partial(collate, size_divisibility=32),
    )
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and len(targets) == 3


def test_infinite_sampler_epochs_resume_and_ranks():
    s = InfiniteSampler(5, seed=2)
    first = list(itertools.islice(iter(s), 15))
    for e in range(3):
        assert sorted(first[5 * e : 5 * e + 5]) == list(range(5 * e, 5 * e + 5))
    assert first[:5] != [i - 5 for i in first[5:10]]  # reshuffled per epoch
    assert list(itertools.islice(iter(InfiniteSampler(5, seed=2, start=7)), 8)) == first[7:15]
    r0 = list(itertools.islice(iter(InfiniteSampler(5, seed=2, rank=0, world_size=2)), 5))
    r1 = list(itertools.islice(iter(InfiniteSampler(5, seed=2, rank=1, world_size=2)), 5))
    assert r0 == first[0:10:2] and r1 == first[1:10:2]
