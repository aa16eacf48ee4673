"""Forward-pass speed on the CPU: onnxruntime on the exported model vs PyTorch, in one process.

Usage: ``python bench/onnx.py [--size 512] [--runs 10] [--threads N] [--preset NAME]``.
Builds the R50 ADE20K model (random weights, BN statistics perturbed so activations are not ~0),
exports it with ``maskformer.deploy.onnx_bytes`` (dynamic input size, as ``export-onnx`` writes by
default), and times the network alone (class + mask logits, batch 1, fp32) in both, interleaved
(a, b, a, b, ...) so that load from other processes hits both alike. Prints the medians, the
onnxruntime / PyTorch ratio, the outputs' max relative error and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# This file is named onnx.py: take its folder off the import path, or `import onnx` (inside the
# exporter) would import this script; then add the repository root (run from anywhere).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch
from torch import nn

from maskformer.config import generic_meta, get_preset
from maskformer.deploy import onnx_bytes
from maskformer.model import build_model


def build(preset: str) -> tuple[nn.Module, object]:
    cfg = get_preset(preset)
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.running_var.uniform_(0.5, 2.0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512, help="square input side (default 512)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads")
    ap.add_argument("--preset", default="maskformer_r50_ade20k")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    model, cfg = build(args.preset)
    t0 = time.perf_counter()
    data = onnx_bytes(model, cfg=cfg, meta=generic_meta(cfg.model.num_classes))
    export_s = time.perf_counter() - t0
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    # Not deploy.onnx_session: the bench gives onnxruntime the same thread count as torch.
    session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])

    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    feed = {"image": x.numpy()}

    def run_torch():
        with torch.no_grad():
            out = model(x)
        return out["pred_logits"], out["pred_masks"]

    def run_ort():
        return session.run(None, feed)

    ref, got = run_torch(), run_ort()
    errs = [float((r - torch.from_numpy(g)).abs().max() / r.abs().max()) for r, g in zip(ref, got)]
    times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for _ in range(2):  # warm-up
        run_torch(), run_ort()
    for _ in range(args.runs):
        for name, fn in (("torch", run_torch), ("onnxruntime", run_ort)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()
    print(
        f"{args.preset} {args.size}x{args.size}, batch 1, fp32, {threads} threads, "
        f"{args.runs} runs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    print(f"export (dynamic size, opset 17): {export_s:.1f} s, {len(data) / 1e6:.1f} MB")
    print(f"PyTorch forward median     {med['torch'] * 1e3:8.1f} ms")
    print(f"onnxruntime forward median {med['onnxruntime'] * 1e3:8.1f} ms")
    print(f"onnxruntime / PyTorch = {med['onnxruntime'] / med['torch']:.3f}")
    print(f"max relative error: class logits {errs[0]:.1e}, mask logits {errs[1]:.1e}")


if __name__ == "__main__":
    main()
