"""Start MaskFormer Studio: `python launch.py [--checkpoint CKPT] [--workspace DIR] [--port N]`."""

import argparse
import os
import sys
from pathlib import Path

# Before gradio is imported anywhere: no telemetry. The one network use is a hub id the user names
# (--checkpoint or the Train tab), and HF_HUB_OFFLINE=1 turns that off too.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "demo.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MaskFormer Studio: inspect and correct segmentations.")
    p.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        help="a native .safetensors checkpoint, a Hugging Face model folder or hub id "
        "(owner/name; downloaded unless HF_HUB_OFFLINE=1), or an official .pkl/.pth, converted "
        "once into WORKSPACE/models/converted (default: the workspace's active model version, "
        f"e.g. the last fine-tune, else {DEFAULT_CHECKPOINT})",
    )
    p.add_argument(
        "--workspace",
        type=Path,
        default=ROOT / "workspace",
        help="workspace folder (created if missing; default: ./workspace)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--auth", default=None, metavar="USER:PASS", help="require this user name and password"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is best on a busy machine)",
    )
    return p.parse_args(argv)


def startup_checkpoint(checkpoint: str | Path | None, workspace) -> tuple[str | Path, str]:
    """The model to serve and why: the one asked for, else the workspace's active model version
    (the version the app was switched to, e.g. by a fine-tune, before it was stopped), else the
    shipped demo."""
    if checkpoint is not None:
        return checkpoint, "as asked"
    active = workspace.active_model_version()
    if active is not None and Path(active.path).is_file():
        return Path(active.path), f"the workspace's active model version v{active.id}"
    return DEFAULT_CHECKPOINT, "the shipped demo model"


def _say(fraction: float, message: str) -> None:
    """Conversion progress on stderr (a hub download shows its own bars)."""
    print(f"[{round(100 * fraction):3d} %] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            print("error: --auth must look like USER:PASS", file=sys.stderr)
            return 2
        auth = (user, password)

    from maskformer.converters.hub import parse_hub_id
    from maskformer.errors import UserError

    try:
        from app.store import Workspace

        workspace = Workspace(args.workspace)
        explicit = args.checkpoint is not None
        spec, why = startup_checkpoint(args.checkpoint, workspace)
        if not Path(spec).exists() and parse_hub_id(str(spec)) is None:
            hint = (
                "make one with `python -m maskformer synth --out runs/synth && python -m "
                "maskformer train --preset maskformer_demo --train runs/synth --out runs/demo` "
                "(see checkpoints/README.md), or pass --checkpoint PATH"
                if not explicit
                else "pass an existing --checkpoint PATH"
            )
            print(f"error: checkpoint {spec} not found; {hint}", file=sys.stderr)
            return 2

        from app.callbacks import make_context
        from app.model_sources import register_version, resolve_for_workspace
        from maskformer.inference import Predictor

        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        resolved = resolve_for_workspace(workspace, spec, _say)
        predictor = Predictor.from_checkpoint(resolved.path, device=args.device)
        register_version(workspace, resolved)  # its row names the source (hub id, .pkl, ...)
        args.checkpoint = resolved.path
        ctx = make_context(predictor, workspace, checkpoint=resolved.path)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from app.ui import CSS, HEAD, build_ui

    demo = build_ui(ctx)
    print(
        f"MaskFormer Studio: http://{args.host}:{args.port}/  (workspace {args.workspace}; "
        f"model {resolved.describe()}: {why})",
        flush=True,
    )
    demo.queue(default_concurrency_limit=4, max_size=64).launch(
        server_name=args.host,
        server_port=args.port,
        auth=auth,
        show_error=True,
        max_file_size="50mb",
        allowed_paths=[str(args.workspace / "exports")],
        css=CSS,
        head=HEAD,
        quiet=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
