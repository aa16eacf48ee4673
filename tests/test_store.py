"""The SQLite workspace: content-addressed images, exact annotations, transactions, categories."""

import hashlib
import io
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.store import Workspace, WorkspaceError, decode_id_map, encode_id_map
from maskformer.config import generic_meta
from maskformer.errors import ImageReadError

ROOT = Path(__file__).resolve().parents[1]


def png(h=24, w=32, seed=0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def bomb_png(w=60_000, h=60_000) -> bytes:
    """A valid 1x1 PNG whose header claims w x h pixels (3.6 GP): must be refused unread."""
    data = png(1, 1)
    ihdr = bytearray(data[8:33])  # length(4) type(4) body(13) crc(4)
    ihdr[8:16] = struct.pack(">II", w, h)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])))
    return data[:8] + bytes(ihdr) + data[33:]


def _files(ws):
    return sorted(p.name for p in (ws.root / "images").iterdir())


@pytest.fixture
def ws(tmp_path):
    w = Workspace(tmp_path / "ws")
    w.ensure_meta(generic_meta(3, thing_ids=(1, 2)))
    return w


def test_images_are_content_addressed(ws):
    data = png()
    rec = ws.add_image(data, "/some/dir/photo.png")
    sha = hashlib.sha256(data).hexdigest()
    assert rec.sha256 == sha and rec.file == f"images/{sha}.png" and rec.name == "photo.png"
    assert (ws.root / rec.file).read_bytes() == data
    assert (rec.width, rec.height, rec.status) == (32, 24, "unseen")
    assert ws.add_image(data, "copy.png").id == rec.id  # same bytes -> same row
    assert len(ws.list_images()) == 1
    np.testing.assert_array_equal(ws.load_image(rec.id), np.asarray(Image.open(io.BytesIO(data))))


def test_jpeg_kept_as_original_bytes(ws):
    buf = io.BytesIO()
    Image.new("RGB", (10, 8), (200, 10, 10)).save(buf, "JPEG")
    rec = ws.add_image(buf.getvalue(), "x.jpeg")
    assert rec.file.endswith(".jpg") and (ws.root / rec.file).read_bytes() == buf.getvalue()


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"this is not an image at all", "not an image|not a recognised image"),
        (png()[:60], "truncated|corrupt|cannot read"),
        (bomb_png(), "decompression bomb"),
    ],
)
def test_bad_images_leave_workspace_unchanged(ws, data, match):
    with pytest.raises(ImageReadError, match=match):
        ws.add_image(data, "bad.png")
    assert ws.list_images() == [] and _files(ws) == []


def _annotation(h=24, w=32):
    m = np.zeros((h, w), np.int32)
    m[:10] = 1
    m[10:, :16] = 70_000  # ids above 2^16 survive the PNG encoding
    return m


def test_annotation_round_trip_is_exact(ws):
    rec = ws.add_image(png(), "a.png")
    cats = ws.categories()
    segs = [
        {"id": 1, "category_id": cats[0].id, "isthing": False, "query": 4, "score": 0.9},
        {"id": 70_000, "category_id": cats[1].id, "isthing": True, "query": None, "score": None},
    ]
    ws.save_annotation(rec.id, _annotation(), segs)
    id_map, got, source = ws.load_annotation(rec.id)
    np.testing.assert_array_equal(id_map, _annotation())
    assert id_map.dtype == np.int32 and got == segs and source == "user"
    assert ws.image(rec.id).status == "corrected"
    assert ws.image(rec.id).counts == {"class_0": 1, "class_1": 1}
    np.testing.assert_array_equal(decode_id_map(encode_id_map(_annotation())), _annotation())


def test_prediction_never_replaces_a_correction(ws):
    rec = ws.add_image(png(), "a.png")
    cid = ws.categories()[0].id
    seg = [{"id": 1, "category_id": cid}, {"id": 70_000, "category_id": cid}]
    assert ws.save_annotation(rec.id, _annotation(), seg, status="predicted", source="model")
    assert ws.image(rec.id).status == "predicted"
    ws.save_annotation(
        rec.id, _annotation(), seg[:1] + [{"id": 70_000, "category_id": cid, "note": "user"}]
    )
    assert not ws.save_annotation(rec.id, np.zeros((24, 32), np.int32), [], status="predicted")
    assert ws.load_annotation(rec.id)[1][1]["note"] == "user"


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda m, s: (m[:5], s), "image is 32x24"),
        (lambda m, s: (m, [{**s[0], "category_id": 999}, s[1]]), "unknown category"),
        (lambda m, s: (m, s[:1]), "without a segment entry"),
        (lambda m, s: (m, s + [dict(s[0])]), "unique"),
    ],
)
def test_invalid_annotation_changes_nothing(ws, change, match):
    rec = ws.add_image(png(), "a.png")
    cid = ws.categories()[0].id
    segs = [{"id": 1, "category_id": cid}, {"id": 70_000, "category_id": cid}]
    m, s = change(_annotation(), segs)
    with pytest.raises(WorkspaceError, match=match):
        ws.save_annotation(rec.id, m, s)
    assert ws.load_annotation(rec.id) is None and ws.image(rec.id).status == "unseen"


