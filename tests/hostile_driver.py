"""Run hostile-input cases (``hostile_cases.CASES``) and judge each: handled cleanly or not.

``python tests/hostile_driver.py [--app] [--only SUBSTRING] [--start N]`` prints one JSON line per
case: ``{"i", "name", "command", "expect", "clean", "outcome", "detail", "seconds"}``. It runs
the cases in this one process (the CLI's ``main`` with its stderr captured, the workspace API),
so a case that still crashes the process ends the run: the caller (``bench/hostile.py``,
``tests/test_hostile_inputs.py``) sees which case was running and goes on from the next one.
``--app`` also runs every import case through the app's Import path (``app.safe_import``, a
child process), which must answer one sentence and leave the caller alive and the workspace
intact.

Handled cleanly means: no traceback and no exception escaping the entry point; a refusal is one
line ``error: ...`` (exit 2) or one ``UserError`` sentence; an accepted input exits 0; and the
workspace is unchanged by a refusal and passes SQLite's integrity check either way.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import hostile_cases
from app import transfer
from maskformer.errors import UserError

# Measuring a tree from before these guards existed (``bench/hostile.py`` "before" figures):
# without them the app imported in its own process, from any server path.
OUTSIDE_ROOT = getattr(transfer, "OUTSIDE_ROOT", None)


class Fixtures:
    """What cases share: a tiny checkpoint (predict) and a good dataset (evaluate)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._ckpt: Path | None = None
        self._good: Path | None = None

    @property
    def checkpoint(self) -> Path:
        if self._ckpt is None:
            import torch

            from maskformer.checkpoint import save_checkpoint
            from maskformer.config import apply_overrides, generic_meta, get_preset
            from maskformer.model import build_model

            cfg = apply_overrides(
                get_preset("maskformer_tiny"),
                {
                    "model.backbone": "test_resnet",
                    "model.num_classes": 2,
                    "input.min_size_test": 64,
                    "input.max_size_test": 96,
                },
            )
            torch.manual_seed(0)
            self._ckpt = self.folder / "tiny.safetensors"
            save_checkpoint(self._ckpt, build_model(cfg.model), cfg, generic_meta(2))
        return self._ckpt

    @property
    def good_dataset(self) -> Path:
        if self._good is None:
            self._good = hostile_cases.instances(self.folder / "good")
        return self._good


def _cli(argv: list[str]) -> tuple[int, str]:
    """``python -m maskformer ARGV`` (``python -m app`` for the workspace commands) in this
    process: (exit status, what it printed to stderr)."""
    if argv[0] in ("import", "export"):
        from app.__main__ import main
    else:
        from maskformer.__main__ import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse
            rc = int(e.code or 0)
    return rc, err.getvalue()


def _import_argv(ws: Path, src: Path) -> list[str]:
    return ["import", "--workspace", str(ws), str(src)]


def _workspace_state(ws: Path) -> tuple[Any, ...]:
    db = ws / "workspace.sqlite"
    if not db.exists():
        return ("no workspace",)
    con = sqlite3.connect(db)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        images = con.execute("SELECT sha256 FROM images ORDER BY id").fetchall()
        cats = con.execute("SELECT name, isthing FROM categories ORDER BY id").fetchall()
        anns = con.execute("SELECT COUNT(*) FROM annotations").fetchone()[0]
    finally:
        con.close()
    files = sorted(p.name for p in (ws / "images").iterdir()) if (ws / "images").is_dir() else []
    return check, tuple(images), tuple(cats), anns, tuple(files)


def _one_line_refusal(rc: int, err: str) -> bool:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return rc == 2 and len(lines) == 1 and lines[0].startswith("error: ")


def _judge_cli(case: hostile_cases.Case, rc: int, err: str) -> tuple[bool, str]:
    if "Traceback" in err:
        return False, "traceback"
    if case.command == "predict":  # per-image problems are warnings; the run says how many
        ok = rc in (0, 1) and all(
            ln.startswith(("warning:", "error:", "panoptic:", "semantic:", "instance:"))
            for ln in err.strip().splitlines()
            if ln.strip()
        )
        accepted = rc == 0
    else:
        ok = rc == 0 or _one_line_refusal(rc, err)
        accepted = rc == 0
    outcome = "accepted" if accepted else "refused"
    if not ok:
        return False, f"unclean exit {rc}"
    if case.expect != "either" and outcome != case.expect:
        return False, f"{outcome}, expected {case.expect}"
    return True, outcome


