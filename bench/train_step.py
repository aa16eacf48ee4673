"""Training-step speed and memory: ours vs Hugging Face MaskFormer, same weights, same batch.

Usage: ``python bench/train_step.py [--device cpu|cuda] [--size 512] [--batch 2] [--masks 5]
[--runs 5] [--threads N]``.

One step = forward + loss (18 terms: final + 5 aux layers, official weights) + backward. Both
models run in eval mode (no dropout, BN on running statistics) so that the losses can be compared
exactly; HF gets ``use_auxiliary_loss=True`` and ours ``aux=True`` (eval mode drops aux outputs
by default) so both compute deep supervision. Reported:
median step time (the three variants alternate each round), the ratio ours/HF, the share of our
loss in the step, peak memory (CUDA: ``max_memory_allocated``; CPU: the rise of the process's
peak RSS during one step, reset through /proc/self/clear_refs), and the loss difference.

On the CPU the peaks come from a second process started with ``MALLOC_MMAP_THRESHOLD_=1MiB``, so
that glibc hands every freed tensor back to the OS and each step's peak RSS starts from a clean
baseline. The times come from a process whose glibc keeps freed memory for reuse
(``MALLOC_MMAP_MAX_=0``, a huge ``MALLOC_TRIM_THRESHOLD_``; what the caching allocators that
PyTorch's CPU tuning guides suggest, jemalloc / tcmalloc, also do). With the default settings
every tensor over 32 MiB is a fresh mmap whose pages fault in on first touch: measured here,
0.7-4.4 s of kernel time per ~7 s step, varying from step to step, more for HF than for us.
Both models run in the same process under the same allocator. Our point-sampled loss
(Mask2Former-style, 12544 points) is timed against HF's exact loss too. Our steps run with the
weights in NCHW and in NHWC (``solver.channels_last``, the trainer's default) layout; where bf16
is native (CUDA, AVX512-BF16 / AMX CPUs) both models also run under bf16 autocast (ours with fp32
losses, as the Trainer; HF's whole forward, as its Trainer with ``bf16=True``). Goals: exact
≤ 1.0×, point-sampled ≤ 0.6×.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere

from maskformer.config import get_preset
from maskformer.converters.hf import convert_hf_state_dict, read_hf_directory
from maskformer.losses import build_criterion, default_loss_weights, weighted_total
from maskformer.model import build_model
from maskformer.training.trainer import float_outputs, native_bf16


def build_pair(num_classes: int = 150) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A random HF R50 MaskFormer (deep supervision on) and ours converted from its saved files.

    HF's backbone BN stays trainable (its own design); ours is FrozenBN, as the official model.
    """
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig

    torch.manual_seed(0)
    bb = ResNetConfig(
        depths=[3, 4, 6, 3],
        hidden_sizes=[256, 512, 1024, 2048],
        layer_type="bottleneck",
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    hf_cfg = MaskFormerConfig(backbone_config=bb, num_labels=num_classes, use_auxiliary_loss=True)
    hf = MaskFormerForInstanceSegmentation(hf_cfg)
    with torch.no_grad():  # HF's BN init (weight ~N(0, 0.02)) would make the backbone output ~0
        for mod in hf.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.5, 1.5)
                mod.running_var.uniform_(0.5, 2.0)
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        state_dict, hf_config = read_hf_directory(d)
    converted, cfg = convert_hf_state_dict(state_dict, hf_config)
    ours = build_model(cfg.model)
    ours.load_state_dict(converted)
    return hf, ours


