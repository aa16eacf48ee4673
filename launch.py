"""Start MaskFormer Studio: `python launch.py [--checkpoint CKPT] [--workspace DIR] [--port N]`.

Serving beyond this machine (``--host`` other than a loopback address) needs ``--auth USER:PASS``
or an explicit ``--allow-no-auth``; failed logins wait longer after each failure, per address.
Gradio's file cache lives in the workspace (``<workspace>/.gradio``), not in the shared
``/tmp/gradio``, so no other app on the machine can serve this one's files. Imports from a path on
the server are off unless ``--import-root DIR`` names the one folder they may read.
"""

import argparse
import ipaddress
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
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only); another address needs "
        "--auth or --allow-no-auth",
    )
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--auth", default=None, metavar="USER:PASS", help="require this user name and password"
    )
    p.add_argument(
        "--allow-no-auth",
        action="store_true",
        help="serve a non-loopback --host without --auth (anyone who can reach the port can "
        "read, change and export the workspace)",
    )
    p.add_argument(
        "--import-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="let users import from paths on the server inside DIR (default: no server paths; "
        "users upload image files or .zip archives)",
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` binds this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it reaches the network


NO_AUTH_WARNING = """\
=====================================================================================
 WARNING: serving on {host} WITHOUT A PASSWORD (--allow-no-auth). Anyone who can reach
 port {port} can view, change, import into and export this workspace.
=====================================================================================
"""


def check_exposure(args: argparse.Namespace) -> str | None:
    """An error line when a non-loopback host has no --auth and no explicit --allow-no-auth."""
    if is_loopback(args.host) or args.auth:
        return None
    if not args.allow_no_auth:
        return (
            f"error: --host {args.host} serves the app beyond this machine without a password; "
            "add --auth USER:PASS (or --allow-no-auth to do it anyway)"
        )
    print(NO_AUTH_WARNING.format(host=args.host, port=args.port), file=sys.stderr, flush=True)
    return None


def private_cache(workspace: Path) -> Path:
    """Gradio's upload/download cache for this workspace only (mode 0700); set before gradio
    builds anything, since it reads GRADIO_TEMP_DIR when its Blocks and routes are made."""
    cache = workspace / ".gradio"
    cache.mkdir(mode=0o700, exist_ok=True)
    os.chmod(cache, 0o700)
    os.environ["GRADIO_TEMP_DIR"] = str(cache.resolve())
    return cache


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            print("error: --auth must look like USER:PASS", file=sys.stderr)
            return 2
        auth = (user, password)
    exposure = check_exposure(args)
    if exposure:
        print(exposure, file=sys.stderr)
        return 2

    from maskformer.converters.hub import parse_hub_id
    from maskformer.errors import UserError

    try:
        from app.safe_import import set_import_root
        from app.store import Workspace

        set_import_root(args.import_root)
        workspace = Workspace(args.workspace)
        if workspace.read_only:
            print(
                f"error: the workspace {args.workspace} is read-only (a read-only file system or "
                "no write permission) and the app saves into it; copy it somewhere writable, or "
                f"export it with `python -m app export --workspace {args.workspace} "
                "--out DIR`",
                file=sys.stderr,
            )
            return 2
        if workspace.cleaned:
            print(
                f"removed {len(workspace.cleaned)} file(s) an interrupted import or export "
                "left in the workspace",
                flush=True,
            )
        private_cache(args.workspace)
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

    from starlette.middleware import Middleware

    from app.login_limit import LoginThrottle
    from app.ui import CSS, HEAD, build_ui

    demo = build_ui(ctx)
    demo.delete_cache = (3600, 86400)  # gradio drops cached files older than a day, hourly
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
        app_kwargs={"middleware": [Middleware(LoginThrottle)]} if auth else None,
        css=CSS,
        head=HEAD,
        # gradio 6 records every event's inputs and outputs in the browser's localStorage
        # (rewritten on each event: 50+ ms per canvas edit, growing); nothing of it is needed
        run_history=False,
        quiet=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