def run_case(case: hostile_cases.Case, folder: Path, fx: Fixtures, app: bool) -> dict[str, Any]:
    (folder / "input").mkdir(parents=True)
    src = case.make(folder / "input")
    ws = folder / "ws"
    clean, outcome, detail = False, "", ""
    try:
        if case.command in ("import", "predict", "evaluate", "train"):
            before = None
            if case.command == "import":
                from app.store import Workspace

                Workspace(ws)  # an existing workspace: a refusal must leave it as it was
                before = _workspace_state(ws)
            argv = {
                "import": lambda: _import_argv(ws, src),
                "predict": lambda: [
                    "predict",
                    "--checkpoint",
                    str(fx.checkpoint),
                    str(src),
                    "--out",
                    str(folder / "out"),
                    "--no-progress",
                ],
                "evaluate": lambda: [
                    "evaluate",
                    "--predictions",
                    str(src),
                    "--data",
                    str(fx.good_dataset),
                    "--no-progress",
                ],
                "train": lambda: [
                    "train",
                    "--preset",
                    "maskformer_tiny",
                    "--train",
                    str(src),
                    "--out",
                    str(folder / "run"),
                    "--no-progress",
                    "--model.backbone=test_resnet",
                ],
            }[case.command]()
            rc, err = _cli(argv)
            clean, outcome = _judge_cli(case, rc, err)
            detail = err.strip()[-300:]
            if clean and before is not None:
                after = _workspace_state(ws)
                if after[0] != "ok":
                    clean, outcome = False, f"integrity_check: {after[0]}"
                elif outcome == "refused" and after != before:
                    clean, outcome = False, "refused but the workspace changed"
            if clean and app and case.command == "import":
                clean, outcome, detail = _through_app(case, folder / "ws-app", src)
        elif case.command == "name":
            clean, outcome, detail = _name(case, ws, src)
        elif case.command in ("server-path", "upload"):
            clean, outcome, detail = _app_import(case, folder, src)
    except Exception as e:  # noqa: BLE001 -- anything escaping an entry point is the finding
        clean, outcome = False, f"{type(e).__name__} escaped"
        detail = "".join(traceback.format_exception_only(e)).strip()[-300:]
    return {"clean": clean, "outcome": outcome, "detail": detail}


def _name(case: hostile_cases.Case, ws: Path, value: str) -> tuple[bool, str, str]:
    from app.store import Workspace

    w = Workspace(ws)
    try:
        cat = w.add_category(value)
    except UserError as e:
        msg = str(e)
        ok = case.expect in ("refused", "either") and "\n" not in msg and len(msg) < 300
        return ok, "refused", msg
    stored = w.category(cat.id).name
    ok = case.expect in ("accepted", "either") and stored == value.strip()
    return ok, "accepted", stored[:80]


def _through_app(case: hostile_cases.Case, ws: Path, src: Path) -> tuple[bool, str, str]:
    """The same import through the app's Import path (a child process, upload of the file or
    folder is what a user does; the path is given as a server path under its own root)."""
    from app import safe_import
    from app.store import Workspace

    w = Workspace(ws)
    before = _workspace_state(ws)
    safe_import.set_import_root(src.parent)
    try:
        msg = safe_import.import_for_app(w, path=str(src))
        outcome = "accepted"
    except UserError as e:
        msg, outcome = str(e), "refused"
    finally:
        safe_import.set_import_root(None)
    after = _workspace_state(ws)
    ok = after[0] == "ok" and (outcome == "accepted" or after == before)
    ok &= case.expect == "either" or outcome == case.expect
    return ok, f"{outcome} (app)", msg[-300:]


