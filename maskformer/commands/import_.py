"""``python -m maskformer import``: add images or a labelled COCO dataset to an app workspace."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

HELP = (
    "import a folder of images, image files, a COCO panoptic dataset (folder or JSON) or a "
    "COCO instances JSON into an app workspace"
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
    # The workspace lives in the app package; the engine never imports it statically (see
    # tests/test_imports.py), only this command front-end loads it when asked to.
    store = importlib.import_module("app.store")
    transfer = importlib.import_module("app.transfer")
    ws = store.Workspace(args.workspace)
    src = args.src[0] if len(args.src) == 1 else list(args.src)
    report = transfer.import_source(ws, src)
    print(f"{args.workspace}: {report.summary()}")
    return 0
