"""Does the review queue's uncertainty score find the images the model got wrong?

Usage: ``python bench/uncertainty.py [--data DIR] [--checkpoint CKPT] [--num-images 200]``.
Without ``--data`` it writes the synthetic validation split first (``python -m maskformer synth
--out DIR --num-images 200 --seed 12345 --size 128``). For every image: the model's prediction,
its per-image PQ against the ground truth (``maskformer.evaluation.pq_from_id_maps``, the engine's
own metric) and each candidate score of ``app.uncertainty`` at the model's thresholds. Printed:
the Spearman rank correlation of each score with PQ (ours, checked against
``scipy.stats.spearmanr``; negative = the unsure images are the bad ones), the mean PQ of the 20 %
most uncertain images against the rest, and how many of the 20 % lowest-PQ images the score puts
in its own top 20 %.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from app.uncertainty import CANDIDATES, CHOSEN, outcome
from maskformer.data import open_dataset
from maskformer.evaluation import pq_from_id_maps
from maskformer.inference import Predictor


def ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (what Spearman's rho needs)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # average the ranks of tied values
        tied = x == v
        if tied.sum() > 1:
            r[tied] = r[tied].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the ranks (NaN when either side is constant)."""
    ra, rb = ranks(np.asarray(a, np.float64)), ranks(np.asarray(b, np.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def synth_split(out: Path, n: int, seed: int) -> Path:
    cmd = [sys.executable, "-m", "maskformer", "synth", "--out", str(out)]
    cmd += ["--num-images", str(n), "--seed", str(seed), "--size", "128"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="a labelled dataset (default: synth)")
    p.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo.safetensors")
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument(
        "--seed", type=int, default=12345, help="synth seed (12345: the validation split)"
    )
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory(prefix="mfs-uncertainty-")
        args.data = synth_split(Path(tmp.name) / "val", args.num_images, args.seed)
    ds = open_dataset(args.data)
    predictor = Predictor.from_checkpoint(args.checkpoint, device="cpu")
    t_score = predictor.cfg.test.object_mask_threshold
    t_overlap = predictor.cfg.test.overlap_threshold
    n = min(len(ds), args.num_images)
    pq, scores, skipped = [], {name: [] for name in CANDIDATES}, 0
    start = time.perf_counter()
    for i in range(n):
        sample = ds.load(i)
        pred = predictor.predict(sample.image)
        pan = pred.panoptic(t_score, t_overlap)
        value = pq_from_id_maps(
            sample.id_map, sample.segments, pan.panoptic_seg, pan.segments, ds.meta
        )["PQ"]
        if value is None:  # no segment on either side: PQ undefined
            skipped += 1
            continue
        pq.append(value)
        o = outcome(pred, t_score, t_overlap)
        for name, fn in CANDIDATES.items():
            scores[name].append(fn(o, t_score, t_overlap))
    pq_arr = np.array(pq)
    print(
        f"{len(pq)} images of {args.data} ({skipped} without any segment skipped), model "
        f"{args.checkpoint.name}, thresholds {t_score} / {t_overlap}; mean per-image PQ "
        f"{pq_arr.mean():.1f}, {time.perf_counter() - start:.0f} s, load "
        f"{os.getloadavg()[0]:.1f}"
    )
    from scipy.stats import spearmanr

    k = max(1, round(0.2 * len(pq)))
    worst = set(np.argsort(pq_arr, kind="stable")[:k].tolist())
    print(
        f"{'score':20s} {'spearman(score, PQ)':>20s} {'scipy':>8s} {'PQ top20%':>10s} "
        f"{'PQ rest':>8s} {'worst20% found':>15s}"
    )
    for name, values in scores.items():
        v = np.array(values)
        rho, ref = spearman(v, pq_arr), float(spearmanr(v, pq_arr).statistic)
        assert np.isnan(rho) and np.isnan(ref) or abs(rho - ref) < 1e-9, (name, rho, ref)
        top = np.argsort(-v, kind="stable")[:k]
        rest = np.setdiff1d(np.arange(len(v)), top)
        found = len(worst & set(top.tolist()))
        mark = "  <- image_uncertainty" if name == CHOSEN else ""
        print(
            f"{name:20s} {rho:20.3f} {ref:8.3f} {pq_arr[top].mean():10.1f} "
            f"{pq_arr[rest].mean():8.1f} {found:>9d}/{k:<5d}{mark}"
        )
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
