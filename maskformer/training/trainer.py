"""One optimiser update: forward, weighted losses, backward over accumulated micro-batches, clip, step."""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from maskformer.config import SolverConfig
from maskformer.contracts import Target
from maskformer.errors import UserError
from maskformer.losses import default_loss_weights, weighted_total
from maskformer.training.distributed import any_true
from maskformer.training.finetune import Teacher, distill_losses
from maskformer.training.optim import clip_gradients, lr_at, set_lr

Batch = tuple[Tensor, list[Target]]  # images (B, 3, H, W) normalised and padded; B targets


class NonFiniteLossError(UserError):
    """Training diverged: a loss term or the gradient norm became NaN or infinite."""


@dataclass
class StepResult:
    """Logged values of one update (losses averaged over the micro-batches of this rank)."""

    losses: dict[str, float]  # unweighted, as the criterion returns them
    weighted: dict[str, float]  # weight * loss, the terms of `loss`
    loss: float  # the total that was back-propagated (before dividing by grad_accum)
    lr: float
    grad_norm: float  # global L2 norm before clipping


def amp_dtype(enabled: bool, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``solver.amp``; None: full fp32.

    CUDA: bf16 where the GPU supports it, else fp16 (with a GradScaler). CPU: bf16 (no scaler
    needed) where the CPU computes it natively (AVX512-BF16 / AMX); elsewhere bf16 would be
    emulated and many times slower than fp32, so it warns and stays in fp32.
    """
    if not enabled or device.type not in ("cuda", "cpu"):
        return None
    if native_bf16(device):
        return torch.bfloat16
    if device.type == "cuda":
        return torch.float16
    warnings.warn(
        "solver.amp: this CPU has no native bf16 (AVX512-BF16 or AMX), where bf16 "
        "is slower than fp32; training in fp32",
        stacklevel=2,
    )
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 is what ``solver.amp`` uses on ``device``: a GPU that supports it, or a CPU with
    AVX512-BF16 / AMX (elsewhere oneDNN emulates it, many times slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


class Trainer:
    """Holds the model, criterion and optimiser of a run and performs updates.

    Args:
        model: The network (possibly wrapped in DistributedDataParallel).
        criterion: Returns unweighted losses (``SetCriterion``).
        optimizer: Groups carry ``lr_mult`` (see ``optim.build_param_groups``).
        solver: Schedule, clipping, accumulation, AMP and loss weights.
        num_layers: Predictions per forward, final + aux (``cfg.model.num_predictions``).
        device: Where batches go.
        teacher: The ``--init`` model for ``solver.distill_weight`` / ``distill_mask_weight``.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        solver: SolverConfig,
        num_layers: int,
        device: torch.device,
        teacher: Teacher | None = None,
    ):
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.solver, self.device = solver, device
        self.weights = default_loss_weights(solver, num_layers)
        self.teacher = teacher
        if teacher is not None:
            self.weights["loss_distill_ce"] = solver.distill_weight
            self.weights["loss_distill_mask"] = solver.distill_mask_weight
        self.amp_dtype = amp_dtype(solver.amp, device)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and device.type == "cuda"
        )

    def losses(self, batch: Batch) -> dict[str, Tensor]:
        """Unweighted losses of one micro-batch; the model runs under autocast, the losses in fp32."""
        images, targets = batch
        images = images.to(self.device, non_blocking=True)
        targets = [{k: v.to(self.device, non_blocking=True) for k, v in t.items()} for t in targets]
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            outputs = self.model(images)
            taught = self.teacher(images) if self.teacher is not None else None
        losses = self.criterion(float_outputs(outputs), targets)
        if taught is not None:
            old = self.teacher.old_classes
            losses |= distill_losses(float_outputs(outputs), float_outputs(taught), targets, old)
        return losses

    def step(self, micro_batches: list[Batch], iteration: int) -> StepResult:
        """One update from ``len(micro_batches)`` accumulated micro-batches.

        ``iteration`` counts the updates done before this one (0-based, as ``lr_at``); logs and
        messages call this update ``iteration + 1``, the number of updates done after it.

        Raises:
            NonFiniteLossError: a loss term (named) or the gradient norm is not finite; the
                parameters are left untouched by this update.
        """
        lr = lr_at(iteration, self.solver)
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        sums: dict[str, float] = {}
        for i, batch in enumerate(micro_batches):
            # DDP: all-reduce the gradients once, after the last micro-batch
            sync = i == n - 1 or not hasattr(self.model, "no_sync")
            with contextlib.nullcontext() if sync else self.model.no_sync():
                try:
                    losses = self.losses(batch)
                except FloatingPointError:  # the matcher refuses NaN/inf predictions
                    self._stop_if(True, "the model's outputs are NaN/inf", iteration, lr)
                    raise
                total = weighted_total(losses, self.weights)
                # one device sync for all logged values
                values = torch.stack([total.detach(), *(v.detach() for v in losses.values())])
                total_value, *term_values = values.tolist()
                terms = dict(zip(losses, term_values))
                bad = [k for k, v in terms.items() if not math.isfinite(v)]
                what = f"{bad[0]} is {terms[bad[0]]}" if bad else f"the total loss is {total_value}"
                self._stop_if(not math.isfinite(total_value), what, iteration, lr)
                self.scaler.scale(total / n).backward()
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value / n
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(clip_gradients(self._params(), self.solver.clip_value))
        if not self.scaler.is_enabled():  # fp16's GradScaler skips such steps by itself
            self._stop_if(
                not math.isfinite(grad_norm),
                f"the gradient norm is {grad_norm}",
                iteration,
                lr,
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        weighted = {k: v * self.weights[k] for k, v in sums.items() if k in self.weights}
        return StepResult(sums, weighted, sum(weighted.values()), lr, grad_norm)

    def _params(self) -> list[Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _stop_if(self, local_bad: bool, what: str, iteration: int, lr: float) -> None:
        """Stop every rank together when any rank diverged (``what`` names the bad value)."""
        if not any_true(local_bad, self.device):
            return
        if not local_bad:
            what = "the loss is NaN/inf on another process"
        raise NonFiniteLossError(
            f"training diverged: {what} at iteration {iteration + 1} (lr {lr:.3g}); lower the "
            "learning rate (--lr), keep gradient clipping on, or check the data"
        )


def float_outputs(outputs: dict) -> dict:
    """fp32 copies of autocast outputs (no-op in fp32) so the losses are computed in fp32."""
    out = {k: v.float() for k, v in outputs.items() if isinstance(v, Tensor)}
    out["aux_outputs"] = [
        {k: v.float() for k, v in a.items()} for a in outputs.get("aux_outputs", [])
    ]
    return out
