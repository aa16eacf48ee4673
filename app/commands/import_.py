"""``python -m app import``: add images or a labelled COCO dataset to a workspace."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = (
    "import a folder of images, image files, a COCO panoptic dataset (folder or JSON) or a "
    "COCO instances JSON into a workspace"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src",
        metavar="SRC",
        nargs="+",
        help="image files, a folder of images, a COCO panoptic folder (with "
        "panoptic.json) or JSON, or a COCO instances JSON",
    )
    parser.add_argument(
        "--workspace",
        required=True,
        type=Path,
        metavar="DIR",
        help="the workspace folder (created if missing)",
    )


def run(args: argparse.Namespace) -> int:
    from app.store import Workspace
    from app.transfer import import_source

    ws = Workspace(args.workspace)
    src = args.src[0] if len(args.src) == 1 else list(args.src)
    report = import_source(ws, src)
    print(f"{args.workspace}: {report.summary()}")
    return 0