def _app_import(case: hostile_cases.Case, folder: Path, src: Any) -> tuple[bool, str, str]:
    from app.store import Workspace

    w = Workspace(folder / "ws")
    before = _workspace_state(folder / "ws")
    try:
        from app import safe_import
    except ImportError:  # an older tree: the UI called transfer.import_source in-process
        return _old_app_import(case, w, folder, src, before)
    if case.command == "server-path":
        safe_import.set_import_root(folder / "input" / "root")
        kwargs: dict[str, Any] = {"path": str(src)}
    else:
        kwargs = {"files": [str(src)]}
    try:
        msg = safe_import.import_for_app(w, **kwargs)
        outcome = "accepted"
    except UserError as e:
        msg, outcome = str(e), "refused"
    finally:
        safe_import.set_import_root(None)
    after = _workspace_state(folder / "ws")
    ok = after[0] == "ok" and (outcome == "accepted" or after == before)
    ok &= "\n" not in msg and len(msg) < 500
    if case.expect == "outside":
        # One fixed answer for every path outside the root, whether or not it exists.
        ok &= outcome == "refused" and msg == OUTSIDE_ROOT.format(given=str(src)[:200])
    else:
        ok &= case.expect == "either" or outcome == case.expect
    return ok, outcome, msg[-300:]


def _pump(stream: Any, out: Any) -> None:
    for line in stream:
        out.put(line)
    out.put(None)  # end of stream


def _drive(args: list[str], start: int, case_timeout: float) -> tuple[list, dict | None, str]:
    """One driver process from case ``start``: (finished rows, the case it was in when it died
    or hung, or None, and how it ended)."""
    import queue
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args, "--start", str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    rows, running, ended = [], None, ""
    while True:
        try:
            line = lines.get(timeout=case_timeout)
        except queue.Empty:
            proc.kill()
            ended = f"hung (killed after {case_timeout:g} s)"
            break
        if line is None:
            break
        row = json.loads(line)
        if "start" in row:
            running = row
        else:
            rows.append(row)
            running = None
    proc.wait()
    return rows, running, ended or f"crashed the process (exit {proc.returncode})"


def run_all(
    args: list[str] = (), timeout: float = 3600, case_timeout: float = 300
) -> list[dict[str, Any]]:
    """Run the driver in child processes; a case that kills its process (or runs longer than
    ``case_timeout``: a hang) is recorded as such and the run goes on from the next case.
    Returns one row per case."""
    rows: list[dict[str, Any]] = []
    start = 0
    deadline = time.monotonic() + timeout
    while start < len(hostile_cases.CASES) and time.monotonic() < deadline:
        done, running, ended = _drive(list(args), start, case_timeout)
        rows += done
        if running is None:
            break
        case = hostile_cases.CASES[running["i"]]
        rows.append(
            {
                "i": running["i"],
                "name": case.name,
                "kind": case.kind,
                "command": case.command,
                "expect": case.expect,
                "clean": False,
                "outcome": ended,
                "detail": "",
                "seconds": 0.0,
            }
        )
        start = running["i"] + 1
    return rows


def _old_app_import(case, w, folder: Path, src: Any, before) -> tuple[bool, str, str]:
    given = src if case.command == "upload" else str(src)
    if case.command == "server-path" and not Path(given).is_absolute():
        given = str(folder / "input" / "root" / given)
    try:
        msg = transfer.import_source(w, [Path(given)] if case.command == "upload" else given)
        msg, outcome = msg.summary(), "accepted"
    except UserError as e:
        msg, outcome = str(e), "refused"
    after = _workspace_state(folder / "ws")
    ok = after[0] == "ok" and (outcome == "accepted" or after == before)
    ok &= outcome == case.expect or (case.expect == "either")
    return ok, outcome, msg[-300:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--app", action="store_true", help="also run import cases through the app")
    p.add_argument("--only", default="", help="cases whose name contains this")
    p.add_argument("--start", type=int, default=0, help="skip the cases before this index")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.CRITICAL)  # the store's notes would interleave with the JSON lines
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        fx = Fixtures(Path(tmp))
        for i, case in enumerate(hostile_cases.CASES):
            if i < args.start or args.only not in case.name:
                continue
            print(json.dumps({"i": i, "start": case.name}), flush=True)
            t = time.perf_counter()
            verdict = run_case(case, Path(tmp) / f"case{i:03d}", fx, args.app)
            row = {
                "i": i,
                "name": case.name,
                "kind": case.kind,
                "command": case.command,
                "expect": case.expect,
                **verdict,
                "seconds": round(time.perf_counter() - t, 2),
            }
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
