"""``python -m app status``: what a workspace holds: statuses, reviews, the most uncertain images."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskformer.errors import UserError

HELP = "show a workspace's image counts by status and review, and its most uncertain images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace", required=True, type=Path, metavar="DIR", help="the workspace folder"
    )
    parser.add_argument(
        "--top", type=int, default=10, metavar="N", help="most uncertain images to list (10)"
    )


def run(args: argparse.Namespace) -> int:
    from app.predict_all import PredictAll
    from app.queue import ordered
    from app.store import Workspace
    from app.workspace_view import counts_line

    if not (args.workspace / "workspace.sqlite").is_file():
        raise UserError(f"{args.workspace}: not a workspace (no workspace.sqlite)")
    if args.top < 0:
        raise UserError(f"--top must be 0 or more, got {args.top}")
    ws = Workspace(args.workspace)
    records = ws.list_images(counts=False)
    print(f"{args.workspace}: {counts_line(records)}")
    reviewed = sorted((r for r in records if r.review), key=lambda r: r.reviewed or "")
    for r in reviewed[-args.top :] if args.top else []:
        print(f"  reviewed  #{r.id} {r.name}: {r.review} at {r.reviewed}")
    scored = [r for r in ordered(records, "uncertain") if r.uncertainty is not None]
    if scored and args.top:
        print(f"most uncertain (of {len(scored)} scored):")
        for r in scored[: args.top]:
            print(f"  u {r.uncertainty:.3f}  #{r.id} {r.name} ({r.status})")
    progress = PredictAll(ws).progress()
    if progress.state != "idle":
        print(f"predict all: {progress.state}: {progress.message}")
    return 0
