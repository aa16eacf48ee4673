"""Training targets and batching: Sample -> (normalised image, Target); padded batches.

Interface for the training loop (everything it needs from ``maskformer.data``)::

    ds = TrainDataset(open_dataset(path), cfg.input, seed=cfg.solver.seed)
    image, target = ds[index]
    #   image:  (3, H, W) float32, augmented by cfg.input.mapper and NORMALISED with
    #           cfg.input.pixel_mean / pixel_std (the semantic/panoptic mappers pad to the crop with
    #           raw value 128 before normalising, as official).
    #   target: Target {"labels": (N,) int64 contiguous ids, "masks": (N, H, W) bool}
    #   index may exceed len(ds): the sample is index % len(ds) and the augmentation is seeded by
    #   (seed, index), so InfiniteSampler's ever-growing indices give fresh augmentations per epoch.
    loader = DataLoader(ds, batch_size=B, sampler=InfiniteSampler(len(ds), seed=cfg.solver.seed),
                        collate_fn=functools.partial(collate, size_divisibility=32),
                        num_workers=cfg.solver.num_workers)
    images, targets = next(iter(loader))
    #   images:  (B, 3, Hp, Wp) float32, padded bottom/right with 0 AFTER normalisation to the batch
    #            max size rounded up to size_divisibility (0 = no rounding), as detectron2's
    #            ImageList does.
    #   targets: list of B Targets, masks zero-padded to (N, Hp, Wp).

Masks: one per non-crowd segment (semantic data: one per class present). Crowd and void pixels
are 0 in every mask, as the official mappers do. Unlike the official mappers, a segment left with
no pixels after cropping gets no mask (it would teach a query to predict an empty mask).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from maskformer.config import InputConfig
from maskformer.contracts import Target
from maskformer.data.base import LabeledDataset
from maskformer.data.transforms import train_mapper


def sample_to_target(
    id_map: np.ndarray, segments: Sequence[dict[str, Any]], keep_empty: bool = False
) -> Target:
    """Binary masks and labels for the non-crowd segments.

    Args:
        id_map: (H, W) int segment ids, 0 = void.
        segments: dicts with ``id``, ``category_id`` and optionally ``iscrowd``.
        keep_empty: keep segments with no pixels in ``id_map`` (the official behaviour).

    Returns:
        Target with ``labels`` (N,) int64 and ``masks`` (N, H, W) bool.
    """
    ids_t = torch.from_numpy(np.ascontiguousarray(id_map, dtype=np.int64))  # (H, W)
    keep = [s for s in segments if not s.get("iscrowd", 0)]
    if not keep:
        return Target(
            labels=torch.zeros(0, dtype=torch.int64),
            masks=torch.zeros((0, *ids_t.shape), dtype=torch.bool),
        )
    seg_ids = torch.tensor([int(s["id"]) for s in keep], dtype=torch.int64)  # (N,)
    masks = ids_t[None] == seg_ids[:, None, None]  # (N, H, W)
    labels = torch.tensor([int(s["category_id"]) for s in keep], dtype=torch.int64)
    if not keep_empty:
        nonempty = masks.flatten(1).any(1)
        masks, labels = masks[nonempty], labels[nonempty]
    return Target(labels=labels, masks=masks)


def normalize_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ``(x - mean) / std`` on the 0-255 scale."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()  # (3, H, W)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


class TrainDataset(torch.utils.data.Dataset):
    """A LabeledDataset with the training augmentation of ``input_cfg.mapper`` and targets.

    Args:
        dataset: any LabeledDataset (``open_dataset(path)``).
        input_cfg: ``cfg.input`` (mapper, sizes, crop, colour jitter, flip, pad value, mean/std).
        seed: the augmentation seed; item ``index`` uses ``np.random.default_rng([seed, index])``.
        augment: False returns the image as stored (no resize/crop/jitter/flip/pad).
    """

    def __init__(
        self,
        dataset: LabeledDataset,
        input_cfg: InputConfig,
        *,
        seed: int = 0,
        augment: bool = True,
    ):
        self.dataset, self.cfg, self.seed, self.augment = dataset, input_cfg, int(seed), augment

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        sample = self.dataset.load(int(index) % len(self.dataset))
        image, id_map = sample.image, sample.id_map
        if self.augment:
            rng = np.random.default_rng([self.seed, int(index)])
            image, id_map = train_mapper(image, id_map, self.cfg, rng)
        target = sample_to_target(id_map, sample.segments)
        return normalize_image(image, self.cfg.pixel_mean, self.cfg.pixel_std), target


def padded_size(sizes: Sequence[tuple[int, int]], size_divisibility: int) -> tuple[int, int]:
    """Batch (Hp, Wp): the max H, W rounded up to a multiple of ``size_divisibility`` (if > 0)."""
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    if size_divisibility > 0:
        d = size_divisibility
        h, w = (h + d - 1) // d * d, (w + d - 1) // d * d
    return h, w


def collate(
    batch: Sequence[tuple[torch.Tensor, Target]], size_divisibility: int = 0
) -> tuple[torch.Tensor, list[Target]]:
    """Pad normalised images with 0 and masks with False to one (B, 3, Hp, Wp) batch.

    Args:
        batch: (image (3, H, W), Target) pairs from TrainDataset.
        size_divisibility: round the padded size up to this multiple (0: the batch max).

    Returns:
        images (B, 3, Hp, Wp) float32 and a list of B Targets with masks (N, Hp, Wp).
    """
    hp, wp = padded_size([img.shape[-2:] for img, _ in batch], size_divisibility)
    images = batch[0][0].new_zeros((len(batch), 3, hp, wp))  # (B, 3, Hp, Wp)
    targets = []
    for b, (img, tgt) in enumerate(batch):
        h, w = img.shape[-2:]
        images[b, :, :h, :w] = img
        masks = tgt["masks"].new_zeros((tgt["masks"].shape[0], hp, wp))  # (N, Hp, Wp)
        masks[:, :h, :w] = tgt["masks"]
        targets.append(Target(labels=tgt["labels"], masks=masks))
    return images, targets


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless indices ``epoch * size + perm_epoch[j]`` (reshuffled each epoch by ``seed``).

    Indices grow past ``size`` on purpose (TrainDataset takes them modulo its length and seeds the
    augmentation with them). ``start`` skips that many indices (resume at iteration
    ``it`` with ``start = it * batch_size``); ``rank``/``world_size`` give each process every
    ``world_size``-th index.
    """

    def __init__(
        self,
        size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if size <= 0:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.start, self.rank, self.world_size = start, rank, world_size

    def _all(self) -> Iterator[int]:
        epoch, offset = divmod(self.start, self.size)
        while True:
            order = (
                np.random.default_rng([self.seed, epoch]).permutation(self.size)
                if self.shuffle
                else np.arange(self.size)
            )
            for j in order[offset:]:
                yield epoch * self.size + int(j)
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:
        for k, index in enumerate(self._all()):
            if k % self.world_size == self.rank:
                yield index
