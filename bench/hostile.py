"""Attack the project as a hostile user would, and print the figures README reports.

    python bench/hostile.py                      # everything: ~10 min on 2 busy cores
    python bench/hostile.py --kills 0 --sessions 0   # the hostile inputs only

1. Hostile inputs (``tests/hostile_cases.py``): each through its entry point (the CLI, the
   workspace API, the app's import child); ``--app`` sends every import case through the app's
   Import path as well. Prints tried / handled cleanly, and every case that was not.
2. kill -9 faults: ``--kills`` processes killed at a random moment while they save annotations,
   import 120 images, export, or train (the fine-tune's long step, with checkpoints and resume
   state). After each kill the workspace is reopened as the app does on start and must pass:
   ``PRAGMA integrity_check``, every completed save still there, an import all or nothing, every
   image file present with its hash and none unreferenced, no temp files left; a killed train run
   must resume and every checkpoint in its folder must load.
3. Sessions: ``--sessions`` gradio_client users on one app for ``--seconds``, each opening its own
   image, editing, saving, listing and exporting. Prints calls, saves, errors, cross-talk (a
   session seeing another's image) and saves lost (a save acknowledged but absent afterwards).

The machine's load average is printed with the figures: timings here are noisy, counts are not.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


# ------------------------------------------------------------------------------------ inputs


def hostile_inputs(app: bool) -> dict:
    from hostile_driver import run_all

    t = time.perf_counter()
    rows = run_all(["--app"] if app else [])
    bad = [r for r in rows if not r["clean"]]
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        tally = by_kind.setdefault(r["kind"], [0, 0])
        tally[0] += 1
        tally[1] += bool(r["clean"])
    print(f"\nhostile inputs: {len(rows)} tried, {len(rows) - len(bad)} handled cleanly", end="")
    print(f" ({time.perf_counter() - t:.0f} s{', app import path too' if app else ''})")
    print("  by kind: " + ", ".join(f"{k} {c}/{n}" for k, (n, c) in sorted(by_kind.items())))
    for r in bad:
        print(f"  NOT CLEAN: {r['name']} ({r['command']}): {r['outcome']}: {r['detail'][:200]}")
    return {"tried": len(rows), "clean": len(rows) - len(bad)}


# ------------------------------------------------------------------------------------ kill -9

SAVER = """
import os, sys, json, random
import numpy as np
from app.store import Workspace
ws = Workspace(sys.argv[1])
ids = [r.id for r in ws.list_images()]
cid = ws.categories()[0].id
journal = open(sys.argv[2], "a")
n = int(sys.argv[3])
while True:
    n += 1
    image_id = random.choice(ids)
    rec = ws.image(image_id)
    m = np.full((rec.height, rec.width), n % 200 + 1, np.int32)
    ws.save_annotation(image_id, m, [{"id": n % 200 + 1, "category_id": cid, "n": n}])
    journal.write(json.dumps([image_id, n]) + "\\n")
    journal.flush()
    os.fsync(journal.fileno())
"""

IMPORTER = """
import sys
from pathlib import Path
from app.store import Workspace
from app.transfer import import_source
import_source(Workspace(sys.argv[1]), Path(sys.argv[2]))
print("done", flush=True)
"""

EXPORTER = """
import sys
from app.store import Workspace
from app.transfer import export_zip
ws = Workspace(sys.argv[1])
while True:
    export_zip(ws, "coco-panoptic")
"""


def _python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )


def _kill_after(proc: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL ``proc`` after ``seconds``; False if it had already ended by itself."""
    try:
        proc.wait(seconds)
        return False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True


def check_workspace(root: Path) -> list[str]:
    """Reopen the workspace as the app does on start and list what is wrong with it."""
    from app.store import Workspace

    problems = []
    ws = Workspace(root)  # runs the cleanup
    con = sqlite3.connect(ws.db_path)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        rows = con.execute("SELECT file, sha256 FROM images").fetchall()
    finally:
        con.close()
    if check != "ok":
        problems.append(f"integrity_check: {check}")
    files = {f"images/{p.name}" for p in (root / "images").iterdir()}
    for file, sha in rows:
        if file not in files:
            problems.append(f"{file} missing")
        elif hashlib.sha256((root / file).read_bytes()).hexdigest() != sha:
            problems.append(f"{file} damaged")
    extra = files - {r[0] for r in rows}
    if extra:
        problems.append(f"{len(extra)} unreferenced image files")
    leftovers = (
        [p.name for p in (root / "exports").glob(".*")] if (root / "exports").is_dir() else []
    )
    leftovers += (
        [p.name for p in (root / ".imports").glob("*")] if (root / ".imports").is_dir() else []
    )
    if leftovers:
        problems.append(f"temp files left: {leftovers[:3]}")
    return problems


