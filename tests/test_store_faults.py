"""A workspace under faults: another process holding the lock, a full disk, a read-only folder,
leftovers of a killed import, hostile names. Each says its cause and keeps everything."""

import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from app import store as store_mod
from app import store_fs, transfer
from app.store import (
    MAX_CATEGORY_NAME,
    Workspace,
    WorkspaceError,
    WorkspaceFullError,
    WorkspaceLockedError,
    WorkspaceReadOnlyError,
    image_name,
)
from maskformer.config import generic_meta
from test_store import png

ROOT = Path(__file__).resolve().parents[1]

HOLD = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
"""


@contextlib.contextmanager
def held_lock(db: Path, seconds: float):
    """Another process holding the database's write lock (``BEGIN EXCLUSIVE``) for ``seconds``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _annotated(tmp_path, **kw):
    ws = Workspace(tmp_path / "ws", **kw)
    ws.ensure_meta(generic_meta(2))
    rec = ws.add_image(png(), "a.png")
    cid = ws.categories()[0].id
    ws.save_annotation(rec.id, np.ones((24, 32), np.int32), [{"id": 1, "category_id": cid}])
    return ws, rec, cid


def _state(ws):
    ann = ws.load_annotation(ws.list_images()[0].id)
    return [r.sha256 for r in ws.list_images()], ann[0].tolist(), ann[1]


# ---------------------------------------------------------------------------------------------
# the lock held by another process


def test_a_lock_held_too_long_is_said_and_nothing_is_lost(tmp_path):
    ws, rec, cid = _annotated(tmp_path, lock_timeout=1.5)
    before = _state(ws)
    with held_lock(ws.db_path, 30):
        t = time.monotonic()
        with pytest.raises(WorkspaceLockedError, match="locked by another process") as e:
            ws.save_annotation(
                rec.id, np.full((24, 32), 2, np.int32), [{"id": 2, "category_id": cid}]
            )
        assert 1.4 < time.monotonic() - t < 10
        assert "rollback" not in str(e.value) and "\n" not in str(e.value)
        assert _state(ws) == before  # reads work while another process writes
    ws.save_annotation(rec.id, np.full((24, 32), 2, np.int32), [{"id": 2, "category_id": cid}])
    assert _state(ws) != before


def test_a_short_lock_is_waited_for(tmp_path, caplog):
    ws, rec, cid = _annotated(tmp_path, lock_timeout=30)
    with held_lock(ws.db_path, 2.5), caplog.at_level(logging.WARNING, logger="app.store"):
        ws.save_annotation(rec.id, np.full((24, 32), 2, np.int32), [{"id": 2, "category_id": cid}])
    assert (ws.load_annotation(rec.id)[0] == 2).all()
    assert "locked by another process (retrying)" in caplog.text


def test_opening_a_locked_workspace_waits_or_says_so(tmp_path):
    ws, _, _ = _annotated(tmp_path)
    with held_lock(ws.db_path, 30):
        again = Workspace(ws.root, lock_timeout=1)  # the schema exists: opening needs no write
        assert len(again.list_images()) == 1


# ---------------------------------------------------------------------------------------------
# a full disk


def _limit_pages(monkeypatch):
    """SQLite's own size limit: every write that grows the file fails with SQLITE_FULL."""
    real = Workspace._connect

    def connect(self):
        con = real(self)
        pages = con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {pages}")
        return con

    monkeypatch.setattr(Workspace, "_connect", connect)


def test_a_full_database_says_disk_full_and_keeps_everything(tmp_path, monkeypatch):
    ws, rec, cid = _annotated(tmp_path)
    before = _state(ws)
    _limit_pages(monkeypatch)
    big = np.random.default_rng(0).integers(1, 50, (24, 32)).astype(np.int32)
    segs = [{"id": int(k), "category_id": cid, "note": "x" * 20000} for k in range(1, 50)]
    with pytest.raises(WorkspaceFullError, match="^disk full") as e:
        ws.save_annotation(rec.id, big, segs)
    assert "cannot rollback" not in str(e.value)
    files = sorted(os.listdir(ws.root / "images"))
    with pytest.raises(WorkspaceFullError, match="^disk full"):
        ws.add_images(
            [store_mod.prepare_image(png(8, 8, seed=k), f"{k:0250d}.png") for k in range(60)]
        )
    monkeypatch.undo()
    assert _state(Workspace(ws.root)) == before
    assert sorted(os.listdir(ws.root / "images")) == files  # the new files were removed again


