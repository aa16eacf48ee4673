"""``python -m maskformer evaluate``: score a checkpoint or prediction files against a dataset."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from maskformer.errors import UserError
from maskformer.sources import CHECKPOINT_HELP

HELP = (
    "score a checkpoint on a labelled dataset (PQ, mIoU, mask AP), or score existing COCO "
    "prediction files; prints one JSON object"
)

TASKS = ("panoptic", "semantic", "instance")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)
    src.add_argument(
        "--predictions",
        metavar="PRED",
        help="existing predictions, as `predict` writes them: a COCO panoptic JSON "
        "(PNGs in <stem>/ or panoptic/ beside it), COCO instance results JSON, "
        "or a folder of semantic label PNGs",
    )
    parser.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="the labelled dataset: a COCO panoptic folder/JSON, a COCO instances "
        "JSON, or a semantic folder (images/ + annotations/)",
    )
    parser.add_argument(
        "--task",
        nargs="+",
        choices=TASKS,
        help="what to score with --checkpoint (default: all three)",
    )
    parser.add_argument(
        "--out", metavar="FILE.json", help="also write the metrics and the per-class tables here"
    )
    parser.add_argument("--max-images", type=int, metavar="N", help="score only the first N images")
    parser.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from maskformer.data import open_dataset
    from maskformer.evaluation import evaluate_model, evaluate_predictions

    if args.predictions:
        if args.max_images is not None or args.task:
            raise UserError(
                "--max-images and --task work with --checkpoint only; --predictions "
                "scores the whole dataset on the task its files hold"
            )
        return evaluate_predictions(args.predictions, args.data, progress=not args.no_progress)
    from maskformer.inference import Predictor

    dataset = open_dataset(args.data)
    predictor = Predictor.from_checkpoint(args.checkpoint, device=args.device)
    return evaluate_model(
        predictor,
        dataset,
        tasks=args.task or TASKS,
        max_images=args.max_images,
        progress=not args.no_progress,
    )


def _write_report(path: Path, report: dict[str, Any]) -> None:
    """Atomic write: a temp file in the same folder, then rename."""
    from maskformer.data.coco import atomic_write_bytes

    try:
        atomic_write_bytes(path, (json.dumps(report, indent=1) + "\n").encode("utf-8"))
    except OSError as e:
        raise UserError(f"cannot write {path}: {e}") from None


def run(args: argparse.Namespace) -> int:
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max-images must be at least 1, got {args.max_images}")
    # Whatever a library prints goes to stderr: stdout carries exactly one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        result = _evaluate(args)
    per_class = result.pop("per_class", {})
    if args.out:
        source = (
            {"checkpoint": args.checkpoint}
            if args.checkpoint
            else {"predictions": args.predictions}
        )
        _write_report(
            Path(args.out), {**source, "data": args.data, "metrics": result, "per_class": per_class}
        )
    print(json.dumps(result))
    return 0