def _seed_workspace(root: Path, n_images: int = 6) -> None:
    import numpy as np

    from app.store import Workspace
    from hostile_cases import png

    ws = Workspace(root)
    ws.add_category("thing")
    for k in range(n_images):
        rec = ws.add_image(png(48, 64, seed=100 + k), f"seed{k}.png")
        cid = ws.categories()[0].id
        ws.save_annotation(rec.id, np.full((48, 64), 1, np.int32), [{"id": 1, "category_id": cid}])


def kill_saves(root: Path, rng: random.Random) -> list[str]:
    journal = root.parent / "journal.jsonl"
    done = [json.loads(ln) for ln in journal.read_text().splitlines()] if journal.exists() else []
    start = max((n for _, n in done), default=0) + 1000
    proc = _python(SAVER, str(root), str(journal), str(start))
    _kill_after(proc, rng.uniform(1.5, 4.0))
    problems = check_workspace(root)
    from app.store import Workspace

    ws = Workspace(root)
    last: dict[int, int] = {}
    for image_id, n in (json.loads(ln) for ln in journal.read_text().splitlines()):
        last[image_id] = max(last.get(image_id, 0), n)
    for image_id, n in last.items():
        ann = ws.load_annotation(image_id)
        stored = ann[1][0].get("n", 0) if ann and ann[1] else 0
        if stored < n:  # an acknowledged save was lost (a later one in flight may have landed)
            problems.append(f"image {image_id}: save {n} lost (has {stored})")
    return problems


def kill_import(root: Path, rng: random.Random, source: Path) -> list[str]:
    from app.store import Workspace

    before = len(Workspace(root).list_images())
    proc = _python(IMPORTER, str(root), str(source))
    killed = _kill_after(proc, rng.uniform(0.5, 6.0))
    problems = check_workspace(root)
    after = len(Workspace(root).list_images())
    if after not in (before, before + 120):
        problems.append(f"import half done: {after - before} of 120 images")
    if not killed:
        problems.append("(finished before the kill)")
    return problems


def kill_export(root: Path, rng: random.Random) -> list[str]:
    proc = _python(EXPORTER, str(root))
    _kill_after(proc, rng.uniform(1.0, 4.0))
    problems = check_workspace(root)
    import zipfile

    for z in (root / "exports").glob("*.zip"):
        try:
            with zipfile.ZipFile(z) as zf:
                if zf.testzip() is not None:
                    problems.append(f"{z.name} damaged")
        except zipfile.BadZipFile:
            problems.append(f"{z.name} is not a zip")
    return problems


def kill_train(folder: Path, rng: random.Random, data: Path) -> list[str]:
    run = folder / "run"
    cmd = [
        sys.executable,
        "-m",
        "maskformer",
        "train",
        "--preset",
        "maskformer_tiny",
        "--model.backbone=test_resnet",
        "--solver.max_iter=400",
        "--solver.checkpoint_period=5",
        "--solver.batch_size=2",
        "--input.crop_size=[64,64]",
        "--train",
        str(data),
        "--out",
        str(run),
        "--no-progress",
    ]
    if (run / "resume").exists() or any(run.glob("*.safetensors")):
        cmd.append("--resume")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = _kill_after(proc, rng.uniform(8.0, 20.0))
    problems = []
    if not killed and proc.returncode != 0:  # e.g. --resume refused what a kill left
        problems.append(f"train exited {proc.returncode}: {proc.stderr.read()[-200:]!r}")
    elif not killed:
        problems.append("(finished before the kill)")
    from maskformer.checkpoint import load_checkpoint

    for ckpt in run.glob("model_*.safetensors"):  # state_* are resume states: --resume reads them
        try:
            load_checkpoint(ckpt)
        except Exception as e:  # noqa: BLE001 -- a checkpoint that does not load is the finding
            problems.append(f"{ckpt.name}: {type(e).__name__}: {e}"[:200])
    return problems


