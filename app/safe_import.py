"""Imports for the app run in a child process: nothing in a file can end the server.

A COCO file can make pycocotools' C code crash the whole process, and a hostile archive or image
can exhaust memory. The Workspace tab's Import button therefore calls ``import_for_app``, which
runs ``app.transfer.import_source`` in ``python -m app.safe_import`` under a memory limit and
turns whatever happens there (an error, a crash, a kill) into one ``UserError`` sentence. The
workspace stays consistent either way: the child writes in one transaction, and files a dead
child wrote are removed by ``Workspace.cleanup``.

Importing from a path on the server is off unless the operator names a folder at launch
(``launch.py --import-root DIR``, which calls ``set_import_root``); then only paths inside it are
read, and a path outside gets the same answer whether it exists or not.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from app.store import Workspace
from maskformer.errors import UserError

log = logging.getLogger(__name__)

# The child's address-space limit (bytes); importing decodes one image at a time, so a few GiB
# cover any image under image_io's 100 MP cap. MASKFORMER_IMPORT_MEMORY overrides it.
DEFAULT_MEMORY_LIMIT = 6 << 30
# A child still busy after this long is stopped (a hang must not hold a server worker forever);
# MASKFORMER_IMPORT_TIMEOUT overrides it (seconds).
DEFAULT_TIMEOUT = 3600.0
SERVER_PATH_OFF = (
    "importing from a path on the server is off (the operator can allow one folder with "
    "`launch.py --import-root DIR`); upload image files or a .zip archive instead"
)

_import_root: Path | None = None  # set once at launch; None: server paths are refused


def set_import_root(root: str | Path | None) -> None:
    """Allow server-path imports from inside ``root`` (None: refuse every server path)."""
    global _import_root
    if root is None:
        _import_root = None
        return
    path = Path(root).resolve()
    if not path.is_dir():
        raise UserError(f"--import-root {root}: not a folder")
    _import_root = path


def import_root() -> Path | None:
    return _import_root


def import_for_app(
    workspace: Workspace,
    path: str | None = None,
    files: list[str] | None = None,
    *,
    timeout: float | None = None,
) -> str:
    """Import uploaded files (images, .zip archives) or a server path; returns the summary.

    Uploads win over a path when both are given. Raises UserError with one sentence for anything
    that goes wrong, including a crash of the child.
    """
    if files:
        args = ["--files", *[str(f) for f in files]]
    elif path and str(path).strip():
        if _import_root is None:
            raise UserError(SERVER_PATH_OFF)
        from app.transfer import confine

        confine(str(path).strip(), _import_root)  # refused here, before any child
        args = ["--path", str(path).strip(), "--root", str(_import_root)]
    else:
        raise UserError("upload image files or a .zip archive (or give a server path) to import")
    return run_child(workspace, args, timeout=timeout)


def run_child(workspace: Workspace, args: list[str], *, timeout: float | None = None) -> str:
    """Run ``python -m app.safe_import --workspace ROOT ARGS`` and return its summary."""
    if timeout is None:
        timeout = float(os.environ.get("MASKFORMER_IMPORT_TIMEOUT", DEFAULT_TIMEOUT))
    cmd = [sys.executable, "-m", "app.safe_import", "--workspace", str(workspace.root), *args]
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        workspace.cleanup()
        raise UserError(f"the import took longer than {timeout:g} s and was stopped") from None
    answer = _last_json(proc.stdout)
    if answer is not None and "summary" in answer:
        return str(answer["summary"])
    if answer is not None and "error" in answer:
        raise UserError(str(answer["error"]))
    workspace.cleanup()  # a dead child may have left image files no row names
    log.error("import child failed (exit %s): %s", proc.returncode, proc.stderr[-4000:])
    if proc.returncode < 0:
        name = _signal_name(-proc.returncode)
        raise UserError(
            f"the import stopped: reading the file crashed the importer ({name}); nothing was "
            "added and the server is fine. The file is broken or hostile."
        )
    raise UserError(
        f"the import failed (internal error, exit status {proc.returncode}); nothing was added"
    )


def _pythonpath() -> str:
    """The child must import this project's ``app`` and ``maskformer`` like the server does."""
    here = str(Path(__file__).resolve().parents[1])
    rest = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + rest if rest else "")


def _last_json(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        return value if isinstance(value, dict) else None
    return None


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name}"
    except ValueError:
        return f"signal {number}"


# ------------------------------------------------------------------------------------ the child


def _limit_memory() -> None:
    limit = int(os.environ.get("MASKFORMER_IMPORT_MEMORY", DEFAULT_MEMORY_LIMIT))
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):  # not POSIX, or a lower hard limit already
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.safe_import")
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--path")
    parser.add_argument("--root", type=Path)
    parser.add_argument("--files", nargs="+")
    args = parser.parse_args(argv)
    _limit_memory()
    from app import transfer
    from maskformer.__main__ import environment_error

    try:
        ws = Workspace(args.workspace)
        if args.files:
            report = transfer.import_source(ws, [Path(f) for f in args.files])
        else:
            report = transfer.import_source(ws, args.path, root=args.root)
        answer = {"summary": report.summary()}
    except UserError as e:
        answer = {"error": str(e)}
    except (OSError, RecursionError, MemoryError) as e:
        answer = {"error": f"the import failed: {environment_error(e)}; nothing was added"}
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
