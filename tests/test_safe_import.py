"""The app's imports: in a child process (a crash cannot end the server), server paths only
inside the operator's import root (one answer for everything outside), archives unpacked safely."""

import os
import sqlite3
import time
import zipfile

import pytest

from app import safe_import, transfer
from app.store import Workspace
from hostile_cases import instances, png, zip_bomb, zip_of
from maskformer.errors import UserError


@pytest.fixture
def ws(tmp_path):
    return Workspace(tmp_path / "ws")


@pytest.fixture
def root(tmp_path):
    """An import root with a folder of images, and a folder outside it."""
    r = tmp_path / "root"
    (r / "imgs").mkdir(parents=True)
    (r / "imgs" / "a.png").write_bytes(png())
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "b.png").write_bytes(png(seed=2))
    safe_import.set_import_root(r)
    yield r
    safe_import.set_import_root(None)


def _count(ws):
    return len(ws.list_images())


# ---------------------------------------------------------------------------------------------
# server paths


def test_server_paths_are_off_without_an_import_root(ws, tmp_path):
    (tmp_path / "x.png").write_bytes(png())
    for path in [str(tmp_path / "x.png"), "/etc", "/nowhere"]:
        with pytest.raises(UserError, match="importing from a path on the server is off"):
            safe_import.import_for_app(ws, path=path)
    assert _count(ws) == 0


def test_paths_outside_the_root_get_one_answer_whether_or_not_they_exist(ws, root, tmp_path):
    os.symlink(tmp_path / "outside", root / "link")
    answers = {}
    for given in [
        str(tmp_path / "outside"),  # exists
        str(tmp_path / "nowhere"),  # does not
        "/etc/shadow",
        "imgs/../../outside",
        "link",  # a symlink inside the root to outside
        "link/b.png",
    ]:
        with pytest.raises(UserError) as e:
            safe_import.import_for_app(ws, path=given)
        answers[given] = str(e.value).removeprefix(given)
    assert set(answers.values()) == {": not inside the folder this server imports from"}
    assert _count(ws) == 0


def test_paths_inside_the_root_import(ws, root):
    assert "imported 1 new image" in safe_import.import_for_app(ws, path="imgs")
    assert "1 already present" in safe_import.import_for_app(ws, path=str(root / "imgs" / "a.png"))
    with pytest.raises(UserError, match="no such file or folder"):
        safe_import.import_for_app(ws, path="imgs/missing.png")


def test_a_folder_import_leaves_out_symlinks_to_outside(ws, root, tmp_path):
    os.symlink(tmp_path / "outside" / "b.png", root / "imgs" / "b.png")
    os.symlink(root / "imgs", root / "imgs" / "loop")  # and does not loop
    report = transfer.import_source(ws, root / "imgs", root=root)
    assert report.added == 1 and [r.name for r in ws.list_images()] == ["a.png"]


# ---------------------------------------------------------------------------------------------
# archives


def test_a_zip_of_images_and_one_of_a_coco_dataset(ws, tmp_path):
    z = zip_of(tmp_path / "z1", {"a.png": png(), "sub/b.png": png(seed=3), "notes.txt": b"hi"})
    assert "imported 2 new image" in safe_import.import_for_app(ws, files=[str(z)])
    instances(tmp_path / "ds")
    files = {
        p.relative_to(tmp_path / "ds").as_posix(): p.read_bytes()
        for p in (tmp_path / "ds").rglob("*")
        if p.is_file()
    }
    z = zip_of(tmp_path / "z2", files)
    assert "1 with annotations" in safe_import.import_for_app(ws, files=[str(z)])
    assert not any((ws.root / ".imports").iterdir())  # the unpacked copy is gone


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: zip_of(d, {"../../evil.png": png()}), "outside the archive"),
        (lambda d: zip_of(d, {"/tmp/evil.png": png()}), "outside the archive"),
        (lambda d: zip_of(d, {"a.png": png()}, links={"l.png": "/etc/passwd"}), "is a link"),
        (zip_bomb, "more than 4 GiB"),
        (lambda d: (d / "x.zip").write_bytes(b"PK\x03\x04junk") and d / "x.zip", "not a readable"),
    ],
)
def test_hostile_archives_are_refused(ws, tmp_path, make, match):
    (tmp_path / "in").mkdir()
    z = make(tmp_path / "in")
    with pytest.raises(UserError, match=match):
        safe_import.import_for_app(ws, files=[str(z)])
    assert _count(ws) == 0
    assert not (tmp_path / "evil.png").exists() and not os.path.exists("/tmp/evil.png")


def test_unpack_refuses_too_many_files(tmp_path, monkeypatch):
    monkeypatch.setattr(transfer, "MAX_ARCHIVE_FILES", 3)
    z = zip_of(tmp_path, {f"{k}.png": b"x" for k in range(4)})
    with pytest.raises(UserError, match="more than 3 files"):
        transfer.unpack_zip(z, tmp_path / "out")


def test_a_zip_member_stops_at_its_declared_size(tmp_path):
    """zipfile reads a member up to its declared size: a lying header cannot write more."""
    z = tmp_path / "lie.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.png", b"\0" * 100_000)
        zf.filelist[0].file_size = 10
    with pytest.raises(UserError, match="damaged"):
        transfer.unpack_zip(z, tmp_path / "out")
    assert (
        not (tmp_path / "out" / "a.png").exists()
        or (tmp_path / "out" / "a.png").stat().st_size <= 10
    )


# ---------------------------------------------------------------------------------------------
# a crash in the importer ends the child, not the server

CRASH = """
import ctypes, os
if os.environ.get("CRASH_IMPORT"):
    import app.transfer as t
    real = t.import_source
    def crash(ws, src, root=None):
        t.prepare_image  # the files are written by now in a real crash; here: the C crash itself
        ctypes.string_at(0)  # a NULL read: SIGSEGV, as pycocotools did on +-1e9 polygons
    t.import_source = crash
"""


def test_a_segfault_while_importing_is_one_sentence_and_the_caller_lives(
    ws, root, tmp_path, monkeypatch
):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASH)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("CRASH_IMPORT", "1")
    (ws.root / "images" / "left-by-the-child.png").write_bytes(b"x")  # what a dead child leaves
    with pytest.raises(UserError, match=r"crashed the importer \(SIGSEGV\).*the server is fine"):
        safe_import.import_for_app(ws, path="imgs")
    assert _count(ws) == 0 and os.listdir(ws.root / "images") == []
    con = sqlite3.connect(ws.db_path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    monkeypatch.delenv("CRASH_IMPORT")
    assert "imported 1 new image" in safe_import.import_for_app(ws, path="imgs")


def test_the_child_runs_under_a_memory_limit(ws, root, monkeypatch):
    monkeypatch.setenv("MASKFORMER_IMPORT_MEMORY", str(64 << 20))  # too little to work in
    with pytest.raises(UserError) as e:
        safe_import.import_for_app(ws, path="imgs")
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    assert _count(ws) == 0


def test_an_import_root_must_be_a_folder(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        safe_import.set_import_root(tmp_path / "missing")
    assert safe_import.import_root() is None


HANG = """
import os, time
if os.environ.get("HANG_IMPORT"):
    import app.transfer as t
    t.import_source = lambda *a, **k: time.sleep(600)
"""


def test_a_hanging_import_is_stopped(ws, root, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HANG)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("HANG_IMPORT", "1")
    t = time.monotonic()
    with pytest.raises(UserError, match="took longer than 3 s and was stopped"):
        safe_import.import_for_app(ws, path="imgs", timeout=3)
    assert time.monotonic() - t < 60 and _count(ws) == 0