def kill_faults(n: int, seed: int = 0) -> dict:
    from hostile_cases import png, write
    from maskformer.data.synthetic import write_synthetic_dataset

    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="hostile-kill-"))
    ws = tmp / "ws"
    _seed_workspace(ws)
    source = tmp / "import-src"
    for k in range(120):
        write(source, f"img{k:03d}.png", png(300, 400, seed=k))
    data = write_synthetic_dataset(tmp / "synth", 8, seed=1, size=64)
    kinds = ["save", "import", "export", "train"]
    results: dict[str, list[int]] = {k: [0, 0] for k in kinds}
    failures = []
    finished = 0
    t = time.perf_counter()
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "save":
            problems = kill_saves(ws, rng)
        elif kind == "import":
            problems = kill_import(ws, rng, source)
        elif kind == "export":
            problems = kill_export(ws, rng)
        else:
            problems = kill_train(tmp, rng, data)
        real = [p for p in problems if not p.startswith("(")]
        results[kind][0] += 1
        results[kind][1] += not real
        finished += "(finished before the kill)" in problems
        if real:
            failures.append(f"{kind} #{i}: {'; '.join(real)}"[:400])
    survived = sum(v[1] for v in results.values())
    print(
        f"\nkill -9 faults: {n} ({', '.join(f'{k} {v[0]}' for k, v in results.items())}): "
        f"{survived} survived with nothing lost ({time.perf_counter() - t:.0f} s; "
        f"{n - finished} killed mid-operation, {finished} finished first)"
    )
    for f in failures:
        print(f"  NOT SURVIVED: {f}")
    return {"kills": n, "survived": survived}


# ------------------------------------------------------------------------------------ sessions


def sessions(n: int, seconds: float) -> dict:
    from gradio_client import Client, handle_file

    from app_helpers import AppServer, tiny_checkpoint
    from hostile_cases import png

    tmp = Path(tempfile.mkdtemp(prefix="hostile-sessions-"))
    ckpt = tiny_checkpoint(tmp / "tiny.safetensors")
    server = AppServer(ckpt, tmp / "ws", tmp / "server.log")
    stats = {"calls": 0, "saves": 0, "errors": 0, "crosstalk": 0}
    saved: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def user(k: int) -> None:
        c = Client(server.url, analytics_enabled=False, download_files=False, verbose=False)
        name = f"session{k}.png"
        img = tmp / name
        img.write_bytes(png(40 + 4 * k, 56 + 4 * k, seed=1000 + k))  # its size names it
        end = time.monotonic() + seconds
        rounds = 0
        while time.monotonic() < end:
            try:
                out = c.predict(handle_file(str(img)), 0.0, 0.0, False, api_name="/open_upload")
                status = out[6]
                mine = f"{name}, {56 + 4 * k}x{40 + 4 * k}" in str(status)
                rows = out[1]["data"] if isinstance(out[1], dict) else []
                if rows:
                    c.predict(rows[0][0], api_name="/delete")
                saved_status, _ = c.predict(api_name="/save")
                c.predict(api_name="/list_images")
                calls = 4 + bool(rows)
                if rounds % 5 == 4:
                    c.predict("coco-panoptic", False, api_name="/export")
                    calls += 1
                with lock:
                    stats["calls"] += calls
                    stats["crosstalk"] += not mine
                    if "saved" in str(saved_status):
                        stats["saves"] += 1
                        saved[name] = saved.get(name, 0) + 1
            except Exception as e:  # noqa: BLE001 -- every error a user would see counts
                with lock:
                    stats["errors"] += 1
                    errors.append(f"session {k}: {type(e).__name__}: {str(e)[:150]}")
            rounds += 1

    try:
        server.wait()
        t = time.perf_counter()
        threads = [threading.Thread(target=user, args=(k,)) for k in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.perf_counter() - t
        alive = server.alive()
    finally:
        server.stop()
    from app.store import Workspace

    ws = Workspace(tmp / "ws")
    by_name = {r.name: r for r in ws.list_images()}
    lost = sum(
        1
        for name in saved
        if name not in by_name
        or by_name[name].status != "corrected"
        or ws.load_annotation(by_name[name].id) is None
    )
    problems = check_workspace(tmp / "ws")
    print(
        f"\nsessions: {n} gradio_client sessions for {took:.0f} s: {stats['calls']} calls, "
        f"{stats['saves']} saves, {stats['errors']} errors, {stats['crosstalk']} cross-talk, "
        f"{lost} saves lost; server alive: {alive}; workspace: {'; '.join(problems) or 'ok'}"
    )
    for e in errors[:10]:
        print(f"  ERROR: {e}")
    return {**stats, "lost": lost, "alive": alive}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no-inputs", action="store_true", help="skip the hostile inputs")
    p.add_argument("--app", action="store_true", help="import cases through the app's path too")
    p.add_argument("--kills", type=int, default=52, help="kill -9 faults (default 52)")
    p.add_argument("--sessions", type=int, default=8, help="concurrent sessions (default 8)")
    p.add_argument("--seconds", type=float, default=120, help="how long they run (default 120)")
    args = p.parse_args(argv)
    print(f"bench/hostile.py on {os.cpu_count()} CPUs, {load()}")
    if not args.no_inputs:
        hostile_inputs(args.app)
    if args.kills:
        kill_faults(args.kills)
    if args.sessions:
        sessions(args.sessions, args.seconds)
    print(f"\n{load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
