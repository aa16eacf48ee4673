"""``python -m app export``: write a workspace's annotations as COCO, keeping the image names."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskformer.errors import UserError

HELP = "export a workspace as COCO panoptic (PNG + JSON) or COCO instances (RLE JSON)"
FORMATS = ("coco-panoptic", "coco-instances")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from app.export import EXPORTABLE, REVIEW_FILTERS

    parser.add_argument(
        "--workspace",
        required=True,
        type=Path,
        metavar="DIR",
        help="the workspace folder (holds workspace.sqlite)",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="coco-panoptic: images/, panoptic/, panoptic.json; coco-instances: "
        "images/, instances.json (thing segments as RLE)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="PATH",
        help="output folder (must not exist, or be empty)",
    )
    parser.add_argument(
        "--include",
        default=None,
        metavar="STATUS[,STATUS]",
        help=f"the image statuses to export, any of {', '.join(EXPORTABLE)} (default: corrected)",
    )
    parser.add_argument(
        "--include-predicted",
        action="store_true",
        help="same as --include corrected,predicted: also model predictions nobody corrected",
    )
    parser.add_argument(
        "--review",
        default="any",
        choices=REVIEW_FILTERS,
        help="only images with this review verdict (default: any)",
    )


def run(args: argparse.Namespace) -> int:
    from app.export import Selection, export_dataset
    from app.store import Workspace

    if not (args.workspace / "workspace.sqlite").is_file():
        raise UserError(f"{args.workspace}: not a workspace (no workspace.sqlite)")
    if args.include is not None and args.include_predicted:
        raise UserError("give --include or --include-predicted, not both")
    if args.include_predicted:
        statuses = ("corrected", "predicted")
    elif args.include is not None:
        statuses = tuple(s.strip() for s in args.include.split(",") if s.strip())
    else:
        statuses = ("corrected",)
    report = export_dataset(
        Workspace(args.workspace), args.format, args.out, Selection(statuses, args.review)
    )
    print(report.summary())
    return 0
