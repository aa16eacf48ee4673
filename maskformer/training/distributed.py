"""DDP helpers: start-up from torchrun's environment, rank queries, small collectives."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maskformer.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits. ``world_size == 1`` and ``rank == 0`` when not distributed."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str | None) -> torch.device:
    """``None`` picks CUDA when present, else CPU; asking for CUDA without one is a user error."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was requested but no CUDA device is available")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"--device must be cpu or cuda, got {device!r}")
    return torch.device(device)


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), or run single-process.

    CUDA runs use NCCL with one GPU per local rank; CPU runs use gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        # rank 0 evaluates alone while the others wait at a barrier: allow a long evaluation
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=60),
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        dist.barrier()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (keeps ranks agreeing on stopping)."""
    if not _active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar values over ranks (for logging only)."""
    if not _active() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    t /= dist.get_world_size()
    return dict(zip(keys, t.tolist()))


def all_gather_tensor(t: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's copy of a same-shaped tensor, returned on the CPU in rank order."""
    if not _active():
        return [t.cpu()]
    x = t.to(device)
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x)
    return [o.cpu() for o in out]


def broadcast_object(obj, src: int = 0):
    """Rank ``src``'s value of a small JSON-like object on every rank."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def param_checksum(model: torch.nn.Module) -> list[float]:
    """Three float64 sums over every parameter (plain, absolute, position-weighted).

    Equal on all ranks of a healthy DDP run; the weighted sum also catches swapped values.
    """
    total = torch.zeros(3, dtype=torch.float64)
    offset = 0
    for p in unwrap(model).parameters():
        x = p.detach().to("cpu", torch.float64).flatten()
        idx = torch.arange(offset, offset + x.numel(), dtype=torch.int64)
        w = ((idx * 2_654_435_761) % 1_000_003).to(torch.float64) / 1_000_003
        total += torch.stack([x.sum(), x.abs().sum(), (x * w).sum()])
        offset += x.numel()
    return total.tolist()


def check_ranks_in_sync(model: torch.nn.Module, device: torch.device) -> list[list[float]]:
    """Every rank's ``param_checksum``; raises RuntimeError when the ranks' parameters differ."""
    local = torch.tensor(param_checksum(model), dtype=torch.float64)
    sums = [t.tolist() for t in all_gather_tensor(local, device)]
    if any(s != sums[0] for s in sums):
        raise RuntimeError(f"DDP ranks ended with different parameters (checksums {sums})")
    return sums
