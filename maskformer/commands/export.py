"""``python -m maskformer export``: write an app workspace's corrected annotations as COCO."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from maskformer.errors import UserError

HELP = "export an app workspace as COCO panoptic (PNG + JSON) or COCO instances (RLE JSON)"
FORMATS = ("coco-panoptic", "coco-instances")


def add_arguments(parser: argparse.ArgumentParser) -> None:
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
        "--include-predicted",
        action="store_true",
        help="also export model predictions nobody has corrected yet",
    )


def run(args: argparse.Namespace) -> int:
    if not (args.workspace / "workspace.sqlite").is_file():
        raise UserError(f"{args.workspace}: not a workspace (no workspace.sqlite)")
    # See import_.py: the workspace code lives in the app package and is loaded only here.
    store = importlib.import_module("app.store")
    transfer = importlib.import_module("app.transfer")
    out = transfer.export(
        store.Workspace(args.workspace),
        args.format,
        args.out,
        include_predicted=args.include_predicted,
    )
    print(f"exported {args.format} to {out}")
    return 0