def test_batch_with_a_bad_annotation_is_rolled_back(ws):
    from app.store import NewAnnotation, prepare_image

    imgs = [prepare_image(png(seed=i), f"{i}.png") for i in range(2)]
    good = NewAnnotation(
        _annotation(), [{"id": 1, "category_id": 0}, {"id": 70_000, "category_id": 1}]
    )
    bad = NewAnnotation(_annotation(), [{"id": 1, "category_id": 0}])  # 70000 has no entry
    with pytest.raises(WorkspaceError):
        ws.add_images(imgs, [good, bad], meta=generic_meta(2))
    assert ws.list_images() == []
    ws.add_images(imgs, [good, good], meta=generic_meta(2))
    assert [r.status for r in ws.list_images()] == ["corrected", "corrected"]


CRASH = """
import os, sys
sys.path.insert(0, {root!r})
import numpy as np
from app.store import Workspace
ws = Workspace({path!r})
orig = Workspace._write_annotation
def crash(self, con, *a):
    orig(self, con, *a)
    os._exit(3)  # die inside the transaction, after both rows were written, before COMMIT
Workspace._write_annotation = crash
cid = ws.categories()[0].id
ws.save_annotation(1, np.ones((24, 32), np.int32), [{{"id": 1, "category_id": cid}}])
"""


def test_crash_mid_write_leaves_old_state(ws):
    rec = ws.add_image(png(), "a.png")
    code = CRASH.format(root=str(ROOT), path=str(ws.root))
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 3, r.stderr
    again = Workspace(ws.root)  # "restart"
    assert again.load_annotation(rec.id) is None and again.image(rec.id).status == "unseen"


def test_survives_restart_and_concurrent_writers(ws):
    recs = [ws.add_image(png(seed=i), f"{i}.png") for i in range(4)]
    cid = ws.categories()[0].id
    errors = []

    def worker(rec):
        try:
            for k in range(5):
                m = np.full((24, 32), k + 1, np.int32)
                ws.save_annotation(rec.id, m, [{"id": k + 1, "category_id": cid}])
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(r,)) for r in recs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    again = Workspace(ws.root)
    for rec in recs:
        assert (again.load_annotation(rec.id)[0] == 5).all()


def test_categories(ws):
    names = [c.name for c in ws.categories()]
    assert names == ["class_0", "class_1", "class_2"]
    assert [c.isthing for c in ws.categories()] == [False, True, True]
    assert all(c.dataset_id >= 1 for c in ws.categories())  # COCO ids start at 1
    same = ws.add_category("class_1", isthing=False)
    assert same.id == ws.category_by_name("class_1").id and same.isthing  # existing wins
    taken = ws.categories()[0].dataset_id
    new = ws.add_category("zebra", isthing=True, color=(1, 2, 3), dataset_id=taken)
    assert new.dataset_id != taken and new.color == (1, 2, 3)
    meta, ids = ws.meta()
    assert meta.class_names[-1] == "zebra" and ids[-1] == new.id
    assert ws.ensure_meta(generic_meta(2)) == ids[:2]
    with pytest.raises(WorkspaceError, match="empty"):
        ws.add_category("  ")


def test_model_versions(ws):
    assert ws.active_model_version() is None
    a = ws.add_model_version("ckpt/a.safetensors", active=True)
    b = ws.add_model_version("ckpt/b.safetensors", parent=a.id, metrics={"PQ": 12.5})
    assert ws.active_model_version().id == a.id
    ws.set_active_model_version(b.id)
    assert [v.active for v in ws.model_versions()] == [False, True]
    assert ws.model_version(b.id).parent == a.id and ws.model_version(b.id).metrics == {"PQ": 12.5}
    ws.set_model_metrics(b.id, {"PQ": 20.0})
    assert ws.model_version(b.id).metrics["PQ"] == 20.0
    with pytest.raises(WorkspaceError):
        ws.set_active_model_version(99)
    assert os.path.exists(ws.db_path)
