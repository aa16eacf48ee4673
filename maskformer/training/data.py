"""The training loader: TrainDataset + the data package's InfiniteSampler, sharded and resumable."""

from __future__ import annotations

import functools

import torch

from maskformer.config import Config, SolverConfig
from maskformer.data import LabeledDataset
from maskformer.data.targets import InfiniteSampler, TrainDataset, collate
from maskformer.errors import UserError
from maskformer.training.distributed import DistInfo


def micro_batch_size(solver: SolverConfig, world_size: int) -> int:
    """Images per rank per forward: global ``batch_size`` / (world size × ``grad_accum``)."""
    if solver.grad_accum < 1:
        raise UserError(f"solver.grad_accum must be at least 1, got {solver.grad_accum}")
    parts = world_size * solver.grad_accum
    if solver.batch_size < parts or solver.batch_size % parts:
        raise UserError(
            f"the batch size {solver.batch_size} must be a multiple of processes ({world_size}) "
            f"× gradient accumulation ({solver.grad_accum})"
        )
    return solver.batch_size // parts


def build_train_loader(
    dataset: LabeledDataset,
    cfg: Config,
    micro_batch: int,
    info: DistInfo,
    start: int = 0,
    augment: bool = True,
) -> torch.utils.data.DataLoader:
    """An endless loader of ``(images (b, 3, Hp, Wp), targets)`` micro-batches for this rank.

    Args:
        dataset: The labelled training set.
        cfg: ``cfg.input`` drives augmentation, ``cfg.solver`` the seed and workers,
            ``cfg.model.size_divisibility`` the batch padding.
        micro_batch: Images per micro-batch on this rank.
        info: Rank and world size (each rank takes every world_size-th index of one stream).
        start: Indices of the global stream already consumed (all ranks together).
        augment: False feeds images as stored (the one-batch overfit test).
    """
    solver = cfg.solver
    if augment and cfg.input.copy_paste > 0:
        from maskformer.training.copy_paste import CopyPaste

        dataset = CopyPaste(
            dataset,
            prob=cfg.input.copy_paste,
            from_class=cfg.input.copy_paste_from,
            color=cfg.input.copy_paste_color,
            seed=solver.seed,
        )
    train_ds = TrainDataset(dataset, cfg.input, seed=solver.seed, augment=augment)
    sampler = InfiniteSampler(
        len(train_ds),
        seed=solver.seed,
        start=start,
        rank=info.rank,
        world_size=info.world_size,
    )
    return torch.utils.data.DataLoader(
        train_ds,
        batch_size=micro_batch,
        sampler=sampler,
        collate_fn=functools.partial(collate, size_divisibility=cfg.model.size_divisibility),
        num_workers=solver.num_workers,
        pin_memory=info.device.type == "cuda",
        persistent_workers=solver.num_workers > 0,
        # A private generator: creating the loader must not consume the global RNG, or a resumed
        # run would draw different dropout masks than the uninterrupted one.
        generator=torch.Generator().manual_seed(solver.seed),
    )
