"""The training run: set-up, resume, the iteration loop, logging, checkpoints and periodic evaluation."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from maskformer.checkpoint import (
    LoadReport,
    load_checkpoint,
    load_state_dict_partial,
    save_checkpoint,
)
from maskformer.config import Config, DatasetMeta
from maskformer.data import open_dataset
from maskformer.errors import UserError
from maskformer.losses import build_criterion
from maskformer.model import build_model
from maskformer.training import distributed as dist_utils
from maskformer.training.data import build_train_loader, micro_batch_size
from maskformer.training.finetune import Teacher, freeze, frozen_prefixes, keep_frozen_in_eval
from maskformer.training.optim import build_optimizer
from maskformer.training.run_dir import RunDir
from maskformer.training.state import (
    TrainState,
    capture_rng,
    load_train_state,
    restore_rng,
    save_train_state,
)
from maskformer.training.trainer import StepResult, Trainer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """Everything about a run that is not the model/solver config.

    Attributes:
        train: Training dataset path (anything ``open_dataset`` reads).
        out: Run directory.
        val: Optional validation dataset, evaluated every ``solver.eval_period`` and at the end.
        init: Native checkpoint to start from (partial load: a new class set keeps old rows).
        resume: Continue from ``out/last_checkpoint`` (a fresh start when there is none).
        device: "cpu", "cuda", "cuda:N" or None (CUDA when available).
        progress: Show a tqdm bar on stderr (main process only).
        augment: False feeds the images as stored (no resize, crop, jitter or flip).
    """

    train: str
    out: str
    val: str | None = None
    init: str | None = None
    resume: bool = False
    device: str | None = None
    progress: bool = True
    augment: bool = True


def train(cfg: Config, opts: TrainOptions) -> Path:
    """Train ``cfg`` on ``opts.train``; returns the final checkpoint path (``model_final.safetensors``).

    ``cfg.model.num_classes`` is taken from the training dataset. Only rank 0 writes files. A
    ``UserError`` (including a diverged loss) marks ``status.json`` failed and propagates.
    """
    run = RunDir(opts.out)
    if not opts.resume and run.last_tag() is not None:  # checked before anything is written
        raise UserError(
            f"{run.path} already holds a training run; continue it with --resume "
            "or choose another --out"
        )
    info = dist_utils.init_distributed(opts.device)
    runner = None
    try:
        runner = _Run(cfg, opts, info, run)
        return runner.execute()
    except BaseException as e:
        if info.is_main:
            message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            if isinstance(e, KeyboardInterrupt):
                it = runner.iteration if runner is not None else 0
                message = f"interrupted at iteration {it}; continue with --resume"
            run.create()
            run.write_status("failed", message.splitlines()[0] if message else type(e).__name__)
        raise
    finally:
        dist_utils.shutdown_distributed()


class _Run:
    """One invocation of ``train``: owns the model, the trainer, the loader and the run files."""

    def __init__(self, cfg: Config, opts: TrainOptions, info: dist_utils.DistInfo, run: RunDir):
        self.opts, self.info, self.run = opts, info, run
        self.dataset = open_dataset(opts.train)
        self.meta: DatasetMeta = self.dataset.meta
        if len(self.dataset) == 0:
            raise UserError(f"the training dataset {opts.train} has no images")
        self.cfg = replace(cfg, model=replace(cfg.model, num_classes=self.meta.num_classes))
        self.micro = micro_batch_size(self.cfg.solver, info.world_size)
        self.val = open_dataset(opts.val) if opts.val else None
        if self.val is not None and self.val.meta.num_classes != self.meta.num_classes:
            raise UserError(
                f"the validation data {opts.val} has {self.val.meta.num_classes} classes but the "
                f"training data has {self.meta.num_classes}; use a split of the same dataset"
            )
        # Read every label file before the first step: a bad label must be one clear error naming the
        # file and the value, not a device-side assert hours into the run.
        for ds in (self.dataset, self.val):
            if ds is not None:
                ds.validate()
        self.elapsed0 = 0.0
        self.resumed = False
        self.frozen: tuple[str, ...] = ()
        self.iteration = 0  # updates done so far (for messages)

    # -- set-up --------------------------------------------------------------------------------
    def build(self) -> tuple[Trainer, TrainState, dict | None]:
        solver = self.cfg.solver
        torch.manual_seed(solver.seed)  # the same initial weights on every rank
        model = build_model(self.cfg.model).to(self.info.device)
        if solver.channels_last:  # the layout persists through load_state_dict below
            model = model.to(memory_format=torch.channels_last)
        state, rng = TrainState(0, 0, self.info.world_size), None
        tag = self.run.last_tag() if self.opts.resume else None
        if tag is not None:
            weights = load_checkpoint(self.run.model_path(tag)).state_dict
            model.load_state_dict(weights, strict=False)
            self._check_all_loaded(model, weights, tag)
        elif self.opts.init:
            report = load_state_dict_partial(model, load_checkpoint(self.opts.init).state_dict)
            self._report_init(report)
        self.frozen = frozen_prefixes(solver.freeze)
        if self.frozen:
            try:
                n = freeze(model, self.frozen)
            except ValueError as e:
                raise UserError(str(e)) from None
            self._log(f"solver.freeze: {n} parameter tensors under {', '.join(self.frozen)} fixed")
        model.train()
        keep_frozen_in_eval(model, self.frozen)
        optimizer = build_optimizer(model, solver)
        if self.info.distributed:
            model = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.info.device] if self.info.device.type == "cuda" else None,
            )
        criterion = build_criterion(self.cfg).to(self.info.device)
        trainer = Trainer(
            model,
            criterion,
            optimizer,
            solver,
            self.cfg.model.num_predictions,
            self.info.device,
            teacher=self._teacher(),
        )
        if tag is not None:
            self.resumed = True
            state, rng = load_train_state(
                self.run.state_stem(tag), optimizer, self.info.rank, trainer.scaler
            )
            if state.world_size != self.info.world_size:
                rng = None  # per-rank RNG states do not carry over to another world size
            self.elapsed0 = float(state.extra.get("elapsed_s", 0.0))
            self._log(
                f"resuming from {self.run.model_path(tag).name} at iteration {state.iteration}"
            )
        torch.manual_seed(solver.seed + 1 + self.info.rank + 1000 * state.iteration)
        return trainer, state, rng

    def _teacher(self) -> Teacher | None:
        """The ``--init`` model when the solver distils from it (rebuilt on resume as well)."""
        solver = self.cfg.solver
        if solver.distill_weight <= 0 and solver.distill_mask_weight <= 0:
            return None
        if not self.opts.init:
            raise UserError("solver.distill_weight needs --init: the model to distil from")
        from maskformer.checkpoint import load_model

        loaded = load_model(self.opts.init, device=self.info.device)
        model, old = loaded.model, loaded.cfg.model.num_classes
        if old > self.meta.num_classes:
            raise UserError(
                f"cannot distil from {self.opts.init}: it has {old} classes, more than the "
                f"{self.meta.num_classes} of the training data"
            )
        if solver.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return Teacher(model, old)

    def _report_init(self, report: LoadReport) -> None:
        """Say what --init did; a tensor re-initialised is always said, progress bar or not."""
        if report.loaded == 0:
            raise UserError(
                f"--init {self.opts.init} shares no tensor with this model ({report.summary()}); "
                "is it a checkpoint of another architecture?"
            )
        message = f"initialised from {self.opts.init}: {report.summary()}"
        if report.complete:
            self._log(message)
        elif self.info.is_main:
            logger.warning(message)
            print(f"warning: {message}", file=sys.stderr)

    @staticmethod
    def _check_all_loaded(model: torch.nn.Module, weights: dict, tag: str) -> None:
        own = model.state_dict()
        bad = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
        if bad:
            raise UserError(
                f"model_{tag}.safetensors does not match this config ({bad[0]}, ...); "
                "resume with the config the run was started with"
            )

    # -- main loop -----------------------------------------------------------------------------
    def execute(self) -> Path:
        trainer, state, rng = self.build()
        solver = self.cfg.solver
        if self.info.is_main:
            self.run.create()
            self.run.write_config(self.cfg)
            self.run.truncate_metrics(state.iteration)
            self.run.write_status(
                "running",
                f"iteration {state.iteration}",
                iter=state.iteration,
                max_iter=solver.max_iter,
            )
        if self.resumed and state.iteration >= solver.max_iter:
            return self._already_finished(state.iteration)
        loader = iter(
            build_train_loader(
                self.dataset,
                self.cfg,
                self.micro,
                self.info,
                start=state.samples_seen,
                augment=self.opts.augment,
            )
        )
        if rng is not None:
            restore_rng(rng)
        it, seen = state.iteration, state.samples_seen
        self.iteration = it
        bar = self._bar(it)
        t_window, n_window, t0 = time.perf_counter(), 0, time.perf_counter()
        while it < solver.max_iter:
            micro_batches = [next(loader) for _ in range(solver.grad_accum)]
            result = trainer.step(micro_batches, it)
            it += 1
            self.iteration = it
            seen += solver.batch_size  # indices of the global stream consumed by all ranks
            n_window += 1
            if it % solver.log_period == 0 or it == solver.max_iter:
                now = time.perf_counter()
                ips = n_window * solver.batch_size / max(now - t_window, 1e-9)
                self._log_step(it, result, ips, self.elapsed0 + now - t0, bar)
                t_window, n_window = now, 0
            if bar is not None:
                bar.update(1)
            if (
                it < solver.max_iter
                and solver.checkpoint_period > 0
                and it % solver.checkpoint_period == 0
            ):
                self.save(
                    trainer,
                    it,
                    seen,
                    self.elapsed0 + time.perf_counter() - t0,
                    final=False,
                )
            if (
                it < solver.max_iter
                and self.val is not None
                and solver.eval_period > 0
                and it % solver.eval_period == 0
            ):
                self.evaluate(trainer, it)
        if bar is not None:
            bar.close()
        final = self.save(trainer, it, seen, self.elapsed0 + time.perf_counter() - t0, final=True)
        if self.val is not None:
            self.evaluate(trainer, it)
        sync = {}
        if self.info.distributed:
            sync["rank_checksums"] = dist_utils.check_ranks_in_sync(trainer.model, self.info.device)
        if self.info.is_main:
            self.run.write_status(
                "finished",
                f"finished {it} iterations",
                iter=it,
                max_iter=solver.max_iter,
                checkpoint=final.name,
                **sync,
            )
        return final

    def _already_finished(self, it: int) -> Path:
        self._log(
            f"{self.run.path} already reached iteration {it} (solver.max_iter "
            f"{self.cfg.solver.max_iter}); raise --iters to train longer"
        )
        if self.info.is_main:
            self.run.write_status(
                "finished",
                f"finished {it} iterations",
                iter=it,
                max_iter=self.cfg.solver.max_iter,
            )
        return self.run.model_path(self.run.last_tag() or "final")

    # -- outputs -------------------------------------------------------------------------------
    def save(self, trainer: Trainer, it: int, seen: int, elapsed: float, final: bool) -> Path:
        """Model, then resume state, then ``last_checkpoint``: a crash leaves the old set valid."""
        local = capture_rng()
        gathered = {k: dist_utils.all_gather_tensor(v, self.info.device) for k, v in local.items()}
        rng = [{k: gathered[k][r] for k in local} for r in range(self.info.world_size)]
        tag = self.run.tag(None if final else it)
        path = self.run.model_path(tag)
        if self.info.is_main:
            model = dist_utils.unwrap(trainer.model)
            save_checkpoint(
                path,
                model,
                self.cfg,
                self.meta,
                extra={"iteration": it, "train_data": str(self.opts.train)},
            )
            extra = {"elapsed_s": elapsed, "max_iter": self.cfg.solver.max_iter}
            save_train_state(
                self.run.state_stem(tag),
                TrainState(it, seen, self.info.world_size, extra),
                trainer.optimizer,
                rng,
                trainer.scaler,
            )
            self.run.mark_last_checkpoint(tag)
        dist_utils.barrier()
        return path

    def evaluate(self, trainer: Trainer, it: int) -> None:
        """Score the current weights on the validation set (rank 0) and append an eval record."""
        if self.info.is_main:
            from maskformer.training.evaluation import evaluate_weights

            model = dist_utils.unwrap(trainer.model)
            metrics = evaluate_weights(model, self.cfg, self.meta, self.val, self.info.device)
            model.train()
            keep_frozen_in_eval(model, self.frozen)
            self.run.append_metrics({"iter": it, "eval": metrics})
            self._log(
                f"iteration {it}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))
            )
        dist_utils.barrier()

    def _log_step(self, it: int, r: StepResult, ips: float, elapsed: float, bar) -> None:
        losses = dist_utils.all_reduce_mean({"loss": r.loss, **r.losses}, self.info.device)
        weighted = dist_utils.all_reduce_mean(r.weighted, self.info.device)
        if not self.info.is_main:
            return
        remaining = (self.cfg.solver.max_iter - it) * self.cfg.solver.batch_size / max(ips, 1e-9)
        record: dict[str, Any] = {
            "iter": it,
            **losses,
            "weighted": weighted,
            "lr": r.lr,
            "grad_norm": r.grad_norm,
            "images_per_s": ips,
            "time": elapsed,
            "eta_s": remaining,
        }
        self.run.append_metrics(record)
        self.run.write_status(
            "running",
            f"iteration {it}",
            iter=it,
            max_iter=self.cfg.solver.max_iter,
            loss=losses["loss"],
        )
        if bar is not None:
            bar.set_postfix(loss=f"{losses['loss']:.3f}", lr=f"{r.lr:.2e}", ips=f"{ips:.1f}")

    def _bar(self, start: int):
        if not (self.opts.progress and self.info.is_main):
            return None
        from tqdm import tqdm

        return tqdm(
            total=self.cfg.solver.max_iter,
            initial=start,
            desc="train",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def _log(self, message: str) -> None:
        if self.info.is_main:
            logger.info(message)
            if self.opts.progress:
                print(message, file=sys.stderr)
