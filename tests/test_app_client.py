"""The running app through gradio_client: named endpoints, per-session state, bad input."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from gradio_client import Client, handle_file

from app_helpers import ROOT, png_bytes, shared_server
from maskformer.inference import Predictor

pytestmark = pytest.mark.slow

OPEN_OUT = [
    "panoptic",
    "segments",
    "segment_dd",
    "merge_dd",
    "class_dd",
    "editor",
    "status",
    "original",
    "semantic",
    "instances",
    "gallery",
    "dropped_dd",
    "tabs",
]
EDIT_OUT = OPEN_OUT[:7]


@pytest.fixture(scope="module")
def server():
    return shared_server()


def client(server) -> Client:
    return Client(server.url, analytics_enabled=False, download_files=False, verbose=False)


def call(c: Client, api: str, *args, names=None):
    """Run an endpoint; returns (outputs by name or tuple, warnings shown to the user)."""
    job = c.submit(*args, api_name=api)
    out = job.result(timeout=300)
    warnings = []
    updates = job.communicator.updates
    while not updates.empty():
        u = updates.get_nowait()
        if getattr(u, "log", None):
            warnings.append(u.log[0])
    if names:
        out = dict(zip(names, out))
    return out, warnings


def test_launch_without_checkpoint_says_how_to_make_one(tmp_path):
    demo = ROOT / "checkpoints" / "demo.safetensors"
    args = [] if not demo.exists() else ["--checkpoint", str(tmp_path / "missing.safetensors")]
    r = subprocess.run(
        [sys.executable, str(ROOT / "launch.py"), "--workspace", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--checkpoint PATH" in r.stderr


def test_named_endpoints(server):
    api = client(server).view_api(return_format="dict", print_info=False)["named_endpoints"]
    expected = {
        "/open_upload",
        "/open_example",
        "/open_image",
        "/remerge",
        "/gallery",
        "/query_detail",
        "/probe",
        "/select_segment",
        "/relabel",
        "/swap_class",
        "/delete",
        "/split",
        "/merge",
        "/accept_query",
        "/apply_brush",
        "/undo",
        "/redo",
        "/reset",
        "/save",
        "/list_images",
        "/import",
        "/export",
    }
    assert expected <= set(api)


def test_inspect_correct_save_export(server, tmp_path):
    c = client(server)
    img = tmp_path / "upload.png"
    img.write_bytes(png_bytes(80, 96, seed=11))
    out, warn = call(c, "/open_upload", handle_file(str(img)), 0.0, 0.0, False, names=OPEN_OUT)
    assert not warn and "upload.png, 96x80" in out["status"]
    assert len(out["gallery"]) == 20 and out["gallery"][0]["caption"].startswith("q")
    # the segments the server shows are the engine's merge of the same image, computed here
    pred = Predictor.from_checkpoint(server.root / "tiny.safetensors", device="cpu").predict(
        str(img)
    )
    ref = pred.panoptic(0.0, 0.0)
    rows = out["segments"]["data"]
    assert [r[0] for r in rows] == [g["id"] for g in ref.segments]
    assert [r[3] for r in rows] == [g["area"] for g in ref.segments]
    assert [r[4] for r in rows] == [g["query"] for g in ref.segments]

    out, _ = call(c, "/remerge", 0.3, 0.9, False, names=EDIT_OUT)
    ref = pred.panoptic(0.3, 0.9)
    assert [r[0] for r in out["segments"]["data"]] == [g["id"] for g in ref.segments]

    (_heat, top5, info, q), _ = call(c, "/query_detail", 3)
    assert q == 3 and f"mask area {pred.query_area(3)} px" in info
    assert top5["confidences"][0]["confidence"] == pytest.approx(
        float(pred.class_probs[3].max()), abs=1e-4
    )

    (_text, table, x, y), _ = call(c, "/probe", 10, 20)
    claim = (pred.pixel_probs(10, 20) >= 0.5).nonzero()[:, 0].tolist()
    assert sorted(r[0] for r in table["data"]) == sorted(claim) and (x, y) == (10, 20)

    out, _ = call(c, "/remerge", 0.0, 0.0, False, names=EDIT_OUT)
    first = out["segments"]["data"][0][0]
    out, warn = call(c, "/relabel", first, "kite", True, names=EDIT_OUT)
    assert not warn and out["segments"]["data"][0][1] == "kite"
    n = len(out["segments"]["data"])
    out, _ = call(c, "/delete", first, names=EDIT_OUT)
    assert len(out["segments"]["data"]) == n - 1
    out, _ = call(c, "/undo", names=EDIT_OUT)
    assert len(out["segments"]["data"]) == n
    (status, ws_rows), _ = call(c, "/save")
    assert "saved" in status
    row = next(r for r in ws_rows["data"] if r[1] == "upload.png")
    assert row[3] == "corrected" and "kite x1" in row[4]

    (zip_file, _msg), warn = call(c, "/export", "coco-panoptic", False)
    assert not warn
    with zipfile.ZipFile(zip_file["path"]) as zf:
        names = zf.namelist()
        data = json.loads(zf.read(next(n for n in names if n.endswith("panoptic.json"))))
    assert any(n.endswith(".png") and "/panoptic/" in n for n in names)
    kite = next(cat["id"] for cat in data["categories"] if cat["name"] == "kite")
    assert any(s["category_id"] == kite for a in data["annotations"] for s in a["segments_info"])


def test_sessions_are_separate(server, tmp_path):
    a, b = client(server), client(server)
    out, _ = call(a, "/open_example", "shapes_1.png", 0.0, 0.0, False, names=OPEN_OUT)
    n = len(out["segments"]["data"])
    out, warn = call(b, "/save")  # b has no image open: a warning, nothing changes
    assert warn == ["open an image first (upload one, or pick one from the workspace)"]
    assert all(o == {"__type__": "update"} for o in out)
    out, warn = call(b, "/redo")
    assert warn == ["nothing to redo"]
    out, warn = call(a, "/undo")
    assert warn == ["nothing to undo"]  # b's failed edit did not touch a's history
    out, _ = call(a, "/delete", 1, names=EDIT_OUT)
    assert len(out["segments"]["data"]) == n - 1


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n but broken", "cannot read image"),
    ],
)
def test_bad_upload_warns_and_server_keeps_serving(server, tmp_path, data, match):
    c = client(server)
    before, _ = call(c, "/list_images")
    bad = tmp_path / "bad.png"
    bad.write_bytes(data)
    out, warn = call(c, "/open_upload", handle_file(str(bad)), 0.5, 0.8, False)
    assert len(warn) == 1 and "bad.png" in warn[0] and any(m in warn[0] for m in match.split("|"))
    assert all(o == {"__type__": "update"} for o in out)
    assert server.alive()
    after, _ = call(c, "/list_images")
    assert after == before


def test_broken_coco_import_warns(server, tmp_path):
    broken = tmp_path / "panoptic.json"
    broken.write_text('{"images": [1, 2], "annotations": [')
    c = client(server)
    before, _ = call(c, "/list_images")
    out, warn = call(c, "/import", str(broken), None)
    assert len(warn) == 1 and "invalid JSON" in warn[0]
    assert all(o == {"__type__": "update"} for o in out)
    assert call(c, "/list_images")[0] == before and server.alive()
