"""Memory of predict and of app sessions on big photos (peak RSS, each row in its own process).

Usage: ``python bench/memory.py [--checkpoint checkpoints/demo.safetensors] [--rows ...]
[--baseline DIR] [--baseline-limit-gb 6]``.

Rows (goals from issue 18):
- ``predict``: ``python -m maskformer predict`` (panoptic, with the overlay) on an 8000x6000 JPEG:
  the process's peak RSS (goal <= 2 GB).
- ``session``: the app opens a 12 MP photo (4000x3000) through ``app.callbacks.open_image`` on a
  fresh ``Session`` (a ``Workspace`` in a temp folder, the checkpoint's ``Predictor``), as the
  app does: the RSS the session keeps (goal <= 300 MB), the peak while opening, and the threshold
  slider (``callbacks.remerge``, median; goal <= 0.5 s): ``slider_s`` over a drag of new score
  thresholds with the pixel assignment computed each time (a kept query set not seen before),
  ``slider_revisit_s`` back and forth between two settings (assignments cached by kept query set);
  ``slider_engine*`` the same for ``Prediction.panoptic`` alone (the rest is the app's views).
- ``sessions``: 8 sessions, each with its own 12 MP photo, open at once: the process RSS
  (goal: fits in 4 GB).
The RSS a session keeps is measured after ``gc`` and ``malloc_trim`` (freed memory returned to
the system), against the same process with the model loaded and a small image opened once.

``--baseline DIR`` runs the same rows on another checkout (e.g. ``git archive <commit> | tar -x
-C DIR``), each under an address-space limit (``RLIMIT_AS``, ``--baseline-limit-gb`` above the
interpreter's own) so a row that would need more memory fails instead of taking the machine.

Measured 2026-12-07 with the demo checkpoint on an idle 2-core Intel Xeon (AVX-512, AMX):
- predict 8000x6000: peak 1.65 GB (goal 2 GB; 14.6 s). Before (dense full-size logits): 11 GB,
  the figure of issue 18 (not rerun).
- session, 12 MP: keeps 72.7 MB (goal 300 MB; before 2.3 GB), peak while opening 1.14 GB, 1.67 s.
- 8 sessions, 12 MP each: process RSS 1.38 GB (72 MB each; peak 1.65 GB; goal 4 GB).
- slider at 12 MP (before: 34 s), a new kept query set each move: 0.335 s (engine 0.176 s); back
  and forth between settings seen before 0.192 s (engine 0.046 s).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOALS = {"predict_peak_mb": 2048, "session_kept_mb": 300, "sessions_rss_mb": 4096, "slider_s": 0.5}


def _status(field: str) -> float:
    """A /proc/self/status field (VmRSS, VmHWM, VmSize) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _trim() -> float:
    """Collect garbage, give freed heap back to the system, return the RSS in MB."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    return _status("VmRSS")


def photo_bytes(h: int, w: int, seed: int = 0) -> bytes:
    """A JPEG photo of a synthetic scene (the demo model's shapes), upscaled to h x w with grain."""
    import numpy as np
    from PIL import Image

    from maskformer.data.synthetic import generate_sample

    scene = generate_sample(seed, seed=7, size=512).image
    big = np.array(Image.fromarray(scene).resize((w, h), Image.BICUBIC))
    out = io.BytesIO()
    grain = np.random.default_rng(seed).integers(-6, 7, (h, 1, 3), dtype=np.int16)
    for y in range(0, h, 500):  # grain in bands, so this helper stays small too
        band = big[y : y + 500].astype(np.int16) + grain[y : y + 500]
        big[y : y + 500] = band.clip(0, 255).astype(np.uint8)
    Image.fromarray(big).save(out, "JPEG", quality=90)
    return out.getvalue()


# ------------------------------------------------------------------------------ rows (children)


def row_photos(args: argparse.Namespace, tmp: Path) -> dict:
    """Writes the photos the other rows read (so their peaks do not include making them)."""
    (tmp / "photo_8000x6000.jpg").write_bytes(photo_bytes(6000, 8000))
    for i in range(8):
        (tmp / f"photo_12mp_{i}.jpg").write_bytes(photo_bytes(3000, 4000, seed=i + 1))
    (tmp / "warm.jpg").write_bytes(photo_bytes(300, 400, seed=99))
    return {"photos": 10}


def row_predict(args: argparse.Namespace, tmp: Path) -> dict:
    from maskformer.__main__ import main as cli

    photo = tmp / "photo_8000x6000.jpg"
    t = time.perf_counter()
    rc = cli(["predict", "--checkpoint", args.checkpoint, str(photo), "--out", str(tmp / "out"),
              "--no-progress", "--device", "cpu"])  # fmt: skip
    return {
        "rc": rc,
        "predict_peak_mb": _status("VmHWM"),
        "seconds": time.perf_counter() - t,
        "jpeg_mb": photo.stat().st_size / 2**20,
    }


def _app(args: argparse.Namespace, tmp: Path):
    import numpy as np

    from app import callbacks as cb
    from app.session import Session
    from app.store import Workspace
    from maskformer.inference import Predictor

    ws = Workspace(tmp / "ws")
    ctx = cb.make_context(
        Predictor.from_checkpoint(args.checkpoint, device="cpu"), ws, examples_dir=tmp / "none"
    )
    warm = Session()
    rec = ws.add_image((tmp / "warm.jpg").read_bytes(), "warm.jpg")
    cb.open_image(ctx, warm, rec.id, 0.5, 0.8)  # every code path loaded once
    del warm
    return cb, Session, ctx, ws, np


def row_session(args: argparse.Namespace, tmp: Path) -> dict:
    cb, session_cls, ctx, ws, _ = _app(args, tmp)
    rec = ws.add_image((tmp / "photo_12mp_0.jpg").read_bytes(), "photo_12mp.jpg")
    before = _trim()
    s = session_cls()
    t = time.perf_counter()
    cb.open_image(ctx, s, rec.id, 0.5, 0.8)
    open_s = time.perf_counter() - t
    kept = _trim() - before
    sweep = [(0.3 + 0.05 * i, 0.8) for i in range(11)]  # a drag: each score threshold new
    pairs = [(0.4, 0.7), (0.6, 0.85)] * 3  # back and forth: the kept query sets seen before
    pred = s.prediction

    def timed(fn, moves, fresh: bool) -> float:
        times = []
        for score, overlap in moves:
            if fresh:
                pred._assignments.clear()  # as if this kept query set were new
            t = time.perf_counter()
            fn(score, overlap)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    slider = timed(lambda a, b: cb.remerge(ctx, s, a, b), sweep, True)
    revisit = timed(lambda a, b: cb.remerge(ctx, s, a, b), pairs, False)
    engine = timed(pred.panoptic, sweep, True)
    engine_revisit = timed(pred.panoptic, pairs, False)
    return {
        "session_kept_mb": kept,
        "open_peak_mb": _status("VmHWM"),
        "open_s": open_s,
        "slider_s": slider,
        "slider_revisit_s": revisit,
        "slider_engine_s": engine,
        "slider_engine_revisit_s": engine_revisit,
        "segments": len(s.annotation.segments),
    }


def row_sessions(args: argparse.Namespace, tmp: Path) -> dict:
    cb, session_cls, ctx, ws, _ = _app(args, tmp)
    recs = [
        ws.add_image((tmp / f"photo_12mp_{i}.jpg").read_bytes(), f"photo_{i}.jpg") for i in range(8)
    ]
    before = _trim()
    sessions = []
    for rec in recs:
        s = session_cls()
        cb.open_image(ctx, s, rec.id, 0.5, 0.8)
        sessions.append(s)
    rss = _trim()
    return {
        "sessions_rss_mb": rss,
        "per_session_mb": (rss - before) / len(sessions),
        "sessions_peak_mb": _status("VmHWM"),
    }


ROWS = {
    "photos": row_photos,
    "predict": row_predict,
    "session": row_session,
    "sessions": row_sessions,
}


def _child(args: argparse.Namespace) -> None:
    sys.path.insert(0, args.repo)
    os.chdir(args.repo)
    with tempfile.TemporaryDirectory(dir=args.data) as tmp:  # outputs and workspace
        for f in Path(args.data).glob("*.jpg"):
            (Path(tmp) / f.name).symlink_to(f)
        result = ROWS[args.row](args, Path(tmp) if args.row != "photos" else Path(args.data))
    print("RESULT " + json.dumps(result))


# ------------------------------------------------------------------------------ parent


def run_row(row: str, repo: Path, checkpoint: str, data: Path, limit_gb: float | None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--row", row, "--repo", str(repo),
           "--checkpoint", checkpoint, "--data", str(data)]  # fmt: skip
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(repo)

    def limit() -> None:
        if limit_gb is not None:  # the interpreter with torch maps ~3.4 GB before any work
            cap = int((3.5 + limit_gb) * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=env, preexec_fn=limit, check=False
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:160]}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "demo.safetensors"))
    ap.add_argument("--rows", default="predict,session,sessions")
    ap.add_argument("--baseline", help="another checkout to measure the same rows on")
    ap.add_argument("--baseline-limit-gb", type=float, default=6.0)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--repo", default=str(ROOT), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        return _child(args)
    checkpoint = str(Path(args.checkpoint).resolve())
    rows = [r for r in args.rows.split(",") if r]
    runs = [("this checkout", ROOT, None)]
    if args.baseline:
        runs.insert(0, ("baseline", Path(args.baseline).resolve(), args.baseline_limit_gb))
    print(f"checkpoint {checkpoint}; peak RSS per row in its own process")
    with tempfile.TemporaryDirectory() as data:
        made = run_row("photos", ROOT, checkpoint, Path(data), None)
        if "error" in made:
            raise SystemExit(f"could not make the photos: {made['error']}")
        for label, repo, limit_gb in runs:
            note = f", address space capped {limit_gb} GB above the interpreter" if limit_gb else ""
            print(f"== {label}: {repo}{note}")
            for row in rows:
                res = run_row(row, repo, checkpoint, Path(data), limit_gb)
                print(f"  {row:9s} " + _format(res))
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _format(res: dict) -> str:
    if "error" in res:
        return f"FAILED ({res['error']})"
    parts = []
    for key, value in res.items():
        goal = GOALS.get(key)
        verdict = "met" if goal is not None and value <= goal else "NOT met"
        mark = "" if goal is None else f" (goal <= {goal:g}: {verdict})"
        parts.append(f"{key}={value:.3g}{mark}" if isinstance(value, float) else f"{key}={value}")
    return ", ".join(parts)


if __name__ == "__main__":
    main()