def test_no_space_for_an_image_file_says_disk_full(tmp_path, monkeypatch):
    ws, _, _ = _annotated(tmp_path)
    before = _state(ws)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store_fs, "atomic_write_bytes", full)
    with pytest.raises(WorkspaceFullError, match="^disk full"):
        ws.add_image(png(seed=3), "b.png")
    assert _state(ws) == before


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A real tmpfs of ``size`` at ``path`` (root with mount rights only; else skip)."""
    path.mkdir(parents=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_really_full_disk(tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        ws, rec, cid = _annotated(disk)
        before = _state(ws)
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        with pytest.raises(WorkspaceFullError, match="^disk full"):
            ws.add_image(png(100, 100, seed=5), "b.png")
        noise = np.random.default_rng(1).integers(1, 200, (24, 32)).astype(np.int32)
        segs = [{"id": int(k), "category_id": cid} for k in np.unique(noise)]
        with pytest.raises(WorkspaceFullError, match="^disk full"):
            for _ in range(50):  # the WAL grows until the disk says no
                ws.save_annotation(rec.id, noise, segs)
                noise = np.roll(noise, 1)
        (disk / "filler").unlink()
        again = Workspace(ws.root)
        assert again.list_images()[0].sha256 == before[0][0]
        con = sqlite3.connect(again.db_path)
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()


# ---------------------------------------------------------------------------------------------
# a read-only workspace


@contextlib.contextmanager
def read_only(path: Path):
    """Make ``path`` really read-only: a read-only bind mount as root, chmod otherwise."""
    if os.geteuid() == 0:
        ok = subprocess.run(["mount", "--bind", str(path), str(path)], check=False).returncode == 0
        ok = (
            ok
            and subprocess.run(
                ["mount", "-o", "remount,bind,ro", str(path)], check=False
            ).returncode
            == 0
        )
        if not ok:
            subprocess.run(["umount", str(path)], check=False, capture_output=True)
            pytest.skip("cannot make a read-only bind mount here")
        try:
            yield path
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
    else:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p, mode in modes.items():
            p.chmod(mode & ~0o222)
        try:
            yield path
        finally:
            for p, m in modes.items():
                p.chmod(m)


def test_a_read_only_workspace_opens_for_viewing_and_exporting(tmp_path):
    ws, rec, _ = _annotated(tmp_path)
    expected = _state(ws)
    with read_only(ws.root):
        ro = Workspace(ws.root)
        assert ro.read_only and _state(ro) == expected
        assert ro.load_image(rec.id).shape == (24, 32, 3)
        out = transfer.export(ro, "coco-panoptic", tmp_path / "elsewhere")
        assert (out / "panoptic.json").is_file()
        for write in (
            lambda: ro.add_image(png(seed=7), "b.png"),
            lambda: ro.save_annotation(rec.id, np.zeros((24, 32), np.int32), []),
            lambda: ro.add_category("new"),
            lambda: transfer.import_source(ro, tmp_path / "elsewhere"),
        ):
            with pytest.raises(WorkspaceReadOnlyError, match="read-only") as e:
                write()
            assert "\n" not in str(e.value)
        with pytest.raises(WorkspaceReadOnlyError):
            Workspace(ws.root / "sub")  # a new workspace cannot be made there


def test_read_only_commands_are_one_line(tmp_path):
    from app.__main__ import main

    ws, _, _ = _annotated(tmp_path)
    with read_only(ws.root):
        r = subprocess.run(
            [sys.executable, "-m", "app", "import", "--workspace", str(ws.root), "x.png"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "read-only" in r.stderr
        args = ["export", "--workspace", str(ws.root), "--format", "coco-instances"]
        assert main([*args, "--out", str(tmp_path / "out")]) == 0
        r = subprocess.run(
            [sys.executable, "launch.py", "--workspace", str(ws.root)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
            check=False,
        )
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "read-only" in r.stderr


def test_read_only_on_request(tmp_path):
    ws, rec, _ = _annotated(tmp_path)
    ro = Workspace(ws.root, read_only=True)
    assert ro.read_only and ro.image(rec.id).name == "a.png"
    with pytest.raises(WorkspaceReadOnlyError):
        ro.set_status(rec.id, "corrected")


# ---------------------------------------------------------------------------------------------
# leftovers of interrupted imports and exports

KILLED_IMPORT = """
import os, sys
sys.path.insert(0, {root!r})
from app import store
from app.store import Workspace, prepare_image
sys.path.insert(0, {tests!r})
from test_store import png
ws = Workspace({path!r})
real = store.Workspace._tx
def die(self):
    os._exit(9)  # killed after the image files were written, before their rows
