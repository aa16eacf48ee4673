"""Forward-pass speed: ours vs Hugging Face MaskFormer on the same weights (R50, ADE20K head).

Usage: ``python bench/forward.py [--device cpu|cuda] [--size 512] [--runs 10] [--threads N]``.
Prints fp32 and bf16 timings (median of ``--runs`` after warm-up), ours with NCHW and with NHWC
weights (``Predictor(channels_last=True)``, ``predict --channels-last``), the ours/HF ratio,
whether bf16 changes the semantic and panoptic maps, achieved GFLOP/s against a measured fp32
matmul peak, and on CUDA images/s at batch 1 and 16. Weights are random (HF init with perturbed
norms), nothing is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from maskformer.converters.hf import convert_hf_state_dict, read_hf_directory
from maskformer.model import build_model
from maskformer.training.trainer import native_bf16


def build_pair(num_classes: int = 150) -> tuple[nn.Module, nn.Module]:
    """A random HF R50 MaskFormer and ours converted from its saved files (both eval, fp32)."""
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig

    torch.manual_seed(0)
    bb = ResNetConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        layer_type="bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    hf = MaskFormerForInstanceSegmentation(
        MaskFormerConfig(backbone_config=bb, num_labels=num_classes)
    ).eval()
    with torch.no_grad():  # HF's BN init (weight ~N(0, 0.02)) would make the backbone output ~0
        for mod in hf.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.running_var.uniform_(0.5, 2.0)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        state_dict, hf_config = read_hf_directory(d)
    converted, cfg = convert_hf_state_dict(state_dict, hf_config)
    ours = build_model(cfg.model).eval()
    ours.load_state_dict(converted)
    for p in [*hf.parameters(), *ours.parameters()]:
        p.requires_grad_(False)  # inference only (FlopCounterMode's module tracker needs this)
    return hf, ours


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(
    fns: dict[str, Callable[[], object]],
    device: torch.device,
    runs: int,
    warmup: int = 1,
    cpu: dict[str, float] | None = None,
) -> dict[str, float]:
    """Median wall-clock seconds of each ``fn()``; runs are interleaved (a, b, a, b, ...) so that
    load from other processes hits every contender alike. ``cpu`` receives the median process CPU
    seconds, which time-slicing by other processes does not inflate."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    proc: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for i in range(warmup + runs):
            for name, fn in fns.items():
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                _sync(device)
                if i >= warmup:
                    wall[name].append(time.perf_counter() - t0)
                    proc[name].append(time.process_time() - c0)
    if cpu is not None:
        cpu.update({name: statistics.median(t) for name, t in proc.items()})
    return {name: statistics.median(t) for name, t in wall.items()}


def autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def matmul_peak_gflops(device: torch.device, n: int = 2048, runs: int = 5) -> tuple[float, float]:
    """fp32 ``torch.mm`` GFLOP/s by wall-clock and by process CPU time."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    cpu: dict[str, float] = {}
    t = median_times({"mm": lambda: torch.mm(a, b)}, device, runs, cpu=cpu)["mm"]
    return 2 * n**3 / t / 1e9, 2 * n**3 / cpu["mm"] / 1e9


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def map_agreement(out32: dict, out16: dict) -> tuple[float, float]:
    """Pixel agreement (stride-4 maps) of the semantic argmax and of the panoptic category map."""
    from maskformer.inference.postprocess import panoptic_inference, semantic_inference

    cls32, m32 = out32["pred_logits"][0].float(), out32["pred_masks"][0].float()
    cls16, m16 = out16["pred_logits"][0].float(), out16["pred_masks"][0].float()
    sem = semantic_inference(cls32, m32).argmax(0) == semantic_inference(cls16, m16).argmax(0)
    cats = []
    for cls, m in ((cls32, m32), (cls16, m16)):
        res = panoptic_inference(cls, m, thing_ids=(), object_mask_threshold=0.0)
        lut = torch.full((int(res.panoptic_seg.max()) + 1,), -1, dtype=torch.long)
        for seg in res.segments:
            lut[seg["id"]] = seg["category_id"]
        cats.append(lut[res.panoptic_seg.long()])
    return sem.float().mean().item(), (cats[0] == cats[1]).float().mean().item()


def run_single(hf, ours, device, size: int, runs: int, bf16_size: int) -> None:
    x = torch.randn(1, 3, size, size, device=device)
    with torch.no_grad():
        err = (hf(pixel_values=x).masks_queries_logits - ours(x)["pred_masks"]).abs().max().item()
    print(f"fp32 max |ours - HF| on pred_masks: {err:.2e}")
    nhwc = copy.deepcopy(ours).to(memory_format=torch.channels_last)  # channels_last=True
    with torch.no_grad():
        err_nhwc = (nhwc(x)["pred_masks"] - ours(x)["pred_masks"]).abs().max().item()
    fns = {"hf": lambda: hf(pixel_values=x), "ours": lambda: ours(x), "nhwc": lambda: nhwc(x)}
    cpu: dict[str, float] = {}
    t = median_times(fns, device, runs, cpu=cpu)
    print(f"HF   fp32: {t['hf'] * 1e3:8.1f} ms wall, {cpu['hf'] * 1e3:8.1f} ms CPU (medians)")
    print(f"ours fp32: {t['ours'] * 1e3:8.1f} ms wall, {cpu['ours'] * 1e3:8.1f} ms CPU (medians)")
    print(
        f"ratio ours/HF fp32: {t['ours'] / t['hf']:.3f} wall, {cpu['ours'] / cpu['hf']:.3f} CPU "
        f"time (the CPU ratio is the robust one on a shared machine)"
    )
    print(
        f"ours fp32 NHWC weights: {t['nhwc'] * 1e3:8.1f} ms wall, "
        f"ratio /HF {t['nhwc'] / t['hf']:.3f} wall, {cpu['nhwc'] / cpu['hf']:.3f} CPU; "
        f"max |NHWC - NCHW| {err_nhwc:.1e}"
    )

    if bf16_size != size:
        print(
            f"(this CPU has no native bf16; bf16 is emulated by oneDNN and very slow, so the bf16 "
            f"rows use {bf16_size}x{bf16_size} and 1 run)"
        )
        x = torch.randn(1, 3, bf16_size, bf16_size, device=device)
    n = runs if bf16_size == size else 1

    def ours_bf16(model=ours):
        with autocast(device, True):
            return model(x)

    t16 = median_times(
        {
            "hf": lambda: hf(pixel_values=x),
            "ours_bf16": ours_bf16,
            "nhwc_bf16": lambda: ours_bf16(nhwc),
        },
        device,
        n,
    )
    print(
        f"ours bf16: {t16['ours_bf16'] * 1e3:8.1f} ms   ratio ours-bf16/HF-fp32 = "
        f"{t16['ours_bf16'] / t16['hf']:.3f}  (HF fp32 {t16['hf'] * 1e3:.1f} ms at this size)"
    )
    print(
        f"ours bf16, NHWC weights: {t16['nhwc_bf16'] * 1e3:8.1f} ms   ratio /HF-fp32 = "
        f"{t16['nhwc_bf16'] / t16['hf']:.3f}"
    )
    with torch.no_grad():
        sem, pan = map_agreement(ours(x), ours_bf16())
    print(
        f"bf16 vs fp32 (random weights): semantic argmax agreement {sem * 100:.2f}%, "
        f"panoptic category agreement {pan * 100:.2f}%"
    )

    x = torch.randn(1, 3, size, size, device=device)
    flops = count_flops(ours, x)
    peak, peak_cpu = matmul_peak_gflops(device)
    achieved, achieved_cpu = flops / t["ours"] / 1e9, flops / cpu["ours"] / 1e9
    print(
        f"ours forward: {flops / 1e9:.1f} GFLOP at {size}x{size} -> {achieved:.1f} GFLOP/s fp32 "
        f"(wall), fp32 matmul peak {peak:.1f} GFLOP/s: {achieved / peak * 100:.0f}% of peak"
    )
    if device.type == "cpu":
        print(
            f"  by CPU time: {achieved_cpu:.1f} GFLOP/s vs matmul {peak_cpu:.1f} GFLOP/s "
            f"per {torch.get_num_threads()} thread(s): {achieved_cpu / peak_cpu * 100:.0f}% of peak"
        )


def run_cuda_throughput(hf, ours, device, size: int, runs: int) -> None:
    for batch in (1, 16):
        x = torch.randn(batch, 3, size, size, device=device)
        for bf16 in (False, True):
            with autocast(device, bf16):
                t = median_times(
                    {"ours": lambda x=x: ours(x), "hf": lambda x=x: hf(pixel_values=x)},
                    device,
                    runs,
                )
                t_ours, t_hf = t["ours"], t["hf"]
            name = "bf16" if bf16 else "fp32"
            print(
                f"cuda batch {batch:2d} {name}: ours {batch / t_ours:7.1f} img/s, "
                f"HF {batch / t_hf:7.1f} img/s, ratio ours/HF time {t_ours / t_hf:.3f}"
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument(
        "--bf16-size",
        type=int,
        default=128,
        help="input size for the bf16 rows when the CPU has no native bf16",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hf, ours = build_pair()
    hf, ours = hf.to(device), ours.to(device)
    print(
        f"device {device}, input 1x3x{args.size}x{args.size}, {args.runs} runs, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    bf16_size = args.size if native_bf16(device) else args.bf16_size
    run_single(hf, ours, device, args.size, args.runs, bf16_size)
    if device.type == "cuda":
        run_cuda_throughput(hf, ours, device, args.size, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
