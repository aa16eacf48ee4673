"""Time a re-merge of cached outputs: panoptic + semantic post-processing at 512x512, Q=100, K=133.

Usage: ``python bench/remerge.py [--size 512] [--queries 100] [--classes 133] [--repeats 20]``.
The logits imitate a trained model: ~30 confident queries (some no-object), the rest uncertain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from maskformer.inference.postprocess import (
    instance_inference,
    mask_areas,
    panoptic_inference,
    semantic_inference,
    semantic_map,
)


def fake_outputs(q: int, k: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, K+1) class logits and (Q, size, size) mask logits that look like a trained model's.

    A third of the queries each own one cell of a random Voronoi partition with a confident class
    (a few of them duplicates or no-object); the rest are unsure and have weak, mostly negative masks.
    """
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(q, k + 1, generator=g)
    owners = torch.randperm(q, generator=g)[: max(1, q // 3)]
    class_logits[owners, torch.randint(0, k + 1, (len(owners),), generator=g)] += 9.0
    n = len(owners)
    centers = torch.rand(n, 2, generator=g) * size
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    d = (yy[None] - centers[:, 0, None, None]) ** 2 + (xx[None] - centers[:, 1, None, None]) ** 2
    cell = d.argmin(0)  # (size, size) owner index
    mask_logits = torch.randn(q, size, size, generator=g) * 0.5 - 4.0
    for i, o in enumerate(owners.tolist()):
        mask_logits[o] += (cell == i).float() * 10.0
    return class_logits, mask_logits


def median_ms(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU (process) milliseconds; CPU time is less sensitive to other load."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--classes", type=int, default=133)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    class_logits, mask_logits = fake_outputs(args.queries, args.classes, args.size)
    things = range(args.classes * 6 // 10)
    probs = mask_logits.sigmoid()  # what Prediction caches
    areas = mask_areas(probs)  # likewise
    pan = panoptic_inference(class_logits, mask_logits, thing_ids=things, mask_probs=probs)
    print(
        f"torch threads {torch.get_num_threads()}; {args.size}x{args.size}, Q={args.queries}, "
        f"K={args.classes}; {len(pan.segments)} segments, {len(pan.dropped)} dropped"
    )
    rows = {
        "sigmoid + areas (once per prediction)": lambda: mask_areas(mask_logits.sigmoid()),
        "panoptic_inference (no cache)": lambda: panoptic_inference(
            class_logits, mask_logits, thing_ids=things
        ),
        "panoptic_inference (cached probs)": lambda: panoptic_inference(
            class_logits, mask_logits, thing_ids=things, mask_probs=probs, areas=areas
        ),
        "semantic_map (argmax, cached probs)": lambda: semantic_map(
            class_logits, mask_logits, mask_probs=probs
        ),
        "semantic_inference (K,H,W scores)": lambda: semantic_inference(
            class_logits, mask_logits, mask_probs=probs
        ),
        "instance_inference top-100": lambda: instance_inference(
            class_logits, mask_logits, topk=100, mask_probs=probs
        ),
    }
    res = {name: median_ms(fn, args.repeats) for name, fn in rows.items()}
    print(f"{'':40s} {'wall ms':>8s} {'cpu ms':>8s}   (median of {args.repeats})")
    for name, (wall, cpu) in res.items():
        print(f"{name:40s} {wall:8.1f} {cpu:8.1f}")
    parts = [res["panoptic_inference (cached probs)"], res["semantic_map (argmax, cached probs)"]]
    print(
        f"{'re-merge = panoptic + semantic map':40s} {sum(p[0] for p in parts):8.1f} "
        f"{sum(p[1] for p in parts):8.1f}"
    )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