store.Workspace._tx = die
ws.add_images([prepare_image(png(seed=k), f"{{k}}.png") for k in range(10, 130)])
"""


def test_files_of_a_killed_import_are_removed_on_the_next_open(tmp_path):
    ws, rec, _ = _annotated(tmp_path)
    code = KILLED_IMPORT.format(root=str(ROOT), tests=str(ROOT / "tests"), path=str(ws.root))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120, check=False)
    assert r.returncode == 9, r.stderr
    assert len(os.listdir(ws.root / "images")) == 121  # 120 unreferenced + the real one
    (ws.root / "images" / ".x.png.abcd.tmp").write_bytes(b"half")  # a killed atomic write
    exports = ws.root / "exports"
    (exports / ".coco-panoptic-1.tmpdir" / "images").mkdir(parents=True)
    (exports / ".x.zip.tmp").write_bytes(b"half")
    (exports / "kept.zip").write_bytes(b"done")
    (ws.root / ".imports" / "zip-1").mkdir(parents=True)  # a zip upload being unpacked
    again = Workspace(ws.root)
    assert len(again.cleaned) == 124
    assert os.listdir(ws.root / "images") == [rec.file.split("/")[1]]
    assert sorted(os.listdir(exports)) == ["kept.zip"]
    assert again.load_image(rec.id).shape == (24, 32, 3)


def test_cleanup_waits_for_no_one_and_skips_while_files_are_written(tmp_path):
    ws, _, _ = _annotated(tmp_path)
    (ws.root / "images" / "orphan.png").write_bytes(b"x")
    with store_fs.flock(ws.root / store_fs.FILES_LOCK, shared=True, wait=True):
        assert ws.cleanup() == []  # another writer (here: us) is mid-import
    assert ws.cleanup() == ["images/orphan.png"]


def test_an_export_in_progress_is_left_alone(tmp_path):
    ws, _, _ = _annotated(tmp_path)
    (ws.root / "exports" / ".busy").mkdir(parents=True)
    with ws.writing_files():  # as transfer.export holds it while it writes
        assert Workspace(ws.root).cleaned == []
    assert Workspace(ws.root).cleaned == ["exports/.busy"]


# ---------------------------------------------------------------------------------------------
# names


@pytest.mark.parametrize("name", ["x" * (MAX_CATEGORY_NAME + 1), "", "  ", "a\nb", "a\x00b"])
def test_bad_category_names_are_refused(tmp_path, name):
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(WorkspaceError) as e:
        ws.add_category(name)
    assert len(str(e.value)) < 200 and ws.categories() == []


def test_category_names_up_to_the_limit_and_html_are_kept_as_text(tmp_path):
    ws = Workspace(tmp_path / "ws")
    for name in ["z" * MAX_CATEGORY_NAME, "<script>alert(1)</script>", "ciel 空"]:
        assert ws.category(ws.add_category(name).id).name == name


def test_image_names_are_bounded_and_printable():
    assert image_name("/a/b/" + "n" * 300 + ".png") == "n" * 251 + ".png"
    assert image_name("a\nb\x1b.png") == "a_b_.png"
    assert image_name("") == "image"
