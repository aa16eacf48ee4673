"""The official optimiser: AdamW parameter groups, the lr schedules, full-model gradient clipping."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

import torch
from torch import nn

from maskformer.config import SolverConfig

# Norm layers whose parameters get `weight_decay_norm` (detectron2's list, plus anything named *Norm*
# such as FrozenBatchNorm or timm's LayerNorm2d, which subclass these or mimic them).
_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
# Swin position tables: never decayed.
_NO_DECAY_NAMES = ("relative_position_bias_table", "absolute_pos_embed")


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or "Norm" in type(module).__name__


def param_hyperparams(
    module_name: str, module: nn.Module, param_name: str, solver: SolverConfig
) -> tuple[float, float]:
    """The (lr multiplier, weight decay) the official builder gives one parameter.

    Args:
        module_name: Dotted name of the module that owns the parameter directly.
        module: That module.
        param_name: The parameter's name inside the module (e.g. ``weight``).
        solver: Solver settings (weight decays, backbone multiplier).
    """
    lr_mult = solver.backbone_multiplier if "backbone" in module_name else 1.0
    weight_decay = solver.weight_decay
    if any(n in param_name for n in _NO_DECAY_NAMES):
        weight_decay = 0.0
    if _is_norm(module):
        weight_decay = solver.weight_decay_norm
    if isinstance(module, nn.Embedding):
        weight_decay = solver.weight_decay_embed
    return lr_mult, weight_decay


def build_param_groups(model: nn.Module, solver: SolverConfig) -> list[dict]:
    """Split the trainable parameters into AdamW groups by (lr multiplier, weight decay).

    The official builder makes one group per parameter; grouping parameters with equal hyperparameters
    gives the same updates with far fewer groups. Each group carries ``lr_mult`` (the schedule sets
    ``lr = lr_at(it) * lr_mult``), ``weight_decay`` and ``params`` as ``(name, parameter)`` pairs,
    which torch's optimiser keeps as ``param_names`` (checked on resume).
    """
    seen: set[int] = set()
    groups: dict[tuple[float, float], dict] = {}
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            lr_mult, wd = param_hyperparams(module_name, module, param_name, solver)
            group = groups.setdefault(
                (lr_mult, wd),
                {
                    "params": [],
                    "lr_mult": lr_mult,
                    "weight_decay": wd,
                    "lr": solver.base_lr * lr_mult,
                },
            )
            name = f"{module_name}.{param_name}" if module_name else param_name
            group["params"].append((name, param))
    return list(groups.values())


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.AdamW:
    """AdamW (betas 0.9/0.999, eps 1e-8) over the official parameter groups.

    On CPU and CUDA torch's fused kernel does the update (on the CPU 3.1 ms instead of 12.4 ms
    with ``foreach``, whose CPU path loops over the tensors, for the 5.5 M-parameter demo model);
    elsewhere ``foreach``.
    """
    groups = build_param_groups(model, solver)
    devices = {p.device.type for p in model.parameters()}
    if devices <= {"cpu", "cuda"}:
        return torch.optim.AdamW(groups, lr=solver.base_lr, fused=True)
    return torch.optim.AdamW(groups, lr=solver.base_lr, foreach=True)


def warmup_factor_at(it: int, warmup_iters: int, warmup_factor: float) -> float:
    """Linear warmup: ``f = w * (1 - it / W) + it / W`` for ``it < W``, else 1."""
    if it >= warmup_iters:
        return 1.0
    alpha = it / warmup_iters
    return warmup_factor * (1.0 - alpha) + alpha


def lr_at(it: int, solver: SolverConfig) -> float:
    """The base learning rate at iteration ``it`` (0-based; the lr used by the it-th update).

    ``poly``: ``base * warmup(it) * (1 - it / max_iter) ** power`` (detectron2 WarmupPolyLR,
    constant ending 0). ``step``: ``base * warmup(it) * gamma ** #(steps <= it)``
    (WarmupMultiStepLR).
    """
    warm = warmup_factor_at(it, solver.warmup_iters, solver.warmup_factor)
    if solver.scheduler == "poly":
        decay = max(0.0, 1.0 - it / solver.max_iter) ** solver.poly_power
    elif solver.scheduler == "step":
        decay = solver.gamma ** bisect.bisect_right(sorted(solver.steps), it)
    else:
        raise ValueError(f"solver.scheduler must be 'poly' or 'step', got {solver.scheduler!r}")
    return solver.base_lr * warm * decay


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every group ``lr * group['lr_mult']``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)


def clip_gradients(params: Iterable[torch.Tensor], clip_value: float) -> torch.Tensor:
    """Full-model L2 clipping (``clip_value <= 0`` disables it). Returns the global norm before it."""
    params = [p for p in params if p.grad is not None]
    if clip_value > 0:
        return torch.nn.utils.clip_grad_norm_(params, clip_value, norm_type=2.0)
    if not params:
        return torch.zeros(())
    norms = torch.stack([p.grad.detach().norm(2) for p in params])
    return norms.norm(2)


def is_finite(x: float | torch.Tensor) -> bool:
    return math.isfinite(float(x))
