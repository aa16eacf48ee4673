"""Augmentations: detectron2 sizes, image/id-map alignment, colour jitter, seeds."""

import dataclasses

import numpy as np
import pytest
from PIL import Image

from maskformer.config import InputConfig
from maskformer.data import transforms as T


@pytest.mark.parametrize(
    "hw, short, max_size, expected",
    [
        ((480, 640), 800, 1333, (800, 1067)),
        ((640, 480), 800, 1333, (1067, 800)),
        ((100, 1000), 512, 2048, (205, 2048)),  # long side capped: scale 2048 / 5120
        ((512, 512), 256, 2048, (256, 256)),
        ((375, 500), 600, 1000, (600, 800)),
    ],
)
def test_resized_shape(hw, short, max_size, expected):
    assert T.resized_shape(*hw, short, max_size) == expected


def test_resize_nearest_matches_pil_nearest():
    labels = np.random.default_rng(0).integers(0, 5000, (37, 53)).astype(np.int32)
    for size in [(20, 30), (74, 106), (50, 61), (13, 7)]:
        ref = np.asarray(Image.fromarray(labels).resize(size[::-1], Image.Resampling.NEAREST))
        assert np.array_equal(T.resize_nearest(labels, size), ref)


def _blocks(h=60, w=80, block=10, seed=0):
    """An id map of constant blocks and an image whose colour is a function of the id."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 30, (h // block + 1, w // block + 1)).astype(np.int32)
    id_map = np.kron(ids, np.ones((block, block), np.int32))[:h, :w]
    palette = rng.integers(0, 256, (30, 3)).astype(np.uint8)
    return palette[id_map], id_map, palette


def _assert_aligned(image, id_map, palette):
    """Away from id boundaries (3x3 uniform neighbourhood) the image colour is the id's colour."""
    h, w = id_map.shape
    p = np.pad(id_map, 1, mode="edge")
    uniform = np.ones_like(id_map, bool)
    for dy in range(3):
        for dx in range(3):
            uniform &= p[dy : dy + h, dx : dx + w] == id_map
    expected = palette[id_map].astype(int)
    assert uniform.mean() > 0.5
    diff = np.abs(image.astype(int) - expected)[uniform]
    assert diff.max() <= 1


def test_flip_crop_resize_keep_alignment():
    image, id_map, palette = _blocks()
    rng = np.random.default_rng(3)
    flipped = 0
    for _ in range(6):
        img, ids = T.hflip(image, id_map, rng)
        flipped += not np.array_equal(ids, id_map)
        _assert_aligned(img, ids, palette)
    assert 0 < flipped < 6
    img, ids = T.random_crop(image, id_map, (32, 200), rng)
    assert ids.shape == (32, 80) and img.shape == (32, 80, 3)  # min(crop, image)
    _assert_aligned(img, ids, palette)
    img, ids = T.resize_shortest_edge(image, id_map, [90], 1000, rng)
    assert ids.shape == (90, 120) and ids.dtype == np.int32
    assert set(np.unique(ids)) <= set(np.unique(id_map))  # nearest: no new ids
    _assert_aligned(img, ids, palette)


def test_semantic_mapper_alignment_padding_and_sizes():
    image, id_map, palette = _blocks(60, 80)
    id_map = id_map + 1  # keep 0 for the padding (void)
    palette = np.concatenate([np.full((1, 3), 128, np.uint8), palette])
    image = palette[id_map]
    cfg = InputConfig(
        min_size_train=(40, 50),
        max_size_train=1000,
        crop_size=(64, 64),
        color_aug_ssd=False,
        mapper="semantic",
    )
    for seed in range(5):
        img, ids = T.train_mapper(image, id_map, cfg, np.random.default_rng(seed))
        assert img.shape == (64, 64, 3) and ids.shape == (64, 64)
        _assert_aligned(img, ids, palette)  # padding: image 128 where ids are 0
        assert (ids[40:] == 0).all() or (ids[50:] == 0).all()  # short side 40 or 50 < 64


