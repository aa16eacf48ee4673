"""``python -m maskformer export-onnx``: a checkpoint's network as an ONNX model, checked once."""

from __future__ import annotations

import argparse
from pathlib import Path

from maskformer.errors import UserError
from maskformer.sources import CHECKPOINT_HELP

HELP = (
    "export a checkpoint's network (class and mask logits) to ONNX (opset 17) with its class "
    "names and config in the metadata; needs requirements-onnx.txt"
)
_CHECK_CELLS = (3, 5)  # the parity check's input, in multiples of size_divisibility


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help=CHECKPOINT_HELP)
    parser.add_argument("out", metavar="OUT.onnx", help="the ONNX file to write")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--dynamic",
        action="store_true",
        help="any input height and width (the default when --height/--width are not given)",
    )
    size.add_argument("--height", type=int, metavar="H", help="fixed input height (with --width)")
    parser.add_argument("--width", type=int, metavar="W", help="fixed input width (with --height)")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="skip running the exported model once in onnxruntime against PyTorch",
    )


def run(args: argparse.Namespace) -> int:
    if args.dynamic and args.width is not None:
        raise UserError("--dynamic takes no --width")
    from maskformer.checkpoint import load_model
    from maskformer.deploy import export_onnx
    from maskformer.sources import resolve_checkpoint

    resolved = resolve_checkpoint(args.checkpoint)
    loaded = load_model(resolved.path)
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"OUT must end in .onnx, got {out.name}")
    export_onnx(
        loaded.model,
        out,
        cfg=loaded.cfg,
        meta=loaded.meta,
        height=args.height,
        width=args.width,
        extra={"exported_from": resolved.describe()},
    )
    m = loaded.cfg.model
    size = "dynamic input size" if args.height is None else f"input {args.height}x{args.width}"
    line = (
        f"wrote {out}: MaskFormer {m.backbone}, K={m.num_classes}, Q={m.num_queries}, {size} "
        f"({out.stat().st_size / 1e6:.1f} MB)"
    )
    if not args.no_check:
        line += "; " + _check(loaded.model, out, m.size_divisibility, args.height, args.width)
    print(line)
    return 0


def _check(model, path: Path, div: int, height: int | None, width: int | None) -> str:
    """Run one random input through onnxruntime and PyTorch; the max relative errors."""
    import torch

    from maskformer.deploy import onnx_session

    div = max(div, 1)
    h, w = (height, width) if height is not None else (_CHECK_CELLS[0] * div, _CHECK_CELLS[1] * div)
    x = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    got = onnx_session(path).run(None, {"image": x.numpy()})
    errs = [
        float((ref[k] - torch.from_numpy(g)).abs().max() / ref[k].abs().max().clamp_min(1e-12))
        for k, g in zip(("pred_logits", "pred_masks"), got)
    ]
    return (
        f"onnxruntime vs PyTorch at {h}x{w}: max relative error class {errs[0]:.1e}, "
        f"mask {errs[1]:.1e}"
    )
