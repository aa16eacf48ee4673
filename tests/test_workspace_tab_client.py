"""The Workspace tab through gradio_client: import, queues, predict all (progress, ETA, cancel),
review, export with include options; against the running app and its workspace database."""

import json
import os
import time
import zipfile

import pytest

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

from gradio_client import Client, handle_file

from app.queue import image_order
from app.store import Workspace
from app_helpers import png_bytes, shared_server

pytestmark = pytest.mark.slow

VIEW = ["gallery", "page", "counts", "table"]  # what the client sees of a redraw (no State)


@pytest.fixture(scope="module")
def server():
    return shared_server()


def call(c: Client, api: str, *args):
    job = c.submit(*args, api_name=api)
    out = job.result(timeout=300)
    warnings = []
    while not job.communicator.updates.empty():
        u = job.communicator.updates.get_nowait()
        if getattr(u, "log", None) and u.log[1] == "warning":  # gr.Info messages are "info"
            warnings.append(u.log[0])
    return out, warnings


def _wait_idle(c: Client, timeout: float = 240) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        p, _ = call(c, "/predict_all_progress")
        if p["state"] != "running":
            return p
        time.sleep(0.5)
    raise TimeoutError(p)


def test_named_endpoints(server):
    c = Client(server.url, analytics_enabled=False, download_files=False, verbose=False)
    api = c.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {
        "/ws_view",
        "/list_images",
        "/import",
        "/export",
        "/predict_all",
        "/cancel_predict_all",
        "/predict_all_progress",
        "/ws_review_accept",
        "/ws_review_needs_changes",
        "/ws_review_clear",
    } <= set(api)


def test_workspace_flow(server, tmp_path):
    c = Client(server.url, analytics_enabled=False, download_files=False, verbose=False)
    ws = Workspace(server.root / "workspace")
    _wait_idle(c)
    files = []
    for i in range(3):
        f = tmp_path / f"ws_flow_{i}.png"
        f.write_bytes(png_bytes(40, 48, seed=100 + i))
        files.append(handle_file(str(f)))
    out, warn = call(c, "/import", "", files, "unseen", 1)
    assert not warn and "imported 3 new image(s)" in out[0]
    mine = {r.id: r for r in ws.list_images() if r.name.startswith("ws_flow_")}
    assert len(mine) == 3 and {r.status for r in mine.values()} == {"unseen"}

    view = dict(zip(VIEW, call(c, "/ws_view", "unseen")[0]))
    ids = [row[0] for row in view["table"]["data"]]
    assert ids == image_order(ws, "unseen") and set(mine) <= set(ids)
    assert [item["caption"] for item in view["gallery"]] == [f"#{i}" for i in ids]
    assert "unseen" in view["counts"]

    # predict all: a job process; progress readable while it runs, statuses predicted after
    text, warn = call(c, "/predict_all")
    assert not warn and ("Predicting" in text or "Loading the model" in text)
    p = _wait_idle(c)
    assert p["state"] == "finished" and p["done"] == p["total"] >= 3, p
    recs = {r.id: r for r in ws.list_images()}
    assert all(recs[i].status == "predicted" and recs[i].uncertainty is not None for i in mine)
    _, warn = call(c, "/predict_all")
    assert warn and "nothing to predict" in warn[0]

    # the review queue: most uncertain first, the score beside each image
    view = dict(zip(VIEW, call(c, "/ws_view", "uncertain")[0]))
    rows = view["table"]["data"]
    assert [r[0] for r in rows] == image_order(ws, "uncertain")
    scores = [r[6] for r in rows if r[6] != ""]
    assert scores == sorted(scores, reverse=True) and len(scores) >= 3
    first = view["gallery"][0]["caption"]
    assert f"u {recs[rows[0][0]].uncertainty:.2f}" in first

    # review: accepted with its time, then cleared
    target = min(mine)
    out, warn = call(c, "/ws_review_accept", target, "accepted", 1)
    assert not warn and "**accepted**" in out[0]
    rec = ws.image(target)
    assert rec.review == "accepted" and rec.reviewed
    out, _ = call(c, "/ws_review_needs_changes", target, "needs-changes", 1)
    assert ws.image(target).review == "needs-changes"
    table = dict(zip(["details", *VIEW], out))["table"]["data"]
    # the queue of images needing changes (the server is shared: other tests' images may be in it)
    assert target in [r[0] for r in table] and all(r[4] == "needs-changes" for r in table)
    call(c, "/ws_review_clear", target, "all", 1)
    assert ws.image(target).review is None
    _, warn = call(c, "/ws_review_accept", None, "all", 1)
    assert warn == ["click an image first (or enter its id)"]

    # export with the include options; the message says what was left out
    (zip_file, msg), warn = call(c, "/export", "coco-panoptic", ["corrected"], "any")
    assert warn and "nothing to export" in warn[0] or "Exported" in msg
    (zip_file, msg), warn = call(c, "/export", "coco-panoptic", ["corrected", "predicted"], "any")
    assert not warn and "predicted" in msg and "Exported" in msg
    with zipfile.ZipFile(zip_file["path"]) as zf:
        data = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("panoptic.json"))))
        names = {n.rsplit("/", 1)[-1] for n in zf.namelist() if "/images/" in n}
    originals = {im["original_file_name"] for im in data["images"]}
    assert {f"ws_flow_{i}.png" for i in range(3)} <= originals & names


def test_cancel_predict_all(server, tmp_path):
    c = Client(server.url, analytics_enabled=False, download_files=False, verbose=False)
    ws = Workspace(server.root / "workspace")
    _wait_idle(c)
    files = []
    for i in range(8):
        f = tmp_path / f"cancel_{i}.png"
        f.write_bytes(png_bytes(40, 48, seed=200 + i))
        files.append(handle_file(str(f)))
    call(c, "/import", "", files, "all", 1)
    call(c, "/predict_all")
    end = time.time() + 240
    while time.time() < end:
        p, _ = call(c, "/predict_all_progress")
        if p["done"] >= 1 or p["state"] != "running":
            break
        time.sleep(0.2)
    text, _ = call(c, "/cancel_predict_all")
    p, _ = call(c, "/predict_all_progress")
    assert p["state"] in ("cancelled", "finished"), p
    if p["state"] == "cancelled":
        assert "Cancelled after" in text
    for r in ws.list_images():  # nothing half-written
        stored = ws.load_annotation(r.id)
        assert (r.status == "unseen") == (stored is None)
    assert server.alive()
