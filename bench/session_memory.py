"""What an Annotate session keeps in memory for a 12 MP photo, with 50 edits in its history.

Usage: ``python bench/session_memory.py [--sessions 8] [--size 4000x3000] [--edits 50]
[--checkpoint CKPT] [--max-rss-gb 3.5]``.

Opens one photo per session through the app's callbacks (the demo model, the engine's
``Prediction``), makes edits of every kind (brush strokes, polygons, deletes, merges, relabels,
undo / redo), and prints per session: the bytes the ``Session`` holds itself (its display copy,
id map, thumbnails, overlay and undo history) and the growth of the process's resident memory
(which also counts the engine's ``Prediction``). Goals (issue 18): <= 300 MB per session, 8
sessions in 4 GB. Stops early, saying so, when the process passes ``--max-rss-gb``.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from anywhere without installing

from app import callbacks as cb
from app.session import Session
from app.store import Workspace
from bench.photo import jpeg_bytes, make_photo
from maskformer.inference import Predictor

MB = 1 << 20


def rss() -> int:
    """Resident set size of this process, bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def big_photo(w: int, h: int, seed: int) -> bytes:
    """The procedural photo made at a quarter size and enlarged, with fresh sensor noise."""
    small = make_photo(w // 4, h // 4, seed=seed)
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
    noise = np.random.default_rng(seed).normal(0, 2.0, big.shape)
    return jpeg_bytes(np.clip(big + noise, 0, 255).astype(np.uint8), quality=90)


def edit(ctx, s: Session, n: int, rng: np.random.Generator) -> None:
    """``n`` edits of every kind, at random places (warnings for impossible ones are skipped)."""
    h, w = s.image_hw
    for i in range(n):
        ids = s.annotation.ids
        kind = i % 7
        try:
            if kind == 0:
                pts = rng.uniform([0, 0], [w, h], size=(12, 2)).tolist()
                cb.brush(ctx, s, pts, float(rng.uniform(20, 200)), "add", None, "circle")
            elif kind == 1 and ids:
                pts = rng.uniform([0, 0], [w, h], size=(8, 2)).tolist()
                cb.brush(ctx, s, pts, 120.0, "erase", int(rng.choice(ids)))
            elif kind == 2:
                cx, cy = rng.uniform([0, 0], [w, h])
                poly = [[cx, cy], [cx + 600, cy], [cx + 600, cy + 400], [cx, cy + 400]]
                cb.polygon(ctx, s, poly, "add", None, "square")
            elif kind == 3 and len(ids) > 1:
                cb.merge_segments(s, ids[0], ids[-1])
            elif kind == 4 and ids:
                cb.relabel_segment(ctx, s, int(rng.choice(ids)), "ring")
            elif kind == 5 and ids:
                cb.delete_segment(s, int(rng.choice(ids)))
            else:
                cb.undo(s)
                cb.redo(s)
        except Exception as e:
            if "Error" not in type(e).__name__:
                raise


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--size", default="4000x3000")
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "demo.safetensors")
    ap.add_argument("--max-rss-gb", type=float, default=3.5)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        ctx = cb.make_context(
            Predictor.from_checkpoint(args.checkpoint, device="cpu"), Workspace(tmp), "demo"
        )
        recs = [
            ctx.workspace.add_image(big_photo(w, h, seed=i), f"photo{i}.jpg")
            for i in range(args.sessions)
        ]
        gc.collect()
        base = rss()
        print(
            f"{w}x{h} photos ({w * h / 1e6:.1f} MP), {args.edits} edits each; base RSS "
            f"{base / MB:.0f} MB"
        )
        print(
            f"{'session':>8s} {'open s':>7s} {'Session MB':>11s} {'history MB':>11s} "
            f"{'RSS MB':>8s} {'RSS/session MB':>15s}"
        )
        sessions = []
        rng = np.random.default_rng(0)
        for i, rec in enumerate(recs):
            t0 = time.perf_counter()
            s = cb.open_image(ctx, Session(), rec.id, 0.5, 0.8)
            cb.inspect_prediction(ctx, s)
            opened = time.perf_counter() - t0
            edit(ctx, s, args.edits, rng)
            sessions.append(s)
            gc.collect()
            now = rss()
            print(
                f"{i + 1:8d} {opened:7.1f} {s.nbytes / MB:11.1f} {s.history.nbytes / MB:11.2f} "
                f"{now / MB:8.0f} {(now - base) / (i + 1) / MB:15.0f}",
                flush=True,
            )
            if now > args.max_rss_gb * (1 << 30):
                print(f"stopped: RSS {now / MB:.0f} MB passed --max-rss-gb {args.max_rss_gb}")
                break
        total = sum(s.nbytes for s in sessions)
        print(
            f"Sessions' own bytes: {total / MB:.1f} MB for {len(sessions)} "
            f"({total / len(sessions) / MB:.1f} MB each); RSS growth "
            f"{(rss() - base) / MB:.0f} MB (goal: <= 300 MB each, 8 in 4096 MB)"
        )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
