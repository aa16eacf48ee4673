"""``python -m maskformer train``: train or fine-tune a model on a dataset folder (torchrun for multi-GPU)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import threading
from pathlib import Path

from maskformer.config import Config, ConfigError, apply_overrides, get_preset, load_config_file
from maskformer.errors import UserError
from maskformer.sources import CHECKPOINT_HELP

HELP = (
    "train or fine-tune MaskFormer (multi-GPU: torchrun --nproc_per_node N -m maskformer train ...)"
)

# shortcut flag -> config field
_SHORTCUTS = {
    "iters": "solver.max_iter",
    "batch": "solver.batch_size",
    "lr": "solver.base_lr",
    "accum": "solver.grad_accum",
    "eval_period": "solver.eval_period",
    "checkpoint_period": "solver.checkpoint_period",
    "seed": "solver.seed",
    "workers": "solver.num_workers",
}


def _sections() -> dict[str, type]:
    """Config section name -> its dataclass (model, input, test, solver)."""
    default = Config()
    return {f.name: type(getattr(default, f.name)) for f in dataclasses.fields(Config)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--preset", help="a named config, e.g. maskformer_tiny, maskformer_r50_ade20k")
    src.add_argument(
        "--config", metavar="FILE.json", help="a config file (e.g. RUN_DIR/config.json)"
    )
    parser.add_argument(
        "--train",
        required=True,
        metavar="DATA",
        help="training data: a COCO panoptic folder/JSON, COCO instances JSON, or a "
        "semantic folder (images/ + annotations/)",
    )
    parser.add_argument("--val", metavar="DATA", help="validation data, scored every --eval-period")
    parser.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory")
    parser.add_argument(
        "--init",
        metavar="CKPT",
        help="start from this checkpoint (new classes extend the classifier; tensors of other "
        "shapes are re-initialised and listed); without --preset/--config its config is used. "
        + CHECKPOINT_HELP,
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue RUN_DIR from its last checkpoint (same result as not stopping)",
    )
    parser.add_argument("--iters", type=int, help="solver.max_iter")
    parser.add_argument("--batch", type=int, help="global batch size (solver.batch_size)")
    parser.add_argument("--lr", type=float, help="base learning rate (solver.base_lr)")
    parser.add_argument("--accum", type=int, help="gradient accumulation steps (solver.grad_accum)")
    parser.add_argument(
        "--eval-period", type=int, help="iterations between evaluations (0: end only)"
    )
    parser.add_argument("--checkpoint-period", type=int, help="iterations between checkpoints")
    parser.add_argument("--seed", type=int, help="solver.seed")
    parser.add_argument("--workers", type=int, help="data loader processes (solver.num_workers)")
    parser.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument(
        "--no-aug", action="store_true", help="feed images as stored (no augmentation)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    group = parser.add_argument_group(
        "config overrides",
        "any config field as --SECTION.FIELD=VALUE, e.g. --model.num_queries=50 "
        "--solver.amp=true --input.crop_size=256,256 (sections: " + ", ".join(_sections()) + ")",
    )
    for section, cls in _sections().items():
        for f in dataclasses.fields(cls):
            group.add_argument(
                f"--{section}.{f.name}",
                dest=f"override:{section}.{f.name}",
                metavar="VALUE",
                help=argparse.SUPPRESS,
            )


def resolve_config(args: argparse.Namespace) -> Config:
    """The run's config: --config/--preset, else RUN_DIR/config.json (resume), else --init's."""
    run_config = Path(args.out) / "config.json"
    if args.config:
        cfg = load_config_file(args.config)
    elif args.preset:
        cfg = get_preset(args.preset)
    elif args.resume and run_config.exists():
        cfg = load_config_file(run_config)
    elif args.init:
        from maskformer.checkpoint import verify_checkpoint

        cfg = verify_checkpoint(args.init).cfg
    else:
        raise UserError(
            "give --preset NAME or --config FILE.json (or --init CKPT to reuse its config)"
        )
    overrides = {
        field: getattr(args, name)
        for name, field in _SHORTCUTS.items()
        if getattr(args, name) is not None
    }
    overrides.update(
        {
            k.split(":", 1)[1]: v
            for k, v in vars(args).items()
            if k.startswith("override:") and v is not None
        }
    )
    return apply_overrides(cfg, overrides)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM (e.g. the app's stop button): mark the run resumable


def run(args: argparse.Namespace) -> int:
    from maskformer.training.allocator import keep_freed_memory
    from maskformer.training.loop import TrainOptions, train

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
        keep_freed_memory()  # this process is the training run: ~25 % faster steps on CPU

    if args.init:
        from maskformer.checkpoint import verify_checkpoint
        from maskformer.sources import resolve_checkpoint

        # Converted once (official, Hugging Face) and checked against its own config before any
        # model is built from it: a header claiming 10^7 queries is refused, not allocated.
        args.init = str(resolve_checkpoint(args.init).path)
        if verify_checkpoint(args.init).cfg.model.base_classes > 0:
            raise UserError(
                f"--init {args.init} is an extended model (a base model and an expert head for "
                "the classes a fine-tune added); train from its base model instead "
                "(`python -m app finetune` does that)"
            )
    try:
        cfg = resolve_config(args)
    except ConfigError as e:
        raise UserError(str(e)) from None
    if cfg.model.base_classes > 0:
        raise UserError(
            "model.base_classes > 0 describes an extended model, which the fine-tune builds from "
            "a trained base and expert; it is not trained as a whole"
        )
    opts = TrainOptions(
        train=args.train,
        out=args.out,
        val=args.val,
        init=args.init,
        resume=args.resume,
        device=args.device,
        progress=not args.no_progress,
        augment=not args.no_aug,
    )
    final = train(cfg, opts)
    if os.environ.get("RANK", "0") == "0":  # torchrun: one line from the main process only
        print(final)
    return 0
