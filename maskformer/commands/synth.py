"""``python -m maskformer synth``: write the synthetic shapes dataset (COCO panoptic + RLE)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from maskformer.errors import UserError

HELP = "write a synthetic panoptic dataset (5 shape things on 3 texture stuff classes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder: images/, panoptic/, panoptic.json, instances.json",
    )
    parser.add_argument("--num-images", type=int, default=1000, help="number of images (1000)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (0)")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (128)")
    parser.add_argument(
        "--workers", type=int, default=1, help="processes; the output does not depend on it (1)"
    )


def run(args: argparse.Namespace) -> int:
    from maskformer.data.synthetic import CLASS_NAMES, write_synthetic_dataset

    if args.num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {args.num_images}")
    if not 32 <= args.size <= 4096:
        raise UserError(f"--size must be between 32 and 4096 pixels, got {args.size}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.seed < 0:
        raise UserError(f"--seed must be non-negative, got {args.seed}")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    start = time.perf_counter()
    write_synthetic_dataset(
        args.out, args.num_images, seed=args.seed, size=args.size, workers=args.workers
    )
    print(
        f"wrote {args.num_images} images of {args.size}x{args.size} px to {args.out} in "
        f"{time.perf_counter() - start:.1f} s; classes: {', '.join(CLASS_NAMES)}"
    )
    return 0
