"""Predict all as a job process: statuses, stored predictions, progress / ETA, cancel, crash."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from app.jobs import JobBusyError
from app.predict_all import PredictAll, eta_seconds, format_eta
from app.store import Workspace
from app_helpers import png_bytes, tiny_checkpoint
from maskformer.config import generic_meta
from maskformer.errors import UserError
from maskformer.inference import Predictor


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def _workspace(root, n):
    ws = Workspace(root)
    ids = [ws.add_image(png_bytes(40, 56, seed=i), f"img_{i}.png").id for i in range(n)]
    return ws, ids


def _consistent(ws):
    """Every image is either untouched (unseen, no annotation, no score) or fully predicted."""
    for rec in ws.list_images(counts=False):
        stored = ws.load_annotation(rec.id)
        if rec.status == "unseen":
            assert stored is None and rec.uncertainty is None
        elif rec.status == "predicted":
            assert stored is not None and stored[2] == "model" and rec.uncertainty is not None


def test_eta():
    assert eta_seconds(0, 10, None, 5.0) is None
    assert eta_seconds(2, 10, 100.0, 104.0) == pytest.approx(16.0)
    assert eta_seconds(10, 10, 100.0, 150.0) == 0.0
    assert format_eta(None) == "estimating time left" and format_eta(75) == "1:15 left"


@pytest.mark.slow
def test_predict_all_stores_predictions(tmp_path, ckpt):
    ws, ids = _workspace(tmp_path / "ws", 3)
    ws.ensure_meta(generic_meta(2))
    corrected = ws.add_image(png_bytes(40, 56, seed=99), "mine.png").id
    ws.save_annotation(corrected, np.zeros((40, 56), np.int32), [])
    job = PredictAll(ws)
    assert job.progress().state == "idle"
    job.start(ckpt, score_threshold=0.0, overlap_threshold=0.0)
    with pytest.raises(JobBusyError):
        job.start(ckpt)
    st = job.runner.wait(timeout=240, poll_s=0.2)
    assert st.state == "finished", st.info.log_path.read_text()
    p = job.progress()
    assert (p.state, p.done, p.total, p.predicted, p.fraction) == ("finished", 3, 3, 3, 1.0)
    assert "Predicted 3 of 3" in p.message
    recs = {r.id: r for r in ws.list_images()}
    assert [recs[i].status for i in ids] == ["predicted"] * 3
    assert recs[corrected].status == "corrected" and recs[corrected].uncertainty is None
    # what is stored is the engine's own merge of the same image at the same thresholds
    pred = Predictor.from_checkpoint(ckpt, device="cpu").predict(ws.load_image(ids[0]))
    ref = pred.panoptic(0.0, 0.0)
    id_map, segs, source = ws.load_annotation(ids[0])
    np.testing.assert_array_equal(id_map, ref.panoptic_seg.numpy())
    assert source == "model" and [s["query"] for s in segs] == [g["query"] for g in ref.segments]
    from app.uncertainty import image_uncertainty

    assert recs[ids[0]].uncertainty == pytest.approx(image_uncertainty(pred, 0.0, 0.0), abs=1e-6)
    _consistent(ws)
    with pytest.raises(UserError, match="nothing to predict"):
        job.start(ckpt)


@pytest.mark.slow
def test_cancel_leaves_workspace_consistent(tmp_path, ckpt):
    ws, _ids = _workspace(tmp_path / "ws", 16)
    job = PredictAll(ws)
    job.start(ckpt)
    end = time.time() + 240
    while job.progress().done < 2 and job.runner.busy() and time.time() < end:
        time.sleep(0.05)
    running = job.progress()
    assert running.state == "running" and running.total == 16
    assert "left" in running.message and running.eta_s is not None
    st = job.cancel()
    assert st.state == "cancelled"
    p = job.progress()
    assert p.state == "cancelled" and "Cancelled after" in p.message and p.done < 16
    _consistent(ws)
    predicted = sum(r.status == "predicted" for r in ws.list_images(counts=False))
    assert 2 <= predicted < 16
    assert predicted - p.predicted in (0, 1)  # the last image may commit before its progress line
    # a new job predicts the rest
    job.start(ckpt)
    assert job.runner.wait(timeout=240, poll_s=0.2).state == "finished"
    assert {r.status for r in ws.list_images(counts=False)} == {"predicted"}


@pytest.mark.slow
def test_crash_is_reported_not_raised(tmp_path):
    ws, _ = _workspace(tmp_path / "ws", 1)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    job = PredictAll(ws)
    job.start(bad)
    st = job.runner.wait(timeout=120, poll_s=0.2)
    assert st.state == "failed"
    p = job.progress()
    assert p.state == "failed" and "stopped after 0 of 1" in p.message
    assert ws.list_images()[0].status == "unseen"
    doc = json.loads((Path(st.info.job_dir) / "progress.json").read_text())
    assert doc["error"]
