"""`python -m app finetune --workspace DIR`: the Train tab's fine-tune job, headless.

The same job as the tab's button (``app.finetune.Finetuner``, same recipe and defaults): progress
on stderr, and the last line of stdout is one JSON object with ``version``, ``checkpoint``,
``before``, ``after``, ``verdict``, ``activated``, the held-out image names and the timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from maskformer.errors import UserError

DEMO_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "demo.safetensors"
POLL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from app.finetune import RECIPES

    parser.add_argument("--workspace", required=True, type=Path, metavar="DIR")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        metavar="CKPT",
        help="the model to start from (default: the workspace's active model version, as the "
        "app serves it, else the shipped demo model)",
    )
    parser.add_argument("--iters", type=int, help="training iterations (default: the recipe's)")
    parser.add_argument("--batch", type=int, help="batch size (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="learning rate (default: the recipe's)")
    parser.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    parser.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default="finetune",
        help="finetune: the Train tab's recipe (default; when the corrections add classes it "
        "runs the expert recipe: the base model kept, an expert head trained for the new "
        "classes); expert: that recipe by name; base: the recipe the tab ran before (the base "
        "model's own solver, 200 iterations), kept for comparison",
    )


def base_model(ws: Any, checkpoint: Path | None) -> tuple[str, int, Any]:
    """(path, version id, class metadata) of the model to fine-tune: the one asked for, else the
    workspace's active version (what the app serves), else the shipped demo; registered as a
    model version when it is not one yet."""
    from maskformer.checkpoint import peek_checkpoint

    active = ws.active_model_version()
    if checkpoint is not None:
        path = checkpoint
    elif active is not None and Path(active.path).is_file():
        path = Path(active.path)
    else:
        path = DEMO_CHECKPOINT
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint")
    meta = peek_checkpoint(path).meta
    version = next((v for v in ws.model_versions() if v.path == str(path)), None)
    if version is None:
        version = ws.add_model_version(path, active=active is None)
    return str(path), version.id, meta


def run(args: argparse.Namespace) -> int:
    from app.finetune import Finetuner, Settings
    from app.store import Workspace

    if not args.workspace.is_dir():
        raise UserError(f"{args.workspace}: no such workspace folder")
    t0 = time.perf_counter()
    ws = Workspace(args.workspace)
    path, version, meta = base_model(ws, args.checkpoint)
    tuner = Finetuner(ws)
    settings = Settings(
        iters=args.iters, batch=args.batch, lr=args.lr, device=args.device, recipe=args.recipe
    )
    info = tuner.start(path, version, meta, settings)
    _say(f"fine-tune job {info.job_id} started from v{version} ({path}); log: {info.log_path}")
    try:
        progress = _follow(tuner)
    except KeyboardInterrupt:
        st = tuner.cancel()
        _say(f"cancelled ({st.message}); resume it from the Train tab")
        return 130
    if progress.state != "finished" or progress.result is None:
        tail = progress.log_tail.strip().splitlines()[-5:]
        raise UserError(progress.message + ("\n" + "\n".join(tail) if tail else ""))
    r = progress.result
    out = {
        "version": r["version_id"],
        "checkpoint": r["path"],
        "parent": version,
        "recipe": r.get("recipe", settings.resolved_recipe().name),
        "activated": r["activated"],
        "verdict": r["verdict"]["status"],
        "summary": r["verdict"]["summary"],
        "before": _lean(r["before"]),
        "after": _lean(r["after"]),
        "new_classes": r["new_classes"],
        "heldout_images": r["heldout_names"],
        "unchanged_train": r["unchanged_train"],
        "unchanged_heldout": r["unchanged_heldout"],
        "timing": {**r["timing"], "command_wall_s": round(time.perf_counter() - t0, 2)},
        "job_dir": info.job_dir,
    }
    print(json.dumps(out), flush=True)
    return 0


def _follow(tuner: Any) -> Any:
    """Print each new phase message and every tenth of the training to stderr until the job ends."""
    last_msg, last_tenth = "", -1
    while True:
        p = tuner.progress()
        if p.message != last_msg and p.state == "running":
            _say(p.message)
            last_msg = p.message
        if p.phase == "train" and p.total:
            tenth = 10 * p.iteration // p.total
            if tenth != last_tenth and p.iteration:
                loss = f", loss {p.losses[-1][1]:.3f}" if p.losses else ""
                _say(f"iteration {p.iteration}/{p.total}{loss}")
                last_tenth = tenth
        if p.state != "running":
            return p
        time.sleep(POLL_S)


def _lean(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if k not in ("images", "unchanged_train")}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