def make_batch(batch: int, size: int, masks: int, num_classes: int, device: torch.device):
    """Random images and ``masks`` non-overlapping-ish rectangles per image with random labels."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        m = torch.zeros(masks, size, size, dtype=torch.bool)
        for j in range(masks):
            y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
            h, w = torch.randint(size // 8, size // 2, (2,), generator=g).tolist()
            m[j, y0 : y0 + h, x0 : x0 + w] = True
        labels = torch.randint(0, num_classes, (masks,), generator=g)
        targets.append({"labels": labels.to(device), "masks": m.to(device)})
    return images.to(device), targets


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or the rise of peak RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_kib("VmHWM") * 1024
        self.mib = (peak - self.base) / 2**20


def timed_round_robin(steps: dict, device: torch.device, runs: int) -> dict:
    """name -> median seconds over ``runs`` rounds after one warm-up round.

    The variants alternate within each round so that load from other processes on a shared
    machine hits all of them alike.
    """
    for step in steps.values():
        step()
    _sync(device)
    times = {name: [] for name in steps}
    for _ in range(runs):
        for name, step in steps.items():
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(times[name]) for name in steps}


def peak_mib(steps: dict, device: torch.device) -> dict:
    """name -> peak MiB of one step of each; call it after a step of each has run (warm-up)."""
    peaks = {}
    for name, step in steps.items():
        with PeakMemory(device) as mem:
            step()
        peaks[name] = mem.mib
    return peaks


_KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 36)}


def cpu_peaks_in_child() -> dict:
    """Run this script again with ``--peaks-only`` under a 1 MiB mmap threshold; its peaks."""
    env = {k: v for k, v in os.environ.items() if k not in _KEEP_FREED_MEMORY}
    env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
    cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--peaks-only"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def loss_only_seconds(ours, criterion, images, targets, weights) -> float:
    """Seconds of the criterion alone (matching, forward and backward) on detached outputs."""
    with torch.no_grad():
        out = ours(images, aux=True)

    def leaf(t):
        return t.detach().requires_grad_()

    out = {
        "pred_logits": leaf(out["pred_logits"]),
        "pred_masks": leaf(out["pred_masks"]),
        "aux_outputs": [{k: leaf(v) for k, v in a.items()} for a in out["aux_outputs"]],
    }
    t0 = time.perf_counter()
    weighted_total(criterion(out, targets), weights).backward()
    return time.perf_counter() - t0


def compare_losses(ours_losses: dict, hf, images, hf_masks, hf_labels) -> None:
    """Print our final-layer loss terms next to HF's criterion on HF's final-layer outputs.

    Only the final layer is comparable: with ``use_auxiliary_loss`` HF supervises the raw decoder
    hidden states (its input embedding included, without the shared decoder LayerNorm), where the
    official model supervises the 5 normalised intermediate layers.
    """
    aux = hf.config.use_auxiliary_loss
    hf.config.use_auxiliary_loss = False
    with torch.no_grad():
        out = hf(pixel_values=images)
        hf_losses = hf.criterion(
            out.masks_queries_logits, out.class_queries_logits, hf_masks, hf_labels
        )
    hf.config.use_auxiliary_loss = aux
    for k in ("loss_ce", "loss_mask", "loss_dice"):
        ref = float(hf_losses[k.replace("loss_ce", "loss_cross_entropy")])
        ours = float(ours_losses[k])
        print(f"  {k:10s} ours {ours:.7f}  HF {ref:.7f}  rel. diff {abs(ours - ref) / ref:.1e}")


def drop_input_aux(hf) -> None:
    """Make HF supervise 5 aux sets (18 terms, the official count) instead of 6: drop the set it
    computes on the decoder's input embedding, so both steps do the same amount of loss work."""
    get_logits = hf.get_logits

    def five_aux(outputs):
        classes, masks, aux = get_logits(outputs)
        return classes, masks, aux[1:]

    hf.get_logits = five_aux


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--masks", type=int, default=5)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    p.add_argument("--peaks-only", action="store_true", help=argparse.SUPPRESS)  # the CPU child
    args = p.parse_args()
    if args.device == "cpu" and not args.peaks_only and "MALLOC_MMAP_MAX_" not in os.environ:
        # glibc reads these at start-up: re-exec so that timing is free of page-fault churn
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_KEEP_FREED_MEMORY})
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    hf, ours = build_pair()
    drop_input_aux(hf)
    hf, ours = hf.to(device).eval(), ours.to(device).eval()
    cfg = get_preset("maskformer_r50_ade20k")
    exact = build_criterion(cfg).to(device)
    points = build_criterion(replace(cfg, solver=replace(cfg.solver, point_sampled_loss=True)))
    points = points.to(device)
    weights = default_loss_weights(cfg.solver, cfg.model.num_predictions)
    images, targets = make_batch(args.batch, args.size, args.masks, 150, device)
    hf_masks = [t["masks"].float() for t in targets]
    hf_labels = [t["labels"] for t in targets]

    nhwc = copy.deepcopy(ours).to(memory_format=torch.channels_last)  # solver.channels_last
    bf16 = native_bf16(device)

    def ours_step(criterion, model=ours, amp=False):
        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(images, aux=True)
            losses = criterion(float_outputs(out), targets)  # fp32 losses, as the Trainer
            total = weighted_total(losses, weights)
            total.backward()
            model.zero_grad(set_to_none=True)
            return total.detach(), {k: v.detach() for k, v in losses.items()}

        return step

    def hf_step(amp=False):
        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = hf(
                    pixel_values=images,
                    mask_labels=hf_masks,
                    class_labels=hf_labels,
                    output_hidden_states=True,
                )  # HF needs this for its auxiliary losses
            out.loss.backward()
            hf.zero_grad(set_to_none=True)
            return out.loss

        return step

    steps = {
        "hf": hf_step(),
        "exact": ours_step(exact),
        "points": ours_step(points),
        "exact_nhwc": ours_step(exact, nhwc),
        "points_nhwc": ours_step(points, nhwc),
    }
    if bf16:  # both under bf16 autocast (HF's Trainer with bf16=True wraps its whole forward)
        steps.update(hf_bf16=hf_step(True), points_nhwc_bf16=ours_step(points, nhwc, True))
    if args.peaks_only:
        for step in steps.values():  # warm-up
            step()
        print(json.dumps(peak_mib(steps, device)))
        return 0
    print(
        f"device {device}, batch {args.batch}x3x{args.size}x{args.size}, {args.masks} masks per "
        f"image, {args.runs} timed runs, {torch.get_num_threads()} CPU threads, "
        f"torch {torch.__version__}"
    )
    total, ours_losses = ours_step(exact)()
    print(f"our total (18 weighted terms) {float(total):.6f}; final-layer terms vs HF:")
    compare_losses(ours_losses, hf, images, hf_masks, hf_labels)

    times = timed_round_robin(steps, device, args.runs)
    peaks = peak_mib(steps, device) if device.type == "cuda" else cpu_peaks_in_child()
    rows = (
        ("hf", "HF   exact loss step", "hf", ""),
        ("exact", "ours exact, NCHW", "hf", " (goal <= 1.0)"),
        ("points", "ours point-sampled, NCHW", "hf", " (goal <= 0.6)"),
        ("exact_nhwc", "ours exact, NHWC (default)", "hf", " (goal <= 1.0)"),
        ("points_nhwc", "ours point-sampled, NHWC", "hf", " (goal <= 0.6)"),
        ("hf_bf16", "HF   exact, bf16 autocast", "hf", ""),
        ("points_nhwc_bf16", "ours points, NHWC, bf16", "hf_bf16", " (both bf16)"),
    )
    for name, label, ref, goal in rows:
        if name not in times:
            continue
        ratio = "" if name == ref else f"  ratio /{ref} {times[name] / times[ref]:.3f}{goal}"
        print(f"{label:28s} {times[name] * 1e3:9.1f} ms  peak {peaks[name]:8.1f} MiB{ratio}")
    if bf16:
        print(f"ours points, NHWC, bf16 / HF fp32: {times['points_nhwc_bf16'] / times['hf']:.3f}")
    for name, crit in (("exact", exact), ("point-sampled", points)):
        secs = loss_only_seconds(ours, crit, images, targets, weights)
        print(f"  of which our {name} loss alone (match + fwd + bwd): {secs * 1e3:9.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