def test_pad_to_values():
    img, ids = T.pad_to(np.full((3, 2, 3), 7, np.uint8), np.ones((3, 2), np.int32), (5, 4))
    assert img.shape == (5, 4, 3) and (img[3:] == 128).all() and (img[:, 2:] == 128).all()
    assert ids.sum() == 6 and (ids[3:] == 0).all()
    img2, ids2 = T.pad_to(img, ids, (2, 2))
    assert img2 is img and ids2 is ids


def test_random_crop_range():
    image, id_map, _ = _blocks(700, 500, 50)
    rng = np.random.default_rng(0)
    for _ in range(20):
        _, ids = T.random_crop_range(image, id_map, 384, 600, rng)
        assert 384 <= ids.shape[0] <= 600 and 384 <= ids.shape[1] <= 500


class _Script:
    """A stand-in Generator returning scripted values, to test each colour step exactly."""

    def __init__(self, ints, floats):
        self.ints, self.floats = list(ints), list(floats)

    def integers(self, *a, **k):
        return self.ints.pop(0)

    def uniform(self, *a, **k):
        return self.floats.pop(0)


def test_color_aug_brightness_then_contrast_exact():
    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    # brightness on (+20), order A, contrast on (x1.3), saturation off, hue off
    out = T.color_aug_ssd(img, _Script([1, 1, 1, 0, 0], [20.0, 1.3]))
    step1 = np.clip(img.astype(np.float32) + 20, 0, 255).astype(np.uint8)
    expected = np.clip(step1.astype(np.float32) * 1.3, 0, 255).astype(np.uint8)
    assert np.array_equal(out, expected)
    # every step off: the image is unchanged
    assert np.array_equal(T.color_aug_ssd(img, _Script([0, 0, 0, 0, 0], [])), img)


def test_color_aug_only_changes_the_image_and_is_seeded():
    image, id_map, palette = _blocks()
    cfg = InputConfig(min_size_train=(60,), max_size_train=1000, crop_size=(48, 48), flip=True)
    changed = 0
    for seed in range(6):
        on = T.train_mapper(image, id_map, cfg, np.random.default_rng(seed))
        off = T.train_mapper(
            image,
            id_map,
            dataclasses.replace(cfg, color_aug_ssd=False),
            np.random.default_rng(seed),
        )
        assert np.array_equal(on[1], off[1])  # same geometry, same id map
        _assert_aligned(off[0], off[1], palette)
        changed += not np.array_equal(on[0], off[0])
    assert changed >= 3
    jitters = [T.color_aug_ssd(image, np.random.default_rng(s)) for s in range(8)]
    assert np.array_equal(T.color_aug_ssd(image, np.random.default_rng(5)), jitters[5])
    assert all(j.shape == image.shape and j.dtype == np.uint8 for j in jitters)


def test_mappers_are_deterministic_by_seed():
    image, id_map, _ = _blocks(90, 120)
    for mapper in ("semantic", "panoptic", "detr_panoptic"):
        cfg = InputConfig(
            min_size_train=(64, 80, 96), max_size_train=200, crop_size=(64, 64), mapper=mapper
        )
        a = T.train_mapper(image, id_map, cfg, np.random.default_rng(1))
        b = T.train_mapper(image, id_map, cfg, np.random.default_rng(1))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        outs = {
            T.train_mapper(image, id_map, cfg, np.random.default_rng(s))[0].tobytes()
            for s in range(6)
        }
        assert len(outs) > 1


def test_detr_mapper_sizes():
    image, id_map, palette = _blocks(300, 400, 20)
    cfg = InputConfig(
        min_size_train=(128, 160),
        max_size_train=200,
        crop_size=None,
        color_aug_ssd=False,
        mapper="detr_panoptic",
    )
    for seed in range(8):
        img, ids = T.train_mapper(image, id_map, cfg, np.random.default_rng(seed))
        assert min(ids.shape) in (128, 160) or max(ids.shape) == 200
        _assert_aligned(img, ids, palette)
