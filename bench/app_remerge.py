"""Time the app's threshold-slider callback (re-merge from cached outputs) at 512x512, Q=100, K=133.

Usage: ``python bench/app_remerge.py [--size 512] [--queries 100] [--classes 133] [--repeats 20]``.
Measures ``app.callbacks.remerge`` (the engine's panoptic merge on the cached probabilities plus the
conversion to an editable annotation), alternating two threshold pairs: once with the
``Prediction``'s per-query-set assignment cache cleared before each call (a slider move that keeps a
new set of queries), once with it (moving back to settings already seen); and the view building the
UI does after it (segment table, overlays), reported separately. Goal: the callback within 50 ms.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from app import callbacks as cb
from app import canvas, inspector, views
from app.session import Session
from app.store import Workspace
from bench.remerge import fake_outputs, median_ms
from maskformer.config import generic_meta, get_preset
from maskformer.inference import Prediction


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--classes", type=int, default=133)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    class_logits, mask_logits = fake_outputs(args.queries, args.classes, args.size)
    meta = generic_meta(args.classes, thing_ids=tuple(range(args.classes * 6 // 10)))
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), np.uint8)
    pred = Prediction(
        class_logits=class_logits,
        mask_logits=mask_logits,
        image=image,
        meta=meta,
        test=get_preset("maskformer_r50_coco_panoptic").test,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(tmp)
        ctx = cb.AppContext(
            predictor=None, workspace=ws, meta=meta, class_categories=ws.ensure_meta(meta)
        )
        s = Session(image_id=1, image_hw=image.shape[:2], view=image, prediction=pred)
        cb.remerge(ctx, s, 0.8, 0.8)  # fills the Prediction's caches, as opening an image does
        pairs = iter([(0.8, 0.8), (0.7, 0.75)] * (args.repeats + 1))
        merge = median_ms(lambda: cb.remerge(ctx, s, *next(pairs)), args.repeats)  # revisits

        def fresh():
            pred._assignments.clear()  # as if the kept query set were new (areas stay cached)
            cb.remerge(ctx, s, *next(pairs))

        merge_new = median_ms(fresh, args.repeats)
        cats = views.categories(ws)
        rows = median_ms(lambda: canvas.segment_rows(s.annotation.segments, cats), args.repeats)
        # the canvas's value with its overlay encoded again (as after an edit of the pixels)
        pan = median_ms(
            lambda: (s.sent.clear(), setattr(s, "overlay", None), views.canvas_value(ctx, s)),
            args.repeats,
        )
        inst = median_ms(lambda: inspector.instance_view(s), args.repeats)
    print(
        f"torch threads {torch.get_num_threads()}; {args.size}x{args.size}, Q={args.queries}, "
        f"K={args.classes}; {len(s.annotation.segments)} segments, "
        f"{len(s.merged.dropped)} dropped"
    )
    print(f"{'':44s} {'wall ms':>8s} {'cpu ms':>8s}   (median of {args.repeats})")
    for name, (wall, cpu) in [
        ("remerge callback, new query set (goal <= 50)", merge_new),
        ("remerge callback, settings seen before", merge),
        ("segment rows", rows),
        ("canvas value (image + index PNG overlay)", pan),
        ("instance view", inst),
    ]:
        print(f"{name:44s} {wall:8.1f} {cpu:8.1f}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
