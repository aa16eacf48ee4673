"""Does the Train tab's one-click fine-tune help, and what does it cost? (issue 22)

Scenario (``bench/finetune_scenario.py``): a workspace of N = 20 corrected synthetic images with a
thing shape the shipped demo model never saw (``cross``) drawn into each, and 100 images nobody
corrected (half of them with crosses), as a workspace has after an import; the base model is
``checkpoints/demo.safetensors``. For each recipe the bench makes a fresh workspace, runs the
tab's job through its headless command (``python -m app finetune --workspace WS --recipe R``),
then scores the base model and the result on two held-out sets the job never saw: images with
the new class (its PQ) and images without it (the mean PQ of the 8 classes the model knew).

Goals, with the tab's defaults (recipe ``finetune``, which for corrections that add a class runs
the expert recipe: the base model kept, an expert head trained for the new class): new class PQ
>= 65; the old classes lose <= 2 PQ; the whole job, before/after scoring included, <= 5 minutes
on the 2-core CPU. The recipe the tab ran first (``base``: lr 1e-3 on the whole model, 200
iterations, batch 4) is run in the same process, side by side.

    python bench/finetune_gain.py                  # both recipes, 5-10 min on an idle 2-core CPU
    python bench/finetune_gain.py --recipes finetune --heldout 50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from finetune_scenario import NEW_CLASS, scenario_meta, write_scenario

BASE = ROOT / "checkpoints" / "demo.safetensors"
SEED_CORRECTED, SEED_WITH, SEED_WITHOUT = 2201, 2202, 2203
SEED_UNCORRECTED = (2204, 2205)  # workspace images nobody corrected: with / without the new class
GOAL_NEW_PQ, GOAL_OLD_DROP, GOAL_JOB_S = 65.0, 2.0, 300.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="base,finetune", help="comma-separated, in print order")
    p.add_argument("--corrected", type=int, default=20, help="corrected images (N)")
    p.add_argument("--heldout", type=int, default=100, help="images in each held-out set")
    p.add_argument(
        "--uncorrected",
        type=int,
        default=100,
        help="workspace images nobody corrected, half of them with the new class (replay uses "
        "them; 0: a workspace of corrected images only)",
    )
    p.add_argument("--iters", type=int, help="override the recipes' iterations")
    p.add_argument("--device", default="cpu")
    p.add_argument("--keep", type=Path, help="work here and keep the files (default: a temp dir)")
    return p.parse_args(argv)


def make_data(work: Path, n_corrected: int, n_heldout: int, n_uncorrected: int) -> dict:
    half = n_uncorrected // 2
    return {
        "corrected": write_scenario(work / "corrected", n_corrected, seed=SEED_CORRECTED),
        "with": write_scenario(work / "heldout_with", n_heldout, seed=SEED_WITH),
        "without": write_scenario(
            work / "heldout_without", n_heldout, seed=SEED_WITHOUT, crosses=False
        ),
        "uncorrected": [
            write_scenario(work / "uncorrected_with", half, seed=SEED_UNCORRECTED[0]),
            write_scenario(
                work / "uncorrected_without",
                n_uncorrected - half,
                seed=SEED_UNCORRECTED[1],
                crosses=False,
            ),
        ],
    }


def run_job(work: Path, recipe: str, data: dict, args: argparse.Namespace) -> dict:
    """A fresh workspace (the corrected images with their labels, the uncorrected ones as plain
    images), then the tab's job through its command."""
    from app import transfer
    from app.store import Workspace

    ws_dir = work / f"ws_{recipe}"
    ws = Workspace(ws_dir)
    transfer.import_source(ws, data["corrected"])
    for folder in data["uncorrected"]:
        files = sorted((folder / "images").glob("*.png"))
        if files:
            transfer.import_source(ws, files)  # images only: not corrected
    cmd = [sys.executable, "-m", "app", "finetune", "--workspace", str(ws_dir)]
    cmd += ["--recipe", recipe, "--device", args.device, "--checkpoint", str(BASE)]
    if args.iters:
        cmd += ["--iters", str(args.iters)]
    print(f"\n$ {' '.join(cmd)}", file=sys.stderr, flush=True)
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"the fine-tune command failed ({proc.returncode})")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["bench_wall_s"], out["bench_cpu_s"] = wall, _children_cpu() - cpu0
    return out


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def evaluate(checkpoint: str | None, data: dict[str, Path], device: str) -> dict[str, float]:
    """New-class PQ on the held-out images with it, old-class mean PQ on those without it.

    ``checkpoint`` None: the base model, with the new class added and disabled (as the job
    scores "before").
    """
    from app.finetune_job import base_predictor
    from maskformer.data import open_dataset
    from maskformer.evaluation import evaluate_model
    from maskformer.inference import Predictor

    meta = scenario_meta()
    pred = (
        base_predictor(str(BASE), meta, device)
        if checkpoint is None
        else Predictor.from_checkpoint(checkpoint, device=device)
    )
    rows = {}
    for split in ("with", "without"):
        m = evaluate_model(pred, open_dataset(data[split]), ("panoptic",), progress=False)
        rows[split] = {r["name"]: r for r in m["per_class"]["panoptic"]}
    old = [rows["without"][n]["PQ"] for n in meta.class_names if n != NEW_CLASS]
    old = [x for x in old if x is not None]
    return {
        "new_pq": rows["with"][NEW_CLASS]["PQ"] or 0.0,
        "old_pq": sum(old) / len(old),
        "new_fp_without": rows["without"][NEW_CLASS]["FP"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="finetune_gain_") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = make_data(work, args.corrected, args.heldout, args.uncorrected)
        base = evaluate(None, data, args.device)
        results = {}
        for recipe in recipes:
            job = run_job(work, recipe, data, args)
            results[recipe] = (job, evaluate(job["checkpoint"], data, args.device))
    report(base, results, args, load0, os.getloadavg())
    return 0


def report(base: dict, results: dict, args: argparse.Namespace, load0, load1) -> None:
    names = list(results)
    w = 24
    print(
        f"\nfine-tune gain: demo model + N = {args.corrected} corrected images with a new class "
        f"({NEW_CLASS!r}) and {args.uncorrected} uncorrected ones; held-out: {args.heldout} "
        f"images with it, {args.heldout} without; "
        f"device {args.device}; load average {load0[0]:.1f} -> {load1[0]:.1f} "
        f"({os.cpu_count()} CPUs)"
    )
    print(f"{'':34s}{'base model':>12s}" + "".join(f"{n + ' recipe':>{w}s}" for n in names))

    def line(label: str, base_value: str, cells: list[str], goal: str = "") -> None:
        row = f"{label:34s}{base_value:>12s}" + "".join(f"{c:>{w}s}" for c in cells)
        print(row + (f"   goal: {goal}" if goal else ""))

    line(
        f"new class PQ ({NEW_CLASS}, held-out)",
        f"{base['new_pq']:.1f}",
        [f"{ev['new_pq']:.1f}" for _, ev in results.values()],
        f">= {GOAL_NEW_PQ:.0f}",
    )
    line(
        "old classes PQ (images without it)",
        f"{base['old_pq']:.1f}",
        [
            f"{ev['old_pq']:.1f} ({ev['old_pq'] - base['old_pq']:+.1f})"
            for _, ev in results.values()
        ],
        f"drop <= {GOAL_OLD_DROP:.0f}",
    )
    line(
        f"{NEW_CLASS} false positives (without)",
        str(base["new_fp_without"]),
        [str(ev["new_fp_without"]) for _, ev in results.values()],
    )
    line(
        "whole job, wall s",
        "",
        [f"{job['bench_wall_s']:.0f}" for job, _ in results.values()],
        f"<= {GOAL_JOB_S:.0f}",
    )
    line("whole job, CPU s", "", [f"{job['bench_cpu_s']:.0f}" for job, _ in results.values()])
    line(
        "  of which training, wall s",
        "",
        [f"{job['timing']['phases_s'].get('train', 0):.0f}" for job, _ in results.values()],
    )
    line(
        "tab's held-out PQ before -> after",
        "",
        [f"{job['before']['PQ']:.1f} -> {job['after']['PQ']:.1f}" for job, _ in results.values()],
    )
    line("tab's verdict", "", [job["verdict"] for job, _ in results.values()])
    line("activated", "", [str(job["activated"]) for job, _ in results.values()])
    for name, (job, ev) in results.items():
        ok = (
            ev["new_pq"] >= GOAL_NEW_PQ
            and base["old_pq"] - ev["old_pq"] <= GOAL_OLD_DROP
            and job["bench_wall_s"] <= GOAL_JOB_S
        )
        print(f"{name}: {'meets' if ok else 'misses'} the goals; {job['summary']}")
    print(json.dumps({"base": base, **{n: ev for n, (_, ev) in results.items()}}))


if __name__ == "__main__":
    sys.exit(main())
