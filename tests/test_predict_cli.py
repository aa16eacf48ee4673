"""``python -m maskformer predict`` end to end on a random tiny checkpoint and two small images."""

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from maskformer.__main__ import main
from maskformer.config import DatasetMeta, apply_overrides, default_colors, get_preset

ROOT = Path(__file__).resolve().parents[1]
DATASET_IDS = (1, 2, 3, 5, 8, 13, 21, 34)  # contiguous i -> DATASET_IDS[i] in every output


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from maskformer.checkpoint import save_checkpoint
    from maskformer.model import build_model

    d = tmp_path_factory.mktemp("predict")
    cfg = apply_overrides(
        get_preset("maskformer_tiny"),
        {"model.backbone": "test_resnet", "input.min_size_test": 64, "input.max_size_test": 96},
    )
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():  # confident real classes, so outputs are not empty
        model.predictor.class_embed.weight.mul_(10.0)
        model.predictor.class_embed.bias[-1] = -3.0
    meta = DatasetMeta(
        class_names=tuple(f"c{i}" for i in range(8)),
        isthing=(True,) * 6 + (False,) * 2,
        colors=default_colors(8),
        dataset_ids=DATASET_IDS,
        name="tiny",
    )
    save_checkpoint(d / "tiny.safetensors", model, cfg, meta)
    imgs = d / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(imgs / "a.png")
    Image.fromarray(rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)).save(imgs / "b.jpg")
    (d / "bad.png").write_text("this is not an image")
    return d


@contextmanager
def _one_thread():
    """The subprocess runs with one thread; match it so float results agree bit for bit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _predictions(setup):
    from maskformer.inference import Predictor

    p = Predictor.from_checkpoint(setup / "tiny.safetensors", device="cpu")
    with _one_thread():
        return {n: p.predict(setup / "imgs" / n) for n in ("a.png", "b.jpg")}


def _rgb2id(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


@pytest.mark.slow
def test_panoptic_subprocess_with_a_bad_image(setup):
    out = setup / "out_pan"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "maskformer",
            "predict",
            "--checkpoint",
            str(setup / "tiny.safetensors"),
            str(setup / "imgs" / "a.png"),
            str(setup / "bad.png"),
            str(setup / "imgs" / "b.jpg"),
            "--task",
            "panoptic",
            "--overlap",
            "0.1",
            "--out",
            str(out),
            "--no-progress",
        ],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 1, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "bad.png" in warnings[0]
    assert "error: 1 of 3" in r.stderr
    data = json.loads((out / "panoptic.json").read_text())
    assert [im["file_name"] for im in data["images"]] == ["a.png", "b.jpg"]
    assert [c["id"] for c in data["categories"]] == list(DATASET_IDS)
    preds = _predictions(setup)
    n_segments = 0
    for ann, name in zip(data["annotations"], ("a.png", "b.jpg")):
        ids = _rgb2id(out / "panoptic" / ann["file_name"])
        pan = preds[name].panoptic(overlap_threshold=0.1)
        np.testing.assert_array_equal(ids, pan.panoptic_seg.numpy())
        expected = {s["id"]: DATASET_IDS[s["category_id"]] for s in pan.segments}
        assert {s["id"]: s["category_id"] for s in ann["segments_info"]} == expected
        assert set(np.unique(ids)) - {0} == set(expected)
        for s in ann["segments_info"]:
            assert s["area"] == int((ids == s["id"]).sum())
        n_segments += len(expected)
        overlay = np.asarray(Image.open(out / f"{Path(name).stem}_overlay.png"))
        assert overlay.shape[0] >= ids.shape[0] and overlay.shape[1] > ids.shape[1]  # + legend
    assert n_segments > 0


def test_instances_rle_decode_to_prediction_masks(setup, capsys):
    out = setup / "out_inst"
    with _one_thread():
        rc = main(
            [
                "predict",
                "--checkpoint",
                str(setup / "tiny.safetensors"),
                str(setup / "imgs"),
                "--task",
                "instance",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
    assert rc == 0
    results = json.loads((out / "instances_results.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    by_name = {im["file_name"]: im["id"] for im in images}
    preds = _predictions(setup)
    assert len(results) > 0
    for name, pred in preds.items():
        inst = pred.instances()
        mine = [r for r in results if r["image_id"] == by_name[name]]
        assert len(mine) == len(inst) > 0
        for r, mask, label, score in zip(mine, inst.masks, inst.labels, inst.scores):
            rle = {
                "size": r["segmentation"]["size"],
                "counts": r["segmentation"]["counts"].encode(),
            }
            decoded = mask_utils.decode(rle).astype(bool)  # pycocotools, not our code
            np.testing.assert_array_equal(decoded, mask.numpy())
            assert r["category_id"] == DATASET_IDS[int(label)]
            assert r["score"] == pytest.approx(float(score), abs=1e-6)
            if decoded.any():
                assert r["bbox"] == pytest.approx(list(mask_utils.toBbox(rle)))


def test_semantic_pngs_and_glob(setup):
    out = setup / "out_sem"
    with _one_thread():
        rc = main(
            [
                "predict",
                "--checkpoint",
                str(setup / "tiny.safetensors"),
                str(setup / "imgs" / "*.*"),
                "--task",
                "semantic",
                "--out",
                str(out),
                "--no-progress",
                "--no-overlay",
            ]
        )
    assert rc == 0
    preds = _predictions(setup)
    for name, pred in preds.items():
        png = Image.open(out / "semantic" / (Path(name).stem + ".png"))
        assert png.mode == "L"
        np.testing.assert_array_equal(np.asarray(png), pred.semantic().numpy())
    assert not list(out.glob("*_overlay.png"))


def test_channels_last_flag(setup):
    """--channels-last runs NHWC weights: the same semantic maps as the default up to the few
    pixels whose top two classes tie within float rounding."""
    out = setup / "out_nhwc"
    with _one_thread():
        rc = main(
            [
                "predict",
                "--checkpoint",
                str(setup / "tiny.safetensors"),
                str(setup / "imgs" / "*.*"),
                "--task",
                "semantic",
                "--out",
                str(out),
                "--no-progress",
                "--no-overlay",
                "--channels-last",
            ]
        )
    assert rc == 0
    for name, pred in _predictions(setup).items():
        png = np.asarray(Image.open(out / "semantic" / (Path(name).stem + ".png")))
        assert (png == pred.semantic().numpy()).mean() >= 0.999


def test_bad_checkpoint_and_bad_inputs(setup, capsys):
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(setup / "bad.png"),
                str(setup / "imgs"),
                "--out",
                str(setup / "x"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(setup / "tiny.safetensors"),
                str(setup / "nothing*.png"),
                "--out",
                str(setup / "x"),
            ]
        )
        == 2
    )
    assert "no files match" in capsys.readouterr().err
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(setup / "tiny.safetensors"),
                str(setup / "imgs"),
                "--out",
                str(setup / "x"),
                "--threshold",
                "1.5",
            ]
        )
        == 2
    )
    assert "--threshold" in capsys.readouterr().err
