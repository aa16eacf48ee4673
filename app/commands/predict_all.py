"""``python -m app predict-all``: the model over every unseen image of a workspace, as a job."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from maskformer.errors import UserError

HELP = "predict every unseen image of a workspace (a background job; Ctrl+C cancels it)"
ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "checkpoints" / "demo.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workspace", required=True, type=Path, metavar="DIR", help="the workspace folder"
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a native .safetensors, a Hugging Face folder or hub id, an official .pkl/.pth "
        "(default: the workspace's active model version, else the shipped demo)",
    )
    parser.add_argument(
        "--score-threshold", type=float, default=None, help="default: the model's own"
    )
    parser.add_argument(
        "--overlap-threshold", type=float, default=None, help="default: the model's own"
    )
    parser.add_argument("--device", default="cpu", help="torch device for the job (cpu)")
    parser.add_argument(
        "--background",
        action="store_true",
        help="start the job and return (follow it with `python -m app status`)",
    )


def _version(ws, checkpoint: str | None) -> tuple[Path, int]:
    """The native checkpoint to run and its model version id (registered, not activated, when
    new). ``checkpoint`` may be anything ``launch.py --checkpoint`` takes."""
    from app.model_sources import register_version, resolve_for_workspace

    if checkpoint is None:
        active = ws.active_model_version()
        checkpoint = active.path if active is not None else str(DEMO)
    resolved = resolve_for_workspace(ws, checkpoint)
    return Path(resolved.path), register_version(ws, resolved).id


def run(args: argparse.Namespace) -> int:
    from app.predict_all import PredictAll
    from app.store import Workspace

    if not (args.workspace / "workspace.sqlite").is_file():
        raise UserError(f"{args.workspace}: not a workspace (no workspace.sqlite)")
    for name in ("score_threshold", "overlap_threshold"):
        value = getattr(args, name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")
    ws = Workspace(args.workspace)
    job = PredictAll(ws)
    checkpoint, version_id = _version(ws, args.checkpoint)
    info = job.start(
        checkpoint, version_id, args.score_threshold, args.overlap_threshold, args.device
    )
    print(f"predict all: job {info.job_id} started (log {info.log_path})", flush=True)
    if args.background:
        return 0
    last = ""
    try:
        while True:
            p = job.progress()
            if p.message != last:
                print(p.message, file=sys.stderr, flush=True)
                last = p.message
            if not p.running:
                break
            time.sleep(0.5)
    except KeyboardInterrupt:
        job.cancel()
        print(job.progress().message)
        return 130
    print(p.message)
    return 0 if p.state == "finished" else 1
